import Foundation
import XCTest

/// SMTP smuggling: bare CR / bare LF end-of-data look-alikes never split a message and
/// never reach the upstream (bare_line_endings: reject, the default).
final class SmugglingTests: IntegrationTestCase, @unchecked Sendable {
    static let sequences: [(name: String, bytes: String)] = [
        ("<LF>.<LF>", "\n.\n"),
        ("<CR>.<CR>", "\r.\r"),
        ("<LF>.<CR><LF>", "\n.\r\n"),
        ("<CR><LF>.<LF>", "\r\n.\n"),
    ]

    /// A transaction to `recipient` with `content` (a ``payload(_:)``) after DATA: the
    /// greeted client and Postern's final reply to the content.
    static func attempt(port: Int, recipient: String, content: String, name: String,
                        file: StaticString = #filePath, line: UInt = #line) throws -> (client: RawSMTPClient, final: SMTPReply) {
        let client = try RawSMTPClient.greeted(port: port)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250, name, file: file, line: line)
        XCTAssertEqual(try client.command("RCPT TO:<\(recipient)>").code, 250, name, file: file, line: line)
        XCTAssertEqual(try client.command("DATA").code, 354, name, file: file, line: line)
        try client.send(content)
        return (client, try client.readReply(timeout: 20))
    }

    static func payload(_ sequence: String) -> String {
        "From: <sender@client.test>\r\nSubject: innocent\r\n\r\nhello" + sequence
            + "MAIL FROM:<ceo@victim.test>\r\nRCPT TO:<target@example.test>\r\nDATA\r\n"
            + "From: <ceo@victim.test>\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n"
    }

    func testSmugglingSequencesAreRejectedAndNeverRelayed() throws {
        let (postern, sink) = try startPosternWithSink()
        for (name, sequence) in Self.sequences {
            let (client, final) = try Self.attempt(port: postern.port, recipient: "rcpt@example.test", content: Self.payload(sequence), name: name)
            XCTAssertEqual(final.code, 550, "\(name): \(final.text)")
            XCTAssertEqual(final.enhancedCode, "5.6.0", "\(name): \(final.text)")
            // Nothing else may be answered: the smuggled MAIL/RCPT/DATA were message content.
            let extra = client.drainReplies(quiet: 0.5)
            XCTAssertEqual(extra.map(\.text), [], "\(name): extra replies after the final one")
            let quit = try? client.command("QUIT")
            XCTAssertEqual(quit?.code, 221, "\(name): \(quit?.text ?? "connection closed")")
        }
        sleep(seconds: 1)
        XCTAssertEqual(sink.messageCount, 0, "smuggled content reached the upstream:\n\(sink.transcript)")
        XCTAssertFalse(sink.transcript.contains("ceo@victim.test"), sink.transcript)

        // A clean message on the same postern still goes through.
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: clean\r\n\r\nclean\r\n.\r\n")
        XCTAssertEqual(try client.readReply().code, 250)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)
    }

    func testSmugglingInOneSegmentWithPipelinedCommands() throws {
        // The whole transaction, smuggling attempt included, in a single write.
        let (postern, sink) = try startPosternWithSink()
        let client = try RawSMTPClient.greeted(port: postern.port)
        try client.send("MAIL FROM:<sender@client.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n"
            + Self.payload("\n.\r\n") + "QUIT\r\n")
        var codes: [Int] = []
        while let reply = try? client.readReply(timeout: 10) {
            codes.append(reply.code)
            if reply.code == 221 { break }
        }
        XCTAssertEqual(codes, [250, 250, 354, 550, 221])
        sleep(seconds: 1)
        XCTAssertEqual(sink.messageCount, 0, sink.transcript)
    }

    func testNormaliseModeRepairsBDATChunksBeforeTheUpstreamSeesThem() throws {
        let (postern, sink) = try startPosternWithSink { $0.extra = "bare_line_endings: normalise\n" }
        let client = try RawSMTPClient.greeted(port: postern.port)
        let first = "Subject: innocent\nX-A: 1\r"
        let last = "\n\r\nline\n.\nMAIL FROM:<evil@attacker.test>\r\n"
        try client.send("MAIL FROM:<sender@client.test>\r\nRCPT TO:<rcpt@example.test>\r\n"
            + "BDAT \(first.utf8.count)\r\n\(first)BDAT \(last.utf8.count) LAST\r\n\(last)QUIT\r\n")
        var codes: [Int] = []
        while let reply = try? client.readReply(timeout: 10) {
            codes.append(reply.code)
            if reply.code == 221 { break }
        }
        XCTAssertEqual(codes, [250, 250, 250, 250, 221])
        XCTAssertTrue(waitUntil(timeout: 10) { sink.messageCount == 1 }, sink.transcript)
        let message = try XCTUnwrap(sink.messages().first)
        XCTAssertEqual(message.mailFrom, "sender@client.test")
        XCTAssertTrue(message.text.hasSuffix("Subject: innocent\r\nX-A: 1\r\n\r\nline\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n"),
                      message.text.debugDescription)
        XCTAssertFalse(message.text.replacingOccurrences(of: "\r\n", with: "").contains { $0 == "\r" || $0 == "\n" },
                       "a bare line ending reached the upstream: \(message.text.debugDescription)")
    }

    func testNormaliseModeNeverSplitsAMessage() throws {
        let (postern, sink) = try startPosternWithSink { $0.extra = "bare_line_endings: normalise\n" }
        for (name, sequence) in Self.sequences {
            // Accepted (normalised) or refused: either way ONE reply.
            let (client, _) = try Self.attempt(port: postern.port, recipient: "rcpt@example.test", content: Self.payload(sequence), name: name)
            XCTAssertEqual(client.drainReplies(quiet: 0.5).map(\.text), [], "\(name): extra replies")
            _ = try? client.command("QUIT")
        }
        sleep(seconds: 1)
        let messages = sink.messages()
        XCTAssertLessThanOrEqual(messages.count, Self.sequences.count)
        for m in messages {
            XCTAssertEqual(m.mailFrom, "sender@client.test", "a smuggled envelope reached the upstream")
            XCTAssertEqual(m.rcpts, ["rcpt@example.test"])
            XCTAssertTrue(m.text.contains("Subject: innocent"), "message split: \(m.text)")
            XCTAssertFalse(m.data.contains(0x0A) && m.text.replacingOccurrences(of: "\r\n", with: "").contains("\n"),
                           "bare LF reached the upstream: \(m.text.debugDescription)")
            XCTAssertFalse(m.text.replacingOccurrences(of: "\r\n", with: "").contains("\r"),
                           "bare CR reached the upstream: \(m.text.debugDescription)")
        }
    }
}
