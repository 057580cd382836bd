import NIOCore
import PosternFilters
import PosternMIME
import PosternPolicy
import PosternSession
import SMTPCore
import XCTest

/// `postern explain` and a real session machine, on the same inputs, with the same policy
/// and the same relay control: the same verdict and the same replies.
final class ExplainParityTests: XCTestCase {
    static let policy = SessionFixture.policy("""
        lists:
          partner_nets:    { items: [192.0.2.0/24] }
          blocked_senders: { items: [spam@example.com, "@bad.example"] }
        rules:
          - { id: partners-welcome, stage: connect, if: { client_ip: { in: partner_nets } }, then: accept }
          - { id: no-kp, stage: connect, if: { client_ip: 198.51.100.0/24 }, then: reject }
          - { id: literal-helo, stage: helo, if: { helo: { is_ip_literal: true } }, then: tempfail }
          - { id: blocked-sender, stage: mail, if: { sender: { in: blocked_senders } }, then: reject, reply: "550 5.7.1 Sender not accepted here (ref {id})" }
          - { id: no-bob, stage: rcpt, if: { recipient: bob@example.org }, then: reject }
          - { id: vip, stage: rcpt, if: { recipient: ceo@example.org }, then: accept }
          - { id: no-exe, stage: data, if: { attachment_name: { regex: '\\.exe$' } }, then: reject }
          - { id: big, stage: data, if: { size: { over: 2000 } }, then: discard }
        """)

    struct Scenario {
        var name: String
        var client: String
        var helo = "mail.client.example"
        var from = "alice@client.example"
        var to: [String]
        var message = "Subject: hello\r\n\r\nhi\r\n"
    }

    static let scenarios = [
        Scenario(name: "plain", client: "203.0.113.5", to: ["alice@example.org"]),
        Scenario(name: "relay denied", client: "203.0.113.5", to: ["x@elsewhere.example"]),
        Scenario(name: "relay denied and one accepted", client: "203.0.113.5", to: ["x@elsewhere.example", "alice@example.org"]),
        Scenario(name: "relay denied for a partner too", client: "192.0.2.7", to: ["x@elsewhere.example", "bob@example.org"]),
        Scenario(name: "trusted relays anywhere", client: "127.0.0.1", to: ["x@elsewhere.example"]),
        Scenario(name: "connect refusal", client: "198.51.100.20", to: ["alice@example.org"]),
        Scenario(name: "helo refusal", client: "203.0.113.5", helo: "[203.0.113.5]", to: ["alice@example.org"]),
        Scenario(name: "sender refusal", client: "203.0.113.5", from: "spam@example.com", to: ["alice@example.org"]),
        Scenario(name: "one recipient refused", client: "203.0.113.5", to: ["bob@example.org", "alice@example.org"]),
        Scenario(name: "every recipient refused", client: "203.0.113.5", to: ["bob@example.org"]),
        Scenario(name: "accept at rcpt ends the transaction's rules", client: "203.0.113.5", to: ["ceo@example.org", "bob@example.org"]),
        Scenario(name: "data refusal", client: "203.0.113.5", to: ["alice@example.org"], message: """
            Subject: report\r
            MIME-Version: 1.0\r
            Content-Type: multipart/mixed; boundary="b1"\r
            \r
            --b1\r
            Content-Type: application/octet-stream\r
            Content-Disposition: attachment; filename="setup.exe"\r
            \r
            MZ\r
            --b1--\r

            """),
        Scenario(name: "discard", client: "203.0.113.5", to: ["alice@example.org"],
                 message: "Subject: big\r\n\r\n" + String(repeating: String(repeating: "x", count: 70) + "\r\n", count: 30)),
    ]

    static let relayControl = RelayControl(relayDomains: ["example.org"], trustedNetworks: [IPNetwork("127.0.0.0/8")!])

    /// `(ref ID)` placeholders differ between the two (EXPLAIN vs a session's ids).
    static func normalised(_ reply: String) -> String {
        guard let range = reply.range(of: "(ref ") else { return reply }
        return String(reply[..<range.lowerBound]) + "(ref …)"
    }

    func testExplainAndTheSessionMachineAgree() async throws {
        for scenario in Self.scenarios {
            let client = try XCTUnwrap(IPAddress(scenario.client))
            let recipients = scenario.to.map { ForwardPath.mailbox(Mailbox(localPart: String($0.split(separator: "@")[0]), domain: String($0.split(separator: "@")[1]))) }
            let sender = ReversePath.mailbox(Mailbox(localPart: String(scenario.from.split(separator: "@")[0]), domain: String(scenario.from.split(separator: "@")[1])))
            let message = Array(scenario.message.utf8)
            let explanation = await SessionExplanation.explain(Self.policy, relayControl: Self.relayControl, input: .init(
                client: client, helo: scenario.helo, sender: sender, recipients: recipients,
                message: (message.count, MIMEMessage.parse(message))))

            // The same session, for real.
            let configuration = SessionConfiguration(
                server: SMTPServerConfiguration(hostname: "mx.test"), relayControl: Self.relayControl, forbidImproperPipelining: false)
            var session = SessionSimulator(configuration: configuration, policy: Self.policy, peer: ClientEndpoint(address: client, port: 1),
                                           responders: SessionFixture.responders(Self.policy))
            await session.connect()
            let greeting = session.replyLines()
            let name = scenario.name
            if let refusal = explanation.refusal, refusal.stage == .connect {
                XCTAssertEqual(greeting.map(Self.normalised), [Self.normalised(refusal.reply.description)], name)
                continue
            }
            XCTAssertEqual(greeting, ["220 mx.test ESMTP Postern"], name)
            await session.send("EHLO \(scenario.helo)\r\n")
            _ = session.replyLines()
            let mail = await session.command("MAIL FROM:<\(scenario.from)>")
            if let refusal = explanation.refusal, refusal.stage == .mail || refusal.stage == .helo {
                XCTAssertEqual(mail.map(Self.normalised), [Self.normalised(refusal.reply.description)], name)
                continue
            }
            XCTAssertEqual(mail, ["250 2.1.0 Ok"], name)
            for recipient in recipients {
                let reply = await session.command("RCPT TO:<\(recipient.mailbox!)>")
                if let refusal = explanation.recipientRefusals.first(where: { $0.recipient == recipient }) {
                    XCTAssertEqual(reply.map(Self.normalised), [Self.normalised(refusal.reply.description)], "\(name): \(recipient)")
                } else {
                    XCTAssertEqual(reply, ["250 2.1.5 Ok"], "\(name): \(recipient) was accepted by explain")
                }
            }
            let data = await session.command("DATA")
            guard !explanation.accepted.isEmpty else {
                XCTAssertEqual(data, ["554 5.5.1 Error: no valid recipients"], name)
                continue
            }
            XCTAssertEqual(data, ["354 End data with <CR><LF>.<CR><LF>"], name)
            let final = await session.command(scenario.message + ".")
            if let refusal = explanation.refusal, refusal.stage == .data {
                XCTAssertEqual(final.map(Self.normalised), [Self.normalised(refusal.reply.description)], name)
                XCTAssertTrue(session.relayed.isEmpty, name)
            } else {
                XCTAssertEqual(final, ["250 2.0.0 Ok: queued as SIM1"], name)
                XCTAssertEqual(session.relayed.count, 1, name)
            }
        }
    }

    func testExplainReportsARelayDenialTheWayTheServerAnswersIt() async throws {
        let explanation = await SessionExplanation.explain(Self.policy, relayControl: RelayControl(relayDomains: [], trustedNetworks: []), input: .init(
            client: IPAddress("203.0.113.5")!, sender: .mailbox(Mailbox(localPart: "a", domain: "b.example")),
            recipients: [.mailbox(Mailbox(localPart: "x", domain: "elsewhere.example"))]))
        let report = explanation.report(policyPath: "policy.yaml", policy: Self.policy)
        XCTAssertTrue(explanation.refused)
        XCTAssertTrue(report.contains("Verdict: rejected at rcpt by relay control"), report.joined(separator: "\n"))
        XCTAssertTrue(report.contains("Reply: 554 5.7.1 <x@elsewhere.example>: Relay access denied"), report.joined(separator: "\n"))
        XCTAssertTrue(report.contains { $0.contains("relay_domains") && $0.contains("refused: relay access denied: elsewhere.example is not a relay domain") },
                      report.joined(separator: "\n"))
    }
}
