import Foundation
import XCTest

/// The `limits:` section, as a client experiences it.
final class LimitsTests: IntegrationTestCase, @unchecked Sendable {
    func testMessageSizeLimit() throws {
        let (postern, sink) = try startPosternWithSink { $0.extra = "limits:\n  message_size: 2000\n" }
        let client = try RawSMTPClient.greeted(port: postern.port)
        let declared = try client.command("MAIL FROM:<big@client.test> SIZE=50000")
        XCTAssertTrue((500..<600).contains(declared.code), "SIZE=50000 over a 2000-byte limit: \(declared.text)")

        _ = try client.command("RSET")
        XCTAssertEqual(try client.command("MAIL FROM:<big@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        let line = String(repeating: "x", count: 98)
        try client.send("Subject: too big\r\n\r\n" + String(repeating: line + "\r\n", count: 60) + ".\r\n")
        let final = try client.readReply(timeout: 20)
        XCTAssertTrue((500..<600).contains(final.code), "5.9 KB over a 2000-byte limit: \(final.text)")

        // A small one still goes through in the same session.
        XCTAssertEqual(try client.command("MAIL FROM:<small@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: small\r\n\r\nsmall\r\n.\r\n")
        XCTAssertEqual(try client.readReply().code, 250)
        let messages = sink.waitForMessages(1)
        XCTAssertEqual(messages.map(\.mailFrom), ["small@client.test"])
    }

    func testRecipientsPerMessage() throws {
        let (postern, sink) = try startPosternWithSink { $0.extra = "limits:\n  recipients_per_message: 3\n" }
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<s@client.test>").code, 250)
        for i in 1...3 {
            XCTAssertEqual(try client.command("RCPT TO:<r\(i)@example.test>").code, 250)
        }
        let fourth = try client.command("RCPT TO:<r4@example.test>")
        XCTAssertTrue([452, 552].contains(fourth.code), "fourth recipient over a limit of 3: \(fourth.text)")
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: three\r\n\r\nthree\r\n.\r\n")
        XCTAssertEqual(try client.readReply().code, 250)
        XCTAssertEqual(sink.waitForMessages(1).first?.rcpts, ["r1@example.test", "r2@example.test", "r3@example.test"])
    }

    func testMaxConnectionsPerIP() throws {
        let (postern, _) = try startPosternWithSink { $0.extra = "limits:\n  max_connections_per_ip: 2\n" }
        var open = [try RawSMTPClient.greeted(port: postern.port), try RawSMTPClient.greeted(port: postern.port)]
        let third = try RawSMTPClient(port: postern.port, timeout: 5)
        let reply = try? third.readReply()
        XCTAssertNotEqual(reply?.code, 220, "a third connection from one IP was greeted with 220")
        if let reply { XCTAssertEqual(reply.code, 421, reply.text) }
        third.close()
        open.removeAll()  // closes both
        XCTAssertTrue(waitUntil(timeout: 5) {
            guard let c = try? RawSMTPClient(port: postern.port, timeout: 2) else { return false }
            return (try? c.readReply(timeout: 2).code) == 220
        }, "no new connection accepted after the others closed")
    }

    func testOverlongCommandLine() throws {
        let (postern, _) = try startPosternWithSink { $0.extra = "limits:\n  command_line_length: 512\n" }
        let client = try RawSMTPClient.greeted(port: postern.port)
        let long = try client.command("MAIL FROM:<" + String(repeating: "a", count: 700) + "@client.test>")
        XCTAssertTrue((500..<600).contains(long.code), "700-octet command accepted: \(long.text)")
        XCTAssertEqual(try client.command("NOOP").code, 250, "session unusable after an overlong line")
    }

    func testTooManyErrorsEndsTheSession() throws {
        let (postern, _) = try startPosternWithSink { $0.extra = "limits:\n  errors_per_session: 3\n" }
        let client = try RawSMTPClient.greeted(port: postern.port)
        var codes: [Int] = []
        for i in 0..<8 {
            guard let reply = try? client.command("BOGUS\(i)", timeout: 5) else { break }
            codes.append(reply.code)
            if reply.code == 421 { break }
        }
        XCTAssertTrue(codes.contains(421) || codes.count < 8, "never cut off after 8 errors: \(codes)")
        XCTAssertTrue(client.waitForClose(timeout: 5), "connection still open after \(codes)")
    }
}
