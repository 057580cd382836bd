import NIOCore
import SMTPCore

/// Active health checks of an upstream that is marked down.
public struct UpstreamProbeSettings: Hashable, Sendable {
    /// Time between probes of an upstream marked down, ±`jitter`; zero: no probes.
    public var interval: TimeAmount
    /// The longest each step of a probe (connect, greeting, EHLO, STARTTLS, AUTH) may take.
    public var timeout: TimeAmount
    /// The fraction by which each interval is varied at random, so that instances that saw
    /// the same outage do not probe in step.
    public var jitter: Double

    public init(interval: TimeAmount = .seconds(1), timeout: TimeAmount = .seconds(5), jitter: Double = 0.2) {
        self.interval = interval
        self.timeout = timeout
        self.jitter = jitter
    }

    public static let off = UpstreamProbeSettings(interval: .zero)

    public var isEnabled: Bool { interval > .zero }

    /// One interval with its jitter; `unit` is a random number in 0..<1.
    public func delay(unit: Double) -> TimeAmount {
        let spread = Double(interval.nanoseconds) * jitter * (2 * unit - 1)
        return .nanoseconds(max(0, interval.nanoseconds + Int64(spread)))
    }
}

/// What the pool believes about each upstream, decided without I/O: inputs are the outcomes
/// of connection attempts and probes with the time they happened; outputs are the lines to
/// log and the probes to schedule, which the pool carries out. Times are uptime nanoseconds.
///
/// An upstream is up until a connection attempt fails; then it is down until one succeeds
/// (a client session's or a probe's). While down it is tried after every upstream that is
/// up. Without probes, the mark also lapses `retryAfter` after the last failure, so that
/// traffic tries the upstream in its place again.
public struct UpstreamHealth: Sendable {
    public enum Action: Hashable, Sendable {
        /// The upstream was up and a connection attempt failed.
        case wentDown(upstream: String, failure: UpstreamFailureKind, detail: String)
        /// It is still down; at most once per `reminderInterval`.
        case stillDown(upstream: String, failures: Int, downNanoseconds: UInt64, failure: UpstreamFailureKind, detail: String)
        /// A connection or probe succeeded after an outage.
        case cameBack(upstream: String, outageNanoseconds: UInt64, failures: Int)
        /// Probe upstream `index` after one probe interval, for outage `outage`.
        case probe(index: Int, outage: Int)
    }

    struct Outage: Sendable {
        var id: Int
        var since: UInt64
        var failures: Int
        var lastFailure: UInt64
        var lastReport: UInt64
    }

    struct Entry: Sendable {
        var name: String
        var outage: Outage?
        var lastSuccess: UInt64
    }

    private var entries: [Entry]
    private let retryAfter: UInt64
    private let probing: Bool
    private let reminderInterval: UInt64
    private var outages = 0

    /// `now`: the start, which counts as the last success until there is one.
    public init(names: [String], retryAfter: TimeAmount, probing: Bool, reminderInterval: TimeAmount = .seconds(60), now: UInt64) {
        entries = names.map { Entry(name: $0, outage: nil, lastSuccess: now) }
        self.retryAfter = UInt64(max(retryAfter.nanoseconds, 0))
        self.probing = probing
        self.reminderInterval = UInt64(max(reminderInterval.nanoseconds, 0))
    }

    public var count: Int { entries.count }

    /// Whether the upstream is believed able to take mail.
    public func isUp(_ index: Int, now: UInt64) -> Bool {
        guard let outage = entries[index].outage else { return true }
        return !probing && now >= outage.lastFailure &+ retryAfter
    }

    /// The order to try the upstreams in: those up in configuration order, then the rest.
    public func order(now: UInt64) -> [Int] {
        let up = entries.indices.filter { isUp($0, now: now) }
        return up + entries.indices.filter { !isUp($0, now: now) }
    }

    /// Seconds since the upstream last took a connection or answered (since the start when never).
    public func secondsSinceSuccess(_ index: Int, now: UInt64) -> Double {
        let last = entries[index].lastSuccess
        return now > last ? Double(now - last) / 1e9 : 0
    }

    /// A connection attempt (a client session's or a probe's) failed.
    public mutating func failed(_ index: Int, _ failure: UpstreamFailureKind, detail: String, now: UInt64) -> [Action] {
        let name = entries[index].name
        guard var outage = entries[index].outage else {
            outages += 1
            entries[index].outage = Outage(id: outages, since: now, failures: 1, lastFailure: now, lastReport: now)
            var actions: [Action] = [.wentDown(upstream: name, failure: failure, detail: detail)]
            if probing { actions.append(.probe(index: index, outage: outages)) }
            return actions
        }
        outage.failures += 1
        outage.lastFailure = now
        var actions: [Action] = []
        if now >= outage.lastReport &+ reminderInterval {
            outage.lastReport = now
            actions.append(.stillDown(upstream: name, failures: outage.failures, downNanoseconds: now - outage.since,
                                      failure: failure, detail: detail))
        }
        entries[index].outage = outage
        return actions
    }

    /// A connection attempt succeeded, or the upstream answered a command.
    public mutating func succeeded(_ index: Int, now: UInt64) -> [Action] {
        entries[index].lastSuccess = max(entries[index].lastSuccess, now)
        guard let outage = entries[index].outage else { return [] }
        entries[index].outage = nil
        return [.cameBack(upstream: entries[index].name, outageNanoseconds: now > outage.since ? now - outage.since : 0,
                          failures: outage.failures)]
    }

    /// Whether a probe scheduled for `outage` should still run: the upstream is down in that outage.
    public func shouldProbe(_ index: Int, outage: Int) -> Bool {
        entries[index].outage?.id == outage
    }

    /// A probe for `outage` failed: the failure is recorded and, while the outage lasts, the next probe scheduled.
    public mutating func probeFailed(_ index: Int, outage: Int, _ failure: UpstreamFailureKind, detail: String, now: UInt64) -> [Action] {
        guard entries[index].outage?.id == outage else { return [] }
        var actions = failed(index, failure, detail: detail, now: now)
        actions.append(.probe(index: index, outage: outage))
        return actions
    }
}
