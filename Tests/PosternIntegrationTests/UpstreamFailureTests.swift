import Foundation
import XCTest

/// What the client sees when the upstream is down, refuses, or breaks; failover.
final class UpstreamFailureTests: IntegrationTestCase, @unchecked Sendable {
    func testUpstreamDownGives451AtMailNever250() throws {
        let deadPort = try Net.freePort()  // nothing listens there
        let postern = try startPostern(PosternConfig(port: try Net.freePort(),
                                                     upstreams: ["smtp://127.0.0.1:\(deadPort)"]))
        for _ in 0..<2 {  // the second time the upstream is already marked dead
            let client = try RawSMTPClient.greeted(port: postern.port)
            let mail = try client.command("MAIL FROM:<sender@client.test>", timeout: 40)
            XCTAssertEqual(mail.code, 451, mail.text)
            XCTAssertEqual(mail.enhancedCode, "4.4.1", mail.text)
            _ = try? client.command("QUIT")
        }
        let result = try runSwaks(port: postern.port, ["--from", "s@client.test", "--to", "r@example.test"])
        XCTAssertNotEqual(result.status, 0, result.description)
        XCTAssertFalse(result.swaksReplies.contains { $0.hasPrefix("250 ") && $0.contains("queued") }, result.description)
    }

    func testUpstreamRefusingAtGreetingGives4xx() throws {
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--greeting-code", "421"])
        let client = try RawSMTPClient.greeted(port: postern.port)
        let mail = try client.command("MAIL FROM:<sender@client.test>", timeout: 40)
        XCTAssertTrue((400..<500).contains(mail.code), "expected 4xx, got \(mail.text)")
        XCTAssertEqual(sink.messageCount, 0)
    }

    func testFailoverToSecondUpstreamWhenFirstIsDown() throws {
        let deadPort = try Net.freePort()
        let sink = try startRecordingSink()
        let postern = try startPostern(PosternConfig(port: try Net.freePort(), upstreams: [
            "smtp://127.0.0.1:\(deadPort)", "smtp://127.0.0.1:\(sink.port)",
        ]))
        for i in 1...3 {
            let result = try runSwaks(port: postern.port, ["--from", "s@client.test", "--to", "r\(i)@example.test",
                                                           "--header", "X-Test-Seq: \(i)"])
            XCTAssertEqual(result.status, 0, result.description)
        }
        let messages = sink.waitForMessages(3)
        XCTAssertEqual(messages.map(\.rcpts), [["r1@example.test"], ["r2@example.test"], ["r3@example.test"]])
    }

    func testClientDisconnectMidDataRelaysNothing() throws {
        let (postern, sink) = try startPosternWithSink()
        for variant in 0..<2 {
            let client = try RawSMTPClient.greeted(port: postern.port)
            XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
            XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
            XCTAssertEqual(try client.command("DATA").code, 354)
            try client.send("Subject: cut short\r\n\r\nthis message never ends\r\n")
            if variant == 1 {
                // End on a partial terminator: CRLF "." but no final CRLF.
                try client.send(".")
            }
            sleep(seconds: 0.3)
            client.close()
        }
        sleep(seconds: 2)
        XCTAssertEqual(sink.messageCount, 0, "a half-received message reached the upstream")
        XCTAssertFalse(sink.transcript.contains("lines of DATA>"), sink.transcript)

        // Postern is still fine afterwards.
        let result = try runSwaks(port: postern.port, ["--from", "s@client.test", "--to", "r@example.test"])
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)
    }

    func testUpstreamDyingMidTransactionGives451() throws {
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--drop-after-rcpt"])
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
        let data = try client.command("DATA", timeout: 30)
        var final = data
        if data.code == 354 {
            try client.send("Subject: doomed\r\n\r\nthe upstream hangs up\r\n.\r\n")
            final = try client.readReply(timeout: 40)
        }
        XCTAssertEqual(final.code, 451, final.text)
        XCTAssertEqual(final.enhancedCode, "4.4.2", final.text)
        XCTAssertEqual(sink.messageCount, 0)
    }

    func testUpstreamClosingAfterRcptGives451() throws {
        // The upstream says 250 to RCPT and hangs up before DATA: the client must get a 4xx
        // final reply (451 4.4.2 per the contract), promptly, and never 250.
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--close-after-rcpt"])
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        let rcpt = try client.command("RCPT TO:<rcpt@example.test>", timeout: 15)
        var final = rcpt
        if rcpt.code == 250 {
            let data = try client.command("DATA", timeout: 15)
            final = data
            if data.code == 354 {
                try client.send("Subject: orphan\r\n\r\nthe upstream is gone\r\n.\r\n")
                final = try client.readReply(timeout: 15)
            }
        }
        XCTAssertEqual(final.code, 451, final.text)
        XCTAssertEqual(final.enhancedCode, "4.4.2", final.text)
        XCTAssertEqual(sink.messageCount, 0)
    }
}

