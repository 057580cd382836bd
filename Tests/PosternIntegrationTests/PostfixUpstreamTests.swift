import Foundation
import XCTest

/// A real Postfix as the upstream.
final class PostfixUpstreamTests: IntegrationTestCase, @unchecked Sendable {
    func testRealPostfixReceivesMessageThroughPostern() throws {
        let postfix = try startPostfix()
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(postfix.port)"])
        let decisionLog = workDir.appendingPathComponent("decisions.log").path
        config.extra = "decision_log: \(decisionLog)"
        let postern = try startPostern(config)
        let marker = "postern-\(UUID().uuidString)"
        let body = workDir.appendingPathComponent("body.txt")
        try "Subject: via postern\nX-Marker: \(marker)\n\nHello Postfix.\n.leading dot\n..two dots".write(to: body, atomically: true, encoding: .utf8)
        let result = try runSwaks(port: postern.port, ["--from", "sender@client.test",
                                                       "--to", "alice@postfix.test,nobody@postfix.test",
                                                       "--data", body.path])
        // Postfix's own 550 5.1.1 for the unknown user reaches the client; alice is accepted.
        XCTAssertTrue(result.swaksReplies.contains { $0.hasPrefix("550 5.1.1") }, result.description)
        XCTAssertTrue(result.swaksReplies.contains { $0.hasPrefix("250 2.0.0 Ok: queued as ") }, result.description)

        XCTAssertTrue(waitUntil(timeout: 20) { !postfix.deliveredMessages(user: "alice").isEmpty },
                      "nothing delivered to alice; maillog:\n\(postfix.maillog)")
        let delivered = postfix.deliveredMessages(user: "alice").map { String(decoding: $0, as: UTF8.self) }
        XCTAssertEqual(delivered.count, 1)
        let text = delivered.first ?? ""
        XCTAssertTrue(text.contains("X-Marker: \(marker)"), text)
        XCTAssertTrue(text.contains("\n.leading dot\n..two dots\n"), text)
        XCTAssertTrue(text.contains("Received: from "), text)
        // postlogd writes the maillog asynchronously: wait for the delivery line.
        XCTAssertTrue(waitUntil(timeout: 10) { postfix.maillog.contains("status=sent (delivered to maildir)") }, postfix.maillog)
        XCTAssertTrue(postfix.maillog.contains("to=<alice@postfix.test>"), postfix.maillog)
        XCTAssertTrue(postfix.deliveredMessages(user: "nobody").isEmpty)

        // The decision record names Postfix's queue id, as Postfix's own log does.
        let queueID = try XCTUnwrap(result.swaksReplies.first { $0.hasPrefix("250 2.0.0 Ok: queued as ") }?
            .split(separator: " ").last.map(String.init))
        var record: [String: Any]?
        _ = waitUntil(timeout: 5) {
            let lines = (try? String(contentsOfFile: decisionLog, encoding: .utf8))?.split(separator: "\n") ?? []
            record = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .first { $0["decision"] as? String == "accepted" }
            return record != nil
        }
        let upstream = try XCTUnwrap(record?["upstream"] as? [String: Any], "no accepted record in \(decisionLog)")
        XCTAssertEqual(upstream["queue_id"] as? String, queueID)
        XCTAssertTrue(postfix.maillog.contains("\(queueID): "), "Postfix logs the same queue id")
        let recipients = try XCTUnwrap(record?["rcpts"] as? [[String: Any]])
        XCTAssertEqual(recipients.map { $0["address"] as? String }, ["alice@postfix.test", "nobody@postfix.test"])
        XCTAssertTrue((recipients.last?["reply"] as? String)?.hasPrefix("550 5.1.1") ?? false)
    }

    /// DESIGN.md: "Upstream sees the real client: XCLIENT (Postfix) or XFORWARD when the upstream
    /// advertises it". The client address comes from a PROXY header, so it is not loopback.
    func testPostfixSeesTheRealClientThroughXCLIENT() throws {
        let postfix = try startPostfix()
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(postfix.port)"])
        config.listenerExtra = ["proxy_protocol: true"]
        config.extra = "relay_domains: [postfix.test]"
        let postern = try startPostern(config)
        let client = try RawSMTPClient(port: postern.port)
        try client.send("PROXY TCP4 203.0.113.9 127.0.0.1 40009 25\r\n")
        XCTAssertEqual(try client.readReply().code, 220)
        XCTAssertEqual(try client.command("EHLO real-client.example").code, 250)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<bob@postfix.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: xclient\r\n\r\nhi\r\n.\r\n")
        XCTAssertEqual(try client.readReply().code, 250)
        XCTAssertTrue(waitUntil(timeout: 20) { !postfix.deliveredMessages(user: "bob").isEmpty }, postfix.maillog)
        XCTAssertTrue(waitUntil(timeout: 10) { postfix.maillog.contains("[203.0.113.9]") },
                      "Postfix did not see the real client address:\n\(postfix.maillog)")
    }
}

