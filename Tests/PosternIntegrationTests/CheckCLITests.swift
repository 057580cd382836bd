import Foundation
import XCTest

/// `postern check` makes the checks `serve` makes before it listens (ServerPreparation):
/// the TLS key pair, Maildirs, the quarantine requirement, the decision log. Each refusal
/// is exit 2 with a message naming the key and the file; nothing is created.
final class CheckCLITests: IntegrationTestCase, @unchecked Sendable {
    private func config(_ extra: String, upstreams: [String] = ["smtp://127.0.0.1:10025"], port: Int = 2525) -> String {
        var config = PosternConfig(port: port, upstreams: upstreams)
        config.extra = extra
        return config.yaml
    }

    private func check(_ yaml: String, name: String = "check.yaml") throws -> CommandResult {
        let url = try writeConfig(yaml, name: name)
        return try runPostern(["check", "--config", url.path])
    }

    func testAKeyThatIsNotTheCertificatesIsRefusedByCheckAsByServe() throws {
        let first = try makeSelfSignedCertificate(name: "first")
        let second = try makeSelfSignedCertificate(name: "second")
        let good = try check(config("tls:\n  certificate: \(first.certificate.path)\n  private_key: \(first.key.path)\n"))
        XCTAssertEqual(good.status, 0, good.description)
        XCTAssertTrue(good.stdout.contains("configuration OK"), good.description)

        let yaml = config("tls:\n  certificate: \(first.certificate.path)\n  private_key: \(second.key.path)\n", port: try Net.freePort())
        let result = try check(yaml, name: "mismatch.yaml")
        XCTAssertEqual(result.status, 2, result.description)
        XCTAssertTrue(result.stderr.contains(
            "tls.private_key \(second.key.path) does not match the certificate in tls.certificate \(first.certificate.path)"),
            result.description)
        XCTAssertFalse(result.stdout.contains("configuration OK"), result.description)

        // serve refuses the same configuration before it listens (exit 1, a runtime failure).
        let served = try runPostern(["serve", "--config", workDir.appendingPathComponent("mismatch.yaml").path])
        XCTAssertEqual(served.status, 1, served.description)
        XCTAssertTrue(served.output.contains("does not match the certificate"), served.description)
    }

    func testAGarbageCertificateIsRefused() throws {
        let pair = try makeSelfSignedCertificate()
        let garbage = workDir.appendingPathComponent("garbage.pem")
        try "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n".write(to: garbage, atomically: true, encoding: .utf8)
        let text = workDir.appendingPathComponent("text.pem")
        try "just some text\n".write(to: text, atomically: true, encoding: .utf8)
        for certificate in [garbage, text] {
            let result = try check(config("tls:\n  certificate: \(certificate.path)\n  private_key: \(pair.key.path)\n"))
            XCTAssertEqual(result.status, 2, result.description)
            XCTAssertTrue(result.stderr.contains("tls.certificate \(certificate.path): "), result.description)
        }
        // A key file that is not a key.
        let result = try check(config("tls:\n  certificate: \(pair.certificate.path)\n  private_key: \(text.path)\n"))
        XCTAssertEqual(result.status, 2, result.description)
        XCTAssertTrue(result.stderr.contains("tls.private_key \(text.path): not a PEM private key"), result.description)
    }

    func testCheckSaysWhichEngineEachContentPatternGets() throws {
        let policy = workDir.appendingPathComponent("policy.yaml")
        try """
            rules:
              - { id: pills, stage: data, if: { body: { regex: '\\b(viagra|cialis)\\b' } }, then: reject }
              - { id: tracking, stage: data, if: { raw: { regex: '(?m)^X-Tracking: [0-9a-f]{16}' } }, then: reject }
              - { id: callout, stage: data, if: { body: { regex: 'a(?C1)b' } }, then: reject }
              - { id: subject, stage: data, if: { subject: { regex: 'offer' } }, then: reject }
              - { id: filler, stage: data, if: { body: { regex: '(?-i)X{200}' } }, then: reject }
            """.write(to: policy, atomically: true, encoding: .utf8)
        let result = try check(config("policy: \(policy.path)\n"))
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertTrue(result.stdout.contains("content patterns: 5, 2 in one Hyperscan pass per message (PCRE2 confirms a hit), "
                                             + "1 by a count of character runs (PCRE2 confirms a run), 2 with PCRE2 alone"), result.description)
        XCTAssertTrue(result.stdout.contains("rule filler: body: /(?-i)X{200}/ by a count of runs (200 in a row)"), result.description)
        XCTAssertTrue(result.stdout.contains("rule callout: body: /a(?C1)b/ with PCRE2 alone: Hyperscan: "), result.description)
        XCTAssertFalse(result.stdout.contains("rule subject"), "short values are not worth a line: \(result.stdout)")
    }

    func testQuarantineRulesNeedAQuarantineMaildir() throws {
        let policy = workDir.appendingPathComponent("policy.yaml")
        try """
            rules:
              - { id: keep-suspects, stage: data, if: { subject: { regex: 'suspect' } }, then: quarantine }
            """.write(to: policy, atomically: true, encoding: .utf8)
        let result = try check(config("policy: \(policy.path)\n"))
        XCTAssertEqual(result.status, 2, result.description)
        XCTAssertTrue(result.stderr.contains("the policy has quarantine rules (keep-suspects) but no quarantine: Maildir is configured"),
                      result.description)

        let quarantine = workDir.appendingPathComponent("spool/quarantine")
        let ok = try check(config("policy: \(policy.path)\nquarantine: \(quarantine.path)\n"))
        XCTAssertEqual(ok.status, 0, ok.description)
        XCTAssertTrue(ok.stdout.contains("policy OK"), ok.description)
        XCTAssertFalse(FileManager.default.fileExists(atPath: workDir.appendingPathComponent("spool").path),
                       "check creates no Maildir")
    }

    func testMaildirsUnderAFileAreRefusedAndEveryProblemIsReported() throws {
        let file = workDir.appendingPathComponent("plain-file")
        try "not a directory\n".write(to: file, atomically: true, encoding: .utf8)
        let result = try check(config("quarantine: \(file.path)/quarantine\ndecision_log: \(file.path)/logs/decisions.log\n"
                                      + "samples: { directory: \(file.path)/samples }\n",
                                      upstreams: ["maildir:\(file.path)/box"]))
        XCTAssertEqual(result.status, 2, result.description)
        for line in [
            "samples.directory: cannot create \(file.path)/samples: \(file.path) is not a directory",
            "upstream maildir:\(file.path)/box: cannot create \(file.path)/box: \(file.path) is not a directory",
            "quarantine: cannot create \(file.path)/quarantine: \(file.path) is not a directory",
            "decision_log \(file.path)/logs/decisions.log: cannot create \(file.path)/logs/decisions.log: \(file.path) is not a directory",
        ] {
            XCTAssertTrue(result.stderr.contains(line), "missing '\(line)'\n\(result.description)")
        }
        // A Maildir path that is itself a file.
        let itself = try check(config("", upstreams: ["maildir:\(file.path)"]))
        XCTAssertEqual(itself.status, 2, itself.description)
        XCTAssertTrue(itself.stderr.contains("upstream maildir:\(file.path): \(file.path) exists and is not a directory"), itself.description)
    }

    /// A Maildir in, or under, a directory Postern may not write in. Root may write anywhere,
    /// so as root the check runs as nobody (setpriv).
    func testMaildirsUnderAReadOnlyDirectoryAreRefused() throws {
        let readOnly = try makeDirectory("read-only")
        let existing = readOnly.appendingPathComponent("existing")
        try FileManager.default.createDirectory(at: existing, withIntermediateDirectories: true)
        for directory in [existing, readOnly] {
            try FileManager.default.setAttributes([.posixPermissions: 0o555], ofItemAtPath: directory.path)
        }
        onTeardown {
            for directory in [existing, readOnly] {
                try? FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: directory.path)
            }
        }
        let writable = try makeDirectory("writable")
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: writable.path)
        let postern = try posternBinary()
        func check(_ yaml: String, name: String) throws -> CommandResult {
            let url = try writeConfig(yaml, name: name)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: url.path)
            let arguments = ["check", "--config", url.path]
            guard getuid() == 0 else { return try Command.run(postern, arguments, currentDirectory: workDir, timeout: 30) }
            return try Command.run(try requireTool("setpriv"), ["--reuid=65534", "--regid=65534", "--clear-groups", postern.path] + arguments,
                                   currentDirectory: workDir, timeout: 30)
        }

        let under = try check(config("", upstreams: ["maildir:\(readOnly.path)/new-box/inner"]), name: "under.yaml")
        XCTAssertEqual(under.status, 2, under.description)
        XCTAssertTrue(under.stderr.contains(
            "upstream maildir:\(readOnly.path)/new-box/inner: cannot create \(readOnly.path)/new-box/inner: \(readOnly.path) is not writable"),
            under.description)

        let existingBox = try check(config("quarantine: \(existing.path)\n"), name: "existing.yaml")
        XCTAssertEqual(existingBox.status, 2, existingBox.description)
        XCTAssertTrue(existingBox.stderr.contains("quarantine: \(existing.path) is not writable"), existingBox.description)

        // The same Maildir in a directory that may be written in passes, and is not created.
        let fine = try check(config("quarantine: \(writable.path)/quarantine\n", upstreams: ["maildir:\(writable.path)/box"]), name: "fine.yaml")
        XCTAssertEqual(fine.status, 0, fine.description)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: writable.path), [], "check creates nothing")
    }

    func testCheckEnginesReportsEachPolicyServer() throws {
        let sink = try startRecordingSink()  // something that listens: reachable is all check asks
        let closed = try Net.freePort()
        let yaml = config("""
            policy_services:
              - { name: up, address: "inet:127.0.0.1:\(sink.port)" }
              - { name: down, address: "inet:127.0.0.1:\(closed)", timeout: 5s }
              - { name: spawned, spawn: [/bin/cat] }
            """)
        let plain = try check(yaml)
        XCTAssertEqual(plain.status, 0, plain.description)
        XCTAssertTrue(plain.stdout.contains("3 policy service(s)"), plain.description)
        let url = workDir.appendingPathComponent("check.yaml")
        let engines = try runPostern(["check", "--engines", "--config", url.path])
        XCTAssertEqual(engines.status, 1, engines.description)
        XCTAssertTrue(engines.stdout.contains("policy service up (inet:127.0.0.1:\(sink.port)): reachable"), engines.description)
        XCTAssertTrue(engines.stdout.contains("policy service spawned (spawn:/bin/cat): reachable"), engines.description)
        XCTAssertTrue(engines.stderr.contains("policy service down (inet:127.0.0.1:\(closed)): cannot reach inet:127.0.0.1:\(closed): Connection refused"),
                      engines.description)
    }
}
