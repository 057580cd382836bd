import Foundation
import XCTest

/// STARTTLS on the listener, with a certificate made at test time.
final class TLSTests: IntegrationTestCase, @unchecked Sendable {
    private func startTLSPostern(listenerExtra: [String] = []) throws -> (PosternServer, RecordingSink) {
        let (cert, key) = try makeSelfSignedCertificate()
        return try startPosternWithSink { config in
            config.extra = "tls:\n  certificate: \(cert.path)\n  private_key: \(key.path)\n"
            config.listenerExtra = listenerExtra
        }
    }

    func testSTARTTLSWithSwaks() throws {
        let (postern, sink) = try startTLSPostern()
        let client = try RawSMTPClient.greeted(port: postern.port)
        let ehlo = try client.command("EHLO probe.test")
        XCTAssertTrue(ehlo.lines.contains { $0.dropFirst(4).uppercased() == "STARTTLS" }, ehlo.text)
        client.close()

        let result = try runSwaks(port: postern.port, ["--tls", "--from", "tls@client.test", "--to", "r@example.test",
                                                       "--header", "Subject: over TLS"])
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertTrue(result.output.contains("TLS started"), result.description)
        let messages = sink.waitForMessages(1)
        XCTAssertEqual(messages.count, 1)
        XCTAssertTrue(messages.first?.text.contains("Subject: over TLS") ?? false)
    }

    func testSTARTTLSCommandInjectionIsDiscarded() throws {
        let (postern, sink) = try startTLSPostern()
        let probe = try runPython(script: "starttls_injection.py", ["--port", "\(postern.port)", "--quiet", "1.0"])
        XCTAssertEqual(probe.status, 0, probe.description)
        let json = try JSONSerialization.jsonObject(with: probe.stdoutData) as? [String: Any] ?? [:]
        let starttls = json["starttls_reply"] as? [String] ?? []
        XCTAssertTrue(starttls.last?.hasPrefix("220") ?? false, probe.stdout)
        XCTAssertEqual(json["handshake"] as? String, "ok", "TLS handshake after the injected bytes: \(probe.stdout)")
        XCTAssertEqual(json["injected_noop_answered"] as? Bool, false,
                       "plaintext pipelined after STARTTLS was executed inside TLS: \(probe.stdout)")
        XCTAssertEqual(json["pre_command_data"] as? [String], [], probe.stdout)
        let replies = json["post_tls_replies"] as? [[String]] ?? []
        XCTAssertEqual(replies.count, 1, "expected only the EHLO reply inside TLS: \(probe.stdout)")
        XCTAssertTrue(replies.first?.first?.hasPrefix("250") ?? false, probe.stdout)
        XCTAssertEqual(sink.messageCount, 0)
    }

    func testRequireTLSRefusesMailBeforeSTARTTLS() throws {
        let (postern, sink) = try startTLSPostern(listenerExtra: ["require_tls: true"])
        let client = try RawSMTPClient.greeted(port: postern.port)
        let mail = try client.command("MAIL FROM:<plain@client.test>")
        XCTAssertEqual(mail.code, 530, mail.text)
        XCTAssertEqual(mail.enhancedCode, "5.7.0", mail.text)
        client.close()

        let result = try runSwaks(port: postern.port, ["--tls", "--from", "tls@client.test", "--to", "r@example.test"])
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)
    }
}
