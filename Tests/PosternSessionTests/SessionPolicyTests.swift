import NIOCore
import PosternLog
import PosternPolicy
import PosternSession
import SMTPCore
import Synchronization
import XCTest

/// The policy walk inside a session, relay control, and what the decision records say.
final class SessionPolicyTests: XCTestCase {
    static let stagedPolicy = SessionFixture.policy("""
        lists:
          partners: { items: [192.0.2.0/24] }
        rules:
          - { id: partners, stage: connect, if: { client_ip: { in: partners } }, then: accept }
          - { id: blocked, stage: mail, if: { sender: { domain: spam.example } }, then: reject, reply: "550 5.7.1 Go away (ref {id})" }
          - { id: no-ceo, stage: rcpt, if: { recipient: ceo@example.org }, then: reject }
          - { id: would, stage: rcpt, if: { recipient: { domain: example.org } }, then: tempfail, mode: shadow }
          - { id: big, stage: data, if: { size: { over: 100 } }, then: discard }
          - { id: note, stage: data, if: { tls: false }, then: add_header, header: "X-Postern-Policy: checked" }
        """)

    static let outsider = ClientEndpoint(address: IPAddress("203.0.113.9")!, port: 50_000)

    func testPolicyDecidesPerStageAndEveryTransactionIsRecorded() async {
        var session = await SessionFixture.session(policy: Self.stagedPolicy, peer: Self.outsider)
        _ = session.replyLines()
        await session.expect("MAIL FROM:<x@spam.example>", ["550 5.7.1 Go away (ref ID000003)"])
        await session.expect("MAIL FROM:<alice@example.net>", ["250 2.1.0 Ok"])
        await session.expect("RCPT TO:<ceo@example.org>", ["550 5.7.1 Message refused by policy (ref ID000004)"], "this recipient only")
        await session.expect("RCPT TO:<bob@example.org>", ["250 2.1.5 Ok"], "the shadow rule changes nothing")
        await session.expect("DATA", ["354 End data with <CR><LF>.<CR><LF>"])
        await session.expect("Subject: small\r\n\r\nhi\r\n.", ["250 2.0.0 Ok: queued as SIM1"])
        let big = await session.deliver(from: "alice@example.net", "Subject: big\r\n\r\n" + String(repeating: "z", count: 200))
        XCTAssertEqual(big, "250 2.0.0 Ok (ref ID000005)", "discard says 250")
        await session.expect("QUIT", ["221 2.0.0 Bye"])

        XCTAssertEqual(session.relayed.count, 1, "the discarded message is not relayed")
        XCTAssertTrue(session.relayed.first?.text.contains("\r\nX-Postern-Policy: checked\r\nSubject: small") ?? false)
        XCTAssertEqual(session.decisions, ["rejected", "accepted", "discarded"])
        XCTAssertEqual(session.records.map(\.rule), ["blocked", nil, "big"])
        XCTAssertEqual(session.records.map(\.stage), [.mail, .data, .data])
        XCTAssertEqual(session.records[0].reason, "sender x@spam.example matches spam.example")
        XCTAssertEqual(session.records[1].shadow, [DecisionRecord.Shadow(rule: "would", action: "tempfail")])
        XCTAssertEqual(session.records[1].recipients.map(\.reply),
                       ["550 5.7.1 Message refused by policy (ref ID000004)", "250 2.1.5 Ok"])
        XCTAssertEqual(session.records[1].upstream?.queueID, "SIM1")
        XCTAssertEqual(session.records[0].policyVersion, Self.stagedPolicy.version)
        XCTAssertEqual(session.stagesEvaluated, [.connect, .mail, .mail, .rcpt, .rcpt, .data, .mail, .rcpt, .data],
                       "no helo rules: nothing to evaluate there")
    }

    func testAnAcceptAtConnectEndsPolicyForTheSessionAndIsNamed() async {
        var session = await SessionFixture.session(policy: Self.stagedPolicy, peer: ClientEndpoint(address: IPAddress("192.0.2.10")!, port: 1))
        _ = session.replyLines()
        await session.expect("MAIL FROM:<x@spam.example>", ["250 2.1.0 Ok"])
        await session.expect("RCPT TO:<ceo@example.org>", ["250 2.1.5 Ok"])
        await session.expect("QUIT", ["221 2.0.0 Bye"])
        XCTAssertEqual(session.stagesEvaluated, [.connect], "nothing after the accept")
        XCTAssertEqual(session.decisions, ["aborted"])
        XCTAssertEqual(session.lastRecord?.rule, "partners", "the accept at connect is named")
        XCTAssertEqual(session.lastRecord?.reason, "client 192.0.2.10 in 192.0.2.0/24 (list partners)", "with its reason")
    }

    func testDNSListsAreAskedBeforeTheStageThatKnowsThemOncePerName() async {
        let policy = SessionFixture.policy("""
            dnsbl:
              - { name: zen, zone: zen.example }
              - { name: heloes, zone: helo.example, lookup: helo, weight: 2 }
              - { name: dbl, zone: dbl.example, lookup: sender_domain, weight: 5 }
            dnsbl_wait: mail
            rules:
              - { id: bad-helo, stage: helo, if: { dnsbl: heloes }, score: 1 }
              - { id: dbl, stage: mail, if: { dnsbl: dbl }, then: reject }
              - { id: zen, stage: rcpt, if: { dnsbl: zen }, then: tempfail }
            """)
        let asked = Mutex<[DNSListLookup]>([])
        var responders = SessionFixture.responders(policy)
        responders.dnsLists = { lookup in
            asked.withLock { $0.append(lookup) }
            return lookup.lists.map { list in
                let listed = switch list.name {
                case "heloes": lookup.helo == "client.example"
                case "dbl": lookup.senderDomain == "spam.example"
                default: lookup.client == Self.outsider.address
                }
                return DNSListResult(list: list.name, outcome: listed ? .listed([0x7F00_0002]) : .notListed, weight: listed ? list.weight : 0)
            }
        }
        var session = await SessionFixture.session(policy: policy, peer: Self.outsider, responders: responders)
        XCTAssertEqual(session.replyLines().first?.hasPrefix("220 "), true, "the greeting does not wait for the client lists")
        XCTAssertTrue(asked.withLock { $0.isEmpty }, "nothing is asked before a stage needs it")
        await session.expect("MAIL FROM:<a@spam.example>", ["550 5.7.1 Message refused by policy (ref ID000003)"])
        await session.expect("MAIL FROM:<b@good.example>", ["250 2.1.0 Ok"])
        await session.expect("RCPT TO:<bob@example.org>", ["451 4.7.1 Try again later (ref ID000004)"])
        await session.expect("RSET", ["250 2.0.0 Ok"])
        await session.expect("MAIL FROM:<b@good.example>", ["250 2.1.0 Ok"], "the same sender domain is not asked again")
        await session.expect("QUIT", ["221 2.0.0 Bye"])

        let lookups = asked.withLock { $0 }
        XCTAssertEqual(lookups.map { $0.lists.map(\.name) }, [["heloes"], ["zen", "dbl"], ["dbl"]])
        XCTAssertEqual(lookups.map(\.helo), ["client.example", "client.example", "client.example"])
        XCTAssertEqual(lookups.dropFirst().map(\.senderDomain), ["spam.example", "good.example"])
        XCTAssertEqual(session.records.first?.rule, "dbl")
        XCTAssertEqual(session.records.first?.client.dnsLists, [
            DecisionRecord.DNSListEntry(name: "heloes", result: "listed", detail: "127.0.0.2", weight: 2),
            DecisionRecord.DNSListEntry(name: "zen", result: "listed", detail: "127.0.0.2", weight: 1),
            DecisionRecord.DNSListEntry(name: "dbl", result: "listed", detail: "127.0.0.2", weight: 5),
        ])
        XCTAssertEqual(session.records.first?.score, 9, "the lists' weights plus the helo rule's score")
        XCTAssertEqual(session.records[1].rule, "zen")
        XCTAssertEqual(session.records[1].client.dnsLists.map(\.name), ["heloes", "zen"], "the second sender's domain is not listed")
    }

    func testHELORulesRunAtMAILOncePerHELOName() async {
        let policy = SessionFixture.policy("""
            rules:
              - { id: literal, stage: helo, if: { helo: { is_ip_literal: true } }, then: tempfail, mode: shadow }
              - { id: bad-helo, stage: helo, if: { helo: bad.example }, then: reject }
            """)
        var session = await SessionFixture.session(policy: policy, peer: Self.outsider, hello: "EHLO [192.0.2.1]")
        _ = session.replyLines()
        XCTAssertEqual(session.stagesEvaluated, [], "helo rules wait for MAIL")
        await session.send("MAIL FROM:<a@example.org>\r\nRSET\r\nMAIL FROM:<a@example.org>\r\nRSET\r\n")
        XCTAssertEqual(session.stagesEvaluated, [.helo], "once per HELO name")
        XCTAssertEqual(session.records.map(\.shadow), [[DecisionRecord.Shadow(rule: "literal", action: "tempfail")],
                                                      [DecisionRecord.Shadow(rule: "literal", action: "tempfail")]],
                       "a session's shadow hit goes into each transaction's record")
        await session.send("EHLO bad.example\r\n")
        _ = session.replyLines()
        await session.expect("MAIL FROM:<a@example.org>", ["550 5.7.1 Message refused by policy (ref ID000005)"])
        XCTAssertEqual(session.stagesEvaluated, [.helo, .helo])
        XCTAssertEqual(session.lastRecord?.rule, "bad-helo")
        XCTAssertEqual(session.lastRecord?.stage, .mail, "a helo refusal refuses the transaction at MAIL")
    }

    func testAConnectRefusalReplacesTheGreetingAndOnlyQUITIsServed() async {
        let policy = SessionFixture.policy("rules:\n  - { id: no-kp, stage: connect, if: { client_ip: 203.0.113.0/24 }, then: reject }\n")
        var session = await SessionFixture.session(policy: policy, peer: Self.outsider, hello: nil)
        XCTAssertEqual(session.replyLines(), ["554 5.7.1 Service refused (ref ID000002)"])
        await session.expect("EHLO client.example", ["503 5.5.1 Error: session refused, send QUIT"])
        await session.expect("MAIL FROM:<a@example.org>", ["503 5.5.1 Error: session refused, send QUIT"])
        await session.expect("QUIT", ["221 2.0.0 Bye"])
        XCTAssertEqual(session.closed, .quit)
        XCTAssertEqual(session.records.count, 1)
        XCTAssertEqual(session.lastRecord?.stage, .connect)
        XCTAssertEqual(session.lastRecord?.rule, "no-kp")
        XCTAssertEqual(session.lastRecord?.reply?.code, 554)
        XCTAssertTrue(session.upstreamRequests.isEmpty)
    }

    func testATempfailAtMailAndAnAcceptAtMailForTheTransactionOnly() async {
        let policy = SessionFixture.policy("""
            rules:
              - { id: trusted, stage: mail, if: { sender: { domain: partner.example } }, then: accept }
              - { id: slow-down, stage: mail, if: { tls: false }, then: tempfail }
              - { id: no-bob, stage: rcpt, if: { recipient: bob@example.org }, then: reject }
            """)
        var session = await SessionFixture.session(policy: policy, peer: Self.outsider)
        _ = session.replyLines()
        await session.expect("MAIL FROM:<x@partner.example>", ["250 2.1.0 Ok"])
        await session.expect("RCPT TO:<bob@example.org>", ["250 2.1.5 Ok"], "the accept at mail skips the rcpt rules")
        await session.expect("RSET", ["250 2.0.0 Ok"])
        await session.expect("MAIL FROM:<x@other.example>", ["451 4.7.1 Try again later (ref ID000004)"], "the next transaction is judged again")
        XCTAssertEqual(session.records.map(\.decision), [.aborted, .tempfailed])
        XCTAssertEqual(session.records.map(\.rule), ["trusted", "slow-down"])
    }

    func testEveryRecipientRefusedNamesTheLastRefusingRule() async {
        let policy = SessionFixture.policy("rules:\n  - { id: no-bob, stage: rcpt, if: { recipient: { domain: example.org } }, then: reject }\n")
        var session = await SessionFixture.session(policy: policy, peer: Self.outsider)
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        XCTAssertEqual(session.replyLines().last, "554 5.5.1 Error: no valid recipients")
        await session.send("QUIT\r\n")
        XCTAssertEqual(session.decisions, ["rejected"])
        XCTAssertEqual(session.lastRecord?.stage, .rcpt)
        XCTAssertEqual(session.lastRecord?.rule, "no-bob")
        XCTAssertEqual(session.lastRecord?.reason, "every recipient refused; last: recipient carol@example.org matches example.org")
    }

    // MARK: Relay control

    func testRelayControlRefusesBeforeAnyRuleAndAnAcceptCannotOpenIt() async {
        let policy = SessionFixture.policy("rules:\n  - { id: everyone, stage: connect, if: { client_ip: 0.0.0.0/0 }, then: accept }\n")
        var session = await SessionFixture.session(policy: policy, peer: Self.outsider)
        _ = session.replyLines()
        await session.expect("MAIL FROM:<a@example.net>", ["250 2.1.0 Ok"])
        await session.expect("RCPT TO:<x@elsewhere.example>", ["554 5.7.1 <x@elsewhere.example>: Relay access denied"])
        await session.expect("RCPT TO:<user%other.example@example.org>", ["554 5.7.1 <user%other.example@example.org>: Relay access denied"])
        await session.expect("RCPT TO:<postmaster>", ["250 2.1.5 Ok"], "RFC 5321 §4.5.1")
        await session.expect("RSET", ["250 2.0.0 Ok"])
        XCTAssertTrue(session.counted(.relayDenied))
        XCTAssertEqual(session.events.filter { $0 == .relayDenied }.count, 2)
        XCTAssertFalse(session.upstreamRequests.contains { if case .addRecipient(let path, _) = $0 { return path.mailbox?.domain == "elsewhere.example" } else { return false } })
        XCTAssertEqual(session.lastRecord?.recipients.first?.reply, "554 5.7.1 <x@elsewhere.example>: Relay access denied")
        XCTAssertTrue(session.logMessages.contains("relay access denied"))
    }

    func testEveryRecipientDeniedByRelayControlIsARejectionAtRCPT() async {
        var session = await SessionFixture.session(peer: Self.outsider)
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<x@elsewhere.example>\r\nQUIT\r\n")
        XCTAssertEqual(session.decisions, ["rejected"])
        XCTAssertEqual(session.lastRecord?.stage, .rcpt)
        XCTAssertNil(session.lastRecord?.rule)
        XCTAssertEqual(session.lastRecord?.reason, "every recipient refused; last: relay access denied: elsewhere.example is not a relay domain")
    }

    func testTrustedAndAuthenticatedClientsRelayAnywhere() async {
        var trusted = await SessionFixture.session(peer: SessionFixture.loopback)
        _ = trusted.replyLines()
        await trusted.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<x@elsewhere.example>\r\n")
        XCTAssertEqual(trusted.replyLines(), ["250 2.1.0 Ok", "250 2.1.5 Ok"])

        var responders = SessionSimulator.Responders()
        responders.credentials = { _ in .success }
        var authenticated = await SessionFixture.session(SessionFixture.configuration { $0.server.authentication = .always },
                                                         peer: Self.outsider, responders: responders)
        _ = authenticated.replyLines()
        await authenticated.expect("AUTH PLAIN " + SessionAuthTests.plain("alice", "pw"), ["235 2.7.0 Authentication successful"])
        await authenticated.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<x@elsewhere.example>\r\n")
        XCTAssertEqual(authenticated.replyLines(), ["250 2.1.0 Ok", "250 2.1.5 Ok"])
        guard case .begin(let envelope)? = authenticated.upstreamRequests.first else { return XCTFail("no MAIL upstream") }
        XCTAssertEqual(envelope.client.login, "alice", "the upstream learns the login (XCLIENT LOGIN=)")
    }

    // MARK: Content rules, tagging, quarantine

    func testContentRulesSeeTheDecodedMessage() async {
        let policy = SessionFixture.policy("rules:\n  - { id: phish, stage: data, if: { subject: { regex: 'verify your account' } }, then: reject }\n")
        var session = await SessionFixture.session(policy: policy)
        _ = session.replyLines()
        // RFC 2047: "Verify your account" base64-encoded.
        let phish = await session.deliver("Subject: =?UTF-8?B?VmVyaWZ5IHlvdXIgYWNjb3VudA==?=\r\n\r\nclick")
        XCTAssertEqual(phish, "550 5.7.1 Message refused by policy (ref ID000003)")
        let lunch = await session.deliver("Subject: lunch\r\n\r\nat noon")
        XCTAssertEqual(lunch, "250 2.0.0 Ok: queued as SIM1")
        XCTAssertEqual(session.relayed.count, 1)
        XCTAssertEqual(session.records.first?.subject, "Verify your account", "the record has the decoded subject")
        XCTAssertTrue(session.upstreamRequests.contains { if case .abort = $0 { return true } else { return false } },
                      "the refused message's upstream transaction is abandoned")
    }

    func testQuarantineKeepsTheMessageAndAnswersTheRulesReply() async {
        let policy = SessionFixture.policy("""
            rules:
              - { id: hold, stage: data, if: { subject: { regex: 'invoice' } }, then: quarantine, reply: "250 2.0.0 Held for review (ref {id})" }
            """)
        var session = await SessionFixture.session(policy: policy)
        _ = session.replyLines()
        let held = await session.deliver("Subject: Your invoice\r\n\r\npay")
        XCTAssertEqual(held, "250 2.0.0 Held for review (ref ID000003)")
        XCTAssertTrue(session.relayed.isEmpty)
        XCTAssertEqual(session.quarantined.count, 1)
        XCTAssertTrue(session.quarantined.first?.text.contains("X-Postern-Quarantine: rule=hold; id=ID000003\r\nSubject: Your invoice") ?? false)
        XCTAssertEqual(session.lastRecord?.decision, .quarantined)
    }

    func testAFailedQuarantineIsATemporaryFailureNothingAcknowledged() async {
        let policy = SessionFixture.policy("rules:\n  - { id: hold, stage: data, if: { size: { over: 1 } }, then: quarantine }\n")
        var responders = SessionFixture.responders(policy)
        responders.quarantine = { _ in .failure(UpstreamError(.localError, "disk full")) }
        var session = await SessionFixture.session(policy: policy, responders: responders)
        _ = session.replyLines()
        let reply = await session.deliver("Subject: x\r\n\r\nbody")
        XCTAssertEqual(reply, "451 4.3.0 Local error in processing, try again later")
        XCTAssertEqual(session.lastRecord?.decision, .tempfailed)
        XCTAssertEqual(session.lastRecord?.rule, "hold", "the record says which rule wanted it quarantined")
        XCTAssertTrue(session.logMessages.contains("quarantine failed"))
    }

    func testTagSubjectRewritesTheHeaderSectionOnTheWayOut() async {
        let policy = SessionFixture.policy("rules:\n  - { id: tag, stage: data, if: { body: { regex: 'viagra' } }, then: tag_subject, tag: \"[SPAM?]\" }\n")
        var session = await SessionFixture.session(policy: policy)
        _ = session.replyLines()
        _ = await session.deliver("Subject: Offer\r\n\r\ncheap viagra")
        _ = await session.deliver("X-No-Subject: 1\r\n\r\nviagra again")
        XCTAssertTrue(session.relayed[0].text.hasSuffix("\r\nSubject: [SPAM?] Offer\r\n\r\ncheap viagra\r\n"), session.relayed[0].text)
        XCTAssertTrue(session.relayed[1].text.hasSuffix("\r\nX-No-Subject: 1\r\nSubject: [SPAM?]\r\n\r\nviagra again\r\n"), session.relayed[1].text)
    }

    // MARK: Checks of the pipeline

    struct FakeCheck: StageCheck {
        var name: String
        var stages: Set<PolicyStage>
        var timeout: Duration = .seconds(5)
        var failureMode: CheckFailureMode = .ignore
        var finding: @Sendable () async throws -> CheckFinding

        func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding { try await finding() }
    }

    func testACheckThatRejectsDecidesWhenNoRuleDoesAndIsRecorded() async {
        let check = FakeCheck(name: "engine", stages: [.rcpt]) {
            CheckFinding(.reject(SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Spam score too high")), detail: "score 15")
        }
        var configuration = SessionFixture.configuration()
        configuration = SessionConfiguration(server: configuration.server, relayControl: configuration.relayControl, checkedStages: [.rcpt])
        var session = await SessionFixture.session(configuration, responders: SessionFixture.responders(.empty, checks: [check]))
        _ = session.replyLines()
        await session.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.org>\r\nQUIT\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.1.0 Ok", "550 5.7.1 Spam score too high", "221 2.0.0 Bye"])
        XCTAssertEqual(session.lastRecord?.checks.map(\.check), ["engine"])
        XCTAssertEqual(session.lastRecord?.checks.first?.result, "reject")
        XCTAssertEqual(session.lastRecord?.reason, "every recipient refused; last: score 15")
    }

    private func checkedSession(_ checks: [FakeCheck]) async -> SessionSimulator {
        let base = SessionFixture.configuration()
        let configuration = SessionConfiguration(server: base.server, relayControl: base.relayControl,
                                                 checkedStages: checks.reduce(into: Set<PolicyStage>()) { $0.formUnion($1.stages) })
        var session = await SessionFixture.session(configuration, responders: SessionFixture.responders(.empty, checks: checks))
        _ = session.replyLines()
        return session
    }

    func testHeadersACheckAddsAtRcptReachTheMessageOnce() async {
        let check = FakeCheck(name: "spf", stages: [.rcpt]) {
            CheckFinding(.pass, detail: "pass", headers: [AddedHeader(name: "Received-SPF", value: "Pass (mailfrom) identity=mailfrom")])
        }
        var session = await checkedSession([check])
        let reply = await session.deliver(to: ["bob@example.org"], "Subject: hi\r\n\r\nbody")
        XCTAssertEqual(reply, "250 2.0.0 Ok: queued as SIM1")
        let text = session.relayed[0].text
        XCTAssertEqual(text.components(separatedBy: "Received-SPF: Pass (mailfrom) identity=mailfrom\r\n").count - 1, 1, text)
        XCTAssertTrue(text.hasSuffix("Received-SPF: Pass (mailfrom) identity=mailfrom\r\nSubject: hi\r\n\r\nbody\r\n"), text)
        // The next transaction starts clean.
        _ = await session.deliver(to: [], "Subject: none\r\n\r\nx")
        XCTAssertEqual(session.relayed.count, 1)
    }

    func testAHoldAtRcptQuarantinesTheMessageWhenItArrives() async {
        let check = FakeCheck(name: "policyd", stages: [.rcpt]) { CheckFinding(.quarantine, detail: "HOLD suspicious") }
        var session = await checkedSession([check])
        let reply = await session.deliver("Subject: hi\r\n\r\nbody")
        XCTAssertTrue(reply?.hasPrefix("250 2.0.0 Ok (ref ") == true, "the client gets the decision's 2xx: \(reply ?? "")")
        XCTAssertEqual(session.relayed.count, 0)
        XCTAssertEqual(session.quarantined.count, 1)
        XCTAssertTrue(session.quarantined[0].text.contains("X-Postern-Quarantine: rule=check:policyd"), session.quarantined[0].text)
        XCTAssertEqual(session.lastRecord?.decision.rawValue, "quarantined")
        XCTAssertEqual(session.lastRecord?.rule, "check:policyd")
    }

    func testADiscardAtRcptDiscardsTheMessageWhenItArrives() async {
        let check = FakeCheck(name: "policyd", stages: [.rcpt]) { CheckFinding(.discard, detail: "DISCARD") }
        var session = await checkedSession([check])
        let reply = await session.deliver("Subject: hi\r\n\r\nbody")
        XCTAssertTrue(reply?.hasPrefix("250 2.0.0") == true, reply ?? "")
        XCTAssertEqual(session.relayed.count, 0)
        XCTAssertEqual(session.lastRecord?.decision.rawValue, "discarded")
        XCTAssertEqual(session.lastRecord?.rule, "check:policyd")
    }

    func testRelayControlRefusesBeforeAnyCheckIsAsked() async {
        let asked = Mutex(0)
        let check = FakeCheck(name: "postfwd", stages: [.rcpt]) {
            asked.withLock { $0 += 1 }
            return CheckFinding(.pass, detail: "DUNNO")
        }
        var session = await checkedSession([check])
        await session.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<bob@example.org>\r\n")
        XCTAssertEqual(session.replyLines(), ["250 2.1.0 Ok", "554 5.7.1 <x@elsewhere.example>: Relay access denied", "250 2.1.5 Ok"])
        XCTAssertEqual(asked.withLock { $0 }, 1, "only the recipient relay control let through was asked about")
    }
}
