import Foundation
import XCTest

/// The short chaos run: `Chaos/chaos.py` against the built `postern` with 300 messages and
/// every fault at a higher rate (about a minute), after its self-check against the unsafe
/// early-ack switch. `make chaos` is the long one (10,000 messages).
final class ChaosTests: IntegrationTestCase, @unchecked Sendable {
    func testShortChaosRunLosesNothingAndCatchesTheBrokenMode() throws {
        let python = try requirePython()
        let script = Paths.packageRoot.appendingPathComponent("Chaos/chaos.py")
        guard FileManager.default.fileExists(atPath: script.path) else { throw XCTSkip("no \(script.path)") }
        let harness = try launch("chaos", python, [
            script.path, "--postern", try posternBinary().path, "--workdir", workDir.path,
            "--self-check", "--self-check-messages", "100",
            "--messages", "300", "--rate", "8", "--drain-timeout", "45",
            "--upstream-kill-every", "2", "5", "--postern-restart-every", "6", "12",
            "--redis-kill-every", "4", "9", "--sighup-every", "1", "3",
        ])
        let status = harness.waitForExit(timeout: 150)
        if status == nil {
            // Let it stop what it started before teardown's shorter SIGTERM/SIGKILL.
            harness.signal(SIGTERM)
            _ = harness.waitForExit(timeout: 40)
        }
        let output = harness.output
        let lines = output.split(separator: "\n").map(String.init)
        let summary = lines.last { $0.hasPrefix("chaos: messages=") } ?? ""
        print("[integration] \(summary)")
        XCTAssertEqual(status, 0, String(output.suffix(4000)))
        XCTAssertTrue(lines.contains { $0.hasPrefix("chaos: self-check ok") }, "the broken mode was not caught\n\(output.suffix(4000))")
        XCTAssertTrue(lines.contains { $0.hasPrefix("chaos: BROKEN ") && !$0.contains(" lost=0 ") },
                      "the broken run reported no loss\n\(output.suffix(4000))")
        XCTAssertTrue(summary.contains("messages=300 acknowledged=300 lost=0 phantom=0 "), summary)
        XCTAssertTrue(summary.contains(" unexplained=0)"), summary)
        XCTAssertEqual(lines.last, "chaos: PASS", String(output.suffix(4000)))
    }
}
