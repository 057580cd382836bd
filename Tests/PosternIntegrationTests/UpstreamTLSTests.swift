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

    func testTheUpstreamTLSPolicySetsTheOldestVersionPosternAccepts() throws {
        let (cert, key) = try makeSelfSignedCertificate()
        let sinkOptions = ["--tls-cert", cert.path, "--tls-key", key.path, "--tls-max-version", "1.2"]
        // The default policy (TLS 1.2 and newer) takes an upstream that stops at TLS 1.2.
        let (postern, sink) = try startPosternWithSink(sinkOptions: sinkOptions) {
            $0.upstreamExtra = ["tls: require", "verify_certificate: false"]
        }
        XCTAssertEqual(try send(to: postern).code, 250)
        XCTAssertEqual(sink.waitForMessages(1).first?.tlsVersion, "TLSv1.2")
        // tls_policy: TLS 1.3 only: the same upstream's handshake fails, and the mail is tempfailed.
        let strictSink = try startRecordingSink(sinkOptions, name: "strict-sink")
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(strictSink.port)"])
        config.upstreamExtra = ["tls: require", "verify_certificate: false", "tls_policy: { min_version: \"1.3\" }"]
        let reply = try send(to: try startPostern(config, name: "strict"))
        XCTAssertTrue((400..<500).contains(reply.code), "TLS 1.2 upstream accepted under min_version 1.3: \(reply.text)")
        XCTAssertEqual(strictSink.messageCount, 0)
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
