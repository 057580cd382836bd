import Foundation
import Logging
import NIOCore
import NIOPosix
@testable import PosternUpstream
import SMTPCore
import XCTest

/// `RelayTarget` and `MaildirTarget`: one Delivery per transaction, against a scripted server.
final class DeliveryTargetTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var servers: [FakeSMTPServer] = []
    /// Groups of two event loops some tests make, shut down after the test.
    private var groups: [MultiThreadedEventLoopGroup] = []
    private var directory: String!
    private let logger = Logger(label: "postern.test", factory: { _ in SwiftLogNoOpLogHandler() })

    override func setUp() async throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        directory = try makeTemporaryDirectory()
    }

    override func tearDown() async throws {
        for server in servers { await server.stop() }
        servers = []
        for extra in groups { try await extra.shutdownGracefully() }
        groups = []
        try await group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func pool(_ script: FakeSMTPServer.Script = FakeSMTPServer.Script(), idle: Int = 16) async throws -> (UpstreamPool, FakeSMTPServer) {
        let server = try await FakeSMTPServer(script: script, group: group)
        servers.append(server)
        var configuration = UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port))
        configuration.tls = .off
        configuration.idleConnections = idle
        configuration.timeouts.connect = .seconds(5)
        return (UpstreamPool(upstreams: [configuration], retryAfter: .seconds(60), heloName: "gw.example", group: group), server)
    }

    private let client = ClientIdentity(address: IPAddress("192.0.2.7")!, port: 4000, helo: "client.example", protocolName: "ESMTP")

    private func envelope(_ sender: String = "alice", client: ClientIdentity? = nil, parameters: MailParameters = MailParameters()) -> DeliveryEnvelope {
        DeliveryEnvelope(client: client ?? self.client, reversePath: .mailbox(Mailbox(localPart: sender, domain: "example.org")),
                         parameters: parameters)
    }

    private func spool(_ text: String) throws -> MessageSpool {
        let spool = MessageSpool(memoryThreshold: 1 << 20, directory: directory)
        try spool.append(ByteBuffer(string: text))
        return spool
    }

    private let bob = ForwardPath.mailbox(Mailbox(localPart: "bob", domain: "example.net"))

    func testOneDeliveryPerTransactionOnTheSessionsConnection() async throws {
        let (pool, server) = try await pool()
        let target = pool.makeTarget(logger: logger)
        for sender in ["alice", "carol"] {
            let start = try await target.begin(envelope(sender))
            XCTAssertEqual(start.reply.code, 250)
            XCTAssertEqual(start.upstream, "127.0.0.1:\(server.port)")
            let delivery = try XCTUnwrap(start.delivery)
            let rcpt = try await delivery.addRecipient(bob, RecipientParameters())
            XCTAssertEqual(rcpt.code, 250)
            let reply = try await delivery.commit(OutgoingMessage(prefix: ByteBuffer(string: "Received: x\r\n"), content: try spool("Subject: s\r\n\r\nhi\r\n"), chunked: false))
            XCTAssertEqual(reply.code, 250)
        }
        await target.finish()
        XCTAssertEqual(server.transcript.commands.filter { $0.hasPrefix("EHLO") }.count, 1, "one connection for the session")
        XCTAssertEqual(server.transcript.messages.map { String(decoding: $0, as: UTF8.self) },
                       Array(repeating: "Received: x\r\nSubject: s\r\n\r\nhi\r\n.\r\n", count: 2))
        XCTAssertEqual(pool.idleCount, 1, "a clean connection is kept for the next session")
    }

    func testARefusedMAILHasNoDelivery() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["PIPELINING"]
        let (pool, _) = try await pool(script)
        let target = pool.makeTarget(logger: logger)
        // No SMTPUTF8 offered: a typed error, and the connection stays for the next try.
        do {
            _ = try await target.begin(envelope("jörg", parameters: MailParameters(smtpUTF8: true)))
            XCTFail("sent")
        } catch {
            XCTAssertEqual(error.kind, .unsupported(.smtpUTF8))
        }
        let start = try await target.begin(envelope())
        XCTAssertNotNil(start.delivery)
        await target.finish()
    }

    func testSkippingReplacesTheHeaderSectionOverDATAAndBDAT() async throws {
        for chunking in [false, true] {
            var script = FakeSMTPServer.Script()
            if chunking { script.capabilities = ["PIPELINING", "CHUNKING"] }
            let (pool, server) = try await pool(script)
            let target = pool.makeTarget(logger: logger)
            let start = try await target.begin(envelope())
            let delivery = try XCTUnwrap(start.delivery)
            _ = try await delivery.addRecipient(bob, RecipientParameters())
            let original = "Subject: old\r\n\r\n.body\r\n"
            let message = OutgoingMessage(prefix: ByteBuffer(string: "Received: x\r\nSubject: [TAG] old\r\n\r\n"),
                                          content: try spool(original), skipping: "Subject: old\r\n\r\n".utf8.count, chunked: true)
            XCTAssertEqual(message.size, "Received: x\r\nSubject: [TAG] old\r\n\r\n.body\r\n".utf8.count)
            _ = try await delivery.commit(message)
            let wire = String(decoding: try XCTUnwrap(server.transcript.messages.first), as: UTF8.self)
            XCTAssertEqual(wire, chunking ? "Received: x\r\nSubject: [TAG] old\r\n\r\n.body\r\n"
                                          : "Received: x\r\nSubject: [TAG] old\r\n\r\n..body\r\n.\r\n", "chunking \(chunking)")
            await target.finish()
        }
    }

    func testAKeptConnectionThatAnswers421IsRetriedOnceOnAFreshOne() async throws {
        var script = FakeSMTPServer.Script()
        script.shutDownOn = "MAIL"
        let (pool, server) = try await pool(script)
        // A first session opens a connection (ETRN) and leaves it to the pool.
        let first = pool.makeTarget(logger: logger)
        _ = try await first.etrn("example.org", client: client)
        await first.finish()
        XCTAssertEqual(pool.idleCount, 1)
        // The next session takes it; the upstream closes it at MAIL: one retry on a new connection.
        let second = pool.makeTarget(logger: logger)
        let reply = try await second.begin(envelope()).reply
        XCTAssertEqual(reply.code, 421, "the fresh connection's own answer")
        XCTAssertEqual(server.transcript.commands.filter { $0.hasPrefix("MAIL") }.count, 2)
        XCTAssertEqual(server.transcript.commands.filter { $0.hasPrefix("EHLO") }.count, 2)
        // A fresh connection is not retried.
        let third = pool.makeTarget(logger: logger)
        let again = try await third.begin(envelope())
        XCTAssertEqual(again.reply.code, 421)
        XCTAssertEqual(server.transcript.commands.filter { $0.hasPrefix("MAIL") }.count, 3)
    }

    func testAKeptConnectionThatBreaksIsRetriedOnceAndTheErrorIsTyped() async throws {
        var script = FakeSMTPServer.Script()
        script.hangUpOn = "MAIL"
        let (pool, server) = try await pool(script)
        let first = pool.makeTarget(logger: logger)
        _ = try await first.etrn("example.org", client: client)
        await first.finish()
        let second = pool.makeTarget(logger: logger)
        do {
            _ = try await second.begin(envelope())
            XCTFail("the upstream hung up")
        } catch {
            XCTAssertEqual(error.kind, .connectionLost)
        }
        XCTAssertEqual(server.transcript.commands.filter { $0.hasPrefix("MAIL") }.count, 2, "once on the kept, once on a fresh connection")
    }

    private func twoLoops() -> MultiThreadedEventLoopGroup {
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        groups.append(loops)
        return loops
    }

    /// A session on `loop` that opens (or takes) a connection with one transaction begun, then ends.
    private func session(on loop: EventLoop, of pool: UpstreamPool) async throws {
        let target = pool.makeTarget(logger: logger, eventLoop: loop)
        let reply = try await target.begin(envelope()).reply
        XCTAssertEqual(reply.code, 250)
        await target.finish()
    }

    func testAKeptConnectionServesOnlySessionsOnItsOwnEventLoop() async throws {
        let loops = twoLoops()
        let (a, b) = (loops.next(), loops.next())
        XCTAssertFalse(a === b)
        let server = try await FakeSMTPServer(script: FakeSMTPServer.Script(), group: group)
        servers.append(server)
        var configuration = UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port))
        configuration.tls = .off
        let pool = UpstreamPool(upstreams: [configuration], retryAfter: .seconds(60), heloName: "gw.example", group: loops)
        func connections() -> Int { server.transcript.commands.filter { $0.hasPrefix("EHLO") }.count }
        try await session(on: a, of: pool)
        XCTAssertEqual(pool.idleCount, 1)
        try await session(on: b, of: pool)
        XCTAssertEqual(connections(), 2, "the connection kept on the other loop is not taken")
        XCTAssertEqual(pool.idleCount, 2)
        try await session(on: a, of: pool)
        try await session(on: b, of: pool)
        XCTAssertEqual(connections(), 2, "each loop's session takes its loop's connection")
        await pool.closeIdle()
    }

    func testAFullPoolKeepsTheNewestConnectionAndClosesTheLongestKept() async throws {
        let loops = twoLoops()
        let (a, b) = (loops.next(), loops.next())
        let server = try await FakeSMTPServer(script: FakeSMTPServer.Script(), group: group)
        servers.append(server)
        var configuration = UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port))
        configuration.tls = .off
        configuration.idleConnections = 1
        let pool = UpstreamPool(upstreams: [configuration], retryAfter: .seconds(60), heloName: "gw.example", group: loops)
        func count(_ verb: String) -> Int { server.transcript.commands.filter { $0.hasPrefix(verb) }.count }
        try await session(on: a, of: pool)
        try await session(on: b, of: pool)
        XCTAssertEqual(pool.idleCount, 1)
        XCTAssertEqual(count("QUIT"), 1, "the connection kept first is closed to keep the newest")
        try await session(on: b, of: pool)
        XCTAssertEqual(count("EHLO"), 2, "the newest, kept on b, serves b")
        try await session(on: a, of: pool)
        XCTAssertEqual(count("EHLO"), 3, "a's was closed: a new one")
        await pool.closeIdle()
    }

    func testProbeEachMarksTheUpstreamsThatDoNotAnswerDown() async throws {
        let server = try await FakeSMTPServer(script: FakeSMTPServer.Script(), group: group)
        servers.append(server)
        var answering = UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port))
        answering.tls = .off
        // A port nothing listens on: the listener is closed before the probe.
        let closed = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
        let silentPort = try XCTUnwrap(closed.localAddress?.port)
        try await closed.close()
        var silent = UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: silentPort))
        silent.tls = .off
        let pool = UpstreamPool(upstreams: [silent, answering], retryAfter: .seconds(60), heloName: "gw.example", group: group)
        let count = await pool.probeEach()
        XCTAssertEqual(count, 1)
        XCTAssertEqual(pool.liveUpstreams, ["127.0.0.1:\(server.port)"])
        XCTAssertEqual(server.transcript.commands.filter { $0.hasPrefix("EHLO") || $0 == "QUIT" }, ["EHLO gw.example", "QUIT"],
                       "a probe: greeting, EHLO, QUIT")
        pool.stopProbing()
    }

    func testAnIdentityChangeOpensANewConnection() async throws {
        let (pool, server) = try await pool()
        let target = pool.makeTarget(logger: logger)
        _ = try await target.begin(envelope())
        var authenticated = client
        authenticated.login = "alice"
        _ = try await target.begin(envelope(client: authenticated))
        XCTAssertEqual(server.transcript.commands.filter { $0.hasPrefix("EHLO") }.count, 2, "after AUTH the upstream hears of the login")
        await target.finish()
    }

    func testFinishResetsAnOpenTransactionAndKeepsTheConnection() async throws {
        let (pool, server) = try await pool()
        let target = pool.makeTarget(logger: logger)
        let start = try await target.begin(envelope())
        let delivery = try XCTUnwrap(start.delivery)
        _ = try await delivery.addRecipient(bob, RecipientParameters())
        await target.finish()
        XCTAssertEqual(server.transcript.commands.last, "RSET")
        XCTAssertEqual(pool.idleCount, 1)
    }

    func testABrokenConnectionIsNotKept() async throws {
        var script = FakeSMTPServer.Script()
        script.hangUpOn = "RCPT"
        let (pool, _) = try await pool(script)
        let target = pool.makeTarget(logger: logger)
        let start = try await target.begin(envelope())
        let delivery = try XCTUnwrap(start.delivery)
        do {
            _ = try await delivery.addRecipient(bob, RecipientParameters())
            XCTFail("the upstream hung up")
        } catch {
            XCTAssertEqual(error.kind, .connectionLost)
        }
        await target.finish()
        XCTAssertEqual(pool.idleCount, 0)
    }

    func testMaildirTargetWritesThePrefixAndHonoursSkipping() async throws {
        let path = directory + "/Quarantine"
        let target = try MaildirTarget(path: path, hostname: "gw.example")
        let start = try await target.begin(envelope())
        let delivery = try XCTUnwrap(start.delivery)
        XCTAssertEqual(start.upstream, "maildir:\(path)")
        _ = try await delivery.addRecipient(bob, RecipientParameters())
        let reply = try await delivery.commit(OutgoingMessage(
            prefix: ByteBuffer(string: "X-Postern-Quarantine: rule=r\r\nSubject: new\r\n\r\n"),
            content: try spool("Subject: old\r\n\r\nbody\r\n"), skipping: "Subject: old\r\n\r\n".utf8.count, chunked: false))
        XCTAssertEqual(reply.code, 250)
        let names = directoryEntries(path + "/new")
        XCTAssertEqual(names.count, 1)
        XCTAssertEqual(try String(contentsOfFile: path + "/new/" + names[0], encoding: .utf8),
                       "Return-Path: <alice@example.org>\nDelivered-To: bob@example.net\nX-Postern-Quarantine: rule=r\nSubject: new\n\nbody\n")
        do {
            _ = try await target.etrn("example.org", client: client)
            XCTFail("a Maildir has no queue")
        } catch {
            XCTAssertEqual(error.kind, .unsupported(.etrn))
        }
    }
}
