import Foundation
import Logging
import NIOCore
import NIOPosix
@testable import PosternUpstream
import XCTest

final class UpstreamPoolTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var directory: String!
    private let logger = Logger(label: "postern.test", factory: { _ in SwiftLogNoOpLogHandler() })

    override func setUpWithError() throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        directory = try makeTemporaryDirectory()
    }

    override func tearDownWithError() throws {
        try group.syncShutdownGracefully()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A local port nothing listens on: bound, noted and closed again.
    private func closedPort() throws -> Int {
        let channel = try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait()
        let port = try XCTUnwrap(channel.localAddress?.port)
        try channel.close().wait()
        return port
    }

    private func configuration(_ url: String) throws -> UpstreamConfiguration {
        var configuration = UpstreamConfiguration(target: try XCTUnwrap(UpstreamTarget(url: url)))
        configuration.timeouts.connect = .seconds(5)
        return configuration
    }

    func testFailsOverToTheNextUpstreamAndMarksTheDeadOne() async throws {
        let dead = "smtp://127.0.0.1:\(try closedPort())"
        let maildir = "maildir:\(directory!)/Maildir"
        let pool = UpstreamPool(
            upstreams: [try configuration(dead), try configuration(maildir)], retryAfter: .seconds(60), heloName: "gw.example", group: group)
        // Upstreams are named host:port (or maildir:PATH) in logs, records and metrics.
        XCTAssertEqual(pool.liveUpstreams, [String(dead.dropFirst("smtp://".count)), maildir])
        let session = try await pool.openSession(logger: logger)
        XCTAssertTrue(session is MaildirRelaySession)
        XCTAssertEqual(session.upstreamName, "maildir:\(directory!)/Maildir")
        XCTAssertEqual(pool.liveUpstreams, [maildir])
        await session.close()
    }

    func testDeadUpstreamIsTriedLast() async throws {
        let dead = "smtp://127.0.0.1:\(try closedPort())"
        let maildir = "maildir:\(directory!)/Maildir"
        let pool = UpstreamPool(
            upstreams: [try configuration(dead), try configuration(maildir)], retryAfter: .seconds(60), heloName: "gw.example", group: group)
        _ = try await pool.openSession(logger: logger)
        // Make the maildir fail too: with the SMTP upstream dead, it is still tried first.
        try FileManager.default.removeItem(atPath: "\(directory!)/Maildir")
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(directory!)/Maildir", contents: Data()))
        do {
            _ = try await pool.openSession(logger: logger)
            XCTFail("no upstream can take a session")
        } catch {
            XCTAssertEqual(error.kind, .unavailable)
            let maildirFailure = try XCTUnwrap(error.detail.range(of: "maildir"))
            let smtpFailure = try XCTUnwrap(error.detail.range(of: "127.0.0.1"))
            XCTAssertLessThan(maildirFailure.lowerBound, smtpFailure.lowerBound, "live upstreams are tried before dead ones: \(error.detail)")
        }
        XCTAssertEqual(pool.liveUpstreams, [])
    }

    func testAllUpstreamsDeadThrowsUnavailable() async throws {
        let first = "smtp://127.0.0.1:\(try closedPort())"
        let second = "smtp://127.0.0.1:\(try closedPort())"
        let pool = UpstreamPool(
            upstreams: [try configuration(first), try configuration(second)], retryAfter: .seconds(60), heloName: "gw.example", group: group)
        do {
            _ = try await pool.openSession(logger: logger)
            XCTFail("no upstream listens")
        } catch {
            XCTAssertEqual(error.kind, .unavailable)
        }
        XCTAssertEqual(pool.liveUpstreams, [])
        // Still unavailable when everything is already marked dead.
        do {
            _ = try await pool.openSession(logger: logger)
            XCTFail("no upstream listens")
        } catch {
            XCTAssertEqual(error.kind, .unavailable)
        }
    }

    func testDeadUpstreamComesBackAfterRetryAfter() async throws {
        let dead = "smtp://127.0.0.1:\(try closedPort())"
        let maildir = "maildir:\(directory!)/Maildir"
        let pool = UpstreamPool(
            upstreams: [try configuration(dead), try configuration(maildir)], retryAfter: .milliseconds(50), heloName: "gw.example", group: group)
        _ = try await pool.openSession(logger: logger)
        XCTAssertEqual(pool.liveUpstreams, [maildir])
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertEqual(pool.liveUpstreams, [String(dead.dropFirst("smtp://".count)), maildir])
    }

    func testEmptyPoolThrowsUnavailable() async throws {
        let pool = UpstreamPool(upstreams: [], retryAfter: .seconds(1), heloName: "gw.example", group: group)
        do {
            _ = try await pool.openSession(logger: logger)
            XCTFail("an empty pool opened a session")
        } catch {
            XCTAssertEqual(error.kind, .unavailable)
        }
    }
}
