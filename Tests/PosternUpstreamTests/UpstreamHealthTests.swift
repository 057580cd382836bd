import NIOCore
import PosternUpstream
import SMTPCore
import XCTest

/// The health machine on a manual clock: what it logs, when it probes, what it calls up.
final class UpstreamHealthTests: XCTestCase {
    private let second: UInt64 = 1_000_000_000

    private func machine(probing: Bool = true, retryAfter: TimeAmount = .seconds(60), names: [String] = ["a:25", "b:25"]) -> UpstreamHealth {
        UpstreamHealth(names: names, retryAfter: retryAfter, probing: probing, reminderInterval: .seconds(60), now: 0)
    }

    func testAFailureMarksDownOnceAndSchedulesOneProbe() {
        var health = machine()
        XCTAssertTrue(health.isUp(0, now: 0))
        let actions = health.failed(0, .refused, detail: "connection refused", now: 5 * second)
        XCTAssertEqual(actions, [
            .wentDown(upstream: "a:25", failure: .refused, detail: "connection refused"),
            .probe(index: 0, outage: 1),
        ])
        XCTAssertFalse(health.isUp(0, now: 5 * second))
        XCTAssertTrue(health.isUp(1, now: 5 * second))
        // More failures in the same outage: nothing to log, and no second probe chain.
        for tick in 6...60 {
            XCTAssertEqual(health.failed(0, .refused, detail: "connection refused", now: UInt64(tick) * second), [], "at \(tick) s")
        }
    }

    func testStillDownIsLoggedAtMostOncePerReminderInterval() {
        var health = machine()
        _ = health.failed(0, .timeout, detail: "connect timed out", now: 0)
        XCTAssertEqual(health.failed(0, .timeout, detail: "t", now: 59 * second), [])
        XCTAssertEqual(health.failed(0, .refused, detail: "refused", now: 60 * second), [
            .stillDown(upstream: "a:25", failures: 3, downNanoseconds: 60 * second, failure: .refused, detail: "refused"),
        ])
        XCTAssertEqual(health.failed(0, .refused, detail: "refused", now: 119 * second), [])
        XCTAssertEqual(health.failed(0, .refused, detail: "refused", now: 120 * second).count, 1)
    }

    func testSuccessEndsTheOutageWithItsLength() {
        var health = machine()
        _ = health.failed(1, .greetingRefused, detail: "554", now: 10 * second)
        _ = health.failed(1, .greetingRefused, detail: "554", now: 11 * second)
        XCTAssertEqual(health.succeeded(1, now: 13 * second), [.cameBack(upstream: "b:25", outageNanoseconds: 3 * second, failures: 2)])
        XCTAssertTrue(health.isUp(1, now: 13 * second))
        // A success when up logs nothing.
        XCTAssertEqual(health.succeeded(1, now: 14 * second), [])
    }

    func testProbesFollowTheirOutageOnly() {
        var health = machine()
        _ = health.failed(0, .refused, detail: "r", now: 0)
        XCTAssertTrue(health.shouldProbe(0, outage: 1))
        // A failed probe records the failure and asks for the next one.
        XCTAssertEqual(health.probeFailed(0, outage: 1, .refused, detail: "r", now: second), [.probe(index: 0, outage: 1)])
        // Traffic got through meanwhile: the pending probe has nothing to do.
        _ = health.succeeded(0, now: 2 * second)
        XCTAssertFalse(health.shouldProbe(0, outage: 1))
        XCTAssertEqual(health.probeFailed(0, outage: 1, .refused, detail: "r", now: 3 * second), [])
        // A new outage has a probe chain of its own; the old chain's result is ignored.
        XCTAssertEqual(health.failed(0, .refused, detail: "r", now: 4 * second).last, .probe(index: 0, outage: 2))
        XCTAssertFalse(health.shouldProbe(0, outage: 1))
        XCTAssertTrue(health.shouldProbe(0, outage: 2))
        XCTAssertEqual(health.probeFailed(0, outage: 1, .refused, detail: "r", now: 5 * second), [])
    }

    func testWithProbesTheMarkLastsUntilASuccess() {
        var health = machine(probing: true, retryAfter: .seconds(60))
        _ = health.failed(0, .refused, detail: "r", now: 0)
        XCTAssertFalse(health.isUp(0, now: 3600 * second), "without a success the upstream stays down")
        _ = health.succeeded(0, now: 3601 * second)
        XCTAssertTrue(health.isUp(0, now: 3601 * second))
    }

    func testWithoutProbesTheMarkLapsesRetryAfterTheLastFailure() {
        var health = machine(probing: false, retryAfter: .seconds(60))
        XCTAssertEqual(health.failed(0, .refused, detail: "r", now: 0), [.wentDown(upstream: "a:25", failure: .refused, detail: "r")])
        XCTAssertFalse(health.isUp(0, now: 59 * second))
        XCTAssertTrue(health.isUp(0, now: 60 * second))
        // Tried again and failed: down for another retryAfter, still the same outage.
        XCTAssertEqual(health.failed(0, .refused, detail: "r", now: 61 * second), [
            .stillDown(upstream: "a:25", failures: 2, downNanoseconds: 61 * second, failure: .refused, detail: "r"),
        ])
        XCTAssertFalse(health.isUp(0, now: 120 * second))
        XCTAssertTrue(health.isUp(0, now: 121 * second))
    }

    func testOrderIsUpstreamsUpInConfigurationOrderThenTheRest() {
        var health = machine(names: ["a:25", "b:25", "c:25"])
        XCTAssertEqual(health.order(now: 0), [0, 1, 2])
        _ = health.failed(0, .refused, detail: "r", now: 0)
        XCTAssertEqual(health.order(now: 0), [1, 2, 0])
        _ = health.failed(2, .refused, detail: "r", now: 0)
        XCTAssertEqual(health.order(now: 0), [1, 0, 2])
        _ = health.succeeded(0, now: second)
        XCTAssertEqual(health.order(now: second), [0, 1, 2])
    }

    func testSecondsSinceSuccessCountFromTheStartUntilTheFirstSuccess() {
        var health = machine()
        XCTAssertEqual(health.secondsSinceSuccess(0, now: 30 * second), 30)
        _ = health.succeeded(0, now: 30 * second)
        XCTAssertEqual(health.secondsSinceSuccess(0, now: 31 * second + second / 2), 1.5)
        _ = health.failed(0, .refused, detail: "r", now: 40 * second)
        XCTAssertEqual(health.secondsSinceSuccess(0, now: 40 * second), 10, "a failure is not a success")
    }

    func testProbeDelayStaysWithinTheJitter() {
        let settings = UpstreamProbeSettings(interval: .seconds(1), timeout: .seconds(5), jitter: 0.2)
        XCTAssertEqual(settings.delay(unit: 0), .milliseconds(800))
        XCTAssertEqual(settings.delay(unit: 0.5), .seconds(1))
        XCTAssertLessThan(settings.delay(unit: 0.999_999), .milliseconds(1200))
        XCTAssertFalse(UpstreamProbeSettings.off.isEnabled)
    }

    func testFailureKindsOfUnspecifiedErrorsFollowTheirErrorKind() {
        XCTAssertEqual(UpstreamError(.timedOut, "x").failure, .timeout)
        XCTAssertEqual(UpstreamError(.connectionLost, "x").failure, .lost)
        XCTAssertEqual(UpstreamError(.unavailable, "x", failure: .auth).failure, .auth)
        XCTAssertEqual(UpstreamFailureKind.greetingRefused.rawValue, "greeting_refused")
    }
}
