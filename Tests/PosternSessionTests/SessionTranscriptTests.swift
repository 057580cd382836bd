import NIOCore
import PosternLog
import PosternPolicy
import PosternSession
import SMTPCore
import XCTest

/// Sessions as transcripts: client bytes in, replies, upstream requests and records out.
/// The upstream, the policy and the credentials are stubs or run in-process; the clock moves
/// only when a test moves it.
final class SessionTranscriptTests: XCTestCase {
    // MARK: The ordinary path

    func testGreetingAndEHLOKeywords() async {
        var session = SessionSimulator(configuration: SessionFixture.configuration())
        await session.connect()
        XCTAssertEqual(session.replyLines(), ["220 mx.test ESMTP Postern"])
        await session.send("EHLO client.example\r\n")
        XCTAssertEqual(session.replies().first?.lines,
                       ["mx.test", "SIZE 26214400", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN"])
        await session.expect("NOOP", ["250 2.0.0 Ok"])
    }

    func testHELOSessionHasNoEnhancedCodes() async {
        var session = await SessionFixture.session(hello: nil)
        _ = session.replyLines()
        await session.expect("HELO client.example", ["250 mx.test"])
        await session.expect("NOOP", ["250 Ok"])
        await session.expect("MAIL FROM:<a@example.org> SIZE=10", ["555 Parameters not allowed after HELO"])
    }

    func testPipelinedTransactionRepliesInOrderAndRelaysTheMessage() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        await session.send("MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"])
        await session.send("Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.0.0 Ok: queued as SIM1", "221 2.0.0 Bye"])
        XCTAssertEqual(session.closed, .quit)
        let relayed = try? XCTUnwrap(session.relayed.first)
        XCTAssertEqual(relayed?.text, """
            Received: from client.example (unknown [192.0.2.10])\r
            \tby mx.test (Postern) with ESMTP id ID000003;\r
            \tMon, 23 Nov 2026 19:11:38 +0000\r
            Subject: hi\r
            \r
            .leading dot\r
            body\r

            """)
        XCTAssertEqual(relayed?.chunked, false)
        // The upstream saw the same envelope.
        guard case .begin(let envelope)? = session.upstreamRequests.first else { return XCTFail("no MAIL upstream") }
        XCTAssertEqual(envelope.reversePath.mailbox?.description, "alice@example.org")
        XCTAssertEqual(envelope.client, UpstreamClient(address: IPAddress("192.0.2.10")!, port: 40_000, helo: "client.example",
                                                       protocolName: "ESMTP", login: nil))
    }

    func testCommandsWithoutATransaction() async {
        var session = await SessionFixture.session(peer: SessionFixture.loopback)
        _ = session.replyLines()
        await session.expect("VRFY bob", ["252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"])
        await session.expect("EXPN staff", ["502 5.5.1 EXPN not available"])
        await session.expect("HELP", ["214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP ETRN"])
        await session.expect("ETRN example.org", ["250 2.0.0 Queuing started"], "a trusted client's ETRN goes upstream")
        await session.expect("TURN", ["502 5.5.1 Error: command not implemented"])
        await session.expectPrefix("FROB", "500 5.5.1")
        await session.expectPrefix("MAIL FROM:<a@example.org> FROB=1", "555")
        await session.expect("RCPT TO:<b@example.org>", ["503 5.5.1 Error: need MAIL command"])
        await session.expect("DATA", ["503 5.5.1 Error: need MAIL command"])
        await session.expect("RSET", ["250 2.0.0 Ok"])
        await session.expect("QUIT", ["221 2.0.0 Bye"])
        XCTAssertEqual(session.closed, .quit)
        XCTAssertTrue(session.records.isEmpty, "no transaction, no record")
    }

    func testETRNFromAnUntrustedClientIsNotServedNorListed() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        await session.expect("HELP", ["214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"])
        await session.expect("ETRN example.org", ["502 5.5.1 Error: command not implemented"])
        XCTAssertFalse(session.upstreamRequests.contains { if case .etrn = $0 { return true } else { return false } })
    }

    func testETRNToAMaildirGetsTheMaildirsAnswer() async {
        var responders = SessionSimulator.Responders()
        responders.upstream = { _ in .failure(UpstreamError(.unsupported(.etrn), "maildir")) }
        var session = await SessionFixture.session(peer: SessionFixture.loopback, responders: responders)
        _ = session.replyLines()
        await session.expect("ETRN example.org",
                       ["458 4.5.0 Unable to queue messages for node example.org: the upstream is a Maildir"])
    }

    func testBDATChunksAreRelayedAndDATAAfterBDATIsOutOfSequence() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        let first = "Subject: chunked\r\n\r\n"
        let second = ".dot stays\r\nend\r\n"
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT \(first.utf8.count)\r\n\(first)BDAT \(second.utf8.count) LAST\r\n\(second)")
        XCTAssertEqual(session.replyLines(), ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 \(first.utf8.count) octets received",
                                              "250 2.0.0 Ok: queued as SIM1"])
        XCTAssertEqual(session.relayed.first?.chunked, true)
        XCTAssertTrue(session.relayed.first?.text.hasSuffix("Subject: chunked\r\n\r\n.dot stays\r\nend\r\n") ?? false)
        XCTAssertEqual(session.lastRecord?.size, first.utf8.count + second.utf8.count)
        // DATA after BDAT in one transaction is out of sequence (RFC 3030 §3).
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 3\r\nab\nDATA\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 3 octets received", "503 5.5.1 Error: DATA after BDAT"])
    }

    func testBDATAcrossChunksKeepsItsLineEndingStateAndRefusesABareLF() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        // CR at the end of one chunk, LF at the start of the next: one CRLF, not bare.
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 9\r\nSubject:\rBDAT 3 LAST\r\n\nx\n")
        XCTAssertEqual(session.replyLines().last, "550 5.6.0 Message refused: bare CR or LF in message content (lines must end with CRLF)")
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 9\r\nSubject:\rBDAT 4 LAST\r\n\nx\r\n")
        XCTAssertEqual(session.replyLines().last, "250 2.0.0 Ok: queued as SIM1")
        XCTAssertEqual(session.relayed.count, 1)
    }

    // MARK: Limits

    func testTooManyRecipients() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.server.maximumRecipients = 2 })
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b1@example.org>\r\nRCPT TO:<b2@example.org>\r\nRCPT TO:<b3@example.org>\r\n")
        XCTAssertEqual(session.replyLines().last, "452 4.5.3 Error: too many recipients")
    }

    func testDeclaredSizeOverTheLimitIsRefusedAtMAIL() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.server.maximumMessageSize = 1000 })
        _ = session.replyLines()
        await session.expect("MAIL FROM:<a@example.org> SIZE=1001", ["552 5.3.4 Message size exceeds fixed limit of 1000 octets"])
        await session.expect("MAIL FROM:<a@example.org> SIZE=1000", ["250 2.1.0 Ok"])
    }

    func testActualSizeOverTheLimitIsRefusedAfterTheDotAndNotRelayed() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.server.maximumMessageSize = 1000 })
        _ = session.replyLines()
        let body = String(repeating: "x", count: 70) + "\r\n" + String(repeating: String(repeating: "y", count: 98) + "\r\n", count: 10)
        let final = await session.deliver("Subject: big\r\n\r\n" + body)
        XCTAssertEqual(final, "552 5.3.4 Message size exceeds fixed limit of 1000 octets")
        await session.expect("NOOP", ["250 2.0.0 Ok"], "the session goes on")
        XCTAssertTrue(session.relayed.isEmpty)
        XCTAssertTrue(session.spool.count <= 1000, "content past the limit is not kept")
        XCTAssertTrue(session.upstreamRequests.contains { if case .abort = $0 { return true } else { return false } },
                      "the upstream transaction is abandoned")
        XCTAssertEqual(session.lastRecord?.reason, "message larger than 1000 octets")
    }

    func testOverlongCommandLine() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        await session.expectPrefix("NOOP " + String(repeating: "a", count: 600), "500 5.5.2")
        await session.expect("NOOP", ["250 2.0.0 Ok"])
    }

    func testHugeLineWithoutCRLFIsDroppedAsItArrives() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        let chunk = [UInt8](repeating: UInt8(ascii: "A"), count: 64 * 1024)
        for _ in 0..<16 {
            await session.send(chunk)
            XCTAssertTrue(session.replyLines().isEmpty)
        }
        await session.send("\r\nNOOP\r\n")
        XCTAssertEqual(session.replies().map(\.code), [500, 250])
    }

    func testOverlongTextLineIsRefused() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        let final = await session.deliver("Subject: long\r\n\r\n" + String(repeating: "z", count: 999))
        XCTAssertEqual(final, "550 5.6.0 Message refused: a line is longer than 1000 octets")
        XCTAssertTrue(session.relayed.isEmpty)
    }

    func testTooManyErrorsEndTheSessionAsADefence() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.server.maximumErrors = 2 })
        _ = session.replyLines()
        await session.expectPrefix("FROB", "500")
        await session.expectPrefix("DATA", "503")
        await session.expect("EXPN x", ["421 4.7.0 mx.test Error: too many errors, closing connection"])
        XCTAssertEqual(session.closed, .defence("errors"))
        XCTAssertTrue(session.counted(.defence("errors")))
        XCTAssertEqual(session.lastRecord?.stage, .connect)
        XCTAssertEqual(session.lastRecord?.reason, "errors: mx.test Error: too many errors, closing connection")
    }

    func testJunkCommandsPastTheLimitEndTheSession() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.server.maximumJunkCommands = 3 })
        _ = session.replyLines()
        await session.send("NOOP\r\nNOOP\r\nRSET\r\nVRFY x\r\n")
        XCTAssertEqual(session.replyLines().last, "421 4.7.0 mx.test Error: too many commands without a transaction")
        XCTAssertEqual(session.closed, .defence("junk_commands"))
        XCTAssertTrue(session.counted(.defence("junk_commands")))
    }

    // MARK: Time

    func testIdleTimeout() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.timeouts.command = .seconds(300) })
        _ = session.replyLines()
        await session.advance(by: .seconds(299))
        XCTAssertNil(session.closed)
        await session.send("NOOP\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.0.0 Ok"])
        await session.advance(by: .seconds(299))
        XCTAssertNil(session.closed, "the timeout runs from the last command")
        await session.advance(by: .seconds(1))
        XCTAssertEqual(session.replyLines(), ["421 4.4.2 Error: timeout exceeded, closing connection"])
        XCTAssertEqual(session.closed, .ended)
    }

    func testDataTimeoutRelaysNothingAndRecordsTheAbort() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.timeouts.data = .seconds(180) })
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: cut\r\n\r\nhalf")
        _ = session.replyLines()
        await session.advance(by: .seconds(180))
        XCTAssertEqual(session.replyLines(), ["421 4.4.2 Error: timeout exceeded, closing connection"])
        XCTAssertTrue(session.relayed.isEmpty)
        XCTAssertEqual(session.decisions, ["aborted"])
        XCTAssertEqual(session.lastRecord?.reason, "session ended mid-transaction")
        XCTAssertTrue(session.logMessages.contains("timeout while receiving message content; nothing relayed"))
    }

    func testSessionTimeLimitEndsAnIdleSession() async {
        var session = await SessionFixture.session(SessionFixture.configuration {
            $0.timeouts.session = .seconds(10)
            $0.timeouts.command = .seconds(300)
        })
        _ = session.replyLines()
        await session.advance(by: .seconds(5))
        await session.send("NOOP\r\n")
        _ = session.replyLines()
        await session.advance(by: .seconds(5))
        XCTAssertEqual(session.replyLines(), ["421 4.4.2 Error: session time limit exceeded"])
        XCTAssertEqual(session.closed, .defence("session_time"))
        XCTAssertEqual(session.lastRecord?.reason, "session_time: Error: session time limit exceeded")
    }

    func testSessionTimeLimitCutsAMessageShortAndAbortsItsTransaction() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.timeouts.session = .seconds(10) })
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: slow\r\n")
        _ = session.replyLines()
        await session.advance(by: .seconds(10))
        XCTAssertEqual(session.replyLines(), ["421 4.4.2 Error: session time limit exceeded"])
        XCTAssertEqual(session.decisions, ["aborted"])
        XCTAssertEqual(session.lastRecord?.reason, "session_time: Error: session time limit exceeded")
        XCTAssertTrue(session.relayed.isEmpty)
    }

    func testATricklingClientIsCutOffByTheMinimumDataRate() async {
        var session = await SessionFixture.session(SessionFixture.configuration {
            $0.minimumDataRate = 100
            $0.dataRateGrace = .seconds(30)
        })
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        _ = session.replyLines()
        // 1,000 octets earn 10 s beyond the grace: the deadline is 40 s after the 354, and
        // 100 octets more move it 1 s on.
        await session.send(String(repeating: "z", count: 998) + "\r\n")
        await session.advance(by: .seconds(39))
        await session.send(String(repeating: "z", count: 100))
        await session.advance(by: .seconds(1) + .milliseconds(999))
        XCTAssertNil(session.closed)
        await session.advance(by: .milliseconds(1))
        XCTAssertEqual(session.replyLines(), ["421 4.4.2 Error: data rate too low"])
        XCTAssertEqual(session.closed, .defence("min_data_rate"))
        XCTAssertEqual(session.lastRecord?.reason, "min_data_rate: Error: data rate too low")
        XCTAssertTrue(session.relayed.isEmpty)
    }

    // MARK: Line endings, smuggling, NUL

    func testSmugglingSequencesNeverEndTheMessage() async {
        for sequence in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n"] {
            var session = await SessionFixture.session()
            _ = session.replyLines()
            await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
            _ = session.replyLines()
            await session.send("Subject: x\r\n\r\none\(sequence)MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n")
            XCTAssertTrue(session.replyLines().isEmpty, "\(sequence.debugDescription) ended the message")
            await session.send("\r\n.\r\n")
            XCTAssertEqual(session.replyLines(), ["550 5.6.0 Message refused: bare CR or LF in message content (lines must end with CRLF)"],
                           sequence.debugDescription)
            XCTAssertTrue(session.relayed.isEmpty)
            XCTAssertEqual(session.upstreamRequests.filter { if case .begin = $0 { return true } else { return false } }.count, 1,
                           "the smuggled MAIL never reached the upstream")
        }
    }

    func testNormaliseModeRepairsBareLineEndings() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.bareLineEndings = .normalise })
        _ = session.replyLines()
        let final = await session.deliver("Subject: n\r\n\r\none\ntwo\r.\rthree")
        XCTAssertEqual(final, "250 2.0.0 Ok: queued as SIM1")
        XCTAssertTrue(session.relayed.first?.text.hasSuffix("\r\none\r\ntwo\r\n.\r\nthree\r\n") ?? false, session.relayed.first?.text ?? "")
    }

    /// Found by the session fuzzer: with normalise, BDAT content was spooled as it came, so a
    /// bare LF in a chunk reached the upstream (Fuzz/regressions/session/bdat-bare-lf-with-normalise).
    func testNormaliseModeRepairsBareLineEndingsInBDATChunksToo() async {
        var session = await SessionFixture.session(SessionFixture.configuration { $0.bareLineEndings = .normalise })
        _ = session.replyLines()
        // A bare LF in the header section; a CR ending one chunk that the next does not
        // complete; a bare CR ending the last chunk.
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 12\r\nSu SMTPUTF8\nBDAT 6\r\n\r\none\rBDAT 5 LAST\r\ntwo\n\r")
        XCTAssertEqual(session.replyLines(), ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 12 octets received", "250 2.0.0 6 octets received",
                                              "250 2.0.0 Ok: queued as SIM1"])
        let text = session.relayed.first?.text ?? ""
        XCTAssertTrue(text.hasSuffix("\r\nSu SMTPUTF8\r\n\r\none\r\ntwo\r\n\r\n"), text.debugDescription)
        XCTAssertFalse(text.replacingOccurrences(of: "\r\n", with: "").contains { $0 == "\r" || $0 == "\n" }, text.debugDescription)
    }

    func testABareLFInsideACommandLineDoesNotEndIt() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        // RFC 5321 §2.3.8: one line, one reply — never a MAIL and then a NOOP.
        await session.send("MAIL FROM:<a@b.example>\nNOOP\r\n")
        XCTAssertEqual(session.replyLines(), ["500 5.5.2 Invalid characters in command: bare LF"])
        XCTAssertTrue(session.upstreamRequests.isEmpty)
        // A line ended by a bare LF alone waits for its CRLF.
        await session.send("NOOP\n")
        XCTAssertTrue(session.replyLines().isEmpty)
        await session.send("\r\nNOOP\r\n")
        XCTAssertEqual(session.replies().map(\.code), [500, 250])
    }

    func testNULInMessageContentIsRefusedAndNeverRelayed() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        _ = session.replyLines()
        // A receiver that drops NUL would read this as the end of the message.
        await session.send(Array("Subject: nul\r\n\r\nbefore\r\n".utf8) + [0] + Array(".\r\nafter\r\n.\r\n".utf8))
        XCTAssertEqual(session.replyLines(), ["550 5.6.0 Message refused: NUL octet in message content"])
        XCTAssertTrue(session.relayed.isEmpty)
        XCTAssertEqual(session.lastRecord?.reason, "NUL octet in message content")
        // BDAT content is checked the same way.
        await session.send(Array("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 5 LAST\r\na".utf8) + [0] + Array("b\r\n".utf8))
        XCTAssertEqual(session.replyLines().last, "550 5.6.0 Message refused: NUL octet in message content")
        XCTAssertTrue(session.relayed.isEmpty)
    }

    func testDisconnectMidDataRelaysNothing() async {
        var session = await SessionFixture.session()
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: cut\r\n\r\nhalf a message\r\n")
        await session.disconnect()
        XCTAssertEqual(session.closed, .clientClosed)
        XCTAssertTrue(session.relayed.isEmpty)
        XCTAssertEqual(session.decisions, ["aborted"])
        XCTAssertEqual(session.lastRecord?.stage, .rcpt)
        XCTAssertEqual(session.lastRecord?.reason, "session ended mid-transaction")
    }

    func testRequireTLSRefusesMailInPlaintext() async {
        var session = await SessionFixture.session(SessionFixture.configuration {
            $0.server.tlsAvailable = true
            $0.server.requireTLS = true
        })
        _ = session.replyLines()
        await session.expect("MAIL FROM:<a@example.org>", ["530 5.7.0 Must issue a STARTTLS command first"])
    }
}
