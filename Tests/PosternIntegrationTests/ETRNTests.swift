import Foundation
import XCTest

/// ETRN (RFC 1985): from trusted networks it goes to the upstream and the upstream's reply
/// comes back (a real Postfix flushes its queue for the domain); anyone else gets 502.
final class ETRNTests: IntegrationTestCase, @unchecked Sendable {
    /// Postern in front of a private Postfix: a PROXY listener and a plain one (trusted).
    private func startWithPostfix() throws -> (server: TrustServer, postfix: PostfixInstance) {
        let postfix = try startPostfix()
        let server = try startTrustServer(listeners: [try .proxy(), try .plain()],
                                          upstreams: ["smtp://127.0.0.1:\(postfix.port)"],
                                          extra: "relay_domains: [postfix.test]\n")
        return (server, postfix)
    }

    /// What Postfix itself answers to `ETRN <node>` (EHLO first), for comparison.
    private func postfixOwnReply(_ postfix: PostfixInstance, _ node: String) throws -> SMTPReply {
        let direct = try RawSMTPClient.greeted(port: postfix.port)
        defer { _ = try? direct.command("QUIT"); direct.close() }
        return try direct.command("ETRN \(node)")
    }

    /// A reply's code and text without the enhanced status code: Postfix answers ETRN
    /// without one ("250 Queuing started"), and Postern, which advertises
    /// ENHANCEDSTATUSCODES, adds one (RFC 2034 asks for it on every reply).
    private func essence(_ reply: SMTPReply) -> String {
        let last = reply.lines.last ?? ""
        var rest = last.dropFirst(4)
        if let code = reply.enhancedCode, rest.hasPrefix(code + " ") { rest = rest.dropFirst(code.count + 1) }
        return "\(reply.code) \(rest)"
    }

    private func etrn(_ port: Int, _ node: String) throws -> SMTPReply {
        let client = try RawSMTPClient.greeted(port: port)
        defer { _ = try? client.command("QUIT"); client.close() }
        return try client.command("ETRN \(node)", timeout: 20)
    }

    func testTrustedETRNGetsPostfixsOwnReply() throws {
        let (server, postfix) = try startWithPostfix()
        let plain = server.listeners[1].port

        // Untrusted (a PROXY source outside 127.0.0.0/8): 502 5.5.1, and Postfix never sees it.
        let untrusted = try RawSMTPClient.proxied(port: server.port, source: "198.51.100.20")
        for node in ["postfix.test", "@postfix.test", "#postfix.test"] {
            let reply = try untrusted.command("ETRN \(node)")
            XCTAssertEqual(reply.code, 502, "\(node): \(reply)")
            XCTAssertEqual(reply.enhancedCode, "5.5.1", "\(node): \(reply)")
        }
        XCTAssertEqual(try untrusted.command("QUIT").code, 221)
        sleep(seconds: 0.5)
        // Postfix counts ETRN in its disconnect lines ("etrn=1") and logs refusals ("reject: ETRN").
        XCTAssertFalse(postfix.maillog.contains("etrn=") || postfix.maillog.contains("reject: ETRN"),
                       "ETRN from an untrusted client reached Postfix:\n\(postfix.maillog)")

        // postfix.test is not a fast_flush_domain yet: Postfix refuses, and says so itself.
        let ownRefusal = try postfixOwnReply(postfix, "postfix.test")
        XCTAssertTrue((400..<600).contains(ownRefusal.code), "Postfix's own reply: \(ownRefusal)")
        let refusal = try etrn(plain, "postfix.test")
        XCTAssertEqual(essence(refusal), essence(ownRefusal), "Postern did not pass Postfix's reply through: \(refusal)")
        XCTAssertTrue(refusal.text.contains("<postfix.test>: service unavailable"), refusal.text)

        // Now Postfix flushes mail for postfix.test on ETRN.
        try postfix.reconfigure(["fast_flush_domains = postfix.test"])
        var own = try postfixOwnReply(postfix, "postfix.test")
        waitUntil(timeout: 10, interval: 0.2) {
            own = (try? postfixOwnReply(postfix, "postfix.test")) ?? own
            return own.code == 250
        }
        XCTAssertEqual(essence(own), "250 Queuing started", "Postfix after fast_flush_domains: \(own)")
        let started = try etrn(plain, "postfix.test")
        XCTAssertEqual(essence(started), "250 Queuing started", "ETRN through Postern: \(started)")
        let at = try etrn(plain, "@postfix.test")
        XCTAssertEqual(essence(at), essence(try postfixOwnReply(postfix, "@postfix.test")), "ETRN @domain: \(at)")
        let queue = try etrn(plain, "#postfix.test")
        XCTAssertEqual(essence(queue), essence(try postfixOwnReply(postfix, "#postfix.test")), "ETRN #queue: \(queue)")

        // A PROXY source in 127.0.0.0/8 is trusted as well.
        let proxied = try RawSMTPClient.proxied(port: server.port, source: "127.0.0.9")
        XCTAssertEqual(essence(try proxied.command("ETRN postfix.test", timeout: 20)), "250 Queuing started")

        // The session goes on normally after ETRN: a message through to Postfix.
        let client = try RawSMTPClient.greeted(port: plain)
        XCTAssertEqual(try client.command("ETRN postfix.test", timeout: 20).code, 250)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<alice@postfix.test>").code, 250)
        XCTAssertEqual(try client.sendMessage("Subject: after ETRN\r\n\r\nhello\r\n", timeout: 20).code, 250)
        XCTAssertTrue(waitUntil(timeout: 15) { postfix.deliveredMessages(user: "alice").count == 1 }, postfix.maillog)
        // Postfix itself counted the ETRN commands Postern passed on.
        XCTAssertTrue(postfix.maillog.contains("etrn=1"), postfix.maillog)
    }

    func testETRNSyntaxAndSequence() throws {
        // The sequence rules do not need Postfix: the recording sink is the upstream.
        let sink = try startRecordingSink()
        let server = try startTrustServer(listeners: [try .plain(), try .proxy()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
                                          extra: "relay_domains: [local.test]\n")
        // Untrusted first: 502, and the upstream never sees an ETRN.
        let untrusted = try RawSMTPClient.proxied(port: server.listeners[1].port, source: "198.51.100.21")
        XCTAssertEqual(try untrusted.command("ETRN local.test").code, 502)
        XCTAssertEqual(try untrusted.command("QUIT").code, 221)
        sleep(seconds: 0.3)
        XCTAssertFalse(sink.transcript.contains("ETRN"), sink.transcript)

        let client = try RawSMTPClient(port: server.port)
        XCTAssertEqual(try client.readReply().code, 220)
        let beforeHello = try client.command("ETRN local.test")
        XCTAssertEqual(beforeHello.code, 503, beforeHello.text)
        XCTAssertEqual(try client.command("EHLO raw.client.test").code, 250)

        let bare = try client.command("ETRN")
        XCTAssertEqual(bare.code, 501, bare.text)
        XCTAssertEqual(bare.enhancedCode, "5.5.4", bare.text)
        XCTAssertTrue(bare.text.contains("ETRN"), bare.text)
        XCTAssertEqual(try client.command("ETRN two words").code, 501)

        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        let inTransaction = try client.command("ETRN local.test")
        XCTAssertEqual(inTransaction.code, 503, inTransaction.text)
        XCTAssertEqual(inTransaction.enhancedCode, "5.5.1", inTransaction.text)
        XCTAssertEqual(try client.command("RSET").code, 250)

        // An upstream without ETRN: its refusal is what the client gets, not Postern's own 502.
        let passed = try client.command("ETRN local.test", timeout: 20)
        XCTAssertEqual(passed.text, "502 5.5.2 Command not recognized", "the sink's reply should be passed through")
        XCTAssertTrue(waitUntil(timeout: 5) { sink.transcript.contains("C: ETRN local.test") }, sink.transcript)
        XCTAssertEqual(try client.command("QUIT").code, 221)
        XCTAssertEqual(sink.messageCount, 0)
    }
}
