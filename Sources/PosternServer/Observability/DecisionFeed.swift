import Foundation
import PosternLog
import Synchronization

/// What the dashboard shows of the decisions: the latest records, decisions per second over
/// the last ten minutes, and the last hour's top refused clients, countries, senders and
/// rules and shadow hits. Every record passes through `publish` (a lock and a few counts);
/// JSON is made only for the page's subscribers and requests.
public final class DecisionFeed: Sendable {
    /// Records kept for a page that connects.
    static let latestKept = 50
    /// Seconds of per-second counts kept.
    static let secondsKept = 600
    /// Minutes of top counts kept.
    static let minutesKept = 60

    /// The decision log's privacy options (a configuration reload may change them: ``setPrivacy(_:)``).
    private let privacy: Mutex<DecisionLogPrivacy>
    private let state = Mutex(State())
    /// The wall clock in milliseconds (a test sets its own).
    private let now: @Sendable () -> Int64

    /// One subscriber of the event stream: called with each record's JSON line, on the
    /// publisher's thread; it must not block.
    public typealias Subscriber = @Sendable (String) -> Void

    struct State {
        var latest: [DecisionRecord] = []
        /// Per second: the second and each decision's count.
        var seconds: [(second: Int64, counts: [String: Int])] = []
        /// Per minute: refusals by client, country, sender, rule; shadow hits by rule.
        var minutes: [(minute: Int64, tops: Tops)] = []
        var subscribers: [Int: Subscriber] = [:]
        var nextSubscriber = 0
    }

    struct Tops {
        var clients: [String: Int] = [:]
        var countries: [String: Int] = [:]
        var senders: [String: Int] = [:]
        var rules: [String: Int] = [:]
        var shadow: [String: Int] = [:]
        var decisions: [String: Int] = [:]
        /// Per check (milter, policy server, SPF): answers by result, and their milliseconds.
        var checks: [String: [String: Int]] = [:]
        var checkMilliseconds: [String: Int] = [:]
        /// Per DNS list: the records where it listed the client or failed.
        var lists: [String: [String: Int]] = [:]

        mutating func add(_ other: Tops) {
            checks.merge(other.checks) { $0.merging($1, uniquingKeysWith: +) }
            checkMilliseconds.merge(other.checkMilliseconds, uniquingKeysWith: +)
            lists.merge(other.lists) { $0.merging($1, uniquingKeysWith: +) }
            clients.merge(other.clients, uniquingKeysWith: +)
            countries.merge(other.countries, uniquingKeysWith: +)
            senders.merge(other.senders, uniquingKeysWith: +)
            rules.merge(other.rules, uniquingKeysWith: +)
            shadow.merge(other.shadow, uniquingKeysWith: +)
            decisions.merge(other.decisions, uniquingKeysWith: +)
        }
    }

    public init(privacy: DecisionLogPrivacy = DecisionLogPrivacy(), now: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }) {
        self.privacy = Mutex(privacy)
        self.now = now
    }

    /// A configuration reload's privacy options, for the records published from now on.
    public func setPrivacy(_ privacy: DecisionLogPrivacy) {
        self.privacy.withLock { $0 = privacy }
    }

    /// A record, as the decision log gets it.
    public func publish(_ original: DecisionRecord) {
        let record = privacy.withLock { $0 }.apply(to: original)
        let second = record.timestamp / 1000
        let minute = second / 60
        let refused = record.decision == .rejected || record.decision == .tempfailed
        let subscribers = state.withLock { state -> [Subscriber] in
            state.latest.append(record)
            if state.latest.count > Self.latestKept { state.latest.removeFirst(state.latest.count - Self.latestKept) }
            if state.seconds.last?.second != second { state.seconds.append((second, [:])) }
            state.seconds[state.seconds.count - 1].counts[record.decision.rawValue, default: 0] += 1
            if let first = state.seconds.first, first.second <= second - Int64(Self.secondsKept) {
                state.seconds.removeAll { $0.second <= second - Int64(Self.secondsKept) }
            }
            if state.minutes.last?.minute != minute { state.minutes.append((minute, Tops())) }
            let last = state.minutes.count - 1
            state.minutes[last].tops.decisions[record.decision.rawValue, default: 0] += 1
            if refused {
                state.minutes[last].tops.clients[record.client.ip, default: 0] += 1
                if let country = record.client.country { state.minutes[last].tops.countries[country, default: 0] += 1 }
                if let sender = record.mailFrom { state.minutes[last].tops.senders[sender.isEmpty ? "<>" : sender, default: 0] += 1 }
                state.minutes[last].tops.rules[record.rule ?? (record.stage == .rcpt ? "relay control or upstream" : "upstream or defence"), default: 0] += 1
            }
            for hit in record.shadow { state.minutes[last].tops.shadow[hit.rule, default: 0] += 1 }
            for check in record.checks {
                state.minutes[last].tops.checks[check.check, default: [:]][check.result, default: 0] += 1
                state.minutes[last].tops.checkMilliseconds[check.check, default: 0] += check.milliseconds
            }
            for list in record.client.dnsLists {
                state.minutes[last].tops.lists[list.name, default: [:]][list.result, default: 0] += 1
            }
            if let first = state.minutes.first, first.minute <= minute - Int64(Self.minutesKept) {
                state.minutes.removeAll { $0.minute <= minute - Int64(Self.minutesKept) }
            }
            return Array(state.subscribers.values)
        }
        guard !subscribers.isEmpty else { return }
        let line = Self.trimmed(record.jsonLine())
        for subscriber in subscribers { subscriber(line) }
    }

    /// Adds a subscriber; it first gets the latest records, oldest first. Returns its key.
    public func subscribe(_ subscriber: @escaping Subscriber) -> Int {
        let (key, latest) = state.withLock { state -> (Int, [DecisionRecord]) in
            state.nextSubscriber += 1
            state.subscribers[state.nextSubscriber] = subscriber
            return (state.nextSubscriber, state.latest)
        }
        for record in latest { subscriber(Self.trimmed(record.jsonLine())) }
        return key
    }

    public func unsubscribe(_ key: Int) {
        _ = state.withLock { $0.subscribers.removeValue(forKey: key) }
    }

    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    private static func trimmed(_ line: String) -> String {
        line.hasSuffix("\n") ? String(line.dropLast()) : line
    }

    /// The page's numbers, as one JSON object: `per_second` (the last ten minutes, each
    /// second's counts by decision), `last_hour` (counts by decision, the top refused
    /// `clients`, `countries`, `senders`, `rules`, and `shadow` hits by rule, at most 10 each;
    /// `engines`: each check's answers by result and mean time; `dns_lists`: each list's
    /// listings and errors).
    public func summary() -> [String: Any] {
        let nowSecond = now() / 1000
        let (seconds, minutes) = state.withLock { ($0.seconds, $0.minutes) }
        var perSecond: [[String: Any]] = []
        let counted = Dictionary(seconds.map { ($0.second, $0.counts) }, uniquingKeysWith: { first, _ in first })
        for second in (nowSecond - Int64(Self.secondsKept) + 1)...nowSecond {
            var entry: [String: Any] = ["t": second]
            for (decision, count) in counted[second] ?? [:] { entry[decision] = count }
            perSecond.append(entry)
        }
        var hour = Tops()
        for entry in minutes where entry.minute > nowSecond / 60 - Int64(Self.minutesKept) { hour.add(entry.tops) }
        func top(_ counts: [String: Int]) -> [[String: Any]] {
            counts.sorted { ($1.value, $0.key) < ($0.value, $1.key) }.prefix(10).map { ["name": $0.key, "count": $0.value] }
        }
        return [
            "per_second": perSecond,
            "last_hour": [
                "decisions": hour.decisions, "clients": top(hour.clients), "countries": top(hour.countries),
                "senders": top(hour.senders), "rules": top(hour.rules), "shadow": top(hour.shadow),
                "engines": hour.checks.keys.sorted().map { name -> [String: Any] in
                    let results = hour.checks[name] ?? [:]
                    let answers = results.values.reduce(0, +)
                    let failures = (results["error"] ?? 0) + (results["timeout"] ?? 0)
                    return ["name": name, "answers": answers, "failures": failures, "results": results,
                            "mean_ms": answers == 0 ? 0 : (hour.checkMilliseconds[name] ?? 0) / answers]
                },
                "dns_lists": hour.lists.keys.sorted().map { name -> [String: Any] in
                    ["name": name, "listed": hour.lists[name]?["listed"] ?? 0, "errors": hour.lists[name]?["error"] ?? 0]
                },
            ] as [String: Any],
        ]
    }
}
