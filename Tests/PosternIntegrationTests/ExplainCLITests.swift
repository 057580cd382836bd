import Foundation
import XCTest

/// `postern explain`: the real binary, offline, with a policy file and a message in the work directory.
final class ExplainCLITests: IntegrationTestCase, @unchecked Sendable {
    private static let policy = """
        version: 1
        lists:
          partner_nets:    { items: [192.0.2.0/24] }
          blocked_senders: { items: [spam@example.com, "@bad.example"] }
        rules:
          - id: partners-welcome
            stage: connect
            if: { client_ip: { in: partner_nets } }
            then: accept
          - id: no-kp
            stage: connect
            if: { client_ip: 198.51.100.0/24 }
            then: reject
          - id: literal-helo
            stage: helo
            if: { helo: { is_ip_literal: true } }
            then: tempfail
            mode: shadow
          - id: blocked-sender
            stage: mail
            if: { sender: { in: blocked_senders } }
            then: reject
            reply: "550 5.7.1 Sender not accepted here (ref {id})"
          - id: retired
            stage: mail
            if: { sender: "<>" }
            then: reject
            mode: off
          - id: no-bob
            stage: rcpt
            if: { recipient: bob@example.org }
            then: reject
          - id: tag-invoice
            stage: data
            if: { subject: { regex: invoice } }
            then: add_header
            header: "X-Suspect: invoice"
          - id: no-exe
            stage: data
            if: { attachment_name: { regex: '\\.exe$' } }
            then: reject

        """

    /// The configuration these explanations run under: the test domain is a relay domain,
    /// so relay control lets its recipients through as a server with it would.
    private static let configuration = """
        upstreams: [{ url: "maildir:/nonexistent" }]
        relay_domains: [example.org]

        """

    private func explain(_ arguments: [String], policy: String = ExplainCLITests.policy) throws -> (CommandResult, [String]) {
        let file = try writeConfig(policy, name: "policy.yaml")
        let config = try writeConfig(Self.configuration, name: "postern.yaml")
        let result = try runPostern(["explain", "--config", config.path, "--policy", file.path] + arguments)
        let lines = result.stdout.split(separator: "\n").map { String($0).trimmingCharacters(in: .whitespaces) }
        return (result, lines)
    }

    /// The rule line for `rule` (labels and ids are padded, so whitespace is collapsed).
    private func line(_ lines: [String], _ label: String, _ rule: String) -> String? {
        lines.first { $0.hasPrefix(label + " ") && $0.split(separator: " ").contains(Substring(rule)) }
            .map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
    }

    private func writeMessage(_ text: String, name: String = "message.eml") throws -> URL {
        let url = workDir.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    func testRejectedSenderPrintsEveryRuleTheVerdictAndTheReply() throws {
        let (result, lines) = try explain(["--client-ip", "203.0.113.5", "--helo", "[203.0.113.5]",
                                           "--from", "spam@example.com", "--to", "alice@example.org"])
        XCTAssertEqual(result.status, 1, result.description)
        XCTAssertEqual(line(lines, "[connect]", "partners-welcome"), "[connect] partners-welcome not matched", result.description)
        XCTAssertEqual(line(lines, "[helo]", "literal-helo"),
                       "[helo] literal-helo MATCHED (shadow) -> would have tempfailed: helo [203.0.113.5] is an IP literal", result.description)
        XCTAssertEqual(line(lines, "[mail]", "blocked-sender"),
                       "[mail] blocked-sender MATCHED (enforce) -> reject: sender spam@example.com matches spam@example.com (list blocked_senders)",
                       result.description)
        XCTAssertEqual(line(lines, "[mail]", "retired"), "[mail] retired skipped: mode off", result.description)
        XCTAssertEqual(line(lines, "[rcpt alice@example.org]", "no-bob"),
                       "[rcpt alice@example.org] no-bob skipped: an earlier rule decided (blocked-sender)", result.description)
        XCTAssertEqual(line(lines, "[data]", "no-exe"), "[data] no-exe skipped: an earlier rule decided (blocked-sender)", result.description)
        XCTAssertTrue(lines.contains("Verdict: rejected at mail by rule blocked-sender"), result.description)
        XCTAssertTrue(lines.contains("Reply: 550 5.7.1 Sender not accepted here (ref EXPLAIN)"), result.description)
        XCTAssertTrue(lines.contains("Shadow: literal-helo would have tempfailed at helo"), result.description)
        // Every rule is listed once, in policy order, and the columns line up.
        let ruleLines = result.stdout.split(separator: "\n").filter { $0.hasPrefix("  [") }
        XCTAssertEqual(ruleLines.count, 8, result.description)
        var idColumns: Set<Int> = [], outcomeColumns: Set<Int> = []
        for ruleLine in ruleLines.map(Array.init) {
            guard let close = ruleLine.firstIndex(of: "]") else { return XCTFail("no label in \(String(ruleLine))") }
            let idStart = ruleLine[(close + 1)...].firstIndex { $0 != " " } ?? 0
            let idEnd = ruleLine[idStart...].firstIndex(of: " ") ?? 0
            idColumns.insert(idStart)
            outcomeColumns.insert(ruleLine[idEnd...].firstIndex { $0 != " " } ?? 0)
        }
        XCTAssertEqual(idColumns.count, 1, "rule ids are aligned\n\(result.stdout)")
        XCTAssertEqual(outcomeColumns.count, 1, "outcomes are aligned\n\(result.stdout)")
    }

    func testAcceptedMessageWithHeaderAndARefusedRecipient() throws {
        let message = try writeMessage("From: a@client.example\nTo: alice@example.org\nSubject: Your invoice\n\nhello\n")
        let (result, lines) = try explain(["--client-ip", "203.0.113.5", "--helo", "mail.client.example",
                                           "--from", "a@client.example", "--to", "alice@example.org", "--to", "bob@example.org",
                                           message.path])
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertEqual(line(lines, "[rcpt alice@example.org]", "no-bob"), "[rcpt alice@example.org] no-bob not matched", result.description)
        XCTAssertEqual(line(lines, "[rcpt bob@example.org]", "no-bob"),
                       "[rcpt bob@example.org] no-bob MATCHED (enforce) -> reject: recipient bob@example.org matches bob@example.org",
                       result.description)
        XCTAssertEqual(line(lines, "[data]", "tag-invoice"),
                       "[data] tag-invoice MATCHED (enforce) -> add_header \"X-Suspect: invoice\": subject matches /invoice/", result.description)
        XCTAssertEqual(line(lines, "[data]", "no-exe"), "[data] no-exe not matched", result.description)
        XCTAssertTrue(lines.contains("Verdict: accepted (relayed)"), result.description)
        XCTAssertTrue(lines.contains("Recipient bob@example.org rejected by rule no-bob: 550 5.7.1 Message refused by policy (ref EXPLAIN)"),
                      result.description)
        XCTAssertTrue(lines.contains("Add header: X-Suspect: invoice"), result.description)
    }

    func testDataRulesAreSkippedWithoutAMessageAndSeeAttachments() throws {
        let (without, withoutLines) = try explain(["--client-ip", "203.0.113.5", "--helo", "mail.client.example",
                                                   "--from", "a@client.example", "--to", "alice@example.org"])
        XCTAssertEqual(without.status, 0, without.description)
        XCTAssertEqual(line(withoutLines, "[data]", "no-exe"), "[data] no-exe skipped: no message given", without.description)

        let message = try writeMessage("""
            From: a@client.example\r
            Subject: report\r
            MIME-Version: 1.0\r
            Content-Type: multipart/mixed; boundary="b1"\r
            \r
            --b1\r
            Content-Type: text/plain\r
            \r
            see attached\r
            --b1\r
            Content-Type: application/octet-stream\r
            Content-Disposition: attachment; filename="setup.exe"\r
            Content-Transfer-Encoding: base64\r
            \r
            TVqQAAMAAAAEAAAA\r
            --b1--\r

            """, name: "attachment.eml")
        let (result, lines) = try explain(["--client-ip", "203.0.113.5", "--helo", "mail.client.example",
                                           "--from", "a@client.example", "--to", "alice@example.org", message.path])
        XCTAssertEqual(result.status, 1, result.description)
        XCTAssertEqual(line(lines, "[data]", "no-exe"),
                       "[data] no-exe MATCHED (enforce) -> reject: attachment setup.exe matches /\\.exe$/", result.description)
        XCTAssertTrue(lines.contains("Verdict: rejected at data by rule no-exe"), result.description)
        XCTAssertTrue(lines.contains("Reply: 550 5.7.1 Message refused by policy (ref EXPLAIN)"), result.description)
    }

    func testConnectRefusalEndsEverythingAndAcceptSkipsTheRest() throws {
        let (refused, refusedLines) = try explain(["--client-ip", "198.51.100.20", "--helo", "x.example",
                                                   "--from", "a@client.example", "--to", "bob@example.org"])
        XCTAssertEqual(refused.status, 1, refused.description)
        XCTAssertEqual(line(refusedLines, "[connect]", "no-kp"),
                       "[connect] no-kp MATCHED (enforce) -> reject: client 198.51.100.20 in 198.51.100.0/24", refused.description)
        for (label, rule) in [("[helo]", "literal-helo"), ("[mail]", "blocked-sender"), ("[rcpt bob@example.org]", "no-bob"), ("[data]", "tag-invoice")] {
            XCTAssertEqual(line(refusedLines, label, rule), "\(label) \(rule) skipped: an earlier rule decided (no-kp)", refused.description)
        }
        XCTAssertTrue(refusedLines.contains("Verdict: rejected at connect by rule no-kp"), refused.description)
        XCTAssertTrue(refusedLines.contains("Reply: 554 5.7.1 Service refused (ref EXPLAIN)"), refused.description)

        let (accepted, acceptedLines) = try explain(["--client-ip", "192.0.2.7", "--from", "spam@example.com", "--to", "bob@example.org"])
        XCTAssertEqual(accepted.status, 0, accepted.description)
        XCTAssertEqual(line(acceptedLines, "[connect]", "no-kp"), "[connect] no-kp skipped: an accept at connect ended evaluation",
                       accepted.description)
        XCTAssertEqual(line(acceptedLines, "[mail]", "blocked-sender"),
                       "[mail] blocked-sender skipped: an accept at connect ended evaluation", accepted.description)
        XCTAssertEqual(line(acceptedLines, "[rcpt bob@example.org]", "no-bob"),
                       "[rcpt bob@example.org] no-bob skipped: an accept at connect ended evaluation", accepted.description)
        XCTAssertTrue(acceptedLines.contains("Verdict: accepted at connect by rule partners-welcome (relayed)"), accepted.description)
    }

    func testEveryRecipientRefusedAndTheNullSender() throws {
        let (result, lines) = try explain(["--client-ip", "2001:db8::25", "--helo", "mail.client.example",
                                           "--from", "<>", "--to", "bob@example.org"])
        XCTAssertEqual(result.status, 1, result.description)
        XCTAssertEqual(line(lines, "[mail]", "blocked-sender"), "[mail] blocked-sender not matched", result.description)
        XCTAssertEqual(line(lines, "[data]", "no-exe"), "[data] no-exe skipped: no recipient was accepted", result.description)
        XCTAssertTrue(lines.contains("Verdict: rejected at rcpt by rule no-bob"), result.description)
        XCTAssertTrue(lines.contains("Reply: 550 5.7.1 Message refused by policy (ref EXPLAIN)"), result.description)
    }

    func testTempfailAtAStageAccept() throws {
        let policy = """
            rules:
              - { id: trusted, stage: mail, if: { sender: { domain: partner.example } }, then: accept }
              - { id: slow-down, stage: mail, if: { tls: false }, then: tempfail }
              - { id: no-bob, stage: rcpt, if: { recipient: bob@example.org }, then: reject }

            """
        let (trusted, trustedLines) = try explain(["--client-ip", "203.0.113.5", "--helo", "h.example",
                                                   "--from", "x@partner.example", "--to", "bob@example.org"], policy: policy)
        XCTAssertEqual(trusted.status, 0, trusted.description)
        XCTAssertEqual(line(trustedLines, "[mail]", "slow-down"), "[mail] slow-down skipped: an accept at mail ended evaluation", trusted.description)
        XCTAssertEqual(line(trustedLines, "[rcpt bob@example.org]", "no-bob"),
                       "[rcpt bob@example.org] no-bob skipped: an accept at mail ended evaluation", trusted.description)
        XCTAssertTrue(trustedLines.contains("Verdict: accepted at mail by rule trusted (relayed)"), trusted.description)

        let (slowed, slowedLines) = try explain(["--client-ip", "203.0.113.5", "--helo", "h.example",
                                                 "--from", "x@other.example", "--to", "bob@example.org"], policy: policy)
        XCTAssertEqual(slowed.status, 1, slowed.description)
        XCTAssertTrue(slowedLines.contains("Verdict: tempfailed at mail by rule slow-down"), slowed.description)
        XCTAssertTrue(slowedLines.contains("Reply: 451 4.7.1 Try again later (ref EXPLAIN)"), slowed.description)

        let (tls, tlsLines) = try explain(["--client-ip", "203.0.113.5", "--helo", "h.example", "--tls",
                                           "--from", "x@other.example", "--to", "alice@example.org"], policy: policy)
        XCTAssertEqual(tls.status, 0, tls.description)
        XCTAssertEqual(line(tlsLines, "[mail]", "slow-down"), "[mail] slow-down not matched", tls.description)
    }

    func testRelayControlAppliesAsInTheServer() throws {
        // The bundled configuration relays for no domain: an untrusted client's mail for
        // another domain is refused at RCPT, as the server would refuse it.
        let policy = Paths.packageRoot.appendingPathComponent("Policies/default.yaml").path
        let denied = try runPostern(["explain", "--policy", policy, "--client-ip", "203.0.113.5",
                                     "--from", "a@b.example", "--to", "x@elsewhere.example"])
        let lines = denied.stdout.split(separator: "\n").map { String($0).trimmingCharacters(in: .whitespaces) }
        XCTAssertEqual(denied.status, 1, denied.description)
        XCTAssertTrue(lines.contains("Verdict: rejected at rcpt by relay control"), denied.description)
        XCTAssertTrue(lines.contains("Reply: 554 5.7.1 <x@elsewhere.example>: Relay access denied"), denied.description)
        XCTAssertNotNil(line(lines, "[rcpt x@elsewhere.example]", "relay_domains"), denied.description)
        // From a trusted network (loopback by default) the same recipient is relayed.
        let trusted = try runPostern(["explain", "--policy", policy, "--client-ip", "127.0.0.1",
                                      "--from", "a@b.example", "--to", "x@elsewhere.example"])
        XCTAssertEqual(trusted.status, 0, trusted.description)
        // The configuration's own policy applies without --policy.
        let configured = try writeConfig("""
            upstreams: [{ url: "maildir:/nonexistent" }]
            policy: \(policy)
            relay_domains: [elsewhere.example]

            """, name: "configured.yaml")
        let withConfig = try runPostern(["explain", "--config", configured.path, "--client-ip", "203.0.113.5",
                                         "--from", "a@b.example", "--to", "x@elsewhere.example"])
        XCTAssertEqual(withConfig.status, 0, withConfig.description)
        XCTAssertTrue(withConfig.stdout.contains("Policy: \(policy)"), withConfig.description)
    }

    func testBadArgumentsAndPolicyErrorsExitTwo() throws {
        let (badIP, _) = try explain(["--client-ip", "300.1.1.1"])
        XCTAssertEqual(badIP.status, 2, badIP.description)
        XCTAssertTrue(badIP.stderr.contains("--client-ip '300.1.1.1' is not an IP address"), badIP.description)

        let (badFrom, _) = try explain(["--client-ip", "192.0.2.1", "--from", "not an address"])
        XCTAssertEqual(badFrom.status, 2, badFrom.description)
        XCTAssertTrue(badFrom.stderr.contains("--from"), badFrom.description)

        let missing = try runPostern(["explain", "--client-ip", "192.0.2.1"])
        XCTAssertEqual(missing.status, 2, missing.description)
        XCTAssertTrue(missing.stderr.contains("--policy"), missing.description)

        let (noMessage, _) = try explain(["--client-ip", "192.0.2.1", workDir.appendingPathComponent("absent.eml").path])
        XCTAssertEqual(noMessage.status, 2, noMessage.description)
        XCTAssertTrue(noMessage.stderr.contains("absent.eml"), noMessage.description)

        let (badPolicy, _) = try explain(["--client-ip", "192.0.2.1"], policy: """
            rules:
              - id: a
                stage: mail
                if: { recipient: x@example.org }
                then: reject

            """)
        XCTAssertEqual(badPolicy.status, 2, badPolicy.description)
        XCTAssertNotNil(badPolicy.stderr.range(of: #"policy\.yaml:4:\d+: rule 'a' can never run"#, options: .regularExpression),
                        badPolicy.description)
        XCTAssertTrue(badPolicy.stdout.isEmpty, badPolicy.description)
    }
}
