import PosternPolicy
import SMTPCore
import XCTest

final class PolicyEngineTests: XCTestCase {
    private var fixture: PolicyFixture!

    override func setUpWithError() throws { fixture = try PolicyFixture() }
    override func tearDown() { fixture.remove() }

    func testFirstDecisiveRuleWinsAndShadowNeverDecides() async throws {
        let policy = try fixture.compile("""
            rules:
              - { id: shadowed, stage: mail, if: { sender: a@example.org }, then: reject, mode: shadow }
              - { id: off, stage: mail, if: { sender: a@example.org }, then: reject, mode: off }
              - { id: go-on, stage: mail, if: { sender: a@example.org }, then: continue }
              - { id: first, stage: mail, if: { sender: a@example.org }, then: tempfail }
              - { id: second, stage: mail, if: { sender: a@example.org }, then: reject }
            """)
        let verdict = await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(sender: "a@example.org"))
        XCTAssertEqual(verdict.rule, "first")
        XCTAssertEqual(verdict.shadowHits.map(\.rule), ["shadowed"])
        XCTAssertEqual(verdict.shadowHits.first?.action, "reject")
        guard case .decided(.tempfail, let reply) = verdict.outcome else { return XCTFail("\(verdict.outcome)") }
        XCTAssertEqual(reply.code, 451)
        XCTAssertEqual(reply.enhanced, EnhancedStatusCode(4, 7, 1))
        XCTAssertFalse(reply.text.contains("first"), "default texts never name the rule")
        XCTAssertTrue(reply.text.contains("TXID"), "but carry the transaction id")
    }

    func testDefaultRepliesByStage() async throws {
        let policy = try fixture.compile("""
            rules:
              - { id: c, stage: connect, if: { client_ip: 203.0.113.0/24 }, then: reject }
              - { id: m, stage: mail, if: { sender: a@example.org }, then: reject }
            """)
        let connect = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts())
        XCTAssertEqual(connect.outcome, .decided(.reject, SMTPReply(554, EnhancedStatusCode(5, 7, 1), "Service refused (ref TXID)")))
        let mail = await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(sender: "a@example.org"))
        XCTAssertEqual(mail.outcome, .decided(.reject, SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Message refused by policy (ref TXID)")))
    }

    func testAcceptStopsAndHeaderActionsAccumulate() async throws {
        let policy = try fixture.compile("""
            rules:
              - { id: h1, stage: data, if: { tls: false }, then: add_header, header: "X-One: 1" }
              - { id: h2, stage: data, if: { tls: false }, then: add_header, header: "X-Two: 2" }
              - { id: ok, stage: data, if: { tls: false }, then: accept }
              - { id: never, stage: data, if: { tls: false }, then: reject }
            """)
        let verdict = await PolicyEngine.evaluate(policy, stage: .data, facts: facts())
        XCTAssertEqual(verdict.outcome, .accept)
        XCTAssertEqual(verdict.rule, "ok")
        XCTAssertEqual(verdict.headerActions, [.addHeader(name: "X-One", value: "1"), .addHeader(name: "X-Two", value: "2")])
    }

    func testNoMatchPasses() async throws {
        let policy = try fixture.compile("rules:\n  - { id: r, stage: mail, if: { sender: x@example.org }, then: reject }\n")
        let verdict = await PolicyEngine.evaluate(policy, stage: .mail, facts(sender: "y@example.org"))
        XCTAssertEqual(verdict.outcome, .pass)
        XCTAssertNil(verdict.rule)
    }
}

private extension PolicyEngine {
    static func evaluate(_ policy: Policy, stage: PolicyStage, _ facts: TransactionFacts) async -> PolicyVerdict {
        await evaluate(policy, stage: stage, facts: facts)
    }
}
