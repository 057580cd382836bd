import Foundation
import XCTest

/// Forward-confirmed reverse DNS before the greeting, through the real binary, against a DNS
/// server on a loopback port (Fixtures/stub_dns.py): the verified name reaches Postfix through
/// XCLIENT, Postern's Received header, the decision record and `/metrics`; the policy can
/// refuse clients without one; a silent server costs at most the DNS timeout.
final class ClientNameTests: IntegrationTestCase, @unchecked Sendable {
    static let verified = "192.0.2.10"
    static let unverified = "192.0.2.11"
    static let unnamed = "192.0.2.12"

    /// PTR/A records for the three clients.
    private func startDNS() throws -> Int {
        try startLoopbackDNS([
            "10.2.0.192.in-addr.arpa\tPTR\tmail.verified.test", "mail.verified.test\tA\t\(Self.verified)",
            "11.2.0.192.in-addr.arpa\tPTR\tforged.example.test", "forged.example.test\tA\t198.51.100.1",
        ])
    }

    func testTheVerifiedNameReachesPostfixTheReceivedHeaderTheRecordAndTheMetrics() throws {
        let dnsPort = try startDNS()
        let postfix = try startPostfix()
        let server = try startTrustServer(
            listeners: [try .proxy()], upstreams: ["smtp://127.0.0.1:\(postfix.port)"],
            extra: "relay_domains: [postfix.test]\ndns: { servers: [\"127.0.0.1:\(dnsPort)\"], timeout: 3s }\n")
        for (source, subject) in [(Self.verified, "verified"), (Self.unverified, "unverified"), (Self.unnamed, "unnamed")] {
            let client = try RawSMTPClient.proxied(port: server.port, source: source)
            XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
            XCTAssertEqual(try client.command("RCPT TO:<alice@postfix.test>").code, 250)
            XCTAssertEqual(try client.sendMessage("Subject: \(subject)\r\n\r\nhello\r\n", timeout: 20).code, 250, subject)
            _ = try? client.command("QUIT")
        }
        XCTAssertTrue(waitUntil(timeout: 20) { postfix.deliveredMessages(user: "alice").count == 3 }, postfix.maillog)
        // XCLIENT NAME: Postfix logs (and trusts) only the verified name.
        XCTAssertTrue(postfix.maillog.contains("client=mail.verified.test[\(Self.verified)]"), postfix.maillog)
        XCTAssertTrue(postfix.maillog.contains("client=unknown[\(Self.unverified)]"), postfix.maillog)
        XCTAssertTrue(postfix.maillog.contains("client=unknown[\(Self.unnamed)]"), postfix.maillog)
        let delivered = postfix.deliveredMessages(user: "alice").map { String(decoding: $0, as: UTF8.self) }
        let verifiedMessage = try XCTUnwrap(delivered.first { $0.contains("Subject: verified") })
        // Postern's own Received header (Postfix's, below it, says the same from XCLIENT).
        XCTAssertTrue(verifiedMessage.replacingOccurrences(of: "\r\n", with: "\n")
            .contains("Received: from proxied.client.test (mail.verified.test [\(Self.verified)])\n\tby postern.test (Postern)"), verifiedMessage)
        let unverifiedMessage = try XCTUnwrap(delivered.first { $0.contains("Subject: unverified") })
        XCTAssertTrue(unverifiedMessage.replacingOccurrences(of: "\r\n", with: "\n")
            .contains("Received: from proxied.client.test (unknown [\(Self.unverified)])\n\tby postern.test (Postern)"), unverifiedMessage)

        let records = DecisionLog.records(server.decisionLog)
        func client(_ ip: String) -> [String: Any] {
            DecisionLog.client(records.first { (DecisionLog.client($0)["ip"] as? String) == ip } ?? [:])
        }
        XCTAssertEqual(client(Self.verified)["name"] as? String, "mail.verified.test")
        XCTAssertEqual(client(Self.verified)["name_status"] as? String, "verified")
        XCTAssertEqual(client(Self.unverified)["name"] as? String, "forged.example.test")
        XCTAssertEqual(client(Self.unverified)["name_status"] as? String, "unverified")
        XCTAssertEqual(client(Self.unnamed)["name_status"] as? String, "none")

        let metrics = try Metrics.scrape(port: server.metricsPort)
        for status in ["verified", "unverified", "none"] {
            XCTAssertEqual(Metrics.value(metrics, "postern_client_names_total", ["status": status]), 1, metrics)
        }
        XCTAssertEqual(Metrics.value(metrics, "postern_dns_queries_total", ["type": "PTR", "result": "records"]), 2, metrics)
        XCTAssertEqual(Metrics.value(metrics, "postern_dns_queries_total", ["type": "PTR", "result": "nxdomain"]), 1, metrics)
    }

    func testThePolicyRefusesClientsWithoutAVerifiedName() throws {
        let dnsPort = try startDNS()
        let sink = try startRecordingSink()
        let policy = workDir.appendingPathComponent("policy.yaml")
        try """
            rules:
              - id: no-name
                stage: connect
                if: { client_name_status: [none, unverified] }
                then: reject
                reply: "550 5.7.25 Client host rejected: cannot find your hostname"
              - id: dynamic
                stage: connect
                if: { client_name: { domain: dyn.verified.test } }
                then: reject
            """.write(to: policy, atomically: true, encoding: .utf8)
        let server = try startTrustServer(
            listeners: [try .proxy()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
            extra: "policy: \(policy.path)\ndns: { servers: [\"127.0.0.1:\(dnsPort)\"], timeout: 3s }\n")
        for source in [Self.unverified, Self.unnamed] {
            let client = try RawSMTPClient.viaProxy(port: server.port, source: "\(source)")
            let greeting = try client.readReply()
            XCTAssertEqual(greeting.code, 550, "\(source): \(greeting)")
            XCTAssertEqual(greeting.enhancedCode, "5.7.25", "\(source): \(greeting)")
        }
        let welcome = try RawSMTPClient.proxied(port: server.port, source: Self.verified)
        XCTAssertEqual(try welcome.command("MAIL FROM:<a@client.test>").code, 250)
        let refused = DecisionLog.waitForRecord(server.decisionLog) { ($0["rule"] as? String) == "no-name" }
        XCTAssertEqual(refused?["stage"] as? String, "connect", "\(refused ?? [:])")
        XCTAssertTrue((refused?["reason"] as? String)?.contains("client name") == true, "\(refused ?? [:])")
    }

    func testASilentDNSServerCostsAtMostTheTimeoutAndIsATemporaryStatus() throws {
        let port = try silentUDPPort()
        let sink = try startRecordingSink()
        let server = try startTrustServer(
            listeners: [try .proxy()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
            extra: "relay_domains: [example.org]\ndns: { servers: [\"127.0.0.1:\(port)\"], timeout: 1s }\n")
        let start = Date()
        let client = try RawSMTPClient.proxied(port: server.port, source: Self.verified)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(elapsed, 0.9)
        XCTAssertLessThan(elapsed, 3, "the greeting waited longer than the DNS timeout")
        XCTAssertEqual(try client.command("MAIL FROM:<a@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<r@example.org>").code, 250)
        XCTAssertEqual(try client.sendMessage("Subject: t\r\n\r\nhello\r\n", timeout: 20).code, 250)
        let record = DecisionLog.waitForRecord(server.decisionLog) { ($0["decision"] as? String) == "accepted" }
        XCTAssertEqual(DecisionLog.client(record ?? [:])["name_status"] as? String, "tempfail", "\(record ?? [:])")
        let metrics = try Metrics.scrape(port: server.metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_dns_queries_total", ["type": "PTR", "result": "timeout"]), 1, metrics)
    }
}
