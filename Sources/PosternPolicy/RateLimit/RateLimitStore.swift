import Synchronization

/// The answer to one ``RateLimitStore/consume(key:cost:spec:)``.
public struct RateLimitDecision: Hashable, Sendable, CustomStringConvertible {
    /// Whether the request fits. When true, its cost has been consumed; when false,
    /// nothing was consumed.
    public var allowed: Bool
    /// On refusal: how long until the same request would be allowed (assuming nothing
    /// else consumes the key meanwhile). `nil` when allowed, or when the request can never
    /// fit (its cost exceeds `rate + burst`).
    public var retryAfter: Duration?
    /// How many more cost-1 events the key would allow right now, after this decision.
    /// `nil` when the store does not know (a fail-open decision for an untracked key).
    public var remaining: Int?

    public init(allowed: Bool, retryAfter: Duration? = nil, remaining: Int? = nil) {
        self.allowed = allowed
        self.retryAfter = retryAfter
        self.remaining = remaining
    }

    public var description: String {
        var text = allowed ? "allowed" : "refused"
        if let retryAfter { text += " retry_after=\(retryAfter)" }
        if let remaining { text += " remaining=\(remaining)" }
        return text
    }
}

/// Errors a store may throw.
public enum RateLimitError: Error, Hashable, Sendable {
    /// The cost was negative.
    case negativeCost(Int)
    /// A shared store could not be reached or answered badly (later: Redis).
    case storeUnavailable(String)
}

/// Where the GCRA state (one theoretical arrival time per key) lives.
///
/// `async throws` because a shared store (Redis, a later issue) does network I/O and can
/// fail; the caller decides whether a failing store fails open or closed. The in-memory
/// store never suspends and only throws for a negative cost.
///
/// Keys are opaque strings; build them with ``RateLimitKey`` so that each limit has its
/// own namespace. The same key must always be used with the same spec (a spec change on
/// policy reload is harmless: the stored TAT is a time, and is simply judged by the new
/// spec).
public protocol RateLimitStore: Sendable {
    /// Charges `cost` units against `key` under `spec` at the store's current time.
    ///
    /// - `cost == 0` consumes nothing and reports the current state (a peek).
    /// - `cost < 0` throws ``RateLimitError/negativeCost(_:)``.
    /// - A refused request consumes nothing.
    /// See ``RateLimitSpec`` for the exact formula.
    func consume(key: String, cost: Int, spec: RateLimitSpec) async throws -> RateLimitDecision
}

extension RateLimitStore {
    /// Charges one event.
    public func consume(key: String, spec: RateLimitSpec) async throws -> RateLimitDecision {
        try await consume(key: key, cost: 1, spec: spec)
    }
}

// MARK: - Clocks

/// The time source of a store: the time elapsed since a fixed epoch of the clock's own.
///
/// Injectable so tests can drive time by hand (``ManualRateLimitClock``). Only differences
/// between readings matter; a reading that goes backwards only makes limits stricter.
public protocol RateLimitClock: Sendable {
    /// Time since this clock's epoch.
    func now() -> Duration
}

/// The production clock: monotonic (`ContinuousClock`, which keeps counting through
/// system sleep), with its epoch at its creation.
public struct ContinuousRateLimitClock: RateLimitClock {
    private let origin: ContinuousClock.Instant

    public init() { origin = ContinuousClock.now }

    public func now() -> Duration { ContinuousClock.now - origin }
}

/// A clock that moves only when told to. For tests, and for replaying decisions.
public final class ManualRateLimitClock: RateLimitClock {
    private let current: Mutex<Duration>

    public init(_ start: Duration = .zero) { current = Mutex(start) }

    public func now() -> Duration { current.withLock { $0 } }

    /// Moves the clock forward (or backward, with a negative duration).
    public func advance(by duration: Duration) { current.withLock { $0 += duration } }

    /// Sets the clock to `time` since its epoch.
    public func set(_ time: Duration) { current.withLock { $0 = time } }
}

// MARK: - The algorithm

/// The GCRA decision as a pure function, shared by every store (the Redis store's Lua
/// script mirrors it). Times are attoseconds since the store clock's epoch.
public enum GCRA {
    /// Decides a request of `cost` units at `now` for a key whose theoretical arrival time
    /// is `tat` (`nil` for a key never seen or forgotten, which is the same as `tat ≤ now`).
    ///
    /// Returns the decision and, when the stored state must change, the new TAT. The new
    /// TAT is `nil` when nothing is consumed (refusal, or `cost == 0`).
    /// Precondition: `cost >= 0`.
    public static func decide(tat: Int128?, now: Int128, cost: Int, spec: RateLimitSpec) -> (RateLimitDecision, newTAT: Int128?) {
        precondition(cost >= 0, "negative cost")
        let interval = spec.emissionIntervalAttoseconds
        let capacity = spec.capacityAttoseconds
        let base = Swift.max(tat ?? now, now)

        func remaining(after tat: Int128) -> Int {
            let room = capacity - (tat - now)
            return room <= 0 ? 0 : Int(room / interval)
        }

        guard cost <= spec.rate + spec.burst else {
            // Can never fit, however long the caller waits.
            return (RateLimitDecision(allowed: false, retryAfter: nil, remaining: remaining(after: base)), nil)
        }
        if cost == 0 {
            return (RateLimitDecision(allowed: true, retryAfter: nil, remaining: remaining(after: base)), nil)
        }
        let newTAT = base + Int128(cost) * interval
        let ahead = newTAT - now
        if ahead <= capacity {
            return (RateLimitDecision(allowed: true, retryAfter: nil, remaining: remaining(after: newTAT)), newTAT)
        }
        let wait = ahead - capacity
        return (RateLimitDecision(allowed: false, retryAfter: RateLimitSpec.duration(wait), remaining: remaining(after: base)), nil)
    }
}
