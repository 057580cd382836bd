import Foundation
import PosternFilters
import PosternLog
import PosternPolicy
import PosternServer
import XCTest

/// `PolicyReplayRun`: records as `serve` writes them, replayed against candidate policies.
final class PolicyReplayTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "postern-replay-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// The clock the records start at: 2026-12-06T00:00:00Z.
    private let start: Int64 = 1_796_515_200_000

    /// A record as the session writes it. `minutes` after `start`.
    private func record(
        _ id: String, session: String? = nil, minutes: Double = 0, client: String = "203.0.113.7", from: String? = "a@client.example",
        to: [(String, String)] = [("alice@example.org", "250 2.1.5 Ok")], subject: String? = "hello", decision: DecisionRecord.Decision = .accepted,
        stage: DecisionRecord.Stage = .data, rule: String? = nil, upstream: Bool = true
    ) -> String {
        DecisionRecord(
            timestamp: start + Int64(minutes * 60_000), id: id, session: session ?? "S-\(id)", client: .init(ip: client, port: 40000, helo: "mail.client.example"),
            mailFrom: from, recipients: to.map { DecisionRecord.Recipient(address: $0.0, reply: $0.1) }, size: 1200, subject: subject,
            decision: decision, stage: stage, rule: rule, upstream: upstream ? .init(host: "127.0.0.1:2526", reply: nil, queueID: nil) : nil,
            timings: .init(total: 1, filters: 0, upstream: 1)
        ).jsonLine()
    }

    private func replay(_ lines: [String], policy yaml: String, relayDomains: [String] = ["example.org"]) async throws -> PolicyReplayRun.Report {
        let path = directory + "/candidate.yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        let clock = ManualRateLimitClock()
        let policy = try BuiltinFilters.compiler(rateLimitStore: InMemoryRateLimitStore(clock: clock)).compile(path: path)
        let log = directory + "/decisions.log"
        try lines.joined().write(toFile: log, atomically: true, encoding: .utf8)
        var report = PolicyReplayRun.Report()
        let records = try await PolicyReplayRun.read([log], into: &report)
        let run = PolicyReplayRun(policy: policy, relayControl: RelayControl(relayDomains: relayDomains, trustedNetworks: []), clock: clock)
        await run.run(records, report: &report)
        return report
    }

    private func changes(_ report: PolicyReplayRun.Report) -> [String] {
        report.changes.map { "\($0.id) \($0.was)->\($0.now) \($0.rule ?? "-")" }
    }

    func testConnectRulesRunOncePerSessionAndLimitsCountOnTheRecordsClock() async throws {
        let policy = """
            limits:
              per_ip: { key: client_ip, count: connections, rate: 1/1h, burst: 0 }
            rules:
              - { id: one-connection, stage: connect, if: { limit: per_ip }, then: tempfail }
            """
        // T1 and T2 share a session: one connection. T3 is a second connection 10 minutes
        // later; T4 comes after the hour.
        let report = try await replay([
            record("T1", session: "S1"), record("T2", session: "S1", minutes: 1), record("T3", session: "S2", minutes: 10),
            record("T4", session: "S3", minutes: 75),
        ], policy: policy)
        XCTAssertEqual(changes(report), ["T3 accepted->tempfailed one-connection"])
        XCTAssertEqual(report.unchanged, 3)
    }

    func testRecordsAreReplayedInTimeOrderWhateverTheirOrderInTheFiles() async throws {
        let policy = """
            limits:
              per_sender: { key: sender, count: messages, rate: 2/1h, burst: 0 }
            rules:
              - { id: throttle, stage: rcpt, if: { limit: per_sender }, then: tempfail }
            """
        // Written out of order (a rotated file read after the current one): M3 is the third in time.
        let report = try await replay([record("M3", minutes: 3), record("M1", minutes: 1), record("M2", minutes: 2)], policy: policy)
        XCTAssertEqual(changes(report), ["M3 accepted->tempfailed throttle"])
        // Spread over more than the interval, none is refused.
        let spread = try await replay([record("N1"), record("N2", minutes: 31), record("N3", minutes: 62)], policy: policy)
        XCTAssertEqual(spread.changed, 0)
        XCTAssertEqual(spread.unchanged, 3)
    }

    func testTheUpstreamsAnswerStandsAndTheLoggedPolicysRefusalIsReconsidered() async throws {
        let lines = [
            // The upstream refused the message: no rule decided.
            record("U1", decision: .rejected),
            // A rule of the logged policy refused it at data.
            record("P1", subject: "cheap pills", decision: .rejected, rule: "old-pills"),
        ]
        let none = try await replay(lines, policy: "rules: []\n")
        XCTAssertEqual(changes(none), ["P1 rejected->accepted -"])
        XCTAssertEqual(none.byRule, ["(none)": 1])
        XCTAssertEqual(none.byChange, ["rejected->accepted": 1])
        let same = try await replay(lines, policy: """
            rules:
              - { id: pills, stage: data, if: { subject: { regex: pills } }, then: reject }
            """)
        XCTAssertEqual(same.changed, 0)
        XCTAssertEqual(same.unchanged, 2)
    }

    func testWhatTheRecordDoesNotHoldIsNotEvaluableNeverGuessed() async throws {
        let lines = [
            // Local parts hashed by decision_log.local_parts.
            record("H1", from: "h:0123456789abcdef@client.example"),
            // Refused at connect by a rule: what came next is not known.
            record("C1", from: nil, to: [], subject: nil, decision: .rejected, stage: .connect, rule: "old-connect", upstream: false),
            // A hashed subject, for a subject rule.
            record("S1", subject: "h:0123456789abcdef"),
            // A subject the record holds.
            record("S2", subject: "win a prize"),
        ]
        let report = try await replay(lines, policy: """
            rules:
              - { id: prize, stage: data, if: { subject: { regex: prize } }, then: reject }
            """)
        XCTAssertEqual(changes(report), ["S2 accepted->rejected prize"])
        XCTAssertEqual(report.notEvaluable, 3)
        XCTAssertEqual(report.notEvaluableReasons, [
            "the log keeps only the domain of an address (decision_log.local_parts)": 1,
            "the logged policy refused the connection; what the client would have sent next is not in the log": 1,
            "a content rule reads more of the message than the record keeps (Subject, Message-ID)": 1,
        ])
    }

    func testRulesOnAChecksAnswerAreNotEvaluable() async throws {
        // Replay asks no milter, policy server or SPF again: a rule on their answer cannot be decided.
        let report = try await replay([record("E1"), record("E2", from: nil, to: [], subject: nil, decision: .rejected, stage: .connect, upstream: false)],
                                      policy: """
            rules:
              - { id: spf-fail, stage: mail, if: { spf: fail }, then: reject }
            """)
        XCTAssertEqual(report.notEvaluableReasons, ["a mail rule reads a check's answer (milter, policy server, SPF), which replay does not ask": 1])
        // The connection refused by something other than a rule (a defence) keeps its outcome.
        XCTAssertEqual(report.unchanged, 1)
    }

    func testRelayControlAndEveryRecipientRefused() async throws {
        let relayDenied = "554 5.7.1 <bob@other.example>: Relay access denied"
        let lines = [
            record("R1", to: [("bob@other.example", relayDenied)], subject: nil, decision: .rejected, stage: .rcpt, upstream: false),
            // An aborted transaction (the client left after RCPT).
            record("A1", from: "spam@bad.example", subject: nil, decision: .aborted, stage: .rcpt),
        ]
        // other.example is now a relay domain, and the candidate refuses bad.example at MAIL.
        let report = try await replay(lines, policy: """
            rules:
              - { id: bad, stage: mail, if: { sender: "@bad.example" }, then: reject }
            """, relayDomains: ["example.org", "other.example"])
        XCTAssertEqual(changes(report), ["R1 rejected->accepted -", "A1 aborted->rejected bad"])
        // With a data rule, the message a relay-control refusal never received is needed.
        let withData = try await replay(lines, policy: """
            rules:
              - { id: big, stage: data, if: { size: { over: 1MB } }, then: reject }
            """, relayDomains: ["example.org", "other.example"])
        XCTAssertEqual(withData.notEvaluableReasons, ["the logged policy refused every recipient; the message is not in the log for the data rules": 1])
        XCTAssertEqual(withData.unchanged, 1)
        // Under the same relay domains, relay control refuses again: unchanged.
        let unchanged = try await replay(lines, policy: "rules: []\n")
        XCTAssertEqual(unchanged.changed, 0)
        XCTAssertEqual(unchanged.unchanged, 2)
    }

    func testMalformedLinesAreCountedWithFileAndLineAndTheRestIsReplayed() async throws {
        let report = try await replay([record("G1"), "not json\n", "{\"schema\":1}\n", record("G2")], policy: "rules: []\n")
        XCTAssertEqual(report.records, 2)
        XCTAssertEqual(report.unchanged, 2)
        XCTAssertEqual(report.malformed.count, 2)
        XCTAssertTrue(report.malformed[0].hasSuffix("decisions.log:2: not JSON: not json"), report.malformed[0])
        XCTAssertTrue(report.malformed[1].hasSuffix("decisions.log:3: no \"ts\" field"), report.malformed[1])
    }

    func testTheReportsTextAndJSON() async throws {
        let report = try await replay([record("J1", subject: "prize"), record("J2")], policy: """
            rules:
              - { id: prize, stage: data, if: { subject: { regex: prize } }, then: reject }
            """)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(report.json(policy: "c.yaml", version: "v1").utf8)) as? [String: Any])
        XCTAssertEqual(object["records"] as? Int, 2)
        XCTAssertEqual(object["replayed"] as? Int, 2)
        XCTAssertEqual(object["changed"] as? Int, 1)
        XCTAssertEqual(object["not_evaluable"] as? Int, 0)
        XCTAssertEqual(object["by_change"] as? [String: Int], ["accepted->rejected": 1])
        XCTAssertEqual(object["by_rule"] as? [String: Int], ["prize": 1])
        let change = try XCTUnwrap((object["changes"] as? [[String: Any]])?.first)
        XCTAssertEqual(change["id"] as? String, "J1")
        XCTAssertEqual(change["was"] as? String, "accepted")
        XCTAssertEqual(change["now"] as? String, "rejected")
        XCTAssertEqual(change["rule"] as? String, "prize")
        let text = report.text(policy: "c.yaml", version: "v1")
        XCTAssertTrue(text.contains("replayed 2: unchanged 1, changed 1, not evaluable 0"), text)
        XCTAssertTrue(text.contains("  accepted -> rejected  1"), text)
        XCTAssertTrue(text.contains("2026-12-06T00:00:00.000Z  J1  accepted -> rejected by prize  client 203.0.113.7  from <a@client.example>  to <alice@example.org>"), text)
    }
}
