import Dispatch
import Synchronization
import XCTest
@testable import PosternPolicy

final class InMemoryStoreTests: XCTestCase {
    private let perSecond = RateLimitSpec(parsing: "1/1s")!

    /// Time frozen: every key stays live, so the table fills to the cap and further new
    /// keys fail open, untracked and counted.
    func testMillionKeysFrozenTimeStayBounded() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(maximumKeys: 10_000, clock: clock)
        let now = clock.now()
        for index in 0..<1_000_000 {
            let decision = try store.consume(key: "k\(index)", spec: perSecond, at: now)
            XCTAssertTrue(decision.allowed)
            if index < 10_000 { XCTAssertEqual(decision.remaining, 0) } else { XCTAssertNil(decision.remaining) }
        }
        XCTAssertEqual(store.count, 10_000)
        XCTAssertEqual(store.evictionFailures, 990_000)
        // Live tracked keys keep their limit: a full table never evicts them.
        XCTAssertFalse(try store.consume(key: "k0", spec: perSecond, at: now).allowed)
        XCTAssertFalse(try store.consume(key: "k9999", spec: perSecond, at: now).allowed)
    }

    /// Time moving: keys go idle and are dropped as new ones arrive; the count stays
    /// bounded by the cap, and by the live set, without any failure.
    func testMillionKeysWithExpiryStayBounded() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(maximumKeys: 10_000, clock: clock)
        var peak = 0
        for index in 0..<1_000_000 {
            clock.advance(by: .microseconds(200)) // 5 000 new keys per second, each live 1 s
            let decision = try store.consume(key: "k\(index)", spec: perSecond, at: clock.now())
            XCTAssertTrue(decision.allowed)
            if index % 1000 == 0 { peak = max(peak, store.count) }
        }
        XCTAssertLessThanOrEqual(store.count, 10_000)
        XCTAssertLessThanOrEqual(peak, 10_000)
        XCTAssertEqual(store.evictionFailures, 0)
        // Roughly one second's worth of keys is live.
        XCTAssertLessThanOrEqual(store.count, 5_000 + 16)
        XCTAssertGreaterThan(store.idleKeysDropped, 990_000)
    }

    func testIdleKeysAreDroppedLosslessly() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(maximumKeys: 100, clock: clock)
        let limit = RateLimitSpec(parsing: "10/1m")!
        for index in 0..<50 { _ = try store.consume(key: "k\(index)", spec: limit, at: clock.now()) }
        XCTAssertEqual(store.count, 50)
        clock.advance(by: .seconds(5))
        XCTAssertEqual(store.removeIdleKeys(), 0) // TAT = 6 s: still live
        clock.advance(by: .seconds(1))
        XCTAssertEqual(store.removeIdleKeys(), 50)
        XCTAssertEqual(store.count, 0)
        // A forgotten key behaves exactly as a fresh one.
        var allowed = 0
        while try store.consume(key: "k0", spec: limit, at: clock.now()).allowed { allowed += 1 }
        XCTAssertEqual(allowed, 10)
    }

    /// Keys touched again after insertion have stale heap entries; they must not be dropped
    /// while live, and must be dropped once idle.
    func testUpdatedKeysAreNotDroppedEarly() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(maximumKeys: 3, clock: clock)
        let limit = RateLimitSpec(parsing: "10/1m")!
        _ = try store.consume(key: "a", spec: limit, at: clock.now()) // TAT 6
        _ = try store.consume(key: "b", spec: limit, at: clock.now()) // TAT 6
        for _ in 0..<9 { _ = try store.consume(key: "a", spec: limit, at: clock.now()) } // TAT 60
        clock.advance(by: .seconds(30))
        // "b" is idle, "a" is not: a full table evicts only "b".
        _ = try store.consume(key: "c", spec: limit, at: clock.now())
        _ = try store.consume(key: "d", spec: limit, at: clock.now())
        XCTAssertEqual(store.count, 3)
        XCTAssertEqual(store.evictionFailures, 0)
        // "a" kept its state: 60 − 30 = 30 s ahead, so 5 left.
        XCTAssertEqual(try store.consume(key: "a", cost: 0, spec: limit, at: clock.now()).remaining, 5)
        // Full of live keys now: a new key fails open.
        let untracked = try store.consume(key: "e", spec: limit, at: clock.now())
        XCTAssertTrue(untracked.allowed)
        XCTAssertNil(untracked.remaining)
        XCTAssertEqual(store.evictionFailures, 1)
        clock.advance(by: .seconds(31))
        XCTAssertEqual(store.removeIdleKeys(), 3)
    }

    func testFailClosedRefusesUntilASlotFrees() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(maximumKeys: 2, whenFull: .failClosed, clock: clock)
        let limit = RateLimitSpec(parsing: "10/1m")!
        _ = try store.consume(key: "a", spec: limit, at: clock.now())               // TAT 6
        for _ in 0..<5 { _ = try store.consume(key: "a", spec: limit, at: clock.now()) } // TAT 36
        clock.advance(by: .seconds(1))
        _ = try store.consume(key: "b", spec: limit, at: clock.now())               // TAT 7
        let refused = try store.consume(key: "c", spec: limit, at: clock.now())
        XCTAssertFalse(refused.allowed)
        XCTAssertEqual(refused.retryAfter, .seconds(6)) // "b" goes idle at 7 s
        XCTAssertEqual(store.evictionFailures, 1)
        clock.advance(by: .seconds(6))
        XCTAssertTrue(try store.consume(key: "c", spec: limit, at: clock.now()).allowed)
        XCTAssertEqual(store.count, 2)
    }

    func testHeapOrdersByTAT() {
        var heap = RateLimitTATHeap()
        var values: [Int128] = (0..<500).map { _ in Int128(Int.random(in: -1_000_000...1_000_000)) }
        for (index, value) in values.enumerated() { heap.push(.init(tat: value, key: "k\(index)")) }
        values.sort()
        var popped: [Int128] = []
        while let entry = heap.popTop() { popped.append(entry.tat) }
        XCTAssertEqual(popped, values)
    }

    /// 8 threads on one key: the total allowed is exactly the allowance, never more.
    func testConcurrentConsumersNeverExceedTheRate() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = RateLimitSpec(parsing: "1000/1h", burst: 50)!
        let allowed = Counter()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<500 {
                if (try? store.consume(key: "shared", spec: limit, at: clock.now()))?.allowed == true { allowed.add(1) }
            }
        }
        XCTAssertEqual(allowed.value, 1050)
        // Half an hour later exactly 500 more, however the threads interleave.
        clock.advance(by: .seconds(1800))
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<500 {
                if (try? store.consume(key: "shared", spec: limit, at: clock.now()))?.allowed == true { allowed.add(1) }
            }
        }
        XCTAssertEqual(allowed.value, 1550)
    }

    /// 8 threads with a moving clock and mixed costs: the sum of allowed costs obeys the
    /// GCRA bound for the elapsed time, exactly as a single thread would.
    func testConcurrentWithMovingClockObeysBound() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = RateLimitSpec(parsing: "100/1s")!
        let allowedCost = Counter()
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for step in 0..<5000 {
                if thread == 0, step % 50 == 0 { clock.advance(by: .milliseconds(10)) }
                let cost = 1 + (step % 3)
                if (try? store.consume(key: "k", cost: cost, spec: limit, at: clock.now()))?.allowed == true {
                    allowedCost.add(cost)
                }
            }
        }
        // The clock moved 1 s in total: at most 100 + 1 s / 10 ms = 200 units.
        XCTAssertLessThanOrEqual(allowedCost.value, 200)
        XCTAssertGreaterThanOrEqual(allowedCost.value, 100)
    }

    /// Many keys from many tasks through the async protocol.
    func testConcurrentTasksManyKeys() async throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = RateLimitSpec(parsing: "5/1m")!
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for task in 0..<8 {
                group.addTask {
                    var allowed = 0
                    for attempt in 0..<400 {
                        let key = "key\((attempt + task) % 20)"
                        if try await store.consume(key: key, spec: limit).allowed { allowed += 1 }
                    }
                    return allowed
                }
            }
            return try await group.reduce(0, +)
        }
        XCTAssertEqual(total, 20 * 5)
        XCTAssertEqual(store.count, 20)
    }
}

/// A thread-safe tally for the tests.
private final class Counter: Sendable {
    private let total = Mutex(0)
    func add(_ amount: Int) { total.withLock { $0 += amount } }
    var value: Int { total.withLock { $0 } }
}
