import Foundation
import XCTest

/// Rule scores through the real binary: rules add to a running score across stages, a
/// `score: { over: N }` rule decides, the decision record lists each part, and
/// `postern explain` shows the running score line by line.
final class ScoreTests: IntegrationTestCase, @unchecked Sendable {
    private let policy = """
        rules:
          - { id: literal-helo, stage: helo, if: { helo: { is_ip_literal: true } }, score: 3 }
          - { id: free-mail, stage: mail, if: { sender: { domain: freemail.test } }, score: 2 }
          - { id: shadow-guess, stage: mail, if: { sender: { domain: freemail.test } }, score: 10, mode: shadow }
          - { id: known-partner, stage: mail, if: { sender: { domain: partner.test } }, score: -5 }
          - { id: urgent, stage: data, if: { subject: { regex: 'urgent' } }, score: 1.5 }
          - id: too-much
            stage: data
            if: { score: { over: 6 } }
            then: reject
            reply: "550 5.7.1 Message scored too high (ref {id})"
        """

    func testScoresAddUpAcrossStagesAndTheRecordListsThem() throws {
        let policyFile = workDir.appendingPathComponent("policy.yaml")
        try policy.write(to: policyFile, atomically: true, encoding: .utf8)
        let decisions = workDir.appendingPathComponent("decisions.log")
        let (postern, sink) = try startPosternWithSink {
            $0.extra = "policy: \(policyFile.path)\ndecision_log: \(decisions.path)\n"
        }
        func send(helo: String, from: String, subject: String) throws -> Int {
            let client = try RawSMTPClient(port: postern.port, timeout: 10)
            _ = try client.readReply()
            XCTAssertEqual(try client.command("EHLO \(helo)").code, 250)
            XCTAssertEqual(try client.command("MAIL FROM:<\(from)>").code, 250)
            XCTAssertEqual(try client.command("RCPT TO:<r@example.org>").code, 250)
            let code = try client.sendMessage("Subject: \(subject)\r\n\r\nhello\r\n", timeout: 20).code
            _ = try? client.command("QUIT")
            return code
        }
        // 3 + 2 + 1.5 = 6.5: over 6.
        XCTAssertEqual(try send(helo: "[192.0.2.1]", from: "a@freemail.test", subject: "urgent"), 550)
        // 3 + 2 = 5: not over 6 (the shadow rule's 10 does not count).
        XCTAssertEqual(try send(helo: "[192.0.2.1]", from: "b@freemail.test", subject: "hello"), 250)
        // 3 - 5 + 1.5 = -0.5.
        XCTAssertEqual(try send(helo: "[192.0.2.1]", from: "c@partner.test", subject: "urgent"), 250)
        XCTAssertEqual(sink.waitForMessages(2).count, 2)

        let refused = DecisionLog.waitForRecord(decisions) { ($0["rule"] as? String) == "too-much" }
        XCTAssertEqual(refused?["score"] as? Double, 6.5, "\(refused ?? [:])")
        let parts = (refused?["scores"] as? [[String: Any]] ?? []).map { "\($0["rule"] ?? "?")=\($0["score"] ?? "?")" }
        XCTAssertEqual(parts, ["literal-helo=3", "free-mail=2", "urgent=1.5"], "\(refused ?? [:])")
        let shadow = (refused?["shadow_scores"] as? [[String: Any]] ?? []).map { "\($0["rule"] ?? "?")=\($0["score"] ?? "?")" }
        XCTAssertEqual(shadow, ["shadow-guess=10"])
        let partner = DecisionLog.records(decisions).first { ($0["mail_from"] as? String) == "c@partner.test" }
        XCTAssertEqual(partner?["score"] as? Double, -0.5, "\(partner ?? [:])")
    }

    func testExplainShowsTheRunningScore() throws {
        let policyFile = workDir.appendingPathComponent("policy.yaml")
        try policy.write(to: policyFile, atomically: true, encoding: .utf8)
        let message = workDir.appendingPathComponent("message.eml")
        try "Subject: urgent\r\n\r\nhello\r\n".write(to: message, atomically: true, encoding: .utf8)
        let result = try runPostern(["explain", "--policy", policyFile.path, "--client-ip", "127.0.0.1", "--helo", "[192.0.2.1]",
                                     "--from", "a@freemail.test", "--to", "r@example.org", message.path])
        XCTAssertTrue(result.stdout.contains("running score 3 (+3 literal-helo)"), result.stdout)
        XCTAssertTrue(result.stdout.contains("running score 5 (+2 free-mail, +10 shadow-guess (shadow)); shadow score 10"), result.stdout)
        XCTAssertTrue(result.stdout.contains("running score 6.5 (+1.5 urgent)"), result.stdout)
        XCTAssertTrue(result.stdout.contains("too-much"), result.stdout)
        XCTAssertTrue(result.stdout.contains("550 5.7.1 Message scored too high"), result.stdout)
    }
}
