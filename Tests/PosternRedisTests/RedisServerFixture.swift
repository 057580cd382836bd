import Foundation
import NIOCore
import NIOPosix
import XCTest
@testable import PosternRedis

/// A real `redis-server` on 127.0.0.1 and a free port, with no persistence, stopped by PID.
final class RedisServerFixture {
    let port: Int
    let arguments: [String]
    private(set) var process: Process?
    private let directory: URL

    /// The server binary, or nil when the `redis-server` package is not installed.
    static var binary: String? {
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init)
            + ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
        return paths.map { "\($0)/redis-server" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Starts a server (skips the test when `redis-server` is absent). `extra` adds options
    /// such as `["--requirepass", "secret"]`.
    static func start(extra: [String] = []) async throws -> RedisServerFixture {
        guard binary != nil else { throw XCTSkip("redis-server is not installed (apt package redis-server)") }
        let server = RedisServerFixture(port: try freePort(), extra: extra)
        try await server.start()
        return server
    }

    private init(port: Int, extra: [String]) {
        self.port = port
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-redis-\(UUID().uuidString)")
        self.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"] + extra
    }

    var url: String { "redis://127.0.0.1:\(port)" }

    /// (Re)starts the server on the same port and waits until it answers.
    func start() async throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary!)
        process.arguments = arguments + ["--dir", directory.path]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if await isAnswering() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        stop()
        XCTFail("redis-server did not start on port \(port)")
        throw RedisError.connectionFailed("redis-server did not start")
    }

    /// SIGKILL (a crash, not a clean shutdown), then waits for the process to end.
    func kill() {
        guard let process, process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// Stops the server (SIGKILL: nothing is persisted, and a child of the test runner may
    /// inherit a signal mask that blocks SIGTERM) and removes its directory.
    func stop() {
        kill()
        try? FileManager.default.removeItem(at: directory)
    }

    private func isAnswering() async -> Bool {
        // Any answer to PING will do, NOAUTH included: the server is up.
        guard let connection = try? await RedisConnection.connect(
            to: RedisEndpoint(host: "127.0.0.1", port: port), on: MultiThreadedEventLoopGroup.singleton.next(),
            deadline: .now() + .milliseconds(500)).get() else { return false }
        defer { connection.close() }
        return (try? await connection.send(["PING"], deadline: .now() + .milliseconds(500)).get()) != nil
    }

    /// A port nobody listens on right now (bound then released by the kernel's choice).
    static func freePort() throws -> Int {
        let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0).wait()
        let port = channel.localAddress!.port!
        try channel.close().wait()
        return port
    }
}
