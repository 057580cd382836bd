import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PosternPolicy
import XCTest
@testable import PosternRedis

/// `rediss://` against a real TLS-enabled `redis-server`, and a fake server that answers
/// with garbage (every protocol error path ends in the failure mode, never a crash).
final class RedisTLSAndProtocolTests: XCTestCase {
    private var cleanups: [() -> Void] = []

    override func tearDown() {
        for cleanup in cleanups.reversed() { cleanup() }
        cleanups = []
    }

    private let limit = RateLimitSpec(parsing: "5/1m")!

    private func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "\(tool) \(arguments)")
    }

    func testRedissWithItsCertificateAuthority() async throws {
        let openssl = "/usr/bin/openssl"
        guard FileManager.default.isExecutableFile(atPath: openssl) else { throw XCTSkip("openssl is not installed") }
        guard RedisServerFixture.binary != nil else { throw XCTSkip("redis-server is not installed (apt package redis-server)") }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-redis-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        cleanups.append { try? FileManager.default.removeItem(at: directory) }
        let cert = directory.appendingPathComponent("cert.pem").path, key = directory.appendingPathComponent("key.pem").path
        try run(openssl, ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                          "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        let tlsPort = try RedisServerFixture.freePort()
        let server = try await RedisServerFixture.start(extra: [
            "--tls-port", String(tlsPort), "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert,
            "--tls-auth-clients", "no",
        ])
        cleanups.append { server.stop() }

        var trusting = TLSConfiguration.makeClientConfiguration()
        trusting.trustRoots = .file(cert)
        let pool = RedisConnectionPool(endpoint: try RedisEndpoint(url: "rediss://localhost:\(tlsPort)"), tlsConfiguration: trusting)
        cleanups.append { pool.close() }
        let store = RedisRateLimitStore(pool: pool, failureMode: .failClosed, timeout: .seconds(5))
        let decision = try await store.consume(key: "tls", spec: limit)
        XCTAssertEqual(decision, RateLimitDecision(allowed: true, retryAfter: nil, remaining: 4))

        // The system's trust roots do not know this certificate: no connection, fail closed.
        let untrusting = RedisConnectionPool(endpoint: try RedisEndpoint(url: "rediss://localhost:\(tlsPort)"))
        cleanups.append { untrusting.close() }
        let refused = RedisRateLimitStore(pool: untrusting, failureMode: .failClosed, timeout: .seconds(5))
        do {
            _ = try await refused.consume(key: "tls", spec: limit)
            XCTFail("an unknown certificate was accepted")
        } catch {
            XCTAssertEqual(refused.failures(.unavailable), 1, "\(error)")
        }
        // Plain text to the TLS port is not Redis speaking: an error, never a hang.
        let plain = RedisConnectionPool(endpoint: RedisEndpoint(host: "127.0.0.1", port: tlsPort))
        cleanups.append { plain.close() }
        let confused = RedisRateLimitStore(pool: plain, failureMode: .failOpen, timeout: .milliseconds(500))
        let open = try await confused.consume(key: "tls", spec: limit)
        XCTAssertNil(open.remaining)
        XCTAssertEqual(confused.failOpenCount, 1)
    }

    /// A fake server that answers every command with `reply` (after sending `greeting`).
    private func fakeServer(greeting: String = "", reply: String) async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FakeRedisHandler(greeting: greeting, reply: reply))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        cleanups.append { try? channel.close().wait() }
        return channel.localAddress!.port!
    }

    func testGarbageRepliesAreProtocolFailures() async throws {
        let cases: [(greeting: String, reply: String)] = [
            ("", "?what\r\n"),  // an unknown type
            ("", "$2\r\nabcd\r\n"),  // a bulk string that lies about its length
            ("", ":1\r\n"),  // SCRIPT LOAD answered with an integer
            ("", "*3\r\n:1\r\n:0\r\n"),  // then an incomplete array forever: the timeout ends it
            ("+HELLO\r\n", "+OK\r\n"),  // a reply nobody asked for
        ]
        for (index, entry) in cases.enumerated() {
            let port = try await fakeServer(greeting: entry.greeting, reply: entry.reply)
            let pool = RedisConnectionPool(endpoint: RedisEndpoint(host: "127.0.0.1", port: port))
            cleanups.append { pool.close() }
            let store = RedisRateLimitStore(pool: pool, failureMode: .failClosed, timeout: .milliseconds(300))
            do {
                let decision = try await store.consume(key: "k", spec: limit)
                XCTFail("case \(index): answered \(decision)")
            } catch RateLimitError.storeUnavailable {
                let counted = RedisRateLimitStore.FailureReason.allCases.reduce(0) { $0 + store.failures($1) }
                XCTAssertEqual(counted, 1, "case \(index)")
                XCTAssertEqual(store.failClosedCount, 1, "case \(index)")
                if index < 3 { XCTAssertEqual(store.failures(.protocol), 1, "case \(index)") }
                if index == 3 { XCTAssertEqual(store.failures(.timeout), 1, "case \(index)") }
            } catch {
                XCTFail("case \(index): \(error)")
            }
        }
    }
}

/// Answers every chunk received with a fixed reply (enough for one command per write).
private final class FakeRedisHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let greeting: String
    let reply: String

    init(greeting: String, reply: String) {
        self.greeting = greeting
        self.reply = reply
    }

    func channelActive(context: ChannelHandlerContext) {
        if !greeting.isEmpty { context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: greeting)), promise: nil) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)), promise: nil)
    }
}
