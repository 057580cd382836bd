import Foundation
import Logging
import NIOCore
import NIOPosix
@testable import PosternUpstream
import SMTPNIO
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
            upstreams: [try configuration(dead), try configuration(maildir)], retryAfter: .seconds(60), probe: .off, heloName: "gw.example", group: group)
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
            upstreams: [try configuration(dead), try configuration(maildir)], retryAfter: .seconds(60), probe: .off, heloName: "gw.example", group: group)
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
            upstreams: [try configuration(first), try configuration(second)], retryAfter: .seconds(60), probe: .off, heloName: "gw.example", group: group)
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

    func testWithoutProbesADeadUpstreamComesBackAfterRetryAfter() async throws {
        let dead = "smtp://127.0.0.1:\(try closedPort())"
        let maildir = "maildir:\(directory!)/Maildir"
        let pool = UpstreamPool(
            upstreams: [try configuration(dead), try configuration(maildir)], retryAfter: .milliseconds(50), probe: .off, heloName: "gw.example", group: group)
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

    // MARK: Health: probes, failure kinds, log lines

    /// Waits (polling, up to `timeout`) until `condition` holds; false when it never did.
    private func eventually(_ timeout: Duration = .seconds(5), _ condition: () -> Bool) async throws -> Bool {
        let clock = ContinuousClock()
        let end = clock.now + timeout
        while clock.now < end {
            if condition() { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }

    private func smtp(_ port: Int) throws -> UpstreamConfiguration {
        var configuration = try configuration("smtp://127.0.0.1:\(port)")
        configuration.timeouts.greeting = .milliseconds(500)
        configuration.timeouts.ehlo = .milliseconds(500)
        return configuration
    }

    func testAProbeClearsTheMarkAsSoonAsTheUpstreamIsBack() async throws {
        let port = try closedPort()
        let log = CapturedLog()
        let failures = RecordedFailures()
        let pool = UpstreamPool(
            upstreams: [try smtp(port)], retryAfter: .seconds(60),
            probe: UpstreamProbeSettings(interval: .milliseconds(100), timeout: .seconds(1)),
            heloName: "gw.example", group: group, logger: log.logger, events: failures.events)
        defer { pool.stopProbing() }
        do {
            _ = try await pool.openSession(logger: logger)
            XCTFail("nothing listens")
        } catch {
            XCTAssertEqual(error.failure, .refused)
        }
        XCTAssertEqual(pool.liveUpstreams, [])
        // Probes keep failing meanwhile: counted, never logged one by one.
        let name = "127.0.0.1:\(port)"
        let probed = try await eventually { failures.all.count >= 3 }
        XCTAssertTrue(probed, "\(failures.all)")
        XCTAssertEqual(Set(failures.all), ["\(name) refused"])
        XCTAssertEqual(log.lines.filter { $0.contains("upstream down") }.count, 1, "\(log.lines)")
        XCTAssertFalse(log.lines.contains { $0.contains("still down") })
        // The upstream returns where it was; no client comes, and yet it is up again.
        let server = try await FakeSMTPServer(script: .init(), group: group, port: port)
        let recovered = try await eventually { pool.liveUpstreams == [name] }
        await server.stop()
        XCTAssertTrue(recovered, "the probe did not clear the mark")
        // A probe is connect, greeting, EHLO, QUIT.
        XCTAssertEqual(server.transcript.commands, ["EHLO gw.example", "QUIT"])
        let back = try XCTUnwrap(log.lines.first { $0.contains("upstream up again") }, "\(log.lines)")
        XCTAssertTrue(back.hasPrefix("notice "), back)
        XCTAssertTrue(back.contains("upstream=\(name)") && back.contains("outage_s=") && back.contains("failures="), back)
        let down = try XCTUnwrap(log.lines.first { $0.contains("upstream down") })
        XCTAssertTrue(down.hasPrefix("warning ") && down.contains("kind=refused") && down.contains("probe_interval_s=0.1"), down)
    }

    func testWithOneUpstreamEveryMailTriesItEvenWhileMarkedDown() async throws {
        let port = try closedPort()
        let pool = UpstreamPool(
            upstreams: [try smtp(port)], retryAfter: .seconds(60), probe: .off, heloName: "gw.example", group: group)
        _ = try? await pool.openSession(logger: logger)
        XCTAssertEqual(pool.liveUpstreams, [], "marked down for retry_after")
        // Nothing else to try: the next session tries it at once, and its success clears the mark.
        let server = try await FakeSMTPServer(script: .init(), group: group, port: port)
        let session = try await pool.openSession(logger: logger)
        XCTAssertEqual(pool.liveUpstreams, ["127.0.0.1:\(port)"])
        await session.close()
        await server.stop()
    }

    func testWithSeveralUpstreamsADownOneRejoinsItsPlaceWhenAProbeSucceeds() async throws {
        let firstPort = try closedPort()
        let second = try await FakeSMTPServer(script: .init(), group: group)
        let pool = UpstreamPool(
            upstreams: [try smtp(firstPort), try smtp(second.port)], retryAfter: .seconds(60),
            probe: UpstreamProbeSettings(interval: .milliseconds(100), timeout: .seconds(1)), heloName: "gw.example", group: group)
        defer { pool.stopProbing() }
        // The first is down: sessions fail over to the second without trying the first again.
        for _ in 0..<3 {
            let session = try await pool.openSession(logger: logger)
            XCTAssertEqual(session.upstreamName, "127.0.0.1:\(second.port)")
            await session.close()
        }
        XCTAssertEqual(pool.liveUpstreams, ["127.0.0.1:\(second.port)"])
        // It comes back: after one probe it is first in line again.
        let first = try await FakeSMTPServer(script: .init(), group: group, port: firstPort)
        let recovered = try await eventually { pool.liveUpstreams.count == 2 }
        XCTAssertTrue(recovered)
        let session = try await pool.openSession(logger: logger)
        XCTAssertEqual(session.upstreamName, "127.0.0.1:\(firstPort)")
        await session.close()
        await first.stop()
        await second.stop()
    }

    func testEachWayAConnectionCanFailIsCountedByItsKind() async throws {
        let closed = try closedPort()
        var scripts: [(FakeSMTPServer.Script, String)] = []
        var refusing = FakeSMTPServer.Script()
        refusing.greeting = "554 5.3.2 not now\r\n"
        scripts.append((refusing, "greeting_refused"))
        var mute = FakeSMTPServer.Script()
        mute.greeting = ""
        scripts.append((mute, "timeout"))
        var noHello = FakeSMTPServer.Script()
        noHello.capabilities = nil
        noHello.refusesHELO = true
        scripts.append((noHello, "ehlo_refused"))
        var noTLS = FakeSMTPServer.Script()
        noTLS.capabilities = ["PIPELINING"]
        scripts.append((noTLS, "tls"))
        var noAuth = FakeSMTPServer.Script()
        noAuth.capabilities = ["PIPELINING"]
        scripts.append((noAuth, "auth"))
        var dropping = FakeSMTPServer.Script()
        dropping.hangUpOn = "EHLO"
        scripts.append((dropping, "lost"))
        var servers: [FakeSMTPServer] = []
        var upstreams = [try smtp(closed)]
        var expected = ["127.0.0.1:\(closed) refused"]
        for (script, kind) in scripts {
            let server = try await FakeSMTPServer(script: script, group: group)
            servers.append(server)
            var configuration = try smtp(server.port)
            if kind == "tls" { configuration.tls = .require }
            if kind == "auth" { configuration.credentials = .init(username: "u", password: "p") }
            upstreams.append(configuration)
            expected.append("127.0.0.1:\(server.port) \(kind)")
        }
        let failures = RecordedFailures()
        let pool = UpstreamPool(upstreams: upstreams, retryAfter: .seconds(60), probe: .off, heloName: "gw.example", group: group,
                                events: failures.events)
        do {
            _ = try await pool.openSession(logger: logger)
            XCTFail("every upstream fails")
        } catch {
            XCTAssertEqual(error.kind, .unavailable)
        }
        XCTAssertEqual(failures.all, expected)
        for server in servers { await server.stop() }
    }

    func testConnectErrorsAreDescribedAsAnOperatorReadsThem() {
        XCTAssertEqual(describeConnectionError(ChannelError.connectTimeout(.seconds(3))), "connect timed out after 3 s")
        XCTAssertEqual(describeConnectionError(IOError(errnoCode: ECONNREFUSED, reason: "connect")), "Connection refused")
    }
}
