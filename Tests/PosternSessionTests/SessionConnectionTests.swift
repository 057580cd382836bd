import NIOCore
import PosternLog
import PosternPolicy
import PosternSession
import SMTPCore
import XCTest

/// The start and the end of sessions: PROXY headers, admission, the pre-greet and
/// pipelining defences, shutdown, and what the upstream's failures become.
final class SessionConnectionTests: XCTestCase {
    private func proxied(_ configure: (inout SessionFixture.Settings) -> Void = { _ in }) -> SessionSimulator {
        SessionSimulator(configuration: SessionFixture.configuration(proxyProtocol: true, configure), peer: SessionFixture.loopback)
    }

    // MARK: PROXY protocol

    func testProxyV1AddressIsTheClientAddress() async {
        var session = proxied()
        await session.connect()
        XCTAssertTrue(session.replyLines().isEmpty, "no greeting before the header")
        await session.send("PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")
        XCTAssertEqual(session.replyLines(), ["220 mx.test ESMTP Postern"])
        XCTAssertEqual(session.machine.client, ClientEndpoint(address: IPAddress("192.0.2.7")!, port: 40_000))
        await session.send("EHLO client.example\r\n")
        _ = await session.deliver("Subject: p\r\n\r\nx")
        XCTAssertTrue(session.relayed.first?.text.hasPrefix("Received: from client.example (unknown [192.0.2.7])") ?? false)
        XCTAssertEqual(session.lastRecord?.client.ip, "192.0.2.7")
        guard case .admit(let admitted)? = session.actions.first(where: { if case .admit = $0 { return true } else { return false } }) else {
            return XCTFail("no admission")
        }
        XCTAssertEqual(admitted.address, IPAddress("192.0.2.7"), "limits judge the PROXY address")
    }

    func testProxyV2IPv6HeaderSplitAcrossReads() async {
        var header: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x21, 0x00, 36]
        header += [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [0x05]  // 2001:db8::5
        header += [UInt8](repeating: 0, count: 15) + [0x01]                            // ::1
        header += [0x9c, 0x40, 0x00, 0x19]
        var session = proxied()
        await session.connect()
        await session.trickle(header, pieceSize: 7)
        XCTAssertEqual(session.replyLines(), ["220 mx.test ESMTP Postern"])
        XCTAssertEqual(session.machine.client.address, IPAddress("2001:db8::5"))
    }

    func testProxyHeaderFromAnUntrustedPeerIsRefused() async {
        var session = SessionSimulator(configuration: SessionFixture.configuration(proxyProtocol: true), peer: SessionFixture.client)
        await session.connect()
        XCTAssertEqual(session.replyLines(), ["421 4.7.0 Protocol error, closing connection"])
        XCTAssertEqual(session.closed, .ended)
    }

    func testGarbageInsteadOfAProxyHeaderIsRefused() async {
        var session = proxied()
        await session.connect()
        await session.send("EHLO no-proxy-header\r\nMAIL FROM:<a@example.org>\r\n")
        XCTAssertEqual(session.replyLines(), ["421 4.7.0 Protocol error, closing connection"])
        XCTAssertEqual(session.closed, .ended)
        XCTAssertTrue(session.upstreamRequests.isEmpty)
    }

    func testAProxyHeaderMustArriveInTime() async {
        var session = proxied { $0.timeouts.proxyHeader = .seconds(10) }
        await session.connect()
        await session.send("PROXY TCP4 192.0.2.7")
        await session.advance(by: .seconds(10))
        XCTAssertEqual(session.closed, .ended)
        XCTAssertTrue(session.replyLines().isEmpty)
    }

    // MARK: Admission

    func testRefusedAdmissionsAreRecordedAndCounted() async {
        for (admission, reply, metric, reason) in [
            (Admission.tooManyConnections(limit: 1000), "421 4.7.0 Too many connections, try again later", "max_connections", "total(1000)"),
            (.tooManyFromAddress(limit: 50), "421 4.7.0 Too many connections from your address, try again later", "max_connections_per_ip", "perAddress(50)"),
            (.shuttingDown, "421 4.3.2 Service shutting down, closing connection", "shutting_down", "shutting down"),
        ] {
            var responders = SessionSimulator.Responders()
            responders.admit = { _ in admission }
            var session = SessionSimulator(configuration: SessionFixture.configuration(), responders: responders)
            await session.connect()
            XCTAssertEqual(session.replyLines(), [reply])
            XCTAssertEqual(session.closed, .ended)
            XCTAssertTrue(session.counted(.connectionRefused(reason: metric)))
            XCTAssertEqual(session.lastRecord?.reason, reason)
            XCTAssertEqual(session.lastRecord?.decision, .tempfailed)
        }
    }

    // MARK: Pre-greet and improper pipelining

    func testAClientThatTalksDuringTheGreetDelayIsRefused() async {
        var session = SessionSimulator(configuration: SessionFixture.configuration { $0.timeouts.greetDelay = .seconds(1) })
        await session.connect()
        await session.advance(by: .milliseconds(500))
        XCTAssertTrue(session.replyLines().isEmpty, "no greeting yet")
        await session.send("EHLO hasty.example\r\n")
        XCTAssertEqual(session.replyLines(), ["554 5.5.1 Protocol error: talked before the greeting"])
        XCTAssertEqual(session.closed, .defence("pregreet"))
        XCTAssertTrue(session.counted(.defence("pregreet")))
        XCTAssertEqual(session.lastRecord?.reason, "pregreet: Protocol error: talked before the greeting")
        XCTAssertEqual(session.lastRecord?.decision, .rejected)
    }

    func testAPoliteClientIsGreetedAfterTheDelay() async {
        var session = SessionSimulator(configuration: SessionFixture.configuration { $0.timeouts.greetDelay = .seconds(1) })
        await session.connect()
        await session.advance(by: .seconds(1))
        XCTAssertEqual(session.replyLines(), ["220 mx.test ESMTP Postern"])
        await session.send("EHLO polite.example\r\n")
        XCTAssertEqual(session.replies().map(\.code), [250])
        XCTAssertNil(session.closed)
    }

    func testCommandsSentBeforeTheGreetingAreRefused() async {
        // With no greet delay, bytes that came with the PROXY header were sent before the 220.
        var session = proxied()
        await session.connect()
        await session.send("PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO bot.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        XCTAssertEqual(session.replyLines(), ["554 5.5.1 Protocol error: talked before the greeting"])
        XCTAssertTrue(session.upstreamRequests.isEmpty, "nothing reached the upstream")
        XCTAssertEqual(session.closed, .defence("pregreet"))
    }

    func testCommandsPipelinedAfterEHLOEndTheSession() async {
        var session = SessionSimulator(configuration: SessionFixture.configuration())
        await session.connect()
        _ = session.replyLines()
        await session.send("EHLO bot.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n\r\nspam\r\n.\r\n")
        let replies = session.replies()
        XCTAssertEqual(replies.first?.code, 250, "the EHLO is answered")
        XCTAssertEqual(replies.dropFirst().map(\.description), ["554 5.5.0 Error: SMTP protocol synchronization"])
        XCTAssertTrue(session.upstreamRequests.isEmpty, "nothing reached the upstream")
        XCTAssertEqual(session.closed, .defence("pipelining"))
        XCTAssertTrue(session.counted(.defence("pipelining")))
        XCTAssertEqual(session.lastRecord?.reason, "pipelining: Error: SMTP protocol synchronization")
        XCTAssertTrue(session.logMessages.contains("improper command pipelining after EHLO"))
    }

    func testCommandsPipelinedAfterHELOEndTheSessionWithoutEnhancedCodes() async {
        var session = SessionSimulator(configuration: SessionFixture.configuration())
        await session.connect()
        _ = session.replyLines()
        await session.send("HELO bot.example\r\nMAIL FROM:<a@example.org>\r\n")
        XCTAssertEqual(session.replyLines(), ["250 mx.test", "554 Error: SMTP protocol synchronization"])
        XCTAssertEqual(session.closed, .defence("pipelining"))
    }

    func testPipeliningWithinAGroupIsFine() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n")
        XCTAssertEqual(session.replies().map(\.code), [250, 250, 250, 354])
        XCTAssertNil(session.closed)
    }

    func testTheDefenceCanBeTurnedOff() async {
        var session = SessionSimulator(configuration: SessionFixture.configuration { $0.forbidImproperPipelining = false })
        await session.connect()
        _ = session.replyLines()
        await session.send("EHLO old.example\r\nMAIL FROM:<a@example.org>\r\n")
        XCTAssertEqual(session.replies().map(\.code), [250, 250])
        XCTAssertNil(session.closed)
    }

    // MARK: Shutdown

    func testDrainTellsAnIdleSessionToGo() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        await session.drain()
        XCTAssertEqual(session.replyLines(), ["421 4.3.2 Service shutting down, closing connection"])
        XCTAssertEqual(session.closed, .ended)
    }

    func testDrainLetsATransactionInProgressFinish() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: late\r\n")
        _ = session.replyLines()
        await session.drain()
        XCTAssertNil(session.closed, "the message in progress goes on")
        await session.send("\r\nbody\r\n.\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.0.0 Ok: queued as SIM1", "421 4.3.2 Service shutting down, closing connection"])
        XCTAssertEqual(session.relayed.count, 1)
        XCTAssertEqual(session.closed, .ended)
    }

    // MARK: The upstream's failures

    func testUpstreamDownIs451AtMAILAndTheRecordSaysSo() async {
        var responders = SessionSimulator.Responders()
        responders.upstream = { _ in .failure(UpstreamError(.unavailable, "connection refused")) }
        var session = await SessionFixture.session(responders: responders)
        _ = session.replyLines()
        await session.expect("MAIL FROM:<a@example.org>", ["451 4.4.1 Upstream server unavailable, try again later"])
        XCTAssertEqual(session.lastRecord?.decision, .tempfailed)
        XCTAssertEqual(session.lastRecord?.stage, .mail)
        XCTAssertNil(session.lastRecord?.upstream)
        await session.expect("RCPT TO:<b@example.org>", ["503 5.5.1 Error: need MAIL command"])
    }

    func testTheUpstreamsOwnRepliesReachTheClientPerRecipient() async {
        var responders = SessionSimulator.Responders()
        responders.upstream = { request in
            switch request {
            case .addRecipient(let path, _) where path.mailbox?.localPart == "nobody":
                return .success(UpstreamReply(SMTPReply(550, EnhancedStatusCode(5, 1, 1), "<nobody@example.org>: Recipient address rejected"), upstream: "mx:25"))
            default:
                return await SessionSimulator.Responders().upstream(request)
            }
        }
        var session = await SessionFixture.session(responders: responders)
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.1.0 Ok", "550 5.1.1 <nobody@example.org>: Recipient address rejected", "250 2.1.5 Ok",
                                              "354 End data with <CR><LF>.<CR><LF>"])
        await session.send("Subject: x\r\n\r\nbody\r\n.\r\n")
        XCTAssertTrue(session.relayed.first?.text.contains("\tfor <b@example.org>;") ?? false, "only accepted recipients count")
    }

    func testAConnectionLostAtRCPTMeansLaterRecipientsAndTheMessageGet451() async {
        var responders = SessionSimulator.Responders()
        responders.upstream = { request in
            if case .addRecipient = request { return .failure(UpstreamError(.connectionLost, "reset by peer")) }
            return await SessionSimulator.Responders().upstream(request)
        }
        var session = await SessionFixture.session(responders: responders)
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.1.0 Ok", "451 4.4.2 Upstream connection failed, try again later",
                                              "451 4.4.2 Upstream connection failed, try again later"])
        XCTAssertEqual(session.upstreamRequests.filter { if case .addRecipient = $0 { return true } else { return false } }.count, 1,
                       "no second RCPT on a broken connection")
    }

    func testAFailureDuringTheMessageIs451AndNothingIsAcknowledged() async {
        var responders = SessionSimulator.Responders()
        responders.upstream = { request in
            if case .commit = request { return .failure(UpstreamError(.timedOut, "no reply to end of DATA")) }
            return await SessionSimulator.Responders().upstream(request)
        }
        var session = await SessionFixture.session(responders: responders)
        _ = session.replyLines()
        let reply = await session.deliver("Subject: x\r\n\r\nbody")
        XCTAssertEqual(reply, "451 4.4.2 Upstream connection failed, try again later")
        XCTAssertEqual(session.lastRecord?.decision, .tempfailed)
        XCTAssertEqual(session.lastRecord?.reason, "upstream timedOut")
        XCTAssertNil(session.lastRecord?.upstream?.reply, "the upstream never answered the message")
    }

    func testAnUpstreamWithoutSMTPUTF8RefusesAtMAIL() async {
        var responders = SessionSimulator.Responders()
        responders.upstream = { request in
            if case .begin = request { return .failure(UpstreamError(.unsupported(.smtpUTF8), "no SMTPUTF8")) }
            return await SessionSimulator.Responders().upstream(request)
        }
        var session = await SessionFixture.session(responders: responders)
        _ = session.replyLines()
        await session.expect("MAIL FROM:<a@example.org> SMTPUTF8", ["553 5.6.7 The upstream server does not support SMTPUTF8"])
    }

    func testASpoolFailureIs451AndTheMessageIsNotRelayed() async {
        var responders = SessionSimulator.Responders()
        responders.store = { _, _, _ in .failure(StorageError("No space left on device")) }
        var session = await SessionFixture.session(responders: responders)
        _ = session.replyLines()
        let reply = await session.deliver("Subject: x\r\n\r\nbody")
        XCTAssertEqual(reply, "451 4.3.0 Local error in processing, try again later")
        XCTAssertTrue(session.relayed.isEmpty)
        XCTAssertEqual(session.lastRecord?.reason, "spool error")
    }

    func testAnUpstreamMAILRefusalEndsTheTransactionWithTheUpstreamsReply() async {
        var responders = SessionSimulator.Responders()
        responders.upstream = { request in
            if case .begin = request { return .success(UpstreamReply(SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Sender blocked"), upstream: "mx:25")) }
            return await SessionSimulator.Responders().upstream(request)
        }
        var session = await SessionFixture.session(responders: responders)
        _ = session.replyLines()
        await session.expect("MAIL FROM:<a@example.org>", ["550 5.7.1 Sender blocked"])
        XCTAssertEqual(session.lastRecord?.decision, .rejected)
        XCTAssertEqual(session.lastRecord?.upstream?.host, "mx:25")
    }
}
