import SMTPCore
import Foundation
import XCTest

@testable import PosternLog

/// Decision-log lines written the way DecisionLogWriter writes them (schema 1).
enum DecisionLogFixture {
    static func line(
        ts: String, id: String, decision: String, ip: String, country: String? = nil, from: String?, rcpts: [String] = [],
        rule: String? = nil, stage: String = "rcpt", code: Int? = nil, enhanced: String? = nil,
        shadow: [(String, String)] = []
    ) -> String {
        func value(_ text: String?) -> String {
            guard let text else { return "null" }
            let data = try! JSONSerialization.data(withJSONObject: [text], options: [.fragmentsAllowed])
            return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
        }
        let recipients = rcpts.map { #"{"address":\#(value($0)),"reply":"250 2.1.5 Ok"}"# }.joined(separator: ",")
        let shadows = shadow.map { #"{"rule":\#(value($0.0)),"action":\#(value($0.1))}"# }.joined(separator: ",")
        let reply = code.map { #"{"code":\#($0),"enhanced":\#(value(enhanced)),"text":"text"}"# } ?? "null"
        return #"{"schema":1,"ts":"\#(ts)","id":"\#(id)","session":"S\#(id)","policy_version":"abc","#
            + #""client":{"ip":"\#(ip)","port":40000,"country":\#(value(country)),"asn":null,"helo":"client.example","tls":null,"auth":null},"#
            + #""mail_from":\#(value(from)),"rcpts":[\#(recipients)],"size":null,"message_id":null,"#
            + #""decision":"\#(decision)","stage":"\#(stage)","rule":\#(value(rule)),"reason":null,"reply":\#(reply),"#
            + #""upstream":null,"shadow":[\#(shadows)],"timings":{"total_ms":1,"filters_ms":0,"upstream_ms":0}}"#
    }

    /// Eight records on 2026-11-20 (UTC), one of each decision and a few shadow hits.
    static let lines: [String] = [
        line(ts: "2026-11-20T10:00:00.000Z", id: "R1", decision: "accepted", ip: "192.0.2.7", country: "GB",
             from: "alice@example.org", rcpts: ["bob@example.net"], stage: "data", code: 250, enhanced: "2.0.0",
             shadow: [("literal-helo", "tempfail")]),
        line(ts: "2026-11-20T10:05:00.000Z", id: "R2", decision: "rejected", ip: "198.51.100.23",
             from: "spam@bad.example", rcpts: ["x@example.net"], rule: "blocked-sender", stage: "mail", code: 550, enhanced: "5.7.1"),
        line(ts: "2026-11-20T10:10:00.000Z", id: "R3", decision: "rejected", ip: "198.51.100.99", country: "NL",
             from: "Other@Bad.Example", rcpts: ["a@example.net", "b@example.net", "c@example.net", "d@example.net"],
             rule: "blocked-sender", stage: "mail", code: 550, enhanced: "5.7.1"),
        line(ts: "2026-11-20T10:15:00.000Z", id: "R4", decision: "tempfailed", ip: "2001:db8:1:2::5",
             from: "", rcpts: ["postmaster@example.net"], rule: "greylist", code: 451, enhanced: "4.7.1",
             shadow: [("literal-helo", "tempfail")]),
        line(ts: "2026-11-20T10:20:00.000Z", id: "R5", decision: "rejected", ip: "203.0.113.5", from: nil,
             rule: "no-kp", stage: "connect", code: 554, enhanced: "5.7.1"),
        line(ts: "2026-11-20T10:25:00.000Z", id: "R6", decision: "aborted", ip: "192.0.2.8",
             from: "alice@example.org", rcpts: ["bob@example.net"], stage: "data"),
        line(ts: "2026-11-20T10:30:00.000Z", id: "R7", decision: "discarded", ip: "2001:db8:1:2::9",
             from: "bulk@news.example", rcpts: ["carol@example.net"], rule: "drop-exe", stage: "data", code: 250, enhanced: "2.0.0",
             shadow: [("literal-helo", "tempfail"), ("big-attachment", "quarantine")]),
        line(ts: "2026-11-20T11:00:00.000Z", id: "R8", decision: "accepted", ip: "::ffff:192.0.2.200",
             from: "dave@example.org", rcpts: ["erin@example.net", "frank@example.net"], stage: "data", code: 250,
             enhanced: "2.0.0", shadow: [("big-attachment", "quarantine")]),
    ]

    static var text: String { lines.map { $0 + "\n" }.joined() }
}

final class DecisionLogReaderTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-tail-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private var records: [LoggedDecision] { DecisionLogReader.parse(DecisionLogFixture.text).compactMap(\.record) }

    private func ids(_ filter: DecisionRecordFilter) -> [String] {
        records.filter(filter.matches).compactMap(\.id)
    }

    // MARK: parsing

    func testParsesEveryFieldItShows() throws {
        let events = DecisionLogReader.parse(DecisionLogFixture.text)
        XCTAssertEqual(events.count, 8)
        XCTAssertTrue(events.allSatisfy { $0.warning == nil })
        let first = try XCTUnwrap(events.first?.record)
        XCTAssertEqual(first.line, DecisionLogFixture.lines[0])
        XCTAssertEqual(first.timestamp, Timestamps.parseRFC3339("2026-11-20T10:00:00Z"))
        XCTAssertEqual(first.id, "R1")
        XCTAssertEqual(first.session, "SR1")
        XCTAssertEqual(first.clientIP, "192.0.2.7")
        XCTAssertEqual(first.clientCountry, "GB")
        XCTAssertEqual(first.mailFrom, "alice@example.org")
        XCTAssertEqual(first.recipients, ["bob@example.net"])
        XCTAssertEqual(first.decision, "accepted")
        XCTAssertEqual(first.stage, "data")
        XCTAssertNil(first.rule)
        XCTAssertEqual(first.replyCode, 250)
        XCTAssertEqual(first.replyEnhanced, "2.0.0")
        XCTAssertEqual(first.replyText, "text")
        XCTAssertEqual(first.shadow, [.init(rule: "literal-helo", action: "tempfail")])
        let connect = records[4]
        XCTAssertNil(connect.mailFrom)
        XCTAssertEqual(connect.recipients, [])
        XCTAssertEqual(records[3].mailFrom, "", "the null sender is an empty string")
        XCTAssertNil(records[5].replyCode)
    }

    func testReadsWhatTheWriterWrites() throws {
        let record = DecisionRecord(
            timestamp: 1_795_461_098_123, id: "H46KQZ1J9M23", session: "Q0XMJBVMZGZQ",
            client: .init(ip: "192.0.2.7", port: 40000, helo: "client.example"), mailFrom: "",
            recipients: [.init(address: "bob@example.net", reply: "250 2.1.5 Ok")], decision: .rejected, stage: .rcpt,
            rule: "r1", reply: .init(code: 550, enhanced: "5.7.1", text: "No"),
            shadow: [.init(rule: "s1", action: "reject")], timings: .init(total: 1, filters: 0, upstream: 0))
        let events = DecisionLogReader.parse(record.jsonLine())
        let parsed = try XCTUnwrap(events.first?.record, "\(events)")
        XCTAssertEqual(parsed.timestamp, 1_795_461_098_123)
        XCTAssertEqual(parsed.mailFrom, "")
        XCTAssertEqual(parsed.rule, "r1")
        XCTAssertEqual(parsed.replyCode, 550)
        XCTAssertEqual(parsed.shadow, [.init(rule: "s1", action: "reject")])
        XCTAssertEqual(parsed.line + "\n", record.jsonLine())
    }

    func testMalformedLinesAreSkippedWithWarnings() {
        let lines = DecisionLogFixture.lines
        let text = [
            lines[0],
            "Nov 23 19:00:00 host postfix/smtpd[123]: connect from unknown",
            #"{"schema":2,"ts":"2026-11-20T10:00:00Z","decision":"accepted","client":{"ip":"192.0.2.1"}}"#,
            #"{"level":"info","msg":"not a decision"}"#,
            "[1,2,3]",
            "",
            #"{"schema":1,"ts":"yesterday","decision":"accepted","client":{"ip":"192.0.2.1"}}"#,
            #"{"schema":1,"ts":"2026-11-20T10:00:00Z","client":{"ip":"192.0.2.1"}}"#,
            lines[1],
        ].joined(separator: "\n") + "\n" + String(lines[2].prefix(40))
        let events = DecisionLogReader.parse(text)
        XCTAssertEqual(events.compactMap(\.record).compactMap(\.id), ["R1", "R2"])
        let warnings = events.compactMap(\.warning)
        XCTAssertEqual(warnings.count, 7, warnings.joined(separator: "\n"))
        XCTAssertTrue(warnings[0].hasPrefix("skipping line 2: not JSON"), warnings[0])
        XCTAssertEqual(warnings[1], "skipping line 3: schema 2, expected 1")
        XCTAssertTrue(warnings[2].hasPrefix("skipping line 4: no \"schema\" field"), warnings[2])
        XCTAssertEqual(warnings[3], "skipping line 5: not a JSON object")
        XCTAssertTrue(warnings[4].hasPrefix("skipping line 7: \"ts\" is not an RFC 3339 time"), warnings[4])
        XCTAssertEqual(warnings[5], "skipping line 8: no \"decision\" field")
        XCTAssertTrue(warnings[6].hasPrefix("skipping line 10: incomplete line"), warnings[6])
    }

    func testAPartialLineWaitsForItsNewline() {
        var parser = DecisionLogParser()
        let line = DecisionLogFixture.lines[0] + "\r\n"
        let bytes = Array(line.utf8)
        XCTAssertEqual(parser.feed(bytes[0..<50]), [])
        XCTAssertTrue(parser.hasPartialLine)
        let events = parser.feed(bytes[50...])
        XCTAssertEqual(events.compactMap(\.record).compactMap(\.id), ["R1"], "CRLF is accepted too")
        XCTAssertEqual(parser.finish(), [])
    }

    func testTimestamps() {
        XCTAssertEqual(Timestamps.parseRFC3339("1970-01-01T00:00:00Z"), 0)
        XCTAssertEqual(Timestamps.parseRFC3339("2026-11-23T19:11:38.123Z"), 1_795_461_098_123)
        XCTAssertEqual(Timestamps.parseRFC3339("2026-11-23T20:11:38.123+01:00"), 1_795_461_098_123)
        XCTAssertEqual(Timestamps.parseRFC3339("2026-11-23t19:11:38.1234567z"), 1_795_461_098_123)
        XCTAssertEqual(Timestamps.parseRFC3339("2026-11-23 19:11:38.1Z"), 1_795_461_098_100)
        XCTAssertNil(Timestamps.parseRFC3339("2026-11-23T19:11:38"))
        XCTAssertNil(Timestamps.parseRFC3339("2026-13-23T19:11:38Z"))
        XCTAssertNil(Timestamps.parseRFC3339("2026-11-23T19:11:38.Z"))
        for millis: Int64 in [0, 1_795_461_098_123, 951_782_400_000, 4_102_444_799_999] {
            XCTAssertEqual(Timestamps.parseRFC3339(DecisionRecord.rfc3339(milliseconds: millis)), millis)
        }
    }

    // MARK: filters

    func testDecisionFilterRepeatsAsAlternatives() {
        XCTAssertEqual(ids(.init(decisions: ["rejected"])), ["R2", "R3", "R5"])
        XCTAssertEqual(ids(.init(decisions: ["tempfailed", "discarded"])), ["R4", "R7"])
        XCTAssertEqual(ids(.init()), ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8"])
    }

    func testRuleFilter() {
        XCTAssertEqual(ids(.init(rule: "blocked-sender")), ["R2", "R3"])
        XCTAssertEqual(ids(.init(rule: "nope")), [])
    }

    func testClientFilterTakesAnAddressOrNetwork() throws {
        XCTAssertEqual(ids(.init(client: IPNetwork("192.0.2.7"))), ["R1"])
        XCTAssertEqual(ids(.init(client: IPNetwork("192.0.2.0/24"))), ["R1", "R6", "R8"], "a mapped IPv6 address is IPv4")
        XCTAssertEqual(ids(.init(client: IPNetwork("198.51.100.0/25"))), ["R2", "R3"])
        XCTAssertEqual(ids(.init(client: IPNetwork("2001:db8::/32"))), ["R4", "R7"])
        XCTAssertEqual(ids(.init(client: IPNetwork("2001:db8:1:2::5/128"))), ["R4"])
        XCTAssertEqual(ids(.init(client: IPNetwork("0.0.0.0/0"))), ["R1", "R2", "R3", "R5", "R6", "R8"])
        XCTAssertNil(IPNetwork("192.0.2.0/33"))
        XCTAssertNil(IPNetwork("example.org"))
        XCTAssertNil(IPNetwork("192.0.2.0/x"))
        XCTAssertEqual(IPNetwork("192.0.2.77/24")?.description, "192.0.2.0/24")
        XCTAssertEqual(IPNetwork("2001:db8:1:2:3:4:5:6/64")?.description, "2001:db8:1:2::/64")
    }

    func testSenderGlob() {
        XCTAssertEqual(ids(.init(sender: AddressGlob("*@bad.example"))), ["R2", "R3"], "case-insensitive")
        XCTAssertEqual(ids(.init(sender: AddressGlob("alice@example.org"))), ["R1", "R6"])
        XCTAssertEqual(ids(.init(sender: AddressGlob("<alice@*>"))), ["R1", "R6"])
        XCTAssertEqual(ids(.init(sender: AddressGlob("<>"))), ["R4"], "the null sender")
        XCTAssertEqual(ids(.init(sender: AddressGlob("*"))), ["R1", "R2", "R3", "R4", "R6", "R7", "R8"],
                       "a record without MAIL has no sender")
        XCTAssertEqual(ids(.init(sender: AddressGlob("a*e@*.org"))), ["R1", "R6"])
        XCTAssertEqual(ids(.init(sender: AddressGlob("*.example"))), ["R2", "R3", "R7"])
        XCTAssertTrue(AddressGlob("**a**").matches("xay"))
        XCTAssertFalse(AddressGlob("a*b").matches("acbc"))
    }

    func testRecipientGlobMatchesAnyRecipient() {
        XCTAssertEqual(ids(.init(recipient: AddressGlob("d@example.net"))), ["R3"], "past the first two")
        XCTAssertEqual(ids(.init(recipient: AddressGlob("POSTMASTER@*"))), ["R4"])
        XCTAssertEqual(ids(.init(recipient: AddressGlob("*@example.net"))), ["R1", "R2", "R3", "R4", "R6", "R7", "R8"])
    }

    func testSince() throws {
        let now = Date(timeIntervalSince1970: TimeInterval(Timestamps.parseRFC3339("2026-11-20T11:00:00Z")! / 1000))
        XCTAssertEqual(ids(.init(since: try DecisionRecordFilter.parseSince("30m", now: now))), ["R7", "R8"], "inclusive")
        XCTAssertEqual(ids(.init(since: try DecisionRecordFilter.parseSince("1h", now: now))).count, 8)
        XCTAssertEqual(ids(.init(since: try DecisionRecordFilter.parseSince("2d", now: now))).count, 8)
        XCTAssertEqual(ids(.init(since: try DecisionRecordFilter.parseSince("90s", now: now))), ["R8"])
        XCTAssertEqual(ids(.init(since: try DecisionRecordFilter.parseSince("2026-11-20T11:20:00+01:00"))), ["R5", "R6", "R7", "R8"])
        XCTAssertThrowsError(try DecisionRecordFilter.parseSince("yesterday"))
        XCTAssertThrowsError(try DecisionRecordFilter.parseSince("15x"))
    }

    func testFiltersCombineWithAnd() {
        let filter = DecisionRecordFilter(
            decisions: ["rejected", "accepted"], client: IPNetwork("192.0.2.0/24"), sender: AddressGlob("alice@*"))
        XCTAssertEqual(ids(filter), ["R1"])
        XCTAssertEqual(ids(.init(decisions: ["rejected"], rule: "no-kp", sender: AddressGlob("*"))), [])
    }

    // MARK: summary

    func testSummaryCounts() {
        let summary = DecisionSummary(records)
        XCTAssertEqual(summary.total, 8)
        XCTAssertEqual(summary.decisions.map { "\($0.key)=\($0.count)" },
                       ["accepted=2", "rejected=3", "tempfailed=1", "discarded=1", "aborted=1"])
        XCTAssertEqual(summary.topRules.map { "\($0.key)=\($0.count)" },
                       ["blocked-sender=2", "drop-exe=1", "greylist=1", "no-kp=1"])
        XCTAssertEqual(summary.topRejectedNetworks.map { "\($0.key)=\($0.count)" },
                       ["198.51.100.0/24=2", "203.0.113.0/24=1"])
        XCTAssertEqual(summary.topRejectedSenderDomains.map { "\($0.key)=\($0.count)" }, ["bad.example=2"])
        XCTAssertEqual(summary.shadowRules, [
            .init(rule: "literal-helo", action: "tempfail", hits: 3, accepted: 1),
            .init(rule: "big-attachment", action: "quarantine", hits: 2, accepted: 1),
        ])
    }

    func testSummaryGroupsIPv6By64AndKeepsTheTopTen() {
        var summary = DecisionSummary()
        for index in 0..<15 {
            for _ in 0...index {
                summary.add(LoggedDecision(line: "", timestamp: 0, clientIP: "2001:db8:0:\(index)::\(index + 1)",
                                           mailFrom: "", decision: "rejected", rule: "rule-\(index)"))
            }
        }
        summary.add(LoggedDecision(line: "", timestamp: 0, clientIP: "2001:db8:0:14::ffff", decision: "rejected"))
        XCTAssertEqual(summary.topRules.count, 10)
        XCTAssertEqual(summary.topRules.first, .init("rule-14", 15))
        XCTAssertEqual(summary.topRejectedNetworks.count, 10)
        XCTAssertEqual(summary.topRejectedNetworks.first, .init("2001:db8:0:14::/64", 16))
        XCTAssertEqual(summary.topRejectedSenderDomains, [.init("<>", 120)])
    }

    func testSummaryRendersAlignedTables() {
        let lines = DecisionSummary(records).render()
        let text = lines.joined(separator: "\n")
        XCTAssertTrue(lines[0].hasPrefix("8 decisions from 2026-11-20T10:00:00.000Z to 2026-11-20T11:00:00.000Z"), text)
        XCTAssertTrue(lines.contains("  rejected        3  37.5%"), text)
        XCTAssertTrue(lines.contains("  blocked-sender     2"), text)
        XCTAssertTrue(lines.contains("  198.51.100.0/24         2"), text)
        XCTAssertTrue(lines.contains("Shadow rules (would have hit)"), text)
        XCTAssertTrue(lines.contains("  literal-helo    tempfail       3                 1"), text)
        XCTAssertFalse(lines.contains { $0.hasSuffix(" ") }, "no trailing spaces")
        XCTAssertEqual(DecisionSummary().render().last, "  (no shadow rule matched)")
    }

    // MARK: following

    private func append(_ url: URL, _ text: String) throws {
        if !FileManager.default.fileExists(atPath: url.path) {
            _ = FileManager.default.createFile(atPath: url.path, contents: nil)
        }
        let handle = try FileHandle(forWritingTo: url)
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(text.utf8))
        try handle.close()
    }

    private func line(_ id: String) -> String {
        DecisionLogFixture.line(ts: "2026-11-20T10:00:00Z", id: id, decision: "accepted", ip: "192.0.2.1", from: "a@b.example") + "\n"
    }

    func testMissingFileIsAnOpenError() {
        XCTAssertThrowsError(try DecisionLogReader.read(path: directory.appendingPathComponent("nope.log").path)) { error in
            XCTAssertTrue("\(error)".contains("nope.log"), "\(error)")
            XCTAssertTrue("\(error)".contains("No such file"), "\(error)")
        }
    }

    func testFollowAcrossRotationSeesEveryRecordOnce() throws {
        let log = directory.appendingPathComponent("decisions.log")
        try append(log, line("A1") + line("A2"))
        let follower = try DecisionLogFollower(path: log.path)
        var seen: [String] = []
        func poll() { seen += follower.poll().compactMap(\.record?.id) }
        poll()
        XCTAssertEqual(seen, ["A1", "A2"])
        poll()
        XCTAssertEqual(seen, ["A1", "A2"], "nothing new")

        // Written just before the rotation, not yet polled; then half a line.
        try append(log, line("A3") + String(line("A4").prefix(30)))
        poll()
        XCTAssertEqual(seen, ["A1", "A2", "A3"], "the partial line waits")
        try append(log, String(line("A4").dropFirst(30)) + line("A5"))
        try FileManager.default.moveItem(at: log, to: directory.appendingPathComponent("decisions.log.1"))
        poll()
        XCTAssertEqual(seen, ["A1", "A2", "A3", "A4", "A5"], "old file read to its end while no new file exists")
        try append(directory.appendingPathComponent("decisions.log.1"), line("A6"))
        try append(log, line("B1") + line("B2"))
        poll()
        XCTAssertEqual(seen, ["A1", "A2", "A3", "A4", "A5", "A6", "B1", "B2"])
        try append(log, line("B3"))
        poll()
        poll()

        // A second rotation, with writes straight after it.
        try FileManager.default.moveItem(at: directory.appendingPathComponent("decisions.log.1"),
                                         to: directory.appendingPathComponent("decisions.log.2"))
        try append(log, line("B4"))
        try FileManager.default.moveItem(at: log, to: directory.appendingPathComponent("decisions.log.1"))
        try append(log, line("C1"))
        poll()
        try append(log, line("C2"))
        poll()
        XCTAssertEqual(seen, ["A1", "A2", "A3", "A4", "A5", "A6", "B1", "B2", "B3", "B4", "C1", "C2"])
        XCTAssertEqual(Set(seen).count, seen.count, "each record once")
    }

    func testFollowAfterTruncationStartsOver() throws {
        let log = directory.appendingPathComponent("decisions.log")
        try append(log, line("A1") + line("A2") + line("A3"))
        let follower = try DecisionLogFollower(path: log.path)
        XCTAssertEqual(follower.poll().compactMap(\.record?.id), ["A1", "A2", "A3"])
        let handle = try FileHandle(forWritingTo: log)
        try handle.truncate(atOffset: 0)
        try handle.close()
        XCTAssertEqual(follower.poll(), [])
        try append(log, line("B1"))
        XCTAssertEqual(follower.poll().compactMap(\.record?.id), ["B1"])
        try append(log, line("B2") + line("B3"))
        XCTAssertEqual(follower.poll().compactMap(\.record?.id), ["B2", "B3"])
        // Truncated and rewritten, shorter than before, between two polls (copytruncate).
        let same = try FileHandle(forWritingTo: log)
        try same.truncate(atOffset: 0)
        try same.write(contentsOf: Data(line("C1").utf8))
        try same.close()
        XCTAssertEqual(follower.poll().compactMap(\.record?.id), ["C1"])
        try Data(line("D1").utf8).write(to: log, options: .atomic)  // replaced: a new inode
        XCTAssertEqual(follower.poll().compactMap(\.record?.id), ["D1"])
        try append(log, line("D2"))
        XCTAssertEqual(follower.poll().compactMap(\.record?.id), ["D2"])
    }

    func testFollowWarnsAboutAPartialLineLeftInARotatedFile() throws {
        let log = directory.appendingPathComponent("decisions.log")
        try append(log, line("A1") + "{\"schema\":1,\"ts\"")
        let follower = try DecisionLogFollower(path: log.path)
        XCTAssertEqual(follower.poll().compactMap(\.record?.id), ["A1"])
        try FileManager.default.moveItem(at: log, to: directory.appendingPathComponent("decisions.log.1"))
        try append(log, line("B1"))
        let events = follower.poll()
        XCTAssertEqual(events.compactMap(\.record?.id), ["B1"])
        XCTAssertEqual(events.compactMap(\.warning).count, 1)
        XCTAssertTrue(events.compactMap(\.warning).first?.hasPrefix("skipping line 2: incomplete line") ?? false, "\(events)")
    }
}
