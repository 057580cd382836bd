import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Sleeps the calling thread (tests are synchronous).
func sleep(seconds: Double) {
    usleep(useconds_t(max(0, seconds) * 1_000_000))
}

/// Polls `condition` until it holds or `timeout` passes. Returns whether it held.
@discardableResult
func waitUntil(timeout: Double, interval: Double = 0.05, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if try condition() { return true }
        if Date() >= deadline { return false }
        sleep(seconds: interval)
    }
}

/// A long-running child process (server) whose output goes to files, stopped by PID
/// (SIGTERM, then SIGKILL after a grace period). Register `stop()` in a teardown block.
final class ManagedProcess: @unchecked Sendable {
    let name: String
    let executable: URL
    let arguments: [String]
    let stdoutURL: URL
    let stderrURL: URL
    private let process = Process()
    private let lock = NSLock()
    private var stopped = false
    private var exitStatus: Int32?

    init(name: String, executable: URL, arguments: [String], logDirectory: URL,
         environment: [String: String]? = nil, currentDirectory: URL? = nil) throws {
        self.name = name
        self.executable = executable
        self.arguments = arguments
        try FileManager.default.createDirectory(at: logDirectory, withIntermediateDirectories: true)
        let safe = name.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" }
        stdoutURL = logDirectory.appendingPathComponent("\(String(safe)).stdout")
        stderrURL = logDirectory.appendingPathComponent("\(String(safe)).stderr")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.executableURL = executable
        process.arguments = arguments
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if let currentDirectory { process.currentDirectoryURL = currentDirectory }
        process.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }
    var output: String { stdout + stderr }

    /// The last `lines` lines of stdout+stderr, for failure messages.
    func tail(_ lines: Int = 40) -> String {
        let all = ("--- \(name) stdout ---\n" + stdout + "\n--- \(name) stderr ---\n" + stderr)
            .split(separator: "\n", omittingEmptySubsequences: false)
        let text = all.suffix(lines).joined(separator: "\n")
        return text.count > 6000 ? "…" + String(text.suffix(6000)) : text
    }

    /// Waits until stdout or stderr contains `text`. Throws if the process exits first or on timeout.
    func waitForOutput(containing text: String, timeout: Double = 20) throws {
        let found = waitUntil(timeout: timeout) { output.contains(text) || !isRunning }
        if output.contains(text) { return }
        if !found || isRunning {
            throw HarnessError.timeout("\(name) did not print \"\(text)\" within \(timeout)s\n\(tail())")
        }
        throw HarnessError.failed("\(name) exited (\(process.terminationStatus)) before printing \"\(text)\"\n\(tail())")
    }

    /// Waits until 127.0.0.1:port accepts a TCP connection.
    func waitForPort(_ port: Int, host: String = "127.0.0.1", timeout: Double = 20) throws {
        let ok = waitUntil(timeout: timeout, interval: 0.05) { !isRunning || Net.canConnect(host: host, port: port) }
        if !isRunning {
            throw HarnessError.failed("\(name) exited (\(process.terminationStatus)) before listening on \(host):\(port)\n\(tail())")
        }
        if !ok {
            throw HarnessError.timeout("\(name) not listening on \(host):\(port) after \(timeout)s\n\(tail())")
        }
    }

    func signal(_ sig: Int32) {
        if isRunning { kill(pid, sig) }
    }

    /// Waits for the process to exit on its own; returns its status, or nil on timeout.
    func waitForExit(timeout: Double) -> Int32? {
        guard waitUntil(timeout: timeout, interval: 0.02, { !isRunning }) else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGTERM, then SIGKILL after `grace` seconds. Idempotent. Returns the exit status
    /// (`terminationStatus`; for a signal death it is the signal number).
    @discardableResult
    func stop(grace: Double = 5) -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        if stopped { return exitStatus }
        stopped = true
        if process.isRunning {
            kill(pid, SIGTERM)
            if !waitUntil(timeout: grace, interval: 0.02, { !process.isRunning }) {
                kill(pid, SIGKILL)
                _ = waitUntil(timeout: 5, interval: 0.02) { !process.isRunning }
            }
        }
        if !process.isRunning {
            process.waitUntilExit()
            exitStatus = process.terminationStatus
        }
        return exitStatus
    }

    var terminationReasonIsSignal: Bool { !process.isRunning && process.terminationReason == .uncaughtSignal }
}

/// The outcome of a short-lived command.
struct CommandResult: CustomStringConvertible {
    var status: Int32
    var stdoutData: Data
    var stderrData: Data
    var timedOut: Bool
    var commandLine: String

    var stdout: String { String(decoding: stdoutData, as: UTF8.self) }
    var stderr: String { String(decoding: stderrData, as: UTF8.self) }
    var output: String { stdout + stderr }

    var description: String {
        "$ \(commandLine)\nexit \(status)\(timedOut ? " (timed out)" : "")\n--- stdout ---\n\(stdout)\n--- stderr ---\n\(stderr)"
    }
}

enum Command {
    /// Runs a command to completion (killing it after `timeout`), output captured via temp files.
    static func run(_ executable: URL, _ arguments: [String], stdin: Data? = nil,
                    environment: [String: String]? = nil, currentDirectory: URL? = nil,
                    timeout: Double = 60) throws -> CommandResult {
        let tmp = FileManager.default.temporaryDirectory
            .appendingPathComponent("postern-cmd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let out = tmp.appendingPathComponent("stdout"), err = tmp.appendingPathComponent("stderr")
        let inp = tmp.appendingPathComponent("stdin")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        _ = FileManager.default.createFile(atPath: inp.path, contents: stdin ?? Data())

        let p = Process()
        p.executableURL = executable
        p.arguments = arguments
        if let environment {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if let currentDirectory { p.currentDirectoryURL = currentDirectory }
        let outHandle = try FileHandle(forWritingTo: out)
        let errHandle = try FileHandle(forWritingTo: err)
        let inHandle = try FileHandle(forReadingFrom: inp)
        p.standardOutput = outHandle
        p.standardError = errHandle
        p.standardInput = inHandle
        try p.run()
        var timedOut = false
        if !waitUntil(timeout: timeout, interval: 0.01, { !p.isRunning }) {
            timedOut = true
            kill(p.processIdentifier, SIGTERM)
            if !waitUntil(timeout: 3, { !p.isRunning }) { kill(p.processIdentifier, SIGKILL) }
        }
        p.waitUntilExit()
        try? outHandle.close(); try? errHandle.close(); try? inHandle.close()
        return CommandResult(
            status: p.terminationStatus,
            stdoutData: (try? Data(contentsOf: out)) ?? Data(),
            stderrData: (try? Data(contentsOf: err)) ?? Data(),
            timedOut: timedOut,
            commandLine: ([executable.path] + arguments).map { $0.contains(" ") ? "'\($0)'" : $0 }
                .joined(separator: " "))
    }
}
