import Foundation
import PosternLog
@testable import PosternServer
import Synchronization
import XCTest

/// `DecisionFeed`: what the dashboard shows, on a clock the test sets.
final class DecisionFeedTests: XCTestCase {
    /// The test's wall clock, in milliseconds.
    private final class Clock: Sendable {
        let now = Mutex<Int64>(1_796_515_200_000)
    }

    private let clock = Clock()

    private func feed(_ privacy: DecisionLogPrivacy = DecisionLogPrivacy()) -> DecisionFeed {
        DecisionFeed(privacy: privacy, now: { [clock] in clock.now.withLock { $0 } })
    }

    private func record(_ id: String, decision: DecisionRecord.Decision = .accepted, rule: String? = nil, sender: String = "a@client.example",
                        client: String = "203.0.113.7", checks: [DecisionRecord.Check] = [], lists: [DecisionRecord.DNSListEntry] = [],
                        shadow: [DecisionRecord.Shadow] = []) -> DecisionRecord {
        DecisionRecord(timestamp: clock.now.withLock { $0 }, id: id, session: "S", client: .init(ip: client, port: 1, country: "NL", dnsLists: lists),
                       mailFrom: sender, decision: decision, stage: decision == .accepted ? .data : .mail, rule: rule, shadow: shadow,
                       checks: checks, timings: .init(total: 0, filters: 0, upstream: 0))
    }

    private func advance(seconds: Int64) { clock.now.withLock { $0 += seconds * 1000 } }

    func testCountsTopsEnginesAndListsOverTheirWindows() throws {
        let feed = feed()
        feed.publish(record("T1", checks: [.init(check: "rspamd", stage: "data", result: "pass", detail: "", milliseconds: 12)]))
        feed.publish(record("T2", decision: .rejected, rule: "blocked", sender: "x@spam.example",
                            checks: [.init(check: "rspamd", stage: "data", result: "timeout", detail: "", milliseconds: 30)],
                            lists: [.init(name: "zen", result: "listed", detail: "127.0.0.2", weight: 1)],
                            shadow: [.init(rule: "helo-not-fqdn", action: "reject")]))
        advance(seconds: 1)
        feed.publish(record("T3", decision: .tempfailed, rule: "blocked", sender: "x@spam.example", client: "198.51.100.1",
                            lists: [.init(name: "zen", result: "error", detail: "timeout", weight: 0)]))
        var summary = feed.summary()
        let perSecond = try XCTUnwrap(summary["per_second"] as? [[String: Any]])
        XCTAssertEqual(perSecond.count, 600)
        XCTAssertEqual(perSecond[598]["accepted"] as? Int, 1)
        XCTAssertEqual(perSecond[598]["rejected"] as? Int, 1)
        XCTAssertEqual(perSecond[599]["tempfailed"] as? Int, 1)
        var hour = try XCTUnwrap(summary["last_hour"] as? [String: Any])
        XCTAssertEqual(hour["decisions"] as? [String: Int], ["accepted": 1, "rejected": 1, "tempfailed": 1])
        XCTAssertEqual((hour["rules"] as? [[String: Any]])?.map { "\($0["name"]!)=\($0["count"]!)" }, ["blocked=2"])
        XCTAssertEqual((hour["senders"] as? [[String: Any]])?.map { "\($0["name"]!)=\($0["count"]!)" }, ["x@spam.example=2"])
        XCTAssertEqual((hour["clients"] as? [[String: Any]])?.map { "\($0["name"]!)=\($0["count"]!)" }, ["198.51.100.1=1", "203.0.113.7=1"])
        XCTAssertEqual((hour["countries"] as? [[String: Any]])?.map { "\($0["name"]!)=\($0["count"]!)" }, ["NL=2"])
        XCTAssertEqual((hour["shadow"] as? [[String: Any]])?.map { "\($0["name"]!)=\($0["count"]!)" }, ["helo-not-fqdn=1"])
        let engine = try XCTUnwrap((hour["engines"] as? [[String: Any]])?.first)
        XCTAssertEqual(engine["name"] as? String, "rspamd")
        XCTAssertEqual(engine["answers"] as? Int, 2)
        XCTAssertEqual(engine["failures"] as? Int, 1)
        XCTAssertEqual(engine["mean_ms"] as? Int, 21)
        let list = try XCTUnwrap((hour["dns_lists"] as? [[String: Any]])?.first)
        XCTAssertEqual(list["listed"] as? Int, 1)
        XCTAssertEqual(list["errors"] as? Int, 1)

        // Ten minutes on, the per-second counts have gone; the hour still counts them.
        advance(seconds: 600)
        summary = feed.summary()
        XCTAssertFalse((summary["per_second"] as? [[String: Any]] ?? []).contains { $0.count > 1 })
        hour = try XCTUnwrap(summary["last_hour"] as? [String: Any])
        XCTAssertEqual(hour["decisions"] as? [String: Int], ["accepted": 1, "rejected": 1, "tempfailed": 1])
        // An hour on, so have those.
        advance(seconds: 3600)
        feed.publish(record("T4"))
        hour = try XCTUnwrap(feed.summary()["last_hour"] as? [String: Any])
        XCTAssertEqual(hour["decisions"] as? [String: Int], ["accepted": 1])
        XCTAssertEqual((hour["rules"] as? [Any])?.count, 0)
    }

    func testSubscribersGetTheLatestThenEachNewRecordUnderThePrivacySettings() {
        let feed = feed(DecisionLogPrivacy(localParts: .hashed, salt: "s"))
        for index in 0..<60 { feed.publish(record("R\(index)")) }
        let lines = Mutex<[String]>([])
        let key = feed.subscribe { line in lines.withLock { $0.append(line) } }
        XCTAssertEqual(lines.withLock { $0.count }, 50, "the latest 50")
        XCTAssertTrue(lines.withLock { $0.first?.contains("\"id\":\"R10\"") ?? false })
        feed.publish(record("NEW"))
        XCTAssertTrue(lines.withLock { $0.last?.contains("\"id\":\"NEW\"") ?? false })
        XCTAssertFalse(lines.withLock { $0.last?.contains("a@client.example") ?? true }, "the local part is hashed, as in the log")
        XCTAssertTrue(lines.withLock { $0.last?.contains("@client.example") ?? false })
        XCTAssertFalse(lines.withLock { $0.last?.hasSuffix("\n") ?? true }, "one line, no newline")
        XCTAssertEqual(feed.subscriberCount, 1)
        feed.unsubscribe(key)
        feed.publish(record("AFTER"))
        XCTAssertEqual(lines.withLock { $0.count }, 51)
        XCTAssertEqual(feed.subscriberCount, 0)
    }
}
