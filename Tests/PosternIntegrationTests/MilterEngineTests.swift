import Foundation
import XCTest

/// The engines operators run behind Postfix's smtpd_milters, moved behind Postern: the real
/// rspamd (milter mode through rspamd_proxy), OpenDKIM signing and verifying, OpenDMARC after
/// OpenDKIM, clamav-milter with clamd. Each is started by Harness/MilterEngines.swift; each
/// message goes swaks → postern serve → recording sink, and what the client, the upstream and
/// the decision log see is asserted.
final class MilterEngineTests: IntegrationTestCase, @unchecked Sendable {
    private func checks(_ record: [String: Any]?) -> [[String: Any]] {
        record?["checks"] as? [[String: Any]] ?? []
    }

    private func headerSection(_ message: RecordedMessage) -> String {
        message.text.components(separatedBy: "\r\n\r\n").first ?? ""
    }

    /// The values of every `name:` field in the header section (folded lines unfolded).
    private func headers(_ message: RecordedMessage, _ name: String) -> [String] {
        let unfolded = headerSection(message).replacingOccurrences(of: "\r\n\t", with: " ").replacingOccurrences(of: "\r\n ", with: " ")
        return unfolded.components(separatedBy: "\r\n").compactMap { line in
            guard let colon = line.firstIndex(of: ":"), line[..<colon].lowercased() == name.lowercased() else { return nil }
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }

    // MARK: rspamd

    func testRspamdRejectsGTUBEAddsItsHeadersAndRewritesTheSubject() throws {
        let rspamd = try startRspamdMilter()
        let decisions = workDir.appendingPathComponent("decisions.log")
        let metricsPort = try Net.freePort()
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                decision_log: \(decisions.path)
                metrics: 127.0.0.1:\(metricsPort)
                milters:
                  - { name: rspamd, address: "\(rspamd.milterAddress)" }
                """
        }
        // GTUBE: refused at end of data with rspamd's own reply; nothing reaches the upstream.
        let gtube = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org",
                                                      "--body", "hello\n\(RspamdEngine.gtubeReject)\n"])
        XCTAssertNotEqual(gtube.status, 0, gtube.description)
        XCTAssertTrue(gtube.swaksReplies.contains(RspamdEngine.gtubeRejectReply), gtube.description)
        let rejected = DecisionLog.waitForRecord(decisions) { ($0["decision"] as? String) == "rejected" }
        XCTAssertEqual(rejected?["rule"] as? String, "milter:rspamd", "\(rejected ?? [:])")
        XCTAssertEqual(rejected?["stage"] as? String, "data", "\(rejected ?? [:])")

        // A clean message: accepted, with the headers rspamd adds and its queue id = Postern's transaction id.
        let clean = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org",
                                                      "--header", "Subject: lunch", "--body", "see you at noon\n"])
        XCTAssertEqual(clean.status, 0, clean.description)
        let message = try XCTUnwrap(sink.waitForMessages(1).first)
        XCTAssertEqual(headers(message, "X-Rspamd-Action"), ["no action"], headerSection(message))
        XCTAssertEqual(headers(message, "X-Spamd-Result").count, 1, headerSection(message))
        let accepted = DecisionLog.waitForRecord(decisions) { ($0["decision"] as? String) == "accepted" }
        XCTAssertEqual(headers(message, "X-Rspamd-Queue-Id"), [accepted?["id"] as? String ?? "?"], headerSection(message))
        XCTAssertEqual(headers(message, "Subject"), ["lunch"])
        XCTAssertTrue(message.text.hasPrefix("Received: "), "Postern's Received stays on top:\n\(headerSection(message))")
        let check = checks(accepted).first { ($0["check"] as? String) == "rspamd" }
        XCTAssertEqual(check?["result"] as? String, "pass", "\(accepted ?? [:])")

        // rewrite subject: SMFIR_CHGHEADER on the Subject.
        let rewrite = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org",
                                                        "--header", "Subject: offer", "--body", "\(RspamdEngine.gtubeRewriteSubject)\n"])
        XCTAssertEqual(rewrite.status, 0, rewrite.description)
        let rewritten = try XCTUnwrap(sink.waitForMessages(2).last)
        XCTAssertEqual(headers(rewritten, "Subject"), [RspamdEngine.subjectPrefix + "offer"], headerSection(rewritten))

        // add header: X-Spam: Yes.
        let add = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org",
                                                    "--body", "\(RspamdEngine.gtubeAddHeader)\n"])
        XCTAssertEqual(add.status, 0, add.description)
        let added = try XCTUnwrap(sink.waitForMessages(3).last)
        XCTAssertEqual(headers(added, "X-Spam"), ["Yes"], headerSection(added))

        // rspamd counted all four scans; Postern its checks.
        let stat = try rspamd.stat().replacingOccurrences(of: " ", with: "")
        XCTAssertTrue(stat.contains("\"scanned\":4"), stat)
        let metrics = try Metrics.scrape(port: metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_check_errors_total", ["check": "rspamd", "kind": "timeout"]) ?? 0, 0, metrics)
    }

    func testRspamdsScoreAndActionAreConditionsInThePolicy() throws {
        let rspamd = try startRspamdMilter()
        let policy = workDir.appendingPathComponent("policy.yaml")
        try """
            rules:
              - id: spam-to-quarantine-box
                stage: data
                if: { milter.rspamd: { action: rewrite subject } }
                then: reject
                reply: "550 5.7.1 rspamd says rewrite; we refuse instead"
              # rspamd's score is part of the running score, with the rules' scores.
              - { id: partner, stage: mail, if: { sender: { domain: client.example } }, score: 2 }
              - { id: spam-score, stage: data, if: { score: { over: 8 } }, then: reject, reply: "550 5.7.1 Scored too high" }
            """.write(to: policy, atomically: true, encoding: .utf8)
        let decisions = workDir.appendingPathComponent("decisions.log")
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                policy: \(policy.path)
                decision_log: \(decisions.path)
                milters:
                  - { name: rspamd, address: "\(rspamd.milterAddress)" }
                """
        }
        let refused = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org",
                                                        "--header", "Subject: \(RspamdEngine.markerRewriteSubject)",
                                                        "--body", "hello\n"])
        XCTAssertTrue(refused.swaksReplies.contains("550 5.7.1 rspamd says rewrite; we refuse instead"), refused.description)
        let clean = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org", "--body", "hi\n"])
        XCTAssertEqual(clean.status, 0, clean.description)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)

        // The add-header marker scores 7 in rspamd: with the partner rule's 2, over 8.
        let scored = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org",
                                                       "--header", "Subject: \(RspamdEngine.markerAddHeader)", "--body", "hello\n"])
        XCTAssertTrue(scored.swaksReplies.contains { $0.hasPrefix("550 5.7.1 Scored too high") }, scored.description)
        let record = DecisionLog.waitForRecord(decisions) { ($0["rule"] as? String) == "spam-score" }
        let scores = record?["scores"] as? [[String: Any]] ?? []
        let rspamdScore = scores.first { ($0["rule"] as? String) == "milter:rspamd" }?["score"] as? Double
        XCTAssertNotNil(rspamdScore, "\(record ?? [:])")
        XCTAssertGreaterThanOrEqual(rspamdScore ?? 0, 6, "\(scores)")
        XCTAssertEqual(scores.first?["rule"] as? String, "partner", "\(scores)")
        XCTAssertEqual((record?["score"] as? Double) ?? Double(record?["score"] as? Int ?? 0), 2 + (rspamdScore ?? 0), accuracy: 0.01,
                       "\(record ?? [:])")
        let relayed = DecisionLog.waitForRecord(decisions) { ($0["decision"] as? String) == "accepted" }
        let relayedScores = relayed?["scores"] as? [[String: Any]] ?? []
        XCTAssertTrue(relayedScores.contains { ($0["rule"] as? String) == "milter:rspamd" }, "\(relayed ?? [:])")
    }

    // MARK: OpenDKIM and OpenDMARC

    func testOpenDKIMSignsAndTheRelayedSignatureVerifies() throws {
        let signer = try startOpenDKIM(mode: .sign, name: "opendkim-sign")
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                milters:
                  - { name: dkim, address: "\(signer.milterAddress)", stages: [data] }
                """
        }
        let result = try runSwaks(port: postern.port, ["--from", "alice@sign.test", "--to", "r@example.org",
                                                       "--header", "Subject: signed", "--body", "body to sign\n"])
        XCTAssertEqual(result.status, 0, result.description)
        let message = try XCTUnwrap(sink.waitForMessages(1).first)
        let signature = try XCTUnwrap(headers(message, "DKIM-Signature").first, headerSection(message))
        XCTAssertTrue(signature.contains("d=sign.test") && signature.contains("s=pst"), signature)
        XCTAssertEqual(headers(message, "DKIM-Filter").count, 1, headerSection(message))
        // What the upstream got verifies against the published key; a changed body does not.
        let verified = try signer.testmsg(message: message.data)
        XCTAssertEqual(verified.status, 0, verified.description)
        let tampered = Data(message.text.replacingOccurrences(of: "body to sign", with: "body to sigh").utf8)
        XCTAssertFalse(try signer.verifyWithTestmsg(message: tampered))
    }

    func testOpenDKIMThenOpenDMARCSeeEachOthersHeadersAndDMARCRejectsWhatFails() throws {
        let signer = try startOpenDKIM(mode: .sign, name: "opendkim-sign")
        let verifier = try startOpenDKIM(mode: .verify, key: signer.key, internalHosts: [], name: "opendkim-verify")
        let dmarc = try startOpenDMARC(trustedAuthservIDs: [verifier.authservID])
        let decisions = workDir.appendingPathComponent("decisions.log")
        // The chain: sign, verify what was just signed, then DMARC on the verifier's Authentication-Results.
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                decision_log: \(decisions.path)
                milters:
                  - { name: dkim-sign, address: "\(signer.milterAddress)" }
                  - { name: dkim-verify, address: "\(verifier.milterAddress)" }
                  - { name: dmarc, address: "\(dmarc.milterAddress)" }
                """
        }
        let result = try runSwaks(port: postern.port, ["--from", "alice@sign.test", "--to", "r@example.org",
                                                       "--header", "Subject: chained", "--body", "hello\n"])
        XCTAssertEqual(result.status, 0, result.description)
        let message = try XCTUnwrap(sink.waitForMessages(1).first)
        let results = headers(message, "Authentication-Results")
        XCTAssertTrue(results.contains { $0.hasPrefix(verifier.authservID) && $0.contains("dkim=pass") }, headerSection(message))
        XCTAssertTrue(results.contains { $0.hasPrefix(dmarc.authservID) && $0.contains("dmarc=pass") }, headerSection(message))
        let record = DecisionLog.waitForRecord(decisions) { ($0["decision"] as? String) == "accepted" }
        XCTAssertEqual(Set(checks(record).compactMap { $0["check"] as? String }), ["dkim-sign", "dkim-verify", "dmarc"], "\(record ?? [:])")

        // Without the signer: an unsigned From: sign.test fails DMARC p=reject, and OpenDMARC's reply reaches the client.
        let (unsigned, _) = try startPosternWithSink {
            $0.extra = """
                milters:
                  - { name: dkim-verify, address: "\(verifier.milterAddress)" }
                  - { name: dmarc, address: "\(dmarc.milterAddress)" }
                """
        }
        let refused = try runSwaks(port: unsigned.port, ["--from", "alice@sign.test", "--to", "r@example.org", "--body", "hello\n"])
        XCTAssertNotEqual(refused.status, 0, refused.description)
        XCTAssertTrue(refused.swaksReplies.contains(OpenDMARCEngine.rejectReply(domain: "sign.test")), refused.description)
    }

    // MARK: ClamAV

    func testClamavMilterRejectsEICARAndMarksCleanMail() throws {
        let clamd = try startClamd()
        let milter = try startClamavMilter(onInfected: .reject, clamd: clamd)
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                milters:
                  - { name: clamav, address: "\(milter.milterAddress)", stages: [data] }
                """
        }
        let attachment = workDir.appendingPathComponent("eicar.com")
        try Data(ClamdEngine.eicar.utf8).write(to: attachment)
        let infected = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org",
                                                         "--attach-type", "application/octet-stream", "--attach", "@" + attachment.path])
        XCTAssertNotEqual(infected.status, 0, infected.description)
        XCTAssertTrue(infected.swaksReplies.contains(ClamavMilterEngine.rejectReply), infected.description)
        let clean = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org", "--body", "clean\n"])
        XCTAssertEqual(clean.status, 0, clean.description)
        let message = try XCTUnwrap(sink.waitForMessages(1).first)
        XCTAssertEqual(headers(message, "X-Virus-Status"), ["Clean"], headerSection(message))
        XCTAssertEqual(sink.messageCount, 1)
    }

    func testClamavMilterQuarantineKeepsTheMessageInPosternsQuarantine() throws {
        let clamd = try startClamd()
        let milter = try startClamavMilter(onInfected: .quarantine, clamd: clamd)
        let quarantine = workDir.appendingPathComponent("quarantine")
        let decisions = workDir.appendingPathComponent("decisions.log")
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                quarantine: \(quarantine.path)
                decision_log: \(decisions.path)
                milters:
                  - { name: clamav, address: "\(milter.milterAddress)", stages: [data] }
                """
        }
        let result = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r@example.org",
                                                       "--body", "see attached\n\(ClamdEngine.eicar)\n"])
        XCTAssertEqual(result.status, 0, "a quarantined message is accepted\n\(result.description)")
        let record = DecisionLog.waitForRecord(decisions) { ($0["decision"] as? String) != nil }
        XCTAssertEqual(record?["decision"] as? String, "quarantined", "\(record ?? [:])")
        XCTAssertEqual(record?["rule"] as? String, "milter:clamav", "\(record ?? [:])")
        // clamav-milter's own reason (SMFIR_QUARANTINE), then what else it did.
        XCTAssertTrue((record?["reason"] as? String)?.hasPrefix("quarantine: quarantined by clamav-milter") == true, "\(record ?? [:])")
        let kept = try FileManager.default.contentsOfDirectory(atPath: quarantine.appendingPathComponent("new").path)
        XCTAssertEqual(kept.count, 1)
        // Kept as the filter left it: Postern's headers, then clamav-milter's verdict, then the message.
        let text = try String(contentsOf: quarantine.appendingPathComponent("new").appendingPathComponent(kept[0]), encoding: .utf8)
        let section = text.components(separatedBy: "\r\n\r\n").first ?? text.components(separatedBy: "\n\n").first ?? ""
        XCTAssertTrue(section.contains("X-Virus-Status: Infected (\(ClamdEngine.signatureName))"), section)
        XCTAssertTrue(section.contains("X-Postern-Quarantine: rule=milter:clamav"), section)
        XCTAssertTrue(text.contains(ClamdEngine.eicar), text)
        XCTAssertEqual(sink.messageCount, 0)
    }
}
