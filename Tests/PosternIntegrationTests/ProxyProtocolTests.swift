import Foundation
import XCTest

/// Listener with proxy_protocol: true (HAProxy PROXY v1 and v2) from a trusted network.
final class ProxyProtocolTests: IntegrationTestCase, @unchecked Sendable {
    private func relay(through postern: PosternServer, header: [UInt8], marker: String) throws -> SMTPReply {
        let client = try RawSMTPClient(port: postern.port)
        try client.send(header)
        let greeting = try client.readReply()
        XCTAssertEqual(greeting.code, 220, greeting.text)
        XCTAssertEqual(try client.command("EHLO proxied.client.test").code, 250)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: \(marker)\r\n\r\nvia a proxy\r\n.\r\n")
        let final = try client.readReply()
        _ = try? client.command("QUIT")
        return final
    }

    func testProxyV1AndV2HeadersGiveTheRealClientAddress() throws {
        let (postern, sink) = try startPosternWithSink {
            $0.listenerExtra = ["proxy_protocol: true"]
            $0.extra = "relay_domains: [example.test]"
        }

        let v1 = Array("PROXY TCP4 203.0.113.7 127.0.0.1 40001 25\r\n".utf8)
        XCTAssertEqual(try relay(through: postern, header: v1, marker: "v1").code, 250)

        var v2: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
        v2 += [0x21, 0x11, 0x00, 0x0C]            // v2 PROXY, TCP over IPv4, 12 address bytes
        v2 += [198, 51, 100, 23] + [127, 0, 0, 1] // source, destination
        v2 += [0x9C, 0x42, 0x00, 0x19]            // ports 40002, 25
        XCTAssertEqual(try relay(through: postern, header: v2, marker: "v2").code, 250)

        let messages = sink.waitForMessages(2)
        XCTAssertEqual(messages.count, 2)
        for (message, address) in zip(messages, ["203.0.113.7", "198.51.100.23"]) {
            let received = message.split.map { String(decoding: $0.received, as: UTF8.self) } ?? message.text
            XCTAssertTrue(received.contains(address), "Received does not name the proxied client \(address): \(received)")
        }
    }

    func testMissingProxyHeaderIsNotServed() throws {
        let (postern, sink) = try startPosternWithSink { $0.listenerExtra = ["proxy_protocol: true"] }
        let client = try RawSMTPClient(port: postern.port, timeout: 5)
        try client.send("EHLO no.header.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        let replies = client.drainReplies(quiet: 2)
        XCTAssertFalse(replies.contains { $0.code == 250 || $0.code == 354 },
                       "commands without a PROXY header were served: \(replies)")
        XCTAssertEqual(sink.messageCount, 0)
    }
}
