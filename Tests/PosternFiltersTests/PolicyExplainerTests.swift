import PosternMIME
import PosternFilters
import PosternPolicy
import SMTPCore
import XCTest

final class PolicyExplainerTests: XCTestCase {
    private var fixture: PolicyFixture!

    override func setUpWithError() throws { fixture = try PolicyFixture() }
    override func tearDown() { fixture.remove() }

    private func outcomes(_ explanations: [RuleExplanation]) -> [String] {
        explanations.map { explanation in
            switch explanation.outcome {
            case .matched: return "\(explanation.rule): matched\(explanation.decided ? " (decided)" : "")"
            case .notMatched: return "\(explanation.rule): not matched"
            case .skipped(let why): return "\(explanation.rule): skipped (\(why))"
            }
        }
    }

    func testMatchedNotMatchedSkippedAndOff() async throws {
        let policy = try fixture.compile("""
            rules:
              - { id: other-stage, stage: connect, if: { client_ip: 0.0.0.0/0 }, then: reject }
              - { id: miss, stage: mail, if: { sender: x@example.org }, then: reject }
              - { id: disabled, stage: mail, if: { sender: a@example.org }, then: reject, mode: off }
              - { id: go-on, stage: mail, if: { sender: a@example.org }, then: continue }
              - { id: blocked, stage: mail, if: { sender: { domain: example.org } }, then: reject }
              - { id: later, stage: mail, if: { sender: a@example.org }, then: tempfail }
              - { id: later-off, stage: mail, if: { sender: a@example.org }, then: tempfail, mode: off }
            """)
        let explanations = await PolicyExplainer.explain(policy, stage: .mail, facts: facts(sender: "a@example.org"))
        XCTAssertEqual(outcomes(explanations), [
            "miss: not matched",
            "disabled: skipped (mode off)",
            "go-on: matched",
            "blocked: matched (decided)",
            "later: skipped (an earlier rule decided (blocked))",
            "later-off: skipped (mode off)",
        ])
        XCTAssertTrue(explanations.allSatisfy { $0.stage == .mail })
        let blocked = try XCTUnwrap(explanations.first { $0.rule == "blocked" })
        XCTAssertEqual(blocked.outcome, .matched("sender a@example.org matches example.org"))
        XCTAssertEqual(blocked.mode, .enforce)
        XCTAssertEqual(blocked.actionName, "reject")
        XCTAssertEqual(blocked.reply, SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Message refused by policy (ref TXID)"))
        XCTAssertEqual(explanations.first { $0.rule == "go-on" }?.actionName, "continue")
        XCTAssertNil(explanations.first { $0.rule == "go-on" }?.reply)
    }

    func testShadowMatchesAreRecordedButNeverDecide() async throws {
        let policy = try fixture.compile("""
            rules:
              - { id: watch, stage: helo, if: { helo: { is_ip_literal: true } }, then: reject, mode: shadow }
              - { id: watch-too, stage: helo, if: { helo: { is_fqdn: false } }, then: tempfail, mode: shadow }
              - { id: fine, stage: helo, if: { helo: localhost }, then: reject }
            """)
        let explanations = await PolicyExplainer.explain(policy, stage: .helo, facts: facts(helo: "[192.0.2.1]"))
        XCTAssertEqual(outcomes(explanations), ["watch: matched", "watch-too: matched", "fine: not matched"])
        XCTAssertEqual(explanations.map(\.mode), [.shadow, .shadow, .enforce])
        XCTAssertFalse(explanations.contains { $0.decided })
        let stage = await PolicyExplainer.explainStage(policy, stage: .helo, facts: facts(helo: "[192.0.2.1]"))
        XCTAssertEqual(stage.verdict.outcome, .pass)
        XCTAssertEqual(stage.verdict.shadowHits.map(\.rule), ["watch", "watch-too"])
    }

    func testAcceptEndsTheStage() async throws {
        let policy = try fixture.compile("""
            rules:
              - { id: h1, stage: data, if: { tls: false }, then: add_header, header: "X-One: 1" }
              - { id: ok, stage: data, if: { tls: false }, then: accept }
              - { id: never, stage: data, if: { tls: false }, then: reject }
              - { id: never-shadow, stage: data, if: { tls: false }, then: reject, mode: shadow }
            """)
        let stage = await PolicyExplainer.explainStage(policy, stage: .data, facts: facts())
        XCTAssertEqual(outcomes(stage.rules), [
            "h1: matched",
            "ok: matched (decided)",
            "never: skipped (an accept at data ended evaluation)",
            "never-shadow: skipped (an accept at data ended evaluation)",
        ])
        XCTAssertEqual(stage.verdict.outcome, .accept)
        XCTAssertEqual(stage.verdict.headerActions, [.addHeader(name: "X-One", value: "1")])
        XCTAssertNil(stage.rules.first { $0.rule == "ok" }?.reply, "an accept has no reply of its own")
    }

    func testContentRulesSeeTheParsedMessage() async throws {
        let policy = try fixture.compile("""
            rules:
              - { id: invoice, stage: data, if: { subject: { regex: invoice } }, then: add_header, header: "X-Suspect: yes" }
              - { id: exe, stage: data, if: { attachment_name: { regex: '\\.exe$' } }, then: reject }
            """)
        var dataFacts = facts(sender: "a@example.org", size: 100)
        dataFacts.message = MIMEMessage.parse(Array("Subject: Your invoice\r\n\r\nhello\r\n".utf8))
        let explanations = await PolicyExplainer.explain(policy, stage: .data, facts: dataFacts)
        XCTAssertEqual(outcomes(explanations), ["invoice: matched", "exe: not matched"])
        XCTAssertEqual(explanations.first?.outcome, .matched("subject matches /invoice/"))
    }

    func testSkippedListsAWholeStage() throws {
        let policy = try fixture.compile("""
            rules:
              - { id: a, stage: data, if: { subject: { regex: x } }, then: reject }
              - { id: b, stage: data, if: { subject: { regex: x } }, then: reject, mode: off }
              - { id: c, stage: mail, if: { sender: a@example.org }, then: reject }
            """)
        let skipped = PolicyExplainer.skipped(policy, stage: .data, why: "no message given")
        XCTAssertEqual(outcomes(skipped), ["a: skipped (no message given)", "b: skipped (mode off)"])
    }

    /// The explanation and `PolicyEngine.evaluate` agree on every policy and every stage.
    func testAgreesWithTheEngine() async throws {
        let policies = [
            """
            rules:
              - { id: c1, stage: connect, if: { client_ip: 203.0.113.0/24 }, then: reject, mode: shadow }
              - { id: c2, stage: connect, if: { client_ip: 198.51.100.0/24 }, then: tempfail }
              - { id: h1, stage: helo, if: { helo: { is_fqdn: false } }, then: reject }
              - { id: m1, stage: mail, if: { sender: "<>" }, then: accept }
              - { id: m2, stage: mail, if: { sender: { domain: example.org } }, then: reject, reply: "550 5.7.1 No (ref {id}) {sender}" }
              - { id: r1, stage: rcpt, if: { recipient: "postmaster*" }, then: accept }
              - { id: r2, stage: rcpt, if: { recipient: { domain: "*.example.net" } }, then: tempfail }
            """,
            """
            rules:
              - { id: any, stage: mail, if: { any: [ { sender: a@example.org }, { tls: true } ] }, then: continue }
              - { id: not-tls, stage: mail, if: { not: { tls: true } }, then: reject, mode: shadow }
              - { id: all, stage: mail, if: { all: [ { sender: { domain: example.org } }, { helo: client.example } ] }, then: tempfail }
              - { id: off, stage: mail, if: { sender: a@example.org }, then: reject, mode: off }
              - { id: last, stage: mail, if: { sender: b@example.org }, then: reject }
              - { id: size, stage: mail, if: { size: { over: 1MB } }, then: reject }
            """,
            """
            rules:
              - { id: d1, stage: data, if: { size: { over: 10 } }, then: add_header, header: "X-Big: yes" }
              - { id: d2, stage: data, if: { sender: a@example.org }, then: discard }
              - { id: d3, stage: data, if: { sender: b@example.org }, then: accept }
              - { id: d4, stage: data, if: { size: { over: 5 } }, then: add_header, header: "X-Bigger: yes" }
            """,
        ]
        let cases: [TransactionFacts] = [
            facts(),
            facts(client: "198.51.100.7", helo: "localhost"),
            facts(helo: "localhost", sender: "a@example.org", recipient: "postmaster", size: 20),
            facts(tls: true, sender: "<>", recipient: "x@mx.example.net", size: 2_000_000),
            facts(sender: "b@example.org", recipient: "x@example.net", size: 3),
            facts(client: "2001:db8::1", sender: "c@other.example", size: 8),
        ]
        var compared = 0
        for (index, yaml) in policies.enumerated() {
            let policy = try fixture.compile(yaml, file: "policy\(index).yaml")
            for facts in cases {
                for stage in PolicyStage.allCases {
                    let verdict = await PolicyEngine.evaluate(policy, stage: stage, facts: facts)
                    let explained = await PolicyExplainer.explainStage(policy, stage: stage, facts: facts)
                    let rules = explained.rules
                    let context = "policy \(index), stage \(stage), facts \(facts.sender.map { "\($0)" } ?? "-")"
                    XCTAssertEqual(rules.map(\.rule), policy.rules.filter { $0.stage == stage }.map(\.id), context)
                    let decider = rules.first { $0.decided }
                    XCTAssertEqual(rules.filter(\.decided).count, decider == nil ? 0 : 1, context)
                    XCTAssertEqual(decider?.rule, verdict.rule, context)
                    XCTAssertEqual(explained.verdict.rule, verdict.rule, context)
                    XCTAssertEqual(explained.verdict.outcome, verdict.outcome, context)
                    XCTAssertEqual(explained.verdict.headerActions, verdict.headerActions, context)
                    XCTAssertEqual(explained.verdict.shadowHits, verdict.shadowHits, context)
                    switch verdict.outcome {
                    case .pass: XCTAssertNil(decider, context)
                    case .accept: XCTAssertEqual(decider?.action, .accept, context)
                    case .decided(let action, let reply):
                        XCTAssertEqual(decider?.action, action, context)
                        XCTAssertEqual(decider?.reply, reply, context)
                    }
                    // Shadow hits and header actions are exactly the matched shadow and header rules.
                    XCTAssertEqual(rules.filter { $0.mode == .shadow && $0.matched }.map(\.rule), verdict.shadowHits.map(\.rule), context)
                    XCTAssertEqual(rules.filter { $0.mode == .enforce && $0.matched && !$0.action.isDecisive && $0.action != .continue }.map(\.action),
                                   verdict.headerActions, context)
                    // Nothing after the decider was evaluated.
                    if let decider, let position = rules.firstIndex(of: decider) {
                        XCTAssertTrue(rules[(position + 1)...].allSatisfy { if case .skipped = $0.outcome { return true } else { return false } }, context)
                    }
                    if verdict.rule != nil { compared += 1 }
                }
            }
        }
        XCTAssertGreaterThan(compared, 8, "the cases should exercise decisions, not only passes")
    }
}
