import XCTest
@testable import PosternPolicy

final class GCRATests: XCTestCase {
    private func spec(_ text: String, burst: Int = 0) -> RateLimitSpec {
        guard let spec = RateLimitSpec(parsing: text, burst: burst) else {
            XCTFail("bad spec \(text)")
            return RateLimitSpec(rate: 1, period: .seconds(1))!
        }
        return spec
    }

    func testFormulaParameters() {
        let tenPerMinute = spec("10/1m")
        XCTAssertEqual(tenPerMinute.emissionInterval, .seconds(6))
        XCTAssertEqual(tenPerMinute.capacityAttoseconds, RateLimitSpec.attoseconds(.seconds(60)))
        let withBurst = spec("10/1m", burst: 5)
        XCTAssertEqual(withBurst.capacityAttoseconds, RateLimitSpec.attoseconds(.seconds(90)))
        // T is rounded up, so 7/1m never allows more than 7 per minute in the long run.
        let seven = spec("7/1m")
        XCTAssertGreaterThanOrEqual(seven.emissionIntervalAttoseconds * 7, RateLimitSpec.attoseconds(.seconds(60)))
        XCTAssertLessThan(seven.emissionIntervalAttoseconds * 7 - RateLimitSpec.attoseconds(.seconds(60)), 7)
    }

    /// `rate: 10/1m, burst: 0`: 10 at once, the 11th refused with retryAfter 6 s, allowed
    /// again exactly when retryAfter has passed.
    func testExactnessTenPerMinute() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("10/1m")
        for index in 1...10 {
            let decision = try store.consume(key: "k", spec: limit, at: clock.now())
            XCTAssertTrue(decision.allowed, "event \(index)")
            XCTAssertEqual(decision.remaining, 10 - index)
            XCTAssertNil(decision.retryAfter)
        }
        let eleventh = try store.consume(key: "k", spec: limit, at: clock.now())
        XCTAssertFalse(eleventh.allowed)
        XCTAssertEqual(eleventh.retryAfter, .seconds(6))
        XCTAssertEqual(eleventh.remaining, 0)

        // One nanosecond early: still refused, and told to wait that nanosecond.
        clock.advance(by: .seconds(6) - .nanoseconds(1))
        let early = try store.consume(key: "k", spec: limit, at: clock.now())
        XCTAssertFalse(early.allowed)
        XCTAssertEqual(early.retryAfter, .nanoseconds(1))

        clock.advance(by: .nanoseconds(1))
        XCTAssertTrue(try store.consume(key: "k", spec: limit, at: clock.now()).allowed)
        // ... and that was the only one: the next is 6 s away again.
        let next = try store.consume(key: "k", spec: limit, at: clock.now())
        XCTAssertFalse(next.allowed)
        XCTAssertEqual(next.retryAfter, .seconds(6))
    }

    /// The 11th message within any minute after an idle start is refused; after a quiet
    /// minute the full 10 are back; a steady 1 per 6 s is allowed forever.
    func testRecoversOnSchedule() throws {
        let clock = ManualRateLimitClock(.seconds(1000))
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("10/1m")
        for _ in 0..<10 { XCTAssertTrue(try store.consume(key: "k", spec: limit, at: clock.now()).allowed) }
        // Through the minute, only the recovered share is allowed: 1 every 6 s.
        var allowedInMinute = 0
        for second in 1...59 {
            clock.set(.seconds(1000 + second))
            if try store.consume(key: "k", spec: limit, at: clock.now()).allowed { allowedInMinute += 1 }
        }
        XCTAssertEqual(allowedInMinute, 9) // at 6, 12, …, 54
        // A quiet minute restores the whole allowance.
        clock.set(.seconds(1000 + 59 + 60))
        var burst = 0
        while try store.consume(key: "k", spec: limit, at: clock.now()).allowed { burst += 1 }
        XCTAssertEqual(burst, 10)
        // Steady state at exactly the rate is never refused.
        clock.advance(by: .seconds(60))
        let steady = spec("10/1m")
        for step in 0..<100 {
            clock.advance(by: .seconds(6))
            XCTAssertTrue(try store.consume(key: "steady", spec: steady, at: clock.now()).allowed, "step \(step)")
        }
    }

    /// Long-run bound: over a window w, at most rate + burst + floor(w / T) events.
    func testLongRunBound() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("100/1h", burst: 20)
        var allowed = 0
        // Hammer every second for 3 hours.
        for second in 0..<(3 * 3600) {
            clock.set(.seconds(second))
            if try store.consume(key: "k", spec: limit, at: clock.now()).allowed { allowed += 1 }
        }
        // T = 36 s; window [0, 10799] s → 120 + floor(10799 / 36) = 120 + 299.
        XCTAssertEqual(allowed, 120 + 299)
    }

    func testBurstAddsToRate() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("10/1m", burst: 5)
        var count = 0
        while try store.consume(key: "k", spec: limit, at: clock.now()).allowed { count += 1 }
        XCTAssertEqual(count, 15)
        let refused = try store.consume(key: "k", spec: limit, at: clock.now())
        XCTAssertEqual(refused.retryAfter, .seconds(6))
        // Full recovery takes (rate + burst) × T = 90 s.
        clock.advance(by: .seconds(89))
        count = 0
        while try store.consume(key: "k", spec: limit, at: clock.now()).allowed { count += 1 }
        XCTAssertEqual(count, 14)
        clock.advance(by: .seconds(90))
        count = 0
        while try store.consume(key: "k", spec: limit, at: clock.now()).allowed { count += 1 }
        XCTAssertEqual(count, 15)
    }

    func testBurstZeroRateOne() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("1/1h")
        XCTAssertTrue(try store.consume(key: "k", spec: limit, at: clock.now()).allowed)
        let refused = try store.consume(key: "k", spec: limit, at: clock.now())
        XCTAssertFalse(refused.allowed)
        XCTAssertEqual(refused.retryAfter, .seconds(3600))
    }

    /// Bytes: cost N; refusal consumes nothing, so a smaller request still fits.
    func testCostAndRefusalConsumesNothing() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = RateLimitSpec(rate: 10_000_000, period: .seconds(3600))! // 10 MB/h, T = 360 µs
        let first = try store.consume(key: "bytes", cost: 6_000_000, spec: limit, at: clock.now())
        XCTAssertTrue(first.allowed)
        XCTAssertEqual(first.remaining, 4_000_000)
        let tooBig = try store.consume(key: "bytes", cost: 5_000_000, spec: limit, at: clock.now())
        XCTAssertFalse(tooBig.allowed)
        XCTAssertEqual(tooBig.remaining, 4_000_000)
        // Missing 1 MB at 360 µs per byte = 360 s.
        XCTAssertEqual(tooBig.retryAfter, .seconds(360))
        // The refusal took nothing: 4 MB still fits, exactly.
        let fits = try store.consume(key: "bytes", cost: 4_000_000, spec: limit, at: clock.now())
        XCTAssertTrue(fits.allowed)
        XCTAssertEqual(fits.remaining, 0)
        XCTAssertFalse(try store.consume(key: "bytes", cost: 1, spec: limit, at: clock.now()).allowed)
    }

    func testRepeatedRefusalsDoNotExtendTheWait() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("10/1m")
        for _ in 0..<10 { _ = try store.consume(key: "k", spec: limit, at: clock.now()) }
        for _ in 0..<1000 {
            XCTAssertEqual(try store.consume(key: "k", spec: limit, at: clock.now()).retryAfter, .seconds(6))
        }
        clock.advance(by: .seconds(6))
        XCTAssertTrue(try store.consume(key: "k", spec: limit, at: clock.now()).allowed)
    }

    func testCostLargerThanCapacityNeverFits() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("100/1m", burst: 10)
        XCTAssertTrue(try store.consume(key: "k", cost: 110, spec: limit, at: clock.now()).allowed)
        clock.advance(by: .seconds(3600))
        let never = try store.consume(key: "k", cost: 111, spec: limit, at: clock.now())
        XCTAssertFalse(never.allowed)
        XCTAssertNil(never.retryAfter)
        XCTAssertEqual(never.remaining, 110)
        XCTAssertEqual(store.count, 1)
        // Not even stored for a fresh key.
        _ = try store.consume(key: "fresh", cost: 111, spec: limit, at: clock.now())
        XCTAssertEqual(store.count, 1)
    }

    func testZeroCostPeeksAndNegativeCostThrows() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("10/1m")
        let peek = try store.consume(key: "k", cost: 0, spec: limit, at: clock.now())
        XCTAssertEqual(peek, RateLimitDecision(allowed: true, retryAfter: nil, remaining: 10))
        XCTAssertEqual(store.count, 0)
        _ = try store.consume(key: "k", cost: 3, spec: limit, at: clock.now())
        XCTAssertEqual(try store.consume(key: "k", cost: 0, spec: limit, at: clock.now()).remaining, 7)
        XCTAssertThrowsError(try store.consume(key: "k", cost: -1, spec: limit, at: clock.now())) { error in
            XCTAssertEqual(error as? RateLimitError, .negativeCost(-1))
        }
        XCTAssertEqual(try store.consume(key: "k", cost: 0, spec: limit, at: clock.now()).remaining, 7)
    }

    func testIndependentKeys() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = spec("2/1m")
        for key in ["a", "b", "c"] {
            XCTAssertTrue(try store.consume(key: key, spec: limit, at: clock.now()).allowed)
            XCTAssertTrue(try store.consume(key: key, spec: limit, at: clock.now()).allowed)
        }
        for key in ["a", "b", "c"] {
            XCTAssertFalse(try store.consume(key: key, spec: limit, at: clock.now()).allowed)
        }
        XCTAssertTrue(try store.consume(key: "d", spec: limit, at: clock.now()).allowed)
    }

    /// The protocol path (async, the store's own clock).
    func testProtocolUsesInjectedClock() async throws {
        let clock = ManualRateLimitClock()
        let store: any RateLimitStore = InMemoryRateLimitStore(clock: clock)
        let limit = spec("3/30s")
        for _ in 0..<3 { let d = try await store.consume(key: "k", spec: limit); XCTAssertTrue(d.allowed) }
        let refused = try await store.consume(key: "k", spec: limit)
        XCTAssertEqual(refused.retryAfter, .seconds(10))
        clock.advance(by: .seconds(10))
        let again = try await store.consume(key: "k", cost: 1, spec: limit)
        XCTAssertTrue(again.allowed)
        do {
            _ = try await store.consume(key: "k", cost: -5, spec: limit)
            XCTFail("expected a throw")
        } catch {
            XCTAssertEqual(error as? RateLimitError, .negativeCost(-5))
        }
    }

    func testContinuousClockMovesForward() async throws {
        let clock = ContinuousRateLimitClock()
        let a = clock.now()
        try await Task.sleep(for: .milliseconds(5))
        XCTAssertGreaterThan(clock.now(), a)
        let store = InMemoryRateLimitStore()
        let decision = try await store.consume(key: "k", spec: spec("1/1d"))
        XCTAssertTrue(decision.allowed)
    }

    func testPureDecisionFunction() {
        let limit = spec("10/1m")
        let t = RateLimitSpec.attoseconds(.seconds(6))
        let (fresh, tat) = GCRA.decide(tat: nil, now: 0, cost: 10, spec: limit)
        XCTAssertTrue(fresh.allowed)
        XCTAssertEqual(tat, 10 * t)
        // A stored TAT in the past is the same as none.
        let (idle, idleTAT) = GCRA.decide(tat: -1_000 * t, now: 0, cost: 1, spec: limit)
        XCTAssertEqual(idle.remaining, 9)
        XCTAssertEqual(idleTAT, t)
        let (refused, unchanged) = GCRA.decide(tat: 10 * t, now: 0, cost: 1, spec: limit)
        XCTAssertFalse(refused.allowed)
        XCTAssertNil(unchanged)
        XCTAssertEqual(refused.retryAfter, .seconds(6))
    }

    func testDecisionDescription() {
        XCTAssertEqual(RateLimitDecision(allowed: true, remaining: 3).description, "allowed remaining=3")
        XCTAssertEqual(RateLimitDecision(allowed: false, retryAfter: .seconds(6), remaining: 0).description,
                       "refused retry_after=6.0 seconds remaining=0")
    }
}
