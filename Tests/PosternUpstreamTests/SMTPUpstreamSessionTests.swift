import Foundation
import Logging
import NIOCore
import NIOPosix
@testable import PosternUpstream
import SMTPCore
import XCTest

final class SMTPUpstreamSessionTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var server: FakeSMTPServer?
    private var directory: String!
    private let logger = Logger(label: "postern.test", factory: { _ in SwiftLogNoOpLogHandler() })

    override func setUpWithError() throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        directory = try makeTemporaryDirectory()
    }

    override func tearDown() async throws {
        await server?.stop()
        server = nil
        try await group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private var transcript: FakeSMTPServer.Transcript { server!.transcript }

    /// Starts a fake server with `script` and opens a session to it.
    private func open(
        _ script: FakeSMTPServer.Script, tls: UpstreamTLSMode = .off, credentials: UpstreamCredentials? = nil
    ) async throws(UpstreamError) -> SMTPUpstreamSession {
        let server: FakeSMTPServer
        do {
            server = try await FakeSMTPServer(script: script, group: group)
        } catch {
            throw UpstreamError(.localError, "fake server did not start: \(error)")
        }
        self.server = server
        var configuration = UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port))
        configuration.tls = tls
        configuration.credentials = credentials
        configuration.timeouts.connect = .seconds(5)
        configuration.timeouts.greeting = .seconds(10)
        configuration.timeouts.ehlo = .seconds(10)
        return try await SMTPUpstreamSession.open(
            configuration, host: "127.0.0.1", port: server.port, heloName: "gw.example", group: group, logger: logger)
    }

    private func openFailure(_ script: FakeSMTPServer.Script, tls: UpstreamTLSMode = .off, credentials: UpstreamCredentials? = nil) async -> UpstreamError? {
        do {
            let session = try await open(script, tls: tls, credentials: credentials)
            await session.close()
            return nil
        } catch {
            return error
        }
    }

    private func mailbox(_ localPart: String, _ domain: String = "example.org") -> Mailbox {
        Mailbox(localPart: localPart, domain: domain)
    }

    private func spool(_ bytes: [UInt8], threshold: Int = 1 << 20) throws -> MessageSpool {
        let spool = MessageSpool(memoryThreshold: threshold, directory: directory)
        try spool.append(ByteBuffer(bytes: bytes))
        return spool
    }

    /// RFC 5321 §4.5.2 transparency, written the obvious way, to check the wire against.
    private func referenceStuffed(_ content: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        var atLineStart = true
        var previous: UInt8 = 0
        for byte in content {
            if atLineStart && byte == UInt8(ascii: ".") { output.append(byte) }
            output.append(byte)
            atLineStart = previous == UInt8(ascii: "\r") && byte == UInt8(ascii: "\n")
            previous = byte
        }
        if !atLineStart { output += Array("\r\n".utf8) }
        return output + Array(".\r\n".utf8)
    }

    // MARK: Opening

    func testEHLOCapabilitiesAreParsed() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["PIPELINING", "SIZE 10240000", "8bitmime", "AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES"]
        let session = try await open(script)
        XCTAssertEqual(session.capabilities, [
            "PIPELINING": "", "SIZE": "10240000", "8BITMIME": "", "AUTH": "PLAIN LOGIN", "ENHANCEDSTATUSCODES": "",
        ])
        XCTAssertEqual(session.upstreamName, "127.0.0.1:\(server!.port)")
        XCTAssertTrue(session.isUsable)
        XCTAssertFalse(session.isTLSActive)
        XCTAssertEqual(transcript.commands, ["EHLO gw.example"])
        await session.close()
        XCTAssertEqual(transcript.commands, ["EHLO gw.example", "QUIT"])
        XCTAssertFalse(session.isUsable)
    }

    func testHELOFallbackWhenEHLOIsRefused() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = nil
        let session = try await open(script)
        XCTAssertEqual(session.capabilities, [:])
        XCTAssertEqual(transcript.commands, ["EHLO gw.example", "HELO gw.example"])
        await session.close()
    }

    func testGreeting554IsUnavailable() async throws {
        var script = FakeSMTPServer.Script()
        script.greeting = "554 5.3.2 no service here\r\n"
        let error = await openFailure(script)
        XCTAssertEqual(error?.kind, .unavailable)
        XCTAssertFalse(transcript.commands.contains("EHLO gw.example"), "no EHLO after a 554 greeting")
    }

    func testRequiredTLSWithoutSTARTTLSIsUnavailable() async throws {
        let error = await openFailure(FakeSMTPServer.Script(), tls: .require)
        XCTAssertEqual(error?.kind, .unavailable)
        XCTAssertFalse(transcript.commands.contains("STARTTLS"))
    }

    func testOpportunisticTLSWithoutSTARTTLSCarriesOnInPlainText() async throws {
        let session = try await open(FakeSMTPServer.Script(), tls: .opportunistic)
        XCTAssertFalse(session.isTLSActive)
        XCTAssertEqual(transcript.commands, ["EHLO gw.example"])
        await session.close()
    }

    func testAuthPlainSendsTheRFC4616Token() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["AUTH LOGIN PLAIN"]
        let session = try await open(script, credentials: UpstreamCredentials(username: "relay", password: "s3cret"))
        let token = Data("\0relay\0s3cret".utf8).base64EncodedString()
        XCTAssertEqual(transcript.commands, ["EHLO gw.example", "AUTH PLAIN \(token)"])
        await session.close()
    }

    func testCredentialsWithoutAuthPlainAreUnavailable() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["AUTH LOGIN"]
        let error = await openFailure(script, credentials: UpstreamCredentials(username: "relay", password: "s3cret"))
        XCTAssertEqual(error?.kind, .unavailable)
        XCTAssertFalse(transcript.commands.contains { $0.hasPrefix("AUTH") })
    }

    // MARK: MAIL and RCPT

    func testSMTPUTF8ToAServerWithoutItIsRefusedWithoutContactingIt() async throws {
        let session = try await open(FakeSMTPServer.Script())
        // A typed error, not a reply made up as if the server had sent it.
        for (path, parameters) in [(mailbox("alice"), MailParameters(smtpUTF8: true)), (mailbox("jörg"), MailParameters())] {
            do {
                _ = try await session.mail(.mailbox(path), parameters)
                XCTFail("\(path) was sent")
            } catch {
                XCTAssertEqual(error.kind, .unsupported(.smtpUTF8))
            }
        }
        XCTAssertTrue(session.isUsable, "the connection is fine")
        await session.reset()
        XCTAssertEqual(transcript.commands, ["EHLO gw.example", "RSET"], "no MAIL reached the server")
        await session.close()
    }

    func testSMTPUTF8IsPassedToAServerThatOffersIt() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["SMTPUTF8", "8BITMIME"]
        let session = try await open(script)
        let reply = try await session.mail(.mailbox(mailbox("jörg")), MailParameters(body: .eightBitMIME, smtpUTF8: true))
        XCTAssertEqual(reply.code, 250)
        XCTAssertEqual(transcript.commands.last, "MAIL FROM:<jörg@example.org> BODY=8BITMIME SMTPUTF8")
        await session.close()
    }

    func testEightBitMIMEToAServerWithoutItIsRefusedLocally() async throws {
        let session = try await open(FakeSMTPServer.Script())
        do {
            _ = try await session.mail(.mailbox(mailbox("alice")), MailParameters(body: .eightBitMIME))
            XCTFail("BODY=8BITMIME was sent")
        } catch {
            XCTAssertEqual(error.kind, .unsupported(.eightBitMIME))
        }
        XCTAssertTrue(session.isUsable)
        await session.reset()
        XCTAssertEqual(transcript.commands, ["EHLO gw.example", "RSET"])
        await session.close()
    }

    func testDSNAndSizeParametersAreDroppedWhenNotAdvertised() async throws {
        let session = try await open(FakeSMTPServer.Script())
        let mail = try await session.mail(.mailbox(mailbox("alice")), MailParameters(size: 1234, ret: "FULL", envelopeID: "QQ314159"))
        XCTAssertEqual(mail.code, 250)
        let rcpt = try await session.recipient(
            .mailbox(mailbox("bob", "example.net")), RecipientParameters(notify: "SUCCESS,FAILURE", originalRecipient: "rfc822;bob@example.net"))
        XCTAssertEqual(rcpt.code, 250)
        XCTAssertEqual(Array(transcript.commands.dropFirst()), ["MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>"])
        await session.close()
    }

    func testDSNAndSizeParametersArePassedWhenAdvertised() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["DSN", "SIZE 100000"]
        let session = try await open(script)
        _ = try await session.mail(.null, MailParameters(size: 1234, ret: "HDRS", envelopeID: "QQ314159"))
        _ = try await session.recipient(.postmaster, RecipientParameters(notify: "NEVER", originalRecipient: "rfc822;postmaster"))
        XCTAssertEqual(Array(transcript.commands.dropFirst()), [
            "MAIL FROM:<> SIZE=1234 RET=HDRS ENVID=QQ314159", "RCPT TO:<Postmaster> NOTIFY=NEVER ORCPT=rfc822;postmaster",
        ])
        await session.close()
    }

    // MARK: Message content

    func testDATAIsDotStuffedOnTheWire() async throws {
        let session = try await open(FakeSMTPServer.Script())
        _ = try await session.mail(.mailbox(mailbox("alice")), MailParameters())
        _ = try await session.recipient(.mailbox(mailbox("bob")), RecipientParameters())
        let content = try spool(Array(".hidden\r\n..two\r\nmiddle.dot\r\n.\r\nlast line".utf8))
        let reply = try await session.message(OutgoingMessage(prefix: ByteBuffer(string: "Received: by gw.example\r\n"), content: content, chunked: false))
        XCTAssertEqual(reply.code, 250)
        XCTAssertTrue(transcript.commands.contains("DATA"))
        XCTAssertEqual(transcript.messages.map { String(decoding: $0, as: UTF8.self) }, [
            "Received: by gw.example\r\n..hidden\r\n...two\r\nmiddle.dot\r\n..\r\nlast line\r\n.\r\n",
        ])
        await session.close()
    }

    func testLargeSpooledMessageIsDotStuffedOnTheWire() async throws {
        let session = try await open(FakeSMTPServer.Script())
        _ = try await session.mail(.null, MailParameters())
        _ = try await session.recipient(.postmaster, RecipientParameters())
        // Lines of varying length, some starting with dots, well past the 64 KiB flush size.
        var content: [UInt8] = []
        var line = 0
        while content.count < 600_000 {
            if line % 3 == 0 { content.append(UInt8(ascii: ".")) }
            content += Array(repeating: UInt8(ascii: "a") + UInt8(line % 26), count: line % 97)
            content += Array("\r\n".utf8)
            line += 1
        }
        let header = Array("Subject: big\r\n\r\n".utf8)
        let reply = try await session.message(OutgoingMessage(prefix: ByteBuffer(bytes: header), content: try spool(content, threshold: 64 * 1024), chunked: false))
        XCTAssertEqual(reply.code, 250)
        XCTAssertEqual(transcript.messages.count, 1)
        XCTAssertTrue(transcript.messages.first == referenceStuffed(header + content), "the wire matches RFC 5321 §4.5.2 stuffing")
        await session.close()
    }

    func testBDATCarriesTheMessageUnstuffedWhenCHUNKINGIsAdvertised() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["CHUNKING", "PIPELINING"]
        let session = try await open(script)
        _ = try await session.mail(.null, MailParameters())
        _ = try await session.recipient(.postmaster, RecipientParameters())
        let header = Array("Received: by gw.example\r\n".utf8)
        let content = Array(".hidden\r\n.\r\nno final line end".utf8)
        let reply = try await session.message(OutgoingMessage(prefix: ByteBuffer(bytes: header), content: try spool(content), chunked: true))
        XCTAssertEqual(reply.code, 250)
        XCTAssertEqual(transcript.commands.last, "BDAT \(header.count + content.count) LAST")
        XCTAssertFalse(transcript.commands.contains("DATA"))
        XCTAssertEqual(transcript.messages, [header + content])
        await session.close()
    }

    func testBDATWithContentSpooledOnDisk() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["CHUNKING"]
        let session = try await open(script)
        _ = try await session.mail(.null, MailParameters())
        _ = try await session.recipient(.postmaster, RecipientParameters())
        let content = pseudoRandomBytes(count: 300_000, seed: 9)
        let reply = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool(content, threshold: 1024), chunked: true))
        XCTAssertEqual(reply.code, 250)
        XCTAssertEqual(transcript.commands.last, "BDAT 300000 LAST")
        XCTAssertTrue(transcript.messages == [content])
        await session.close()
    }

    func testDATAIsUsedWhenTheClientDidNotUseBDAT() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["CHUNKING"]
        let session = try await open(script)
        _ = try await session.mail(.null, MailParameters())
        _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool(Array("x\r\n".utf8)), chunked: false))
        XCTAssertTrue(transcript.commands.contains("DATA"))
        XCTAssertFalse(transcript.commands.contains { $0.hasPrefix("BDAT") })
        XCTAssertEqual(transcript.messages, [Array("x\r\n.\r\n".utf8)])
        await session.close()
    }

    func testDATAIsUsedWhenTheServerLacksCHUNKING() async throws {
        let session = try await open(FakeSMTPServer.Script())
        _ = try await session.mail(.null, MailParameters())
        _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool(Array("x\r\n".utf8)), chunked: true))
        XCTAssertTrue(transcript.commands.contains("DATA"))
        XCTAssertFalse(transcript.commands.contains { $0.hasPrefix("BDAT") })
        await session.close()
    }

    func testSessionIsReusedAcrossTransactions() async throws {
        let session = try await open(FakeSMTPServer.Script())
        for index in 0..<3 {
            _ = try await session.mail(.mailbox(mailbox("sender\(index)")), MailParameters())
            _ = try await session.recipient(.postmaster, RecipientParameters())
            let reply = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool(Array("n: \(index)\r\n".utf8)), chunked: false))
            XCTAssertEqual(reply.code, 250)
        }
        XCTAssertEqual(transcript.messages.count, 3)
        XCTAssertTrue(session.isUsable)
        await session.close()
    }

    // MARK: Broken connections

    func testServerHangingUpMakesTheSessionUnusable() async throws {
        var script = FakeSMTPServer.Script()
        script.hangUpOn = "RSET"
        let session = try await open(script)
        await session.reset()
        XCTAssertFalse(session.isUsable)
        await session.close()
    }

    func testXCLIENTTellsTheUpstreamWhoTheClientIsThenEHLOAgain() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["PIPELINING", "XCLIENT NAME ADDR PORT PROTO HELO LOGIN"]
        let server = try await FakeSMTPServer(script: script, group: group)
        defer { Task { await server.stop() } }
        let client = ClientIdentity(address: IPAddress("2001:db8::7")!, port: 40000, helo: "client +x.example", protocolName: "ESMTP")
        let session = try await SMTPUpstreamSession.open(
            UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port)), host: "127.0.0.1", port: server.port,
            heloName: "gw.example", group: group, logger: logger, client: client)
        XCTAssertEqual(session.forwardedWith, "xclient")
        let commands = server.transcript.commands
        XCTAssertEqual(commands.filter { $0.hasPrefix("EHLO") }.count, 2, "EHLO again after XCLIENT: \(commands)")
        XCTAssertTrue(commands.contains("XCLIENT ADDR=IPV6:2001:db8::7 PORT=40000 NAME=[UNAVAILABLE] HELO=client+20+2Bx.example PROTO=ESMTP"), "\(commands)")
        await session.close()
    }

    func testXFORWARDPrecedesEveryMAILWhenOnlyItIsOffered() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["PIPELINING", "XFORWARD NAME ADDR PROTO HELO SOURCE"]
        let server = try await FakeSMTPServer(script: script, group: group)
        defer { Task { await server.stop() } }
        let client = ClientIdentity(address: IPAddress("192.0.2.7")!, port: 40000, helo: "client.example", protocolName: "SMTP",
                                    name: ClientName(.tempfail))
        let session = try await SMTPUpstreamSession.open(
            UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port)), host: "127.0.0.1", port: server.port,
            heloName: "gw.example", group: group, logger: logger, client: client)
        XCTAssertEqual(session.forwardedWith, "xforward")
        _ = try await session.mail(.null, MailParameters())
        await session.reset()
        _ = try await session.mail(.null, MailParameters())
        let commands = server.transcript.commands
        let forward = "XFORWARD ADDR=192.0.2.7 NAME=[TEMPUNAVAIL] HELO=client.example PROTO=SMTP SOURCE=REMOTE"
        XCTAssertEqual(commands.filter { $0 == forward }.count, 2, "\(commands)")
        XCTAssertEqual(commands.firstIndex(of: forward).map { commands[$0 + 1].hasPrefix("MAIL") }, true)
        await session.close()
    }

    /// Opens a session that forwards `client` with XFORWARD to a server that answers XFORWARD
    /// only with the next command, MAIL timing out after a second.
    private func openHoldingXFORWARD(pipelining: Bool) async throws -> (SMTPUpstreamSession, FakeSMTPServer) {
        var script = FakeSMTPServer.Script()
        script.capabilities = (pipelining ? ["PIPELINING"] : []) + ["XFORWARD NAME ADDR PROTO HELO"]
        script.answersXFORWARDWithTheNextCommand = true
        let server = try await FakeSMTPServer(script: script, group: group)
        var configuration = UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port))
        configuration.timeouts.mail = .seconds(1)
        let session = try await SMTPUpstreamSession.open(
            configuration, host: "127.0.0.1", port: server.port, heloName: "gw.example", group: group, logger: logger,
            client: ClientIdentity(address: IPAddress("192.0.2.7")!, port: 1, helo: "h.example", protocolName: "ESMTP"))
        return (session, server)
    }

    func testXFORWARDAndMAILGoInOneWriteWhenTheUpstreamPipelines() async throws {
        let (session, server) = try await openHoldingXFORWARD(pipelining: true)
        defer { Task { await server.stop() } }
        let reply = try await session.mail(.null, MailParameters())
        XCTAssertEqual(reply.code, 250, "MAIL's own reply, after XFORWARD's")
        XCTAssertEqual(reply.enhanced, EnhancedStatusCode(2, 1, 0))
        let reply2 = try await session.recipient(.postmaster, RecipientParameters())
        XCTAssertEqual(reply2.code, 250, "the replies stay in step")
        XCTAssertEqual(server.transcript.commands.suffix(3).map { String($0.prefix(8)) }, ["XFORWARD", "MAIL FRO", "RCPT TO:"])
        await session.close()
    }

    func testXFORWARDWaitsForItsReplyWhenTheUpstreamDoesNotPipeline() async throws {
        let (session, server) = try await openHoldingXFORWARD(pipelining: false)
        defer { Task { await server.stop() } }
        do {
            _ = try await session.mail(.null, MailParameters())
            XCTFail("MAIL was sent before XFORWARD was answered")
        } catch {
            XCTAssertEqual(error.kind, .timedOut)
            XCTAssertTrue(error.detail.contains("XFORWARD"), error.detail)
        }
        XCTAssertFalse(server.transcript.commands.contains { $0.hasPrefix("MAIL") })
    }

    func testXCLIENTWithoutADDRFallsBackToXFORWARD() async throws {
        // smtp-sink offers "XCLIENT NAME HELO": useless for the address, so XFORWARD it is.
        var script = FakeSMTPServer.Script()
        script.capabilities = ["XCLIENT NAME HELO", "XFORWARD NAME ADDR PROTO HELO"]
        let server = try await FakeSMTPServer(script: script, group: group)
        defer { Task { await server.stop() } }
        let session = try await SMTPUpstreamSession.open(
            UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port)), host: "127.0.0.1", port: server.port,
            heloName: "gw.example", group: group, logger: logger,
            client: ClientIdentity(address: IPAddress("192.0.2.7")!, port: 1, helo: "h.example", protocolName: "ESMTP"))
        XCTAssertEqual(session.forwardedWith, "xforward")
        _ = try await session.mail(.null, MailParameters())
        let commands = server.transcript.commands
        XCTAssertFalse(commands.contains { $0.hasPrefix("XCLIENT") })
        XCTAssertTrue(commands.contains("XFORWARD ADDR=192.0.2.7 NAME=[UNAVAILABLE] HELO=h.example PROTO=ESMTP"), "\(commands)")
        await session.close()
    }

    func testForwardClientOffDoesNeither() async throws {
        var script = FakeSMTPServer.Script()
        script.capabilities = ["XCLIENT ADDR", "XFORWARD ADDR"]
        let server = try await FakeSMTPServer(script: script, group: group)
        defer { Task { await server.stop() } }
        var configuration = UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: server.port))
        configuration.forwardClient = .off
        let session = try await SMTPUpstreamSession.open(
            configuration, host: "127.0.0.1", port: server.port, heloName: "gw.example", group: group, logger: logger,
            client: ClientIdentity(address: IPAddress("192.0.2.7")!, port: 1, helo: nil, protocolName: "ESMTP"))
        XCTAssertNil(session.forwardedWith)
        XCTAssertFalse(server.transcript.commands.contains { $0.hasPrefix("XCLIENT") || $0.hasPrefix("XFORWARD") })
        await session.close()
    }

    func testCommandsAfterTheServerHungUpFailInsteadOfHanging() async throws {
        var script = FakeSMTPServer.Script()
        script.shutDownOn = "RCPT"
        let session = try await open(script)
        _ = try await session.mail(.null, MailParameters())
        let shutdown = try await session.recipient(.postmaster, RecipientParameters())
        XCTAssertEqual(shutdown.code, 421)
        try await Task.sleep(for: .milliseconds(100))
        do {
            _ = try await session.recipient(.postmaster, RecipientParameters())
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error.kind, .connectionLost)
        }
        do {
            _ = try await session.mail(.null, MailParameters())
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error.kind, .connectionLost)
        }
        await session.close()
    }

    func testServerShuttingDownReturnsThe421AndMakesTheSessionUnusable() async throws {
        var script = FakeSMTPServer.Script()
        script.shutDownOn = "RCPT"
        let session = try await open(script)
        _ = try await session.mail(.null, MailParameters())
        let reply = try await session.recipient(.postmaster, RecipientParameters())
        XCTAssertEqual(reply.code, 421)
        XCTAssertFalse(session.isUsable)
        await session.close()
        XCTAssertFalse(transcript.commands.contains("QUIT"), "no QUIT after a 421")
    }
}
