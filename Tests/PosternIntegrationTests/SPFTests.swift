import Foundation
import XCTest

/// Postern's own SPF check at MAIL through the real binary, against SPF records served on a
/// loopback port (Fixtures/stub_dns.py): `spf:` rules decide, relayed mail carries
/// Authentication-Results under the configured authserv-id.
final class SPFTests: IntegrationTestCase, @unchecked Sendable {
    func testSPFFailRefusedPassAndSoftfailRelayedWithAuthenticationResults() throws {
        let dnsPort = try startLoopbackDNS([
            "pass.test\tv=spf1 ip4:192.0.2.10 -all", "fail.test\tv=spf1 ip4:198.51.100.1 -all",
            "soft.test\tv=spf1 include:_spf.soft.test ~all", "_spf.soft.test\tv=spf1 ip4:198.51.100.0/24 -all",
            "helo.test\tv=spf1 a -all", "helo.test\tA\t192.0.2.10",
        ])
        let policy = workDir.appendingPathComponent("policy.yaml")
        try """
            rules:
              - id: spf-fail
                stage: mail
                if: { spf: [fail, permerror] }
                then: reject
                reply: "550 5.7.23 SPF check failed for {sender}"
              - { id: spf-soft, stage: data, if: { spf: softfail }, then: tag_subject, tag: "[SPF-SOFTFAIL]" }
            """.write(to: policy, atomically: true, encoding: .utf8)
        let sink = try startRecordingSink()
        let server = try startDNSServer(policy: policy, dnsPort: dnsPort, sink: sink, dns: "timeout: 2s, authserv_id: mx.postern.test",
                                        extra: "relay_domains: [example.org]")
        func send(_ from: String, helo: String = "proxied.client.test") throws -> (mail: Int, final: Int?) {
            let client = try RawSMTPClient.proxied(port: server.port, source: "192.0.2.10", ehlo: helo)
            let mail = try client.command("MAIL FROM:<\(from)>")
            guard mail.code == 250 else { return (mail.code, nil) }
            XCTAssertEqual(try client.command("RCPT TO:<r@example.org>").code, 250)
            let final = try client.sendMessage("Subject: from [\(from)]\r\n\r\nhello\r\n", timeout: 20).code
            _ = try? client.command("QUIT")
            return (mail.code, final)
        }
        XCTAssertEqual(try send("a@fail.test").mail, 550)
        let refused = DecisionLog.waitForRecord(server.decisionLog) { ($0["rule"] as? String) == "spf-fail" }
        XCTAssertTrue((refused?["reason"] as? String)?.hasPrefix("spf=fail") == true, "\(refused ?? [:])")

        XCTAssertEqual(try send("a@pass.test").final, 250)
        XCTAssertEqual(try send("b@soft.test").final, 250)
        XCTAssertEqual(try send("", helo: "helo.test").final, 250)
        let messages = sink.waitForMessages(3)
        XCTAssertEqual(messages.count, 3)
        func results(_ subject: String) -> String {
            let message = messages.first { $0.text.contains(subject) }?.text ?? ""
            return message.components(separatedBy: "\r\n").first { $0.hasPrefix("Authentication-Results:") } ?? message
        }
        XCTAssertTrue(results("from [a@pass.test]").hasPrefix("Authentication-Results: mx.postern.test; spf=pass ("), results("from [a@pass.test]"))
        XCTAssertTrue(results("from [a@pass.test]").hasSuffix(" smtp.mailfrom=a@pass.test"), results("from [a@pass.test]"))
        XCTAssertTrue(results("from [b@soft.test]").hasPrefix("Authentication-Results: mx.postern.test; spf=softfail"), results("from [b@soft.test]"))
        // A data rule sees the MAIL-stage result: the softfail is tagged, the pass is not.
        XCTAssertTrue(messages.contains { $0.text.contains("\r\nSubject: [SPF-SOFTFAIL] from [b@soft.test]\r\n") }, messages.map(\.text).joined())
        XCTAssertTrue(messages.contains { $0.text.contains("\r\nSubject: from [a@pass.test]\r\n") }, messages.map(\.text).joined())
        XCTAssertTrue(results("from []").hasPrefix("Authentication-Results: mx.postern.test; spf=pass"), results("from []"))
        XCTAssertTrue(results("from []").hasSuffix(" smtp.helo=helo.test"), results("from []"))
    }

    func testForgedAuthenticationResultsUnderOurAuthservIDAreRemoved() throws {
        let sink = try startRecordingSink()
        let closed = try Net.freePort()
        // The second message is also tagged: removing the field and tagging the Subject combine.
        let policy = workDir.appendingPathComponent("policy.yaml")
        try """
            rules:
              - { id: tag, stage: data, if: { subject: { regex: 'forged true' } }, then: tag_subject, tag: "[TAG]" }
            """.write(to: policy, atomically: true, encoding: .utf8)
        let server = try startDNSServer(policy: policy, dnsPort: closed, sink: sink, dns: "timeout: 1s, authserv_id: mx.postern.test",
                                        listener: try .plain())
        for tag in [false, true] {
            let client = try RawSMTPClient.greeted(port: server.port)
            XCTAssertEqual(try client.command("MAIL FROM:<a@forger.test>").code, 250)
            XCTAssertEqual(try client.command("RCPT TO:<r@example.org>").code, 250)
            let reply = try client.sendMessage("""
                Authentication-Results: MX.Postern.Test; spf=pass smtp.mailfrom=a@forger.test;
                \tdkim=pass header.d=bank.example\r
                Authentication-Results: other.example; dkim=pass\r
                Subject: forged \(tag)\r
                \r
                hello\r

                """.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\n", with: "\r\n"), timeout: 20)
            XCTAssertEqual(reply.code, 250)
            _ = try? client.command("QUIT")
        }
        let messages = sink.waitForMessages(2)
        XCTAssertEqual(messages.count, 2)
        for message in messages {
            let header = message.text.components(separatedBy: "\r\n\r\n")[0]
            let results = header.components(separatedBy: "\r\n").filter { $0.hasPrefix("Authentication-Results:") }
            // Ours (the DNS server is down: temperror), and the other host's; the forged one is gone, folded line and all.
            XCTAssertEqual(results.count, 2, header)
            XCTAssertTrue(results[0].hasPrefix("Authentication-Results: mx.postern.test; spf=temperror"), header)
            XCTAssertEqual(results[1], "Authentication-Results: other.example; dkim=pass", header)
            XCTAssertFalse(header.contains("bank.example"), header)
            XCTAssertTrue(message.text.hasSuffix("\r\n\r\nhello\r\n"), message.text)
        }
        XCTAssertTrue(messages.contains { $0.text.contains("\r\nSubject: [TAG] forged true\r\n") }, messages.map(\.text).joined())
        XCTAssertTrue(messages.contains { $0.text.contains("\r\nSubject: forged false\r\n") }, messages.map(\.text).joined())
    }

    func testACheckNamedSpfConflictsWithPosternsOwn() throws {
        let config = try writeConfig("""
            hostname: mx.test
            listen: [{ address: "127.0.0.1:\(try Net.freePort())" }]
            upstreams: [{ url: "smtp://127.0.0.1:1" }]
            policy_services: [{ name: spf, spawn: [/bin/cat] }]
            dns: { servers: ["127.0.0.1:53"] }
            """, name: "check.yaml")
        let result = try Command.run(try Paths.posternBinary(), ["check", "--config", config.path], timeout: 30)
        XCTAssertNotEqual(result.status, 0, result.description)
        XCTAssertTrue(result.output.contains("a check is named 'spf', the name of Postern's own SPF check (dns.spf)"), result.description)
    }
}
