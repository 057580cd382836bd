import Foundation
import XCTest

/// An open-relay test battery in the spirit of the classic testers (rlytest, the abuse.net
/// relay test): from an untrusted address (a PROXY header naming 198.51.100.9) every trick
/// that has made mail servers relay is tried against `relay_domains: [local.test]`, and
/// none of them may reach the upstream. Positive controls show the same server does relay
/// for its own domain and for trusted clients.
final class RelayBatteryTests: IntegrationTestCase, @unchecked Sendable {
    static let untrusted = "198.51.100.9"

    /// What a trick must get at RCPT.
    enum Expect {
        /// 554 5.7.1 <…>: Relay access denied
        case relayDenied
        /// A syntax refusal at parse time: 501 or 553 (a trailing dot, …).
        case syntax
        /// Malformed: a syntax refusal (500, 501, 553 or 555) from the parser.
        case refused
    }

    /// The battery: (recipient as sent after "RCPT TO:", needs SMTPUTF8, expectation).
    static let tricks: [(String, Bool, Expect)] = [
        // A plain remote domain, and its spellings.
        ("<victim@remote.test>", false, .relayDenied),
        ("<victim@REMOTE.TEST>", false, .relayDenied),
        ("<victim@Remote.Test>", false, .relayDenied),
        ("<\"victim\"@remote.test>", false, .relayDenied),
        ("<postmaster@remote.test>", false, .relayDenied),
        ("<victim@remote.test> NOTIFY=NEVER", false, .relayDenied),
        // Look-alikes of the relay domain.
        ("<victim@sub.local.test>", false, .relayDenied),
        ("<victim@evillocal.test>", false, .relayDenied),
        ("<victim@local.test.remote.test>", false, .relayDenied),
        ("<victim@local.testremote.test>", false, .relayDenied),
        ("<victim@local>", false, .relayDenied),
        // Source routes: the route is dropped and the final domain judged.
        ("<@local.test:victim@remote.test>", false, .relayDenied),
        ("<@local.test,@x.test:victim@remote.test>", false, .relayDenied),
        ("<@LOCAL.TEST:victim@remote.test>", false, .relayDenied),
        ("<@local.test:victim%remote.test@local.test>", false, .relayDenied),
        // The percent hack, bang paths and quoted local parts hiding another address.
        ("<victim%remote.test@local.test>", false, .relayDenied),
        ("<victim%remote.test%local.test@local.test>", false, .relayDenied),
        ("<victim%40remote.test@local.test>", false, .relayDenied),
        ("<remote.test!victim@local.test>", false, .relayDenied),
        ("<victim!remote.test@local.test>", false, .relayDenied),
        ("<local.test!remote.test!victim@local.test>", false, .relayDenied),
        ("<\"victim@remote.test\"@local.test>", false, .relayDenied),
        ("<\"victim%remote.test\"@local.test>", false, .relayDenied),
        ("<\"remote.test!victim\"@local.test>", false, .relayDenied),
        ("<\"victim\\@remote.test\"@local.test>", false, .relayDenied),
        ("<\"@remote.test:victim\"@local.test>", false, .relayDenied),
        ("<\"victim@remote.test\">", false, .refused),
        // Address literals are never a relay domain unless listed.
        ("<victim@[192.0.2.1]>", false, .relayDenied),
        ("<victim@[127.0.0.1]>", false, .relayDenied),
        ("<victim@[IPv6:2001:db8::1]>", false, .relayDenied),
        ("<victim@[IPv6:::1]>", false, .relayDenied),
        ("<victim%remote.test@[127.0.0.1]>", false, .relayDenied),
        ("<victim@[local.test]>", false, .refused),
        // Trailing dots: a syntax error, not a way around the domain match.
        ("<victim@local.test.>", false, .syntax),
        ("<victim@remote.test.>", false, .syntax),
        ("<victim@local.test..>", false, .syntax),
        // Internationalised names, in U-label and A-label form.
        ("<victim@bücher.test>", true, .relayDenied),
        ("<victim@xn--bcher-kva.test>", false, .relayDenied),
        ("<vïctim@remote.test>", true, .relayDenied),
        ("<victim@local\u{FF0E}test>", true, .relayDenied),   // a full-width dot is not a dot
        ("<victim@lоcal.test>", true, .relayDenied),           // Cyrillic "о": a look-alike, not local.test
        // Malformed mixtures.
        ("<victim@local.test@remote.test>", false, .refused),
        ("<victim@remote.test,local.test>", false, .refused),
        ("<victim@remote.test;local.test>", false, .refused),
        ("<victim@remote.test local.test>", false, .refused),
        ("<victim@local.test%remote.test>", false, .refused),
        ("<victim@local.test:25>", false, .refused),
        ("<user@local.test> <victim@remote.test>", false, .refused),
        ("<victim@remote.test", false, .refused),
        ("victim@remote.test>", false, .refused),
        ("victim@remote.test", false, .refused),
        ("<victim%remote.test>", false, .refused),
        ("<remote.test!victim>", false, .refused),
        ("<victim>", false, .refused),
        ("<>", false, .refused),
        ("<@remote.test:>", false, .refused),
        ("<victim\\@remote.test@local.test>", false, .refused),
    ]

    private var upstream: [String] = []

    private func startBattery(relayDomains: String = "[local.test]", sinkOptions: [String] = [])
        throws -> (server: TrustServer, sink: RecordingSink) {
        let sink = try startRecordingSink(sinkOptions)
        let server = try startTrustServer(
            listeners: [try .proxy(), try .plain()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
            extra: "relay_domains: \(relayDomains)\n")
        return (server, sink)
    }

    /// MAIL + one RCPT from `source` through the PROXY listener; the RCPT reply.
    private func tryRecipient(_ server: TrustServer, _ recipient: String, utf8: Bool,
                              source: String = RelayBatteryTests.untrusted) throws -> SMTPReply {
        let client = try RawSMTPClient.proxied(port: server.port, source: source)
        defer { _ = try? client.command("QUIT"); client.close() }
        let mail = try client.command("MAIL FROM:<spammer@evil.test>" + (utf8 ? " SMTPUTF8" : ""))
        guard mail.code == 250 else { throw HarnessError.failed("MAIL for \(recipient): \(mail)") }
        let reply = try client.command("RCPT TO:" + recipient)
        // The transaction must not go on to DATA with a refused recipient.
        if reply.code != 250 {
            let data = try client.command("DATA")
            XCTAssertTrue([503, 554].contains(data.code), "DATA after refused \(recipient): \(data)")
        }
        return reply
    }

    /// One message from `source` (through the PROXY listener, or the plain one when nil) to
    /// `recipients`; returns every reply code in order.
    private func deliver(_ server: TrustServer, source: String?, recipients: [String], utf8: Bool = false,
                         subject: String) throws -> [SMTPReply] {
        let client: RawSMTPClient
        if let source {
            client = try RawSMTPClient.proxied(port: server.port, source: source)
        } else {
            client = try RawSMTPClient.greeted(port: server.listeners[1].port)
        }
        defer { _ = try? client.command("QUIT"); client.close() }
        var replies = [try client.command("MAIL FROM:<sender@client.test>" + (utf8 ? " SMTPUTF8" : ""))]
        for r in recipients { replies.append(try client.command("RCPT TO:" + r)) }
        if replies.dropFirst().contains(where: { $0.code == 250 }) {
            replies.append(try client.sendMessage("Subject: \(subject)\r\n\r\nbody\r\n"))
        }
        return replies
    }

    // MARK: - The battery

    func testNoRelayTrickIsRelayedFromAnUntrustedAddress() throws {
        let (server, sink) = try startBattery()
        var relayDenied = 0
        var summary: [String] = []
        for (recipient, utf8, expect) in Self.tricks {
            let reply = try tryRecipient(server, recipient, utf8: utf8)
            summary.append("\(recipient) -> \(reply.text)")
            XCTAssertNotEqual(reply.code, 250, "RELAYED: RCPT TO:\(recipient) got \(reply.text)")
            XCTAssertTrue((500..<600).contains(reply.code), "RCPT TO:\(recipient) not refused permanently: \(reply.text)")
            switch expect {
            case .relayDenied:
                relayDenied += 1
                XCTAssertEqual(reply.code, 554, "RCPT TO:\(recipient): \(reply.text)")
                XCTAssertEqual(reply.enhancedCode, "5.7.1", "RCPT TO:\(recipient): \(reply.text)")
                XCTAssertTrue(reply.text.contains("Relay access denied"), "RCPT TO:\(recipient): \(reply.text)")
            case .syntax:
                XCTAssertTrue([501, 553].contains(reply.code), "RCPT TO:\(recipient): \(reply.text)")
            case .refused:
                XCTAssertTrue([500, 501, 553, 555].contains(reply.code), "RCPT TO:\(recipient): \(reply.text)")
            }
        }
        if hasFailures {
            print("[relay battery] \(Self.tricks.count) tricks from \(Self.untrusted):\n" + summary.joined(separator: "\n"))
        }
        sleep(seconds: 0.5)
        XCTAssertEqual(sink.messageCount, 0, "a relay trick reached the upstream:\n\(sink.transcript)")
        XCTAssertFalse(sink.transcript.contains("victim"), "a trick recipient reached the upstream:\n\(sink.transcript)")

        // Every denial was counted.
        let counted = Metrics.waitForValue(port: server.metricsPort, "postern_relay_denied_total", atLeast: Double(relayDenied))
        XCTAssertGreaterThanOrEqual(counted ?? 0, Double(relayDenied), "postern_relay_denied_total")

        // The refused transactions are in the decision log, under the PROXY source address.
        let record = DecisionLog.waitForRecord(server.decisionLog) {
            DecisionLog.recipientReplies($0)["victim@remote.test"] != nil
        }
        guard let record else { return XCTFail("no record for victim@remote.test:\n\(DecisionLog.describe(server.decisionLog))") }
        XCTAssertEqual(record["decision"] as? String, "rejected", "\(record)")
        XCTAssertEqual(record["stage"] as? String, "rcpt", "\(record)")
        XCTAssertTrue((record["reason"] as? String ?? "").lowercased().contains("relay access denied"), "\(record)")
        XCTAssertEqual(DecisionLog.client(record)["ip"] as? String, Self.untrusted, "\(record)")
        XCTAssertEqual(record["mail_from"] as? String, "spammer@evil.test", "\(record)")
        let rcptReply = DecisionLog.recipientReplies(record)["victim@remote.test"] ?? ""
        XCTAssertTrue(rcptReply.hasPrefix("554 5.7.1"), "recipient entry: \(rcptReply)")
        let denials = DecisionLog.records(server.decisionLog).filter {
            ($0["reason"] as? String ?? "").lowercased().contains("relay access denied")
        }
        XCTAssertGreaterThanOrEqual(denials.count, relayDenied, DecisionLog.describe(server.decisionLog))
        XCTAssertTrue(denials.allSatisfy { $0["decision"] as? String == "rejected" && $0["stage"] as? String == "rcpt" },
                      DecisionLog.describe(server.decisionLog))
    }

    func testOneTransactionMixingALocalRecipientWithTricksRelaysOnlyTheLocalOne() throws {
        let (server, sink) = try startBattery()
        let tricks = Self.tricks.filter { !$0.1 && $0.2 == .relayDenied }.map(\.0)
        let replies = try deliver(server, source: Self.untrusted, recipients: ["<user@local.test>"] + tricks,
                                  subject: "mixed")
        XCTAssertEqual(replies[1].code, 250, replies[1].text)
        for (trick, reply) in zip(tricks, replies.dropFirst(2)) {
            XCTAssertEqual(reply.code, 554, "RCPT TO:\(trick) in a mixed transaction: \(reply.text)")
        }
        XCTAssertEqual(replies.last?.code, 250, "the message to the local recipient: \(replies.last?.text ?? "")")
        let messages = sink.waitForMessages(1)
        XCTAssertEqual(messages.count, 1)
        XCTAssertEqual(messages.first?.rcpts, ["user@local.test"], "only the local recipient may reach the upstream")
        XCTAssertFalse(sink.transcript.contains("victim"), sink.transcript)
        // The record: accepted, with the refused recipients' 554 replies beside the accepted one.
        let record = DecisionLog.waitForRecord(server.decisionLog) { $0["decision"] as? String == "accepted" }
        let replies554 = DecisionLog.recipientReplies(record ?? [:])
        XCTAssertTrue(replies554["user@local.test"]?.hasPrefix("250") ?? false, "\(replies554)")
        XCTAssertTrue(replies554["victim@remote.test"]?.hasPrefix("554 5.7.1") ?? false, "\(replies554)")
        let entries = (record?["rcpts"] as? [[String: Any]] ?? []).compactMap { $0["reply"] as? String }
        XCTAssertEqual(entries.filter { $0.hasPrefix("554 5.7.1") }.count, tricks.count,
                       "one 554 entry per refused recipient: \(entries)")
    }

    func testRelayControlRunsBeforeAnyPolicyRule() throws {
        // A policy that accepts the client at connect and the remote recipient at RCPT: relay
        // control comes first, so neither opens the relay.
        let policy = workDir.appendingPathComponent("policy.yaml")
        try """
        version: 1
        rules:
          - id: partner-at-connect
            stage: connect
            if: { client_ip: 198.51.100.0/24 }
            then: accept
          - id: remote-at-rcpt
            stage: rcpt
            if: { recipient: { domain: remote.test } }
            then: accept

        """.write(to: policy, atomically: true, encoding: .utf8)
        let (server, sink) = try startBattery(relayDomains: "[local.test]\npolicy: \(policy.path)")
        for recipient in ["<victim@remote.test>", "<victim%remote.test@local.test>", "<@local.test:victim@remote.test>"] {
            let reply = try tryRecipient(server, recipient, utf8: false)
            XCTAssertEqual(reply.code, 554, "\(recipient) with an accepting policy: \(reply.text)")
        }
        XCTAssertEqual(try deliver(server, source: Self.untrusted, recipients: ["<user@local.test>"], subject: "ok").map(\.code),
                       [250, 250, 250], "the policy itself works")
        XCTAssertEqual(sink.waitForMessages(1).map(\.rcpts), [["user@local.test"]])
        XCTAssertFalse(sink.transcript.contains("victim"), sink.transcript)
    }

    // MARK: - Positive controls

    func testLocalRecipientsAndPostmasterAreAcceptedFromAnyone() throws {
        let (server, sink) = try startBattery()
        let controls = ["<user@local.test>", "<USER@LOCAL.TEST>", "<postmaster>", "<Postmaster>",
                        "<postmaster@local.test>", "<@remote.test:routed@local.test>", "<\"quoted user\"@local.test>"]
        for (i, recipient) in controls.enumerated() {
            let replies = try deliver(server, source: Self.untrusted, recipients: [recipient], subject: "control \(i)")
            XCTAssertEqual(replies.map(\.code), [250, 250, 250], "\(recipient): \(replies.map(\.text))")
        }
        let messages = sink.waitForMessages(controls.count)
        XCTAssertEqual(messages.count, controls.count, sink.transcript)
        let received = messages.flatMap(\.rcpts)
        XCTAssertEqual(received.count, controls.count, "\(received)")
        XCTAssertTrue(received.contains("user@local.test"), "\(received)")
        XCTAssertTrue(received.contains { $0.caseInsensitiveCompare("USER@LOCAL.TEST") == .orderedSame && $0 != "user@local.test" },
                      "the upper-case recipient: \(received)")
        XCTAssertTrue(received.contains { $0.lowercased() == "postmaster" }, "bare postmaster: \(received)")
        // The source route is dropped: the upstream gets the final mailbox only.
        XCTAssertTrue(received.contains("routed@local.test"), "source route not dropped: \(received)")
        XCTAssertFalse(received.contains { $0.contains("remote.test") }, "\(received)")
        XCTAssertFalse(sink.transcript.contains("@remote.test:"), "the route reached the upstream:\n\(sink.transcript)")
        let accepted = DecisionLog.waitForRecord(server.decisionLog) { $0["decision"] as? String == "accepted" }
        XCTAssertEqual(accepted.map { DecisionLog.client($0)["ip"] as? String }, Self.untrusted)
    }

    func testTrustedClientsRelayToAnyDomain() throws {
        let (server, sink) = try startBattery()
        // A plain loopback connection (127.0.0.1 is in the default trusted_networks).
        let plain = try deliver(server, source: nil, recipients: ["<friend@remote.test>"], subject: "plain loopback")
        XCTAssertEqual(plain.map(\.code), [250, 250, 250], "\(plain.map(\.text))")
        // A PROXY source in 127.0.0.0/8 is trusted too.
        let proxied = try deliver(server, source: "127.0.0.5", recipients: ["<friend@other.test>", "<x@[192.0.2.1]>"],
                                  subject: "proxied loopback")
        XCTAssertEqual(proxied.map(\.code), [250, 250, 250, 250], "\(proxied.map(\.text))")
        let messages = sink.waitForMessages(2)
        XCTAssertEqual(messages.map(\.rcpts), [["friend@remote.test"], ["friend@other.test", "x@[192.0.2.1]"]])
        // The same recipient from an untrusted PROXY source is refused.
        let refused = try tryRecipient(server, "<friend@remote.test>", utf8: false)
        XCTAssertEqual(refused.code, 554, refused.text)
        XCTAssertEqual(sink.messageCount, 2)
    }

    func testTrustedNetworksConfigured() throws {
        // trusted_networks replaces the default: 198.51.100.0/24 relays, loopback no longer does.
        let sink = try startRecordingSink()
        let server = try startTrustServer(
            listeners: [try .proxy(), try .plain()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
            extra: "relay_domains: [local.test]\ntrusted_networks: [198.51.100.0/24]\n")
        let trusted = try deliver(server, source: "198.51.100.77", recipients: ["<friend@remote.test>"], subject: "t")
        XCTAssertEqual(trusted.map(\.code), [250, 250, 250], "\(trusted.map(\.text))")
        let outside = try tryRecipient(server, "<friend@remote.test>", utf8: false, source: "198.51.101.1")
        XCTAssertEqual(outside.code, 554, outside.text)
        let loopback = try deliver(server, source: nil, recipients: ["<friend@remote.test>"], subject: "l")
        XCTAssertEqual(loopback[1].code, 554, "loopback is not trusted once trusted_networks omits it: \(loopback[1])")
        XCTAssertEqual(sink.waitForMessages(1).map(\.rcpts), [["friend@remote.test"]])
    }

    func testInternationalisedRelayDomainMatchesBothForms() throws {
        for (index, listed) in ["bücher.test", "xn--bcher-kva.test"].enumerated() {
            let sink = try startRecordingSink(name: "sink\(index)")
            let server = try startTrustServer(
                listeners: [try .proxy(), try .plain()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
                extra: "relay_domains: [\"\(listed)\"]\n", name: "postern\(index)")
            let recipients = ["<leser@bücher.test>", "<leser@xn--bcher-kva.test>", "<leser@BÜCHER.TEST>", "<leser@XN--BCHER-KVA.TEST>"]
            for recipient in recipients {
                let replies = try deliver(server, source: Self.untrusted, recipients: [recipient], utf8: true,
                                          subject: "idn \(listed)")
                XCTAssertEqual(replies.map(\.code), [250, 250, 250], "listed \(listed), \(recipient): \(replies.map(\.text))")
            }
            for other in ["<leser@bucher.test>", "<leser@xn--bcher-kva.test.remote.test>", "<leser@sub.bücher.test>"] {
                let reply = try tryRecipient(server, other, utf8: true)
                XCTAssertEqual(reply.code, 554, "listed \(listed), \(other): \(reply.text)")
            }
            let messages = sink.waitForMessages(recipients.count)
            XCTAssertEqual(messages.count, recipients.count, "listed \(listed): \(sink.transcript)")
            XCTAssertTrue(messages.allSatisfy { $0.rcpts.count == 1 && $0.rcpts[0].lowercased().hasPrefix("leser@") },
                          "\(messages.map(\.rcpts))")
        }
    }

    func testParentDomainEntryMatchesSubdomainsOnly() throws {
        let (server, sink) = try startBattery(relayDomains: "[\".sub.test\", \"[192.0.2.10]\"]")
        let ok = try deliver(server, source: Self.untrusted, recipients: ["<a@x.sub.test>", "<b@y.x.SUB.test>", "<c@[192.0.2.10]>"],
                             subject: "parent")
        XCTAssertEqual(ok.map(\.code), [250, 250, 250, 250, 250], "\(ok.map(\.text))")
        for other in ["<a@sub.test>", "<a@evilsub.test>", "<a@sub.test.remote.test>", "<a@[192.0.2.11]>"] {
            let reply = try tryRecipient(server, other, utf8: false)
            XCTAssertEqual(reply.code, 554, "\(other): \(reply.text)")
        }
        XCTAssertEqual(sink.waitForMessages(1).map(\.rcpts), [["a@x.sub.test", "b@y.x.SUB.test", "c@[192.0.2.10]"]])
        sleep(seconds: 0.3)
        XCTAssertEqual(sink.messageCount, 1)
    }
}
