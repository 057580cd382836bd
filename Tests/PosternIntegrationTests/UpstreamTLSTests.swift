import Foundation
import XCTest

/// Postern as a TLS client to the upstream (the recording sink advertising STARTTLS).
final class UpstreamTLSTests: IntegrationTestCase, @unchecked Sendable {
    private func send(to postern: PosternServer) throws -> SMTPReply {
        let client = try RawSMTPClient.greeted(port: postern.port)
        let mail = try client.command("MAIL FROM:<sender@client.test>", timeout: 15)
        guard mail.code == 250 else { return mail }
        let rcpt = try client.command("RCPT TO:<rcpt@example.test>", timeout: 15)
        guard rcpt.code == 250 else { return rcpt }
        let data = try client.command("DATA", timeout: 15)
        guard data.code == 354 else { return data }
        try client.send("Subject: upstream tls\r\n\r\nbody\r\n.\r\n")
        return try client.readReply(timeout: 15)
    }

    func testRequiredUpstreamTLSWithoutVerification() throws {
        let (cert, key) = try makeSelfSignedCertificate()
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--tls-cert", cert.path, "--tls-key", key.path]) {
            $0.upstreamExtra = ["tls: require", "verify_certificate: false"]
        }
        let final = try send(to: postern)
        XCTAssertEqual(final.code, 250, final.text)
        let messages = sink.waitForMessages(1)
        XCTAssertEqual(messages.count, 1)
        XCTAssertEqual(messages.first?.tls, true, "the upstream transaction did not use STARTTLS")
    }

    func testRequiredUpstreamTLSRefusesAnUnverifiableCertificate() throws {
        let (cert, key) = try makeSelfSignedCertificate()
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--tls-cert", cert.path, "--tls-key", key.path]) {
            $0.upstreamExtra = ["tls: require", "verify_certificate: true"]
        }
        let reply = try send(to: postern)
        XCTAssertTrue((400..<500).contains(reply.code), "self-signed upstream certificate accepted: \(reply.text)")
        XCTAssertEqual(sink.messageCount, 0)
    }

    func testRequiredUpstreamTLSWithoutSTARTTLSIsTemporaryFailure() throws {
        let (postern, sink) = try startPosternWithSink {  // the sink does not offer STARTTLS
            $0.upstreamExtra = ["tls: require", "verify_certificate: false"]
        }
        let reply = try send(to: postern)
        XCTAssertTrue((400..<500).contains(reply.code), "expected 4xx, got \(reply.text)")
        XCTAssertEqual(sink.messageCount, 0)
    }

    func testOpportunisticUpstreamTLSIsUsedWhenOffered() throws {
        let (cert, key) = try makeSelfSignedCertificate()
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--tls-cert", cert.path, "--tls-key", key.path]) {
            $0.upstreamExtra = ["tls: opportunistic", "verify_certificate: false"]
        }
        let final = try send(to: postern)
        XCTAssertEqual(final.code, 250, final.text)
        XCTAssertEqual(sink.waitForMessages(1).first?.tls, true)
    }
}
