import XCTest
@testable import PosternPolicy

final class RateLimitSpecTests: XCTestCase {
    func testParsingTable() {
        let good: [(String, Int, Duration, String)] = [
            ("100/1h", 100, .seconds(3600), "100/1h"),
            ("10/1m", 10, .seconds(60), "10/1m"),
            ("5/30s", 5, .seconds(30), "5/30s"),
            ("1000/1d", 1000, .seconds(86_400), "1000/1d"),
            ("20/500ms", 20, .milliseconds(500), "20/500ms"),
            ("10/m", 10, .seconds(60), "10/1m"),
            ("10 / 1 m", 10, .seconds(60), "10/1m"),
            ("3/2H", 3, .seconds(7200), "3/2h"),
            ("1/minute", 1, .seconds(60), "1/1m"),
            ("50/5minutes", 50, .seconds(300), "50/5m"),
            ("7/1sec", 7, .seconds(1), "7/1s"),
            ("2/day", 2, .seconds(86_400), "2/1d"),
            ("60/60m", 60, .seconds(3600), "60/1h"),
            ("1/90s", 1, .seconds(90), "1/90s"),
            ("1/1500ms", 1, .milliseconds(1500), "1/1500ms"),
            ("10000000/1h", 10_000_000, .seconds(3600), "10000000/1h"),
        ]
        for (text, rate, period, canonical) in good {
            guard let spec = RateLimitSpec(parsing: text) else { XCTFail("\(text) should parse"); continue }
            XCTAssertEqual(spec.rate, rate, text)
            XCTAssertEqual(spec.period, period, text)
            XCTAssertEqual(spec.burst, 0, text)
            XCTAssertEqual(spec.description, canonical, text)
            XCTAssertEqual(RateLimitSpec(parsing: spec.rateText), spec, "round trip \(text)")
        }
        let bad = ["", "10", "/1m", "10/", "10/1", "10/1x", "0/1m", "-1/1m", "+1/1m", "10/0m", "10/-1m",
                   "1.5/1m", "10/1.5m", "10/1m/1", "ten/1m", "10/1 m s", "10//1m", "99999999999999999999/1m",
                   "10/3651d", "10/1w", "10/1mm", "\u{0661}0/1m", "10/1ms0"]
        for text in bad {
            XCTAssertNil(RateLimitSpec(parsing: text), "\(text) should not parse")
        }
    }

    func testBurstAndDescription() {
        let spec = RateLimitSpec(parsing: "100/1h", burst: 20)
        XCTAssertEqual(spec?.burst, 20)
        XCTAssertEqual(spec?.description, "100/1h burst 20")
        XCTAssertEqual(spec?.rateText, "100/1h")
        XCTAssertNil(RateLimitSpec(parsing: "100/1h", burst: -1))
    }

    func testValidation() {
        XCTAssertNil(RateLimitSpec(rate: 0, period: .seconds(1)))
        XCTAssertNil(RateLimitSpec(rate: 1, period: .zero))
        XCTAssertNil(RateLimitSpec(rate: 1, period: .microseconds(999)))
        XCTAssertNil(RateLimitSpec(rate: 1, period: .seconds(1), burst: -1))
        XCTAssertNil(RateLimitSpec(rate: RateLimitSpec.maximumCount + 1, period: .seconds(1)))
        // An absurd burst on a long period would overflow the arithmetic: refused.
        XCTAssertNil(RateLimitSpec(rate: 1, period: RateLimitSpec.maximumPeriod, burst: RateLimitSpec.maximumCount))
        XCTAssertNotNil(RateLimitSpec(rate: RateLimitSpec.maximumCount, period: RateLimitSpec.maximumPeriod,
                                      burst: RateLimitSpec.maximumCount))
        XCTAssertNotNil(RateLimitSpec(rate: RateLimitSpec.maximumCount, period: RateLimitSpec.minimumPeriod))
    }

    func testExtremeSpecsStillDecide() throws {
        let clock = ManualRateLimitClock(.seconds(86_400 * 365))
        let store = InMemoryRateLimitStore(clock: clock)
        // 2^50 per millisecond: T rounds up to 1 attosecond, never 0.
        let fast = RateLimitSpec(rate: RateLimitSpec.maximumCount, period: RateLimitSpec.minimumPeriod)!
        XCTAssertEqual(fast.emissionIntervalAttoseconds, 1)
        XCTAssertTrue(try store.consume(key: "fast", cost: RateLimitSpec.maximumCount, spec: fast, at: clock.now()).allowed)
        XCTAssertFalse(try store.consume(key: "fast", cost: 1, spec: fast, at: clock.now()).allowed)
        let slow = RateLimitSpec(rate: 1, period: RateLimitSpec.maximumPeriod, burst: 1000)!
        XCTAssertTrue(try store.consume(key: "slow", cost: 1001, spec: slow, at: clock.now()).allowed)
        let refused = try store.consume(key: "slow", cost: 1, spec: slow, at: clock.now())
        XCTAssertEqual(refused.retryAfter, RateLimitSpec.maximumPeriod)
    }
}
