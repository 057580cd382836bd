import Synchronization

/// A process-local ``RateLimitStore``: one `Mutex`-protected dictionary from key to
/// theoretical arrival time (TAT), bounded in memory.
///
/// ## Memory bound
///
/// - A key whose TAT is in the past (`TAT ≤ now`) is *idle*: its state is exactly that of
///   a key never seen, so forgetting it loses nothing. Idle keys are dropped lazily: every
///   insertion of a new key first drops up to ``sweepBatch`` idle keys (an incremental
///   sweep, amortised O(log n)), and ``removeIdleKeys()`` drops all of them (for a timer).
/// - At most ``maximumKeys`` keys are held. When a new key arrives at a full table, idle
///   keys are evicted first (soonest-idle first: a min-heap on TAT finds them without a
///   scan). If none is idle, a **live key is never evicted** — evicting it would silently
///   reset a limit that is biting right now, which is what a client flooding the table
///   with fresh keys would want. Instead the *new* key is not tracked, and
///   ``whenFull`` decides its request:
///   - ``WhenFull/failOpen`` (the default): allowed, with `remaining == nil`, and counted in
///     ``evictionFailures``. Mail keeps flowing; the metric says the table is too small.
///   - ``WhenFull/failClosed``: refused, with `retryAfter` = the time until the soonest
///     live key goes idle (a slot frees); also counted in ``evictionFailures``.
///
/// Every operation is O(log n) amortised under one short lock; nothing suspends.
public final class InMemoryRateLimitStore: RateLimitStore {
    /// What to do with a request for a new key when the table is full of live keys.
    public enum WhenFull: Hashable, Sendable {
        /// Allow it untracked (`remaining == nil`) and count an eviction failure.
        case failOpen
        /// Refuse it until a slot frees, and count an eviction failure.
        case failClosed
    }

    /// The most keys held at once.
    public let maximumKeys: Int
    /// The policy for a new key when the table is full of live keys.
    public let whenFull: WhenFull
    /// How many idle keys one insertion drops at most (beyond what a full table needs).
    public let sweepBatch: Int

    private let clock: any RateLimitClock
    private let state: Mutex<State>

    /// - Parameters:
    ///   - maximumKeys: the cap on tracked keys (at least 1).
    ///   - whenFull: see ``WhenFull``; fail open by default.
    ///   - sweepBatch: idle keys dropped per insertion (the incremental sweep).
    ///   - clock: the time source; ``ContinuousRateLimitClock`` in production.
    public init(maximumKeys: Int = 100_000, whenFull: WhenFull = .failOpen, sweepBatch: Int = 8,
                clock: some RateLimitClock = ContinuousRateLimitClock()) {
        precondition(maximumKeys >= 1, "maximumKeys must be at least 1")
        self.maximumKeys = maximumKeys
        self.whenFull = whenFull
        self.sweepBatch = Swift.max(1, sweepBatch)
        self.clock = clock
        self.state = Mutex(State())
    }

    /// The number of keys held now (idle ones not yet dropped included).
    public var count: Int { state.withLock { $0.tats.count } }

    /// Requests for a new key that found the table full of live keys (see ``WhenFull``).
    public var evictionFailures: Int { state.withLock { $0.evictionFailures } }

    /// Idle keys dropped so far.
    public var idleKeysDropped: Int { state.withLock { $0.idleKeysDropped } }

    /// Drops every idle key now. Returns how many were dropped.
    @discardableResult
    public func removeIdleKeys() -> Int {
        let now = RateLimitSpec.attoseconds(clock.now())
        return state.withLock { $0.dropIdle(now: now, budget: .max, maximumKeys: maximumKeys) }
    }

    public func consume(key: String, cost: Int, spec: RateLimitSpec) async throws -> RateLimitDecision {
        try consume(key: key, cost: cost, spec: spec, at: clock.now())
    }

    /// The synchronous form, at an explicit time on this store's clock (time since the
    /// clock's epoch). Never suspends; throws only for a negative cost.
    public func consume(key: String, cost: Int = 1, spec: RateLimitSpec, at time: Duration) throws -> RateLimitDecision {
        guard cost >= 0 else { throw RateLimitError.negativeCost(cost) }
        let now = RateLimitSpec.attoseconds(time)
        let maximumKeys = maximumKeys, whenFull = whenFull, sweepBatch = sweepBatch
        return state.withLock { state in
            let existing = state.tats[key]
            let (decision, newTAT) = GCRA.decide(tat: existing, now: now, cost: cost, spec: spec)
            guard let newTAT else { return decision }
            if existing != nil {
                // The heap entry keeps the older, smaller TAT: still a valid lower bound.
                state.tats[key] = newTAT
                return decision
            }
            state.dropIdle(now: now, budget: sweepBatch, maximumKeys: maximumKeys)
            guard state.tats.count < maximumKeys else {
                state.evictionFailures += 1
                switch whenFull {
                case .failOpen:
                    return RateLimitDecision(allowed: true, retryAfter: nil, remaining: nil)
                case .failClosed:
                    let soonest = state.soonestTAT() ?? now
                    let wait = Swift.max(soonest - now, 1)
                    return RateLimitDecision(allowed: false, retryAfter: RateLimitSpec.duration(wait), remaining: 0)
                }
            }
            state.tats[key] = newTAT
            state.heap.push(.init(tat: newTAT, key: key))
            return decision
        }
    }

    // MARK: - State

    /// Invariant: `heap` holds exactly one entry per key of `tats`, whose `tat` is ≤ the
    /// key's current TAT (TATs only grow while a key is held, so an entry pushed at
    /// insertion stays a lower bound; it is corrected when it reaches the top).
    private struct State {
        var tats: [String: Int128] = [:]
        var heap = RateLimitTATHeap()
        var evictionFailures = 0
        var idleKeysDropped = 0

        /// Drops idle keys from the top of the heap: at most `budget` heap steps, but
        /// always as many as it takes to get below `maximumKeys` when idle keys exist.
        @discardableResult
        mutating func dropIdle(now: Int128, budget: Int, maximumKeys: Int) -> Int {
            var steps = 0, dropped = 0
            while let top = heap.top, top.tat <= now, steps < budget || tats.count >= maximumKeys {
                steps += 1
                guard let current = tats[top.key] else {
                    heap.popTop() // cannot happen while the invariant holds; stay safe
                    continue
                }
                if current <= now {
                    heap.popTop()
                    tats[top.key] = nil
                    dropped += 1
                } else {
                    heap.replaceTopTAT(current)
                }
            }
            idleKeysDropped += dropped
            return dropped
        }

        /// The exact smallest TAT held (correcting stale heap entries on the way).
        mutating func soonestTAT() -> Int128? {
            while let top = heap.top {
                guard let current = tats[top.key] else { heap.popTop(); continue }
                if current == top.tat { return current }
                heap.replaceTopTAT(current)
            }
            return nil
        }
    }
}

/// A binary min-heap of (TAT, key).
struct RateLimitTATHeap {
    struct Entry {
        var tat: Int128
        var key: String
    }

    private(set) var entries: [Entry] = []

    var top: Entry? { entries.first }
    var count: Int { entries.count }

    mutating func push(_ entry: Entry) {
        entries.append(entry)
        siftUp(entries.count - 1)
    }

    @discardableResult
    mutating func popTop() -> Entry? {
        guard !entries.isEmpty else { return nil }
        let last = entries.removeLast()
        guard !entries.isEmpty else { return last }
        let top = entries[0]
        entries[0] = last
        siftDown(0)
        return top
    }

    /// Raises the top entry's TAT (a correction to its current value) and restores order.
    mutating func replaceTopTAT(_ tat: Int128) {
        entries[0].tat = tat
        siftDown(0)
    }

    private mutating func siftUp(_ index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].tat < entries[parent].tat else { return }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ index: Int) {
        var parent = index
        let count = entries.count
        while true {
            let left = 2 * parent + 1
            guard left < count else { return }
            let right = left + 1
            var smallest = left
            if right < count, entries[right].tat < entries[left].tat { smallest = right }
            guard entries[smallest].tat < entries[parent].tat else { return }
            entries.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
