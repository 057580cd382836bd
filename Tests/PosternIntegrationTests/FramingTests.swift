import Foundation
import XCTest

/// DATA framing across TCP segment boundaries, and upstreams lacking an extension the client used.
final class FramingTests: IntegrationTestCase, @unchecked Sendable {
    /// Sends `bytes` one write per byte (TCP_NODELAY is on, so most become separate segments).
    private func trickle(_ client: RawSMTPClient, _ bytes: [UInt8]) throws {
        for b in bytes {
            try client.send([b])
            usleep(500)
        }
    }

    func testDataTrickledByteByByteIsExact() throws {
        let (postern, sink) = try startPosternWithSink()
        let client = try RawSMTPClient.greeted(port: postern.port)
        // (what the client sends after 354, what the upstream must receive after the Received block)
        let cases: [(String, String)] = [
            ("..\r\n.\r\n", ".\r\n"),                                  // first line is a stuffed dot
            ("..x\r\n\r\n.\r\n", ".x\r\n\r\n"),
            ("Subject: t\r\n\r\n.\r\n", "Subject: t\r\n\r\n"),
            ("Subject: t\r\n\r\n...\r\nend\r\n.\r\n", "Subject: t\r\n\r\n..\r\nend\r\n"),
            ("Subject: t\r\n\r\n\r\n\r\n.\r\n", "Subject: t\r\n\r\n\r\n\r\n"),
        ]
        for (index, (wire, _)) in cases.enumerated() {
            XCTAssertEqual(try client.command("MAIL FROM:<trickle\(index)@client.test>").code, 250)
            XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
            XCTAssertEqual(try client.command("DATA").code, 354)
            try trickle(client, Array(wire.utf8))
            let final = try client.readReply()
            XCTAssertEqual(final.code, 250, "case \(index): \(final.text)")
        }
        let messages = sink.waitForMessages(cases.count)
        XCTAssertEqual(messages.count, cases.count)
        for (message, (_, expected)) in zip(messages, cases) {
            XCTAssertEqual(message.split.map { String(decoding: $0.body, as: UTF8.self) }, expected,
                           "\(message.mailFrom ?? "?")")
        }
    }

    func testSmugglingSequenceTrickledIsStillRejected() throws {
        let (postern, sink) = try startPosternWithSink()
        for (name, sequence) in SmugglingTests.sequences {
            let client = try RawSMTPClient.greeted(port: postern.port)
            XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
            XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
            XCTAssertEqual(try client.command("DATA").code, 354)
            try trickle(client, Array(SmugglingTests.payload(sequence).utf8))
            let final = try client.readReply(timeout: 20)
            XCTAssertEqual(final.code, 550, "\(name): \(final.text)")
            XCTAssertEqual(client.drainReplies(quiet: 0.3).map(\.text), [], "\(name)")
        }
        sleep(seconds: 0.5)
        XCTAssertEqual(sink.messageCount, 0, sink.transcript)
    }

    func testSMTPUTF8ToAnUpstreamWithoutItIsRefusedNotMangled() throws {
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--no-smtputf8"])
        let client = try RawSMTPClient.greeted(port: postern.port)
        try client.send(Array("MAIL FROM:<ünï@client.test> SMTPUTF8\r\n".utf8))
        let mail = try client.readReply(timeout: 20)
        if mail.code == 250 {
            XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code / 100, 5,
                           "SMTPUTF8 transaction accepted for an upstream without SMTPUTF8")
        } else {
            XCTAssertEqual(mail.code / 100, 5, "expected a permanent refusal: \(mail.text)")
        }
        XCTAssertEqual(sink.messageCount, 0)
        XCTAssertFalse(sink.transcript.contains("MAIL FROM:<ünï@client.test>"), sink.transcript)
    }

    func test8BitBodyToAnUpstreamWithout8BITMIMEIsNotSentRaw() throws {
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--no-8bitmime"])
        let client = try RawSMTPClient.greeted(port: postern.port)
        let mail = try client.command("MAIL FROM:<s@client.test> BODY=8BITMIME", timeout: 20)
        if mail.code == 250 {
            XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
            XCTAssertEqual(try client.command("DATA").code, 354)
            try client.send([UInt8]("Subject: 8bit\r\n\r\n".utf8) + [0xE9, 0xFF, 0x0D, 0x0A] + [UInt8](".\r\n".utf8))
            _ = try client.readReply(timeout: 20)
            // Refused, or converted: either way no raw 8-bit octet reaches a 7-bit upstream.
            for m in sink.messages() {
                XCTAssertFalse(m.data.contains { $0 >= 0x80 }, "8-bit data sent to a 7-bit upstream")
            }
        } else {
            XCTAssertTrue((500..<600).contains(mail.code), mail.text)
            XCTAssertEqual(sink.messageCount, 0)
        }
    }
}
