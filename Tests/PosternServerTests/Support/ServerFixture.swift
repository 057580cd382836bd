import Foundation
import Logging
import NIOCore
import PosternServer
import PosternUpstream
import ServiceLifecycle
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A Postern server running in-process on an ephemeral loopback port, delivering into a
/// temporary Maildir unless told otherwise.
final class ServerFixture: @unchecked Sendable {
    let directory: String
    let maildir: String
    private(set) var ports: [Int] = []
    private(set) var statusPort: Int?
    private(set) var decisionLogPath: String?
    private let group: ServiceGroup
    private let task: Task<Void, Error>

    var port: Int { ports[0] }

    init(
        listeners: [PosternConfiguration.Listener] = [PosternConfiguration.Listener(host: "127.0.0.1", port: 0)],
        configure: (inout PosternConfiguration) -> Void = { _ in }
    ) throws {
        directory = NSTemporaryDirectory() + "postern-test-" + UUID().uuidString
        maildir = directory + "/maildir"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var configuration = PosternConfiguration(
            hostname: "mx.test", listeners: listeners,
            upstreams: [UpstreamConfiguration(target: .maildir(path: maildir))])
        configuration.spool.directory = directory
        configuration.shutdownGracePeriod = .seconds(5)
        configure(&configuration)
        decisionLogPath = configuration.decisionLog
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let ready = DispatchSemaphore(value: 0)
        let bound = LockedBox<[Int]>([])
        let server = try PosternServer(configuration: configuration, logger: logger) { addresses in
            bound.value = addresses.compactMap(\.port)
            ready.signal()
        }
        group = ServiceGroup(configuration: .init(services: [.init(service: server)], logger: logger))
        let group = self.group
        task = Task.detached { try await group.run() }
        guard ready.wait(timeout: .now() + 10) == .success else { throw FixtureError("server did not start") }
        ports = bound.value
        statusPort = server.statusServerAddress?.port
    }

    /// Graceful shutdown, waiting for the server to stop.
    func stop() {
        let done = DispatchSemaphore(value: 0)
        let group = self.group
        let task = self.task
        Task.detached {
            await group.triggerGracefulShutdown()
            _ = try? await task.value
            done.signal()
        }
        _ = done.wait(timeout: .now() + 15)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Files delivered to the maildir's `new/`.
    func deliveredMessages() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: maildir + "/new")) ?? []
        return names.sorted().compactMap { try? String(contentsOfFile: maildir + "/new/" + $0, encoding: .utf8) }
    }

    /// Waits until `count` messages are in the maildir (deliveries are asynchronous to the reply).
    func waitForMessages(_ count: Int, timeout: TimeInterval = 5) -> [String] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let messages = deliveredMessages()
            if messages.count >= count { return messages }
            usleep(20_000)
        }
        return deliveredMessages()
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
}

/// A blocking SMTP client on a raw socket: sends exact bytes, reads replies.
final class RawSMTPClient {
    struct Reply: CustomStringConvertible {
        var code: Int
        var lines: [String]
        var text: String { lines.joined(separator: "\n") }
        var description: String { "\(code) \(text)" }
    }

    private let descriptor: Int32
    private var buffer: [UInt8] = []

    init(port: Int, timeout: Int = 5) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw FixtureError("socket() failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(descriptor)
            throw FixtureError("connect to \(port) failed: errno \(errno)")
        }
        var time = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { Glibc.close(descriptor) }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written <= 0 { return }
            offset += written
        }
    }

    /// Everything the peer sends until it closes the connection.
    func readToEnd() -> String {
        var all = buffer
        buffer = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(descriptor, &chunk, chunk.count, 0)
            if count <= 0 { break }
            all.append(contentsOf: chunk[..<count])
        }
        return String(decoding: all, as: UTF8.self)
    }

    /// Reads one reply; nil on timeout or when the server closed the connection.
    func readReply() -> Reply? {
        var lines: [String] = []
        while let line = readLine() {
            guard line.count >= 3, let code = Int(line.prefix(3)) else { return nil }
            lines.append(String(line.dropFirst(4)))
            if line.count == 3 || line[line.index(line.startIndex, offsetBy: 3)] == " " {
                return Reply(code: code, lines: lines)
            }
        }
        return nil
    }

    /// Sends a command and reads its reply.
    func command(_ line: String) -> Reply? {
        send(line + "\r\n")
        return readReply()
    }

    /// True when the server has closed the connection (EOF within the timeout).
    func isClosedByServer() -> Bool {
        while true {
            if !buffer.isEmpty { buffer.removeAll(); continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = recv(descriptor, &chunk, chunk.count, 0)
            if count == 0 { return true }
            // A close with unread input in the server's socket arrives as a reset.
            if count < 0 { return errno == ECONNRESET }
        }
    }

    private func readLine() -> String? {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                var line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = recv(descriptor, &chunk, chunk.count, 0)
            if count <= 0 { return nil }
            buffer.append(contentsOf: chunk[..<count])
        }
    }
}
