import Foundation
import XCTest

/// Base class: a fresh work directory per test, and every process started through it is
/// stopped in teardown (even when the test fails). On failure the work directory is kept
/// (its path and the processes' output tails are printed); on success it is removed.
/// Set POSTERN_KEEP_TEST_DIRS=1 to always keep it.
class IntegrationTestCase: XCTestCase, @unchecked Sendable {
    private(set) var workDir: URL!
    var logDir: URL { workDir.appendingPathComponent("logs") }

    override func setUpWithError() throws {
        try super.setUpWithError()
        let name = String(name.filter { $0.isLetter || $0.isNumber })
        workDir = URL(fileURLWithPath: NSTemporaryDirectory())
            .appendingPathComponent("postern-it-\(name.suffix(40))-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: logDir, withIntermediateDirectories: true)
        let dir = workDir!
        // Registered first, so it runs last (teardown blocks run in reverse order).
        addTeardownBlock { [weak self] in
            let failed = self?.hasFailures ?? false
            if failed || ProcessInfo.processInfo.environment["POSTERN_KEEP_TEST_DIRS"] != nil {
                print("[integration] work directory kept: \(dir.path)")
            } else {
                try? FileManager.default.removeItem(at: dir)
            }
        }
    }

    /// Whether the running test has recorded a failure so far (usable in teardown blocks).
    var hasFailures: Bool {
        guard let run = testRun else { return false }
        return run.totalFailureCount > 0
    }

    /// A new directory under the work directory.
    func makeDirectory(_ name: String) throws -> URL {
        let url = workDir.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Starts a process that is stopped in teardown.
    func launch(_ name: String, _ executable: URL, _ arguments: [String],
                environment: [String: String]? = nil, currentDirectory: URL? = nil) throws -> ManagedProcess {
        let process = try ManagedProcess(name: name, executable: executable, arguments: arguments,
                                         logDirectory: logDir, environment: environment,
                                         currentDirectory: currentDirectory)
        addTeardownBlock { [weak self] in
            process.stop()
            if self?.hasFailures ?? false {
                print("[integration] \(process.name) (pid \(process.pid)) output tail:\n\(process.tail(60))")
            }
        }
        return process
    }

    /// Registers arbitrary cleanup (runs even when the test fails).
    func onTeardown(_ block: @escaping () -> Void) {
        addTeardownBlock(block)
    }

    /// Skips the test when a tool is not installed.
    func requireTool(_ name: String) throws -> URL {
        guard let url = Paths.tool(name) else { throw XCTSkip("\(name) is not installed") }
        return url
    }

    func requirePython() throws -> URL {
        guard let url = Paths.python3 else { throw XCTSkip("python3 is not installed") }
        return url
    }
}
