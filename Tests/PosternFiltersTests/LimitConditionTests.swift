import Foundation
@testable import PosternFilters
import PosternPolicy
import SMTPCore
import Synchronization
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

    /// A shared store that is down and configured to fail closed (it throws
    /// `storeUnavailable`): 451 4.7.1 whatever the rule's action, and nothing remembered.
    private final class UnavailableStore: RateLimitStore {
        let calls = Mutex(0)
        func consume(key: String, cost: Int, spec: RateLimitSpec) async throws -> RateLimitDecision {
            calls.withLock { $0 += 1 }
            throw RateLimitError.storeUnavailable("redis: timed out")
        }
    }

    /// Any other store error fails open, silently (the store reports its own failures).
    private struct BrokenStore: RateLimitStore {
        func consume(key: String, cost: Int, spec: RateLimitSpec) async throws -> RateLimitDecision {
            throw RateLimitError.negativeCost(cost)
        }
    }

    private func compile(_ yaml: String, store: any RateLimitStore) throws -> Policy {
        try yaml.write(toFile: fixture.directory + "/limits.yaml", atomically: true, encoding: .utf8)
        return try BuiltinFilters.compiler(rateLimitStore: store).compile(path: fixture.directory + "/limits.yaml")
    }

    func testFailClosedStoreGivesTempfailWhateverTheAction() async throws {
        for action in ["reject", "tempfail", "accept", "continue"] {
            let store = UnavailableStore()
            let policy = try compile("""
                limits:
                  per_sender: { key: sender, count: messages, rate: 3/1m }
                rules:
                  - { id: throttle, stage: rcpt, if: { limit: per_sender }, then: \(action) }
                  - { id: later, stage: rcpt, if: { sender: "a@example.org" }, then: reject }
                """, store: store)
            let verdict = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(1, recipient: "b@example.net"))
            guard case .decided(.tempfail, let reply) = verdict.outcome else { XCTFail("\(action): \(verdict.outcome)"); continue }
            XCTAssertEqual(reply.code, 451, action)
            XCTAssertEqual(reply.enhanced, EnhancedStatusCode(4, 7, 1), action)
            XCTAssertTrue(reply.text.hasPrefix("Rate limit store unavailable"), reply.text)
            XCTAssertEqual(verdict.rule, "throttle", action)
            XCTAssertEqual(verdict.reason, "limit per_sender: rate limit store unavailable")
            // Not remembered for the transaction: the next recipient asks the store again.
            _ = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(1, recipient: "c@example.net"))
            XCTAssertEqual(store.calls.withLock { $0 }, 2, action)
        }
    }

    func testFailClosedStoreInShadowModeAndCombinators() async throws {
        let shadow = try compile("""
            limits:
              l: { key: sender, count: messages, rate: 3/1m }
            rules:
              - { id: s, stage: rcpt, mode: shadow, if: { limit: l }, then: reject }
            """, store: UnavailableStore())
        let shadowVerdict = await PolicyEngine.evaluate(shadow, stage: .rcpt, facts: transaction(1, recipient: "b@example.net"))
        XCTAssertEqual(shadowVerdict.outcome, .pass, "a shadow rule never changes the outcome")
        XCTAssertEqual(shadowVerdict.shadowHits.map(\.rule), ["s"])

        // not(unknown) is unknown; any(unknown, true) is true; all(unknown, false) is false.
        let cases: [(String, PolicyVerdict.Outcome?)] = [
            ("{ not: { limit: l } }", nil),
            ("{ any: [ { limit: l }, { sender: \"a@example.org\" } ] }", .decided(.reject, SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Message refused by policy (ref T1)"))),
            ("{ any: [ { limit: l }, { sender: \"z@example.org\" } ] }", nil),
            ("{ all: [ { limit: l }, { sender: \"z@example.org\" } ] }", .pass),
            ("{ all: [ { limit: l }, { sender: \"a@example.org\" } ] }", nil),
        ]
        for (condition, expected) in cases {
            let policy = try compile("""
                limits:
                  l: { key: sender, count: messages, rate: 3/1m }
                rules:
                  - { id: r, stage: rcpt, if: \(condition), then: reject }
                """, store: UnavailableStore())
            let verdict = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(1, recipient: "b@example.net"))
            if let expected {
                XCTAssertEqual(verdict.outcome, expected, condition)
            } else {
                guard case .decided(.tempfail, let reply) = verdict.outcome else { XCTFail("\(condition): \(verdict.outcome)"); continue }
                XCTAssertEqual(reply.code, 451, condition)
            }
        }
    }

    func testOtherStoreErrorsFailOpen() async throws {
        let policy = try compile("""
            limits:
              l: { key: sender, count: messages, rate: 3/1m }
            rules:
              - { id: r, stage: rcpt, if: { limit: l }, then: reject }
            """, store: BrokenStore())
        let verdict = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(1, recipient: "b@example.net"))
        XCTAssertEqual(verdict.outcome, .pass)
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
    /// The outcome ring: at most `capacity` keys, the oldest forgotten first; recording a
    /// key it holds updates it without taking a new place.
    func testRecentOutcomesForgetTheOldestFirst() {
        var outcomes = RecentOutcomes<Int>(capacity: 3)
        for (index, key) in ["a", "b", "c"].enumerated() { outcomes.record(index, for: key) }
        XCTAssertEqual(["a", "b", "c"].map { outcomes[$0] }, [0, 1, 2])
        outcomes.record(3, for: "d")
        XCTAssertNil(outcomes["a"], "the oldest goes first")
        XCTAssertEqual(["b", "c", "d"].map { outcomes[$0] }, [1, 2, 3])
        outcomes.record(10, for: "b")
        XCTAssertEqual(outcomes.count, 3)
        XCTAssertEqual(outcomes["b"], 10, "a key held is updated in place")
        XCTAssertEqual(outcomes["c"], 2, "updating a key forgets nothing")
        outcomes.record(4, for: "e")
        XCTAssertNil(outcomes["b"], "an updated key keeps its age")
        XCTAssertEqual(["c", "d", "e"].map { outcomes[$0] }, [2, 3, 4])
        for number in 0..<1000 { outcomes.record(number, for: "k\(number)") }
        XCTAssertEqual(outcomes.count, 3)
        XCTAssertEqual(["k997", "k998", "k999"].map { outcomes[$0] }, [997, 998, 999])
    }

    /// Counts the store's calls; always allows.
    private final class CountingStore: RateLimitStore {
        let calls = Mutex(0)
        func consume(key: String, cost: Int, spec: RateLimitSpec) async throws -> RateLimitDecision {
            calls.withLock { $0 += 1 }
            return try await InMemoryRateLimitStore().consume(key: key, cost: cost, spec: spec)
        }
    }

    /// A `messages` limit remembers the last 10,000 transactions: a remembered one is not
    /// counted again; the oldest is forgotten first, and is counted again if it comes back.
    func testMessagesLimitRemembersTheLastTenThousandTransactions() async throws {
        XCTAssertEqual(LimitCondition.rememberedTransactions, 10_000)
        let store = CountingStore()
        let policy = try compile("""
            limits:
              l: { key: sender, count: messages, rate: 1000000/1h, burst: 1000000 }
            rules:
              - { id: r, stage: rcpt, if: { limit: l }, then: tempfail }
            """, store: store)
        func evaluate(_ number: Int) async {
            _ = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: transaction(number, recipient: "b@example.net"))
        }
        var counted: Int { store.calls.withLock { $0 } }
        for number in 0..<10_000 { await evaluate(number) }
        XCTAssertEqual(counted, 10_000)
        await evaluate(0)
        await evaluate(9_999)
        XCTAssertEqual(counted, 10_000, "all 10,000 are remembered")
        await evaluate(10_000)
        XCTAssertEqual(counted, 10_001)
        await evaluate(1)
        XCTAssertEqual(counted, 10_001, "the second oldest is still remembered")
        await evaluate(0)
        XCTAssertEqual(counted, 10_002, "the oldest was forgotten: it is counted again")
        await evaluate(2)
        XCTAssertEqual(counted, 10_002)
        await evaluate(1)
        XCTAssertEqual(counted, 10_003, "coming back took the place of the next oldest")
    }
}
