import Foundation
import XCTest

/// `dns: { dnssec: validate }` through the real binary against a signed zone served by NSD
/// (Harness/SignedZone.swift): a validated answer is used (and shown as validated); an
/// answer whose signature does not match is bogus, a temporary error a rule can tempfail on,
/// never a listing; the same tampered answer without validation is believed.
final class DNSSECTests: IntegrationTestCase, @unchecked Sendable {
    func testValidationUsesSignedAnswersAndRefusesTamperedOnes() throws {
        let zone = try startSignedZone("signed.test", records: ["40.2.0.192 A 127.0.0.2", "41.2.0.192 A 127.0.0.2"],
                                       tampered: ["41.2.0.192 A 127.0.0.3"])
        let policy = workDir.appendingPathComponent("policy.yaml")
        try """
            dnsbl:
              - { name: signed, zone: signed.test }
            rules:
              - { id: listed, stage: connect, if: { dnsbl: signed }, then: reject }
              - { id: unverifiable, stage: connect, if: { dnsbl: { name: signed, error: true } }, then: tempfail }
            """.write(to: policy, atomically: true, encoding: .utf8)
        let sink = try startRecordingSink()
        let validation = "timeout: 3s, dnssec: validate, trust_anchor: \(zone.trustAnchor.path), spf: false"
        let validating = try startDNSServer(policy: policy, dnsPort: zone.port, sink: sink, dns: validation, name: "validating")
        func greeting(_ server: TrustServer, _ source: String) throws -> SMTPReply {
            let client = try RawSMTPClient.viaProxy(port: server.port, source: "\(source)")
            let reply = try client.readReply()
            _ = try? client.command("QUIT")
            return reply
        }
        XCTAssertEqual(try greeting(validating, "192.0.2.40").code, 554, "a validated listing")
        XCTAssertEqual(try greeting(validating, "192.0.2.41").code / 100, 4, "a bogus answer is a temporary error")
        XCTAssertEqual(try greeting(validating, "192.0.2.42").code, 220, "a validated NXDOMAIN")
        let record = DecisionLog.waitForRecord(validating.decisionLog) { ($0["rule"] as? String) == "unverifiable" }
        let lists = DecisionLog.client(record ?? [:])["dnsbl"] as? [[String: Any]] ?? []
        XCTAssertEqual(lists.first?["result"] as? String, "error", "\(lists)")
        XCTAssertTrue((lists.first?["error"] as? String)?.contains("validation failure") == true, "\(lists)")
        let metrics = try Metrics.scrape(port: validating.metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_dns_queries_total", ["type": "A", "result": "bogus"]), 1, metrics)

        // Without validation the tampered answer is believed: validation made the difference.
        let trusting = try startDNSServer(policy: policy, dnsPort: zone.port, sink: sink, dns: "timeout: 3s, dnssec: off, spf: false",
                                          name: "trusting")
        XCTAssertEqual(try greeting(trusting, "192.0.2.41").code, 554)

        // explain marks validated answers.
        let config = try writeConfig("""
            hostname: mx.test
            listen: [{ address: "127.0.0.1:\(try Net.freePort())" }]
            upstreams: [{ url: "smtp://127.0.0.1:1" }]
            dns: { servers: ["127.0.0.1:\(zone.port)"], verify_client_names: false, \(validation) }
            """, name: "explain.yaml")
        let explained = try runPostern(["explain", "--config", config.path, "--policy", policy.path, "--client-ip", "192.0.2.40"])
        XCTAssertTrue(explained.stdout.contains("dns: A 40.2.0.192.signed.test -> 127.0.0.2 (validated)"), explained.description)
    }
}
