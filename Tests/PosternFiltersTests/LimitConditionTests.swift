import Foundation
import PosternFilters
import PosternPolicy
import SMTPCore
import XCTest

final class LimitConditionTests: XCTestCase {
    private var fixture: PolicyFixture!
    private let clock = ManualRateLimitClock()

    override func setUpWithError() throws { fixture = try PolicyFixture() }
    override func tearDown() { fixture.remove() }

    private func compile(_ yaml: String) throws -> Policy {
        try yaml.write(toFile: fixture.directory + "/limits.yaml", atomically: true, encoding: .utf8)
        let compiler = BuiltinFilters.compiler(rateLimitStore: InMemoryRateLimitStore(clock: clock))
        return try compiler.compile(path: fixture.directory + "/limits.yaml")
    }

    private func transaction(_ number: Int, sender: String = "a@example.org", recipient: String? = nil) -> TransactionFacts {
        var result = facts(sender: sender, recipient: recipient)
        result.transactionID = "T\(number)"
        return result
    }

    func testMessagesPerSenderAreExactAndRecoverOnSchedule() async throws {
        let policy = try compile("""
            limits:
              per_sender: { key: sender, count: messages, rate: 3/1m, burst: 0 }
            rules:
              - { id: throttle, stage: rcpt, if: { limit: per_sender }, then: tempfail }
            """)
        for number in 1...3 {
            // Two recipients in one transaction count one message.
            for recipient in ["b@example.net", "c@example.net"] {
                let verdict = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(number, recipient: recipient))
                XCTAssertEqual(verdict.outcome, .pass, "message \(number)")
            }
        }
        let fourth = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(4, recipient: "b@example.net"))
        guard case .decided(.tempfail, let reply) = fourth.outcome else { return XCTFail("\(fourth.outcome)") }
        XCTAssertEqual(reply.code, 450)
        XCTAssertEqual(reply.enhanced, EnhancedStatusCode(4, 7, 1))
        XCTAssertTrue(fourth.reason?.contains("limit per_sender (3/1m) reached for a@example.org") ?? false, fourth.reason ?? "")
        let again = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(4, recipient: "c@example.net"))
        XCTAssertEqual(again.rule, "throttle", "the same transaction gets the same answer")
        let other = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(5, sender: "z@example.org", recipient: "b@example.net"))
        XCTAssertEqual(other.outcome, .pass, "another sender has its own count")
        clock.advance(by: .seconds(19))
        let verdict1 = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(6, recipient: "b@example.net"))
        XCTAssertEqual(verdict1.rule, "throttle")
        clock.advance(by: .seconds(1))
        let verdict2 = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(7, recipient: "b@example.net"))
        XCTAssertEqual(verdict2.outcome, .pass,
                       "one message every 20 s comes back")
    }

    func testRecipientsAndNetworks() async throws {
        let policy = try compile("""
            limits:
              per_net: { key: client_net, count: recipients, rate: 2/1h }
            rules:
              - { id: fanout, stage: rcpt, if: { limit: per_net }, then: tempfail, reply: "452 4.5.3 Too many recipients from your network" }
            """)
        var result = facts(client: "203.0.113.9", sender: "a@example.org", recipient: "b@example.net")
        let verdict3 = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: result)
        XCTAssertEqual(verdict3.outcome, .pass)
        result.clientAddress = IPAddress("203.0.113.200")!
        let verdict4 = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: result)
        XCTAssertEqual(verdict4.outcome, .pass)
        let third = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: result)
        XCTAssertEqual(third.outcome, .decided(.tempfail, SMTPReply(452, EnhancedStatusCode(4, 5, 3), "Too many recipients from your network")))
        result.clientAddress = IPAddress("198.51.100.1")!
        let verdict5 = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: result)
        XCTAssertEqual(verdict5.outcome, .pass, "another /24")
    }

    func testLimitErrors() {
        XCTAssertEqual(fixture.errors("""
            limits:
              a: { key: client_ip, count: connections, rate: 10/1m }
              b: { key: frob, count: lunches, rate: lots }
            rules:
              - { id: r1, stage: rcpt, if: { limit: a }, then: tempfail }
              - { id: r2, stage: mail, if: { limit: nope }, then: tempfail }
            """), [
                "policy.yaml:3:13: key must be one or more of client_ip, client_net, sender, sender_domain, recipient, recipient_domain, auth_user, country joined by +",
                "policy.yaml:3:26: count must be connections, messages, recipients or bytes",
                "policy.yaml:3:41: rate must be COUNT/PERIOD, e.g. 100/1h, 10/1m, 5/30s",
                "policy.yaml:5:32: limit 'a' counts connections: it runs at stage connect",
                "policy.yaml:6:41: unknown limit 'nope' (defined: a)",
            ])
    }
}
