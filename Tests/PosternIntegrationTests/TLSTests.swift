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

    /// The serial of the certificate a new STARTTLS session is shown (`openssl s_client`).
    private func presentedSerial(port: Int) throws -> String {
        let openssl = try requireTool("openssl")
        let session = try Command.run(openssl, ["s_client", "-starttls", "smtp", "-connect", "127.0.0.1:\(port)"], stdin: Data("QUIT\n".utf8), timeout: 15)
        let parse = try Command.run(openssl, ["x509", "-noout", "-serial"], stdin: session.stdoutData, timeout: 10)
        return parse.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func serial(_ certificate: URL) throws -> String {
        try Command.run(try requireTool("openssl"), ["x509", "-noout", "-serial", "-in", certificate.path], timeout: 10).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func fingerprint(_ certificate: URL) throws -> String {
        let text = try Command.run(try requireTool("openssl"), ["x509", "-noout", "-fingerprint", "-sha256", "-in", certificate.path], timeout: 10).stdout
        return String(text.split(separator: "=").last ?? "").replacingOccurrences(of: ":", with: "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func testACertificateReplacedOnDiskIsUsedByNewSessionsAndABrokenPairKeepsTheOld() throws {
        let first = try makeSelfSignedCertificate(name: "first")
        let second = try makeSelfSignedCertificate(name: "second")
        let third = try makeSelfSignedCertificate(name: "third")
        let live = try makeDirectory("live")
        let cert = live.appendingPathComponent("cert.pem"), key = live.appendingPathComponent("key.pem")
        try FileManager.default.copyItem(at: first.certificate, to: cert)
        try FileManager.default.copyItem(at: first.key, to: key)
        let metricsPort = try Net.freePort()
        let (postern, sink) = try startPosternWithSink { config in
            config.extra = "tls:\n  certificate: \(cert.path)\n  private_key: \(key.path)\nmetrics: 127.0.0.1:\(metricsPort)\n"
        }
        XCTAssertEqual(try presentedSerial(port: postern.port), try serial(first.certificate))

        // A session in TLS before the reload.
        let go = workDir.appendingPathComponent("go")
        let python = try requirePython()
        let held = try launch("held", python, [Paths.fixture("tls_session.py").path, "--port", "\(postern.port)", "--go", go.path])
        try held.waitForOutput(containing: "fingerprint=")
        XCTAssertTrue(held.stdout.contains("fingerprint=\(try fingerprint(first.certificate))"), held.output)

        // Renewed (both files replaced, as an ACME client does) and SIGHUP: new sessions see it.
        func install(_ pair: (certificate: URL, key: URL)) throws {
            for (from, to) in [(pair.certificate, cert), (pair.key, key)] {
                let temporary = to.appendingPathExtension("new")
                try FileManager.default.copyItem(at: from, to: temporary)
                XCTAssertEqual(rename(temporary.path, to.path), 0, "rename \(temporary.path)")
            }
        }
        try install(second)
        postern.process.signal(SIGHUP)
        XCTAssertTrue(waitUntil(timeout: 10) { (try? presentedSerial(port: postern.port)) == (try? serial(second.certificate)) },
                      postern.process.tail())
        XCTAssertTrue(postern.process.output.contains("msg=\"TLS certificate reloaded\""), postern.process.tail())

        // The held session goes on with its own handshake and sends its message.
        XCTAssertTrue(FileManager.default.createFile(atPath: go.path, contents: Data()))
        XCTAssertEqual(held.waitForExit(timeout: 30), 0, held.output)
        XCTAssertTrue(held.stdout.contains("sent=250"), held.output)
        XCTAssertTrue(held.stdout.contains("after=\(try fingerprint(first.certificate))"), held.output)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)

        // A certificate without its key: refused, logged, counted; the second pair stays.
        try FileManager.default.removeItem(at: cert)
        try FileManager.default.copyItem(at: third.certificate, to: cert)
        postern.process.signal(SIGHUP)
        XCTAssertTrue(waitUntil(timeout: 10) { postern.process.output.contains("TLS certificate not reloaded") }, postern.process.tail())
        XCTAssertTrue(postern.process.output.contains("does not match the certificate"), postern.process.tail())
        XCTAssertEqual(try presentedSerial(port: postern.port), try serial(second.certificate))
        let metrics = try Metrics.scrape(port: metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_tls_certificate_reloads_total", ["result": "failure"]), 1, metrics)
        XCTAssertGreaterThanOrEqual(Metrics.value(metrics, "postern_tls_certificate_reloads_total", ["result": "success"]) ?? 0, 1, metrics)

        // Its key follows: the file watch picks the pair up without a signal.
        try FileManager.default.removeItem(at: key)
        try FileManager.default.copyItem(at: third.key, to: key)
        XCTAssertTrue(waitUntil(timeout: 15) { (try? presentedSerial(port: postern.port)) == (try? serial(third.certificate)) },
                      postern.process.tail())
    }

    /// testssl.sh's findings (`--jsonfile`) for the STARTTLS port: id → finding.
    private func testssl(port: Int) throws -> [String: String] {
        let testssl = try requireTool("testssl")
        let report = workDir.appendingPathComponent("testssl-\(UUID().uuidString).json")
        let run = try Command.run(testssl, ["--quiet", "--color", "0", "--warnings", "off", "--starttls", "smtp",
                                            "--protocols", "--fs", "--std", "--cipher-per-proto", "--beast", "--lucky13", "--jsonfile", report.path,
                                            "127.0.0.1:\(port)"], timeout: 180)
        let data = try Data(contentsOf: report)
        let entries = (try JSONSerialization.jsonObject(with: data) as? [[String: Any]]) ?? []
        XCTAssertFalse(entries.isEmpty, run.description)
        var findings: [String: String] = [:]
        for entry in entries {
            if let id = entry["id"] as? String, let finding = entry["finding"] as? String { findings[id] = finding }
        }
        return findings
    }

    func testTheDefaultTLSPolicyPassesTestsslAndTLS10IsOfferedOnlyWhenAskedFor() throws {
        let (postern, _) = try startTLSPostern()
        let findings = try testssl(port: postern.port)
        for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
            XCTAssertEqual(findings[id], "not offered", "\(id): \(findings)")
        }
        XCTAssertEqual(findings["TLS1_2"], "offered", "\(findings)")
        XCTAssertEqual(findings["TLS1_3"].map { $0.hasPrefix("offered") }, true, "\(findings)")
        // (Debian 12's testssl.sh 3.0 says PFS and AVERAGE where later versions say FS and OBSOLETED.)
        XCTAssertEqual(findings["PFS"] ?? findings["FS"], "offered", "\(findings)")
        XCTAssertEqual(findings["BEAST"].map { $0.hasPrefix("not vulnerable") }, true, "\(findings)")
        XCTAssertEqual(findings["LUCKY13"].map { $0.hasPrefix("not vulnerable") }, true, "\(findings)")
        // No weak category, CBC ("average"/"obsoleted") included.
        for id in ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA"] {
            XCTAssertEqual(findings[id], "not offered", "\(id): \(findings)")
        }
        XCTAssertEqual(findings["cipherlist_AVERAGE"] ?? findings["cipherlist_OBSOLETED"], "not offered", "\(findings)")
        // Forward secrecy everywhere: every suite offered, in every version, has an ECDH key exchange.
        let suites = findings.filter { $0.key.hasPrefix("cipher-tls") }
        XCTAssertGreaterThanOrEqual(suites.count, 6, "\(findings)")
        for (id, row) in suites { XCTAssertTrue(row.contains(" ECDH "), "\(id) without forward secrecy: \(row)") }

        // An operator who must take mail from old senders says so: TLS 1.0 is offered (with
        // the CBC suites it needs), and testssl says it is deprecated.
        let (cert, key) = try makeSelfSignedCertificate(name: "old")
        let (legacy, _) = try startPosternWithSink { config in
            config.extra = "tls:\n  certificate: \(cert.path)\n  private_key: \(key.path)\n  min_version: \"1.0\"\n"
        }
        let old = try testssl(port: legacy.port)
        XCTAssertEqual(old["TLS1"].map { $0.hasPrefix("offered") }, true, "\(old)")
        XCTAssertEqual(old["TLS1_1"].map { $0.hasPrefix("offered") }, true, "\(old)")
        XCTAssertEqual(old["SSLv3"], "not offered", "\(old)")
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
