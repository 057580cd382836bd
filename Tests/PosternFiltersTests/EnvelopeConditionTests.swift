import PosternPolicy
import SMTPCore
import XCTest

final class EnvelopeConditionTests: XCTestCase {
    private let lists = """
        lists:
          senders: { file: senders.txt }
          nets: { items: [192.0.2.0/24, "2001:db8::/32"] }
          users: { items: [alice, bob] }
        """

    func testClientAddress() async throws {
        let cases: [(String, String, Bool)] = [
            ("192.0.2.0/24", "192.0.2.77", true),
            ("192.0.2.0/24", "192.0.3.1", false),
            ("203.0.113.9", "203.0.113.9", true),
            ("[10.0.0.0/8, \"2001:db8::/32\"]", "2001:db8::5", true),
            ("[10.0.0.0/8, \"2001:db8::/32\"]", "2001:db9::5", false),
            ("{ in: nets }", "192.0.2.1", true),
            ("{ in: nets }", "::ffff:192.0.2.1", true),
            ("{ in: nets }", "198.51.100.1", false),
        ]
        for (condition, client, expected) in cases {
            let result = try await matches("{ client_ip: \(condition) }", stage: .connect, facts(client: client), lists: lists)
            XCTAssertEqual(result, expected, "\(condition) vs \(client)")
        }
    }

    func testSender() async throws {
        let cases: [(String, String, Bool)] = [
            ("\"<>\"", "<>", true),
            ("\"<>\"", "a@example.org", false),
            ("alice@example.org", "Alice@EXAMPLE.org", true),
            ("alice@example.org", "alice@example.org.", true),
            ("alice@example.org", "bob@example.org", false),
            ("\"*@*.example\"", "x@mail.corp.example", true),
            ("\"*@*.example\"", "x@example", false),
            ("{ domain: example.org }", "a@Example.ORG", true),
            ("{ domain: example.org }", "a@sub.example.org", false),
            ("{ domain: \"*.example.org\" }", "a@sub.example.org", true),
            ("{ domain: \"*.example.org\" }", "a@example.org", false),
            ("{ in: senders }", "spam@example.com", true),
            ("{ in: senders }", "anyone@bad.example", true),
            ("{ in: senders }", "x@a.spammy.example", true),
            ("{ in: senders }", "ok@example.com", false),
            ("{ equals: bob@example.org, strip_tag: true }", "bob+news@example.org", true),
            ("{ equals: bob@example.org }", "bob+news@example.org", false),
        ]
        for (condition, sender, expected) in cases {
            let result = try await matches("{ sender: \(condition) }", stage: .mail, facts(sender: sender), lists: lists)
            XCTAssertEqual(result, expected, "\(condition) vs \(sender)")
        }
    }

    func testRecipient() async throws {
        try await expectMatch(true, "{ recipient: postmaster@example.org }", stage: .rcpt, facts(sender: "a@b.example", recipient: "PostMaster@example.org"))
        try await expectMatch(false, "{ recipient: { domain: example.org } }", stage: .rcpt, facts(sender: "a@b.example", recipient: "x@example.net"))
        try await expectMatch(true, "{ all: [ { sender: \"<>\" }, { recipient: ceo@example.org } ] }", stage: .rcpt,
                                        facts(sender: "<>", recipient: "ceo@example.org"))
        try await expectMatch(false, "{ all: [ { sender: \"<>\" }, { recipient: ceo@example.org } ] }", stage: .rcpt,
                                         facts(sender: "a@b.example", recipient: "ceo@example.org"))
    }

    func testBarePostmaster() async throws {
        try await expectMatch(true, "{ recipient: postmaster }", stage: .rcpt, facts(sender: "a@b.example", recipient: "postmaster"))
        try await expectMatch(false, "{ recipient: postmaster }", stage: .rcpt, facts(sender: "a@b.example", recipient: "postmaster@example.org"))
    }

    func testHelo() async throws {
        try await expectMatch(true, "{ helo: Client.Example }", stage: .helo, facts(helo: "client.example"))
        try await expectMatch(true, "{ helo: { is_ip_literal: true } }", stage: .helo, facts(helo: "[192.0.2.1]"))
        try await expectMatch(false, "{ helo: { is_ip_literal: true } }", stage: .helo, facts(helo: "mail.example"))
        try await expectMatch(true, "{ helo: { is_fqdn: false } }", stage: .helo, facts(helo: "localhost"))
        try await expectMatch(true, "{ helo: { is_fqdn: false } }", stage: .helo, facts(helo: "192.0.2.1"))
        try await expectMatch(false, "{ helo: { is_fqdn: false } }", stage: .helo, facts(helo: "mail.example.org"))
    }

    func testClientNameAndItsStatus() async throws {
        func named(_ status: ClientName.Status, _ name: String?) -> TransactionFacts {
            var facts = facts()
            facts.clientName = ClientName(status, name: name)
            return facts
        }
        try await expectMatch(true, "{ client_name: Mail.Example.ORG. }", stage: .connect, named(.verified, "mail.example.org"))
        try await expectMatch(true, "{ client_name: { domain: example.org } }", stage: .connect, named(.verified, "mx1.example.org"))
        try await expectMatch(true, "{ client_name: { domain: example.org } }", stage: .connect, named(.verified, "example.org"))
        try await expectMatch(false, "{ client_name: { domain: example.org } }", stage: .connect, named(.verified, "badexample.org"))
        try await expectMatch(true, "{ client_name: { regex: '(^|[.-])dyn[0-9]' } }", stage: .connect, named(.verified, "host-dyn42.isp.example"))
        // An unverified name is never the client's name.
        try await expectMatch(false, "{ client_name: { domain: example.org } }", stage: .connect, named(.unverified, "mx1.example.org"))
        try await expectMatch(true, "{ client_name_status: [none, unverified] }", stage: .connect, named(.unverified, "mx1.example.org"))
        try await expectMatch(false, "{ client_name_status: [none, unverified] }", stage: .connect, named(.verified, "mx1.example.org"))
        try await expectMatch(true, "{ client_name_status: tempfail }", stage: .connect, named(.tempfail, nil))
        // Without a resolver nothing is known, and nothing matches.
        try await expectMatch(false, "{ client_name_status: [none, unverified, tempfail, verified] }", stage: .connect, facts())
    }

    func testDNSListsCompileAndMatch() async throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let policy = try fixture.compile("""
            dnsbl:
              - { name: zen, zone: zen.example., returns: [127.0.0.2-11, 127.0.1.0/24], weight: 3 }
              - { name: wl, zone: wl.example, weight: -2.5, ipv6: true }
            rules:
              - { id: listed, stage: connect, if: { dnsbl: zen }, then: reject }
              - { id: pbl, stage: connect, if: { dnsbl: { name: zen, returns: [127.0.0.10-11] } }, then: reject }
              - { id: down, stage: connect, if: { dnsbl: { name: zen, error: true } }, then: tempfail }
              - { id: score, stage: connect, if: { dnsbl_score: { over: 2 } }, then: reject }
            """)
        XCTAssertEqual(policy.dnsLists.map(\.name), ["zen", "wl"])
        XCTAssertEqual(policy.dnsLists[0].zone, "zen.example")
        XCTAssertEqual(policy.dnsLists[0].returns.map(\.description), ["127.0.0.2-127.0.0.11", "127.0.1.0-127.0.1.255"])
        XCTAssertEqual(policy.dnsLists[1].weight, -2.5)
        XCTAssertEqual(policy.dnsLists[0].query(for: IPAddress("192.0.2.7")!), "7.2.0.192.zen.example")
        XCTAssertNil(policy.dnsLists[0].query(for: IPAddress("2001:db8::1")!), "ipv6: false")
        XCTAssertEqual(policy.dnsLists[1].query(for: IPAddress("2001:db8::1")!),
                       "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.wl.example")
        XCTAssertTrue(policy.dnsLists[0].lists(0x7F00_0002))
        XCTAssertFalse(policy.dnsLists[0].lists(0x7F00_000C))
        XCTAssertFalse(policy.dnsLists[1].lists(0x7FFF_FFFE), "127.255.255.254 is a refusal, never a listing")
        XCTAssertTrue(policy.dnsLists[1].lists(0x7F00_0064), "no returns: any 127/8 code")

        func listed(_ results: [DNSListResult]) -> TransactionFacts {
            var facts = facts()
            facts.dnsLists = results
            return facts
        }
        let zen = DNSListResult(list: "zen", outcome: .listed([0x7F00_000A]), weight: 3)
        let allowed = DNSListResult(list: "wl", outcome: .listed([0x7F00_0002]), weight: -2.5)
        let rules = Dictionary(uniqueKeysWithValues: policy.rules.map { ($0.id, $0.condition) })
        let listedMatch = await rules["listed"]!.evaluate(listed([zen]))
        XCTAssertEqual(listedMatch?.reason, "listed in zen (127.0.0.10)")
        let pblMatch = await rules["pbl"]!.evaluate(listed([zen]))
        XCTAssertNotNil(pblMatch)
        let notPBL = await rules["pbl"]!.evaluate(listed([DNSListResult(list: "zen", outcome: .listed([0x7F00_0002]), weight: 3)]))
        XCTAssertNil(notPBL)
        let down = await rules["down"]!.evaluate(listed([DNSListResult(list: "zen", outcome: .error("timeout: no answer"), weight: 0)]))
        XCTAssertEqual(down?.reason, "DNS list zen failed: timeout: no answer")
        let over = await rules["score"]!.evaluate(listed([zen]))
        XCTAssertNotNil(over)
        let under = await rules["score"]!.evaluate(listed([zen, allowed]))
        XCTAssertNil(under, "3 - 2.5 is not over 2")
        let nothing = await rules["listed"]!.evaluate(facts())
        XCTAssertNil(nothing)
    }

    func testSPFReadsTheSPFChecksResult() async throws {
        func spf(_ result: String?) -> TransactionFacts {
            var facts = facts(sender: "a@b.example")
            if let result {
                var outcome = CheckOutcome(check: "spf", stage: .mail, result: .pass, detail: "spf=\(result) (why)", milliseconds: 1)
                outcome.effects.result = result
                facts.checks["spf"] = outcome
            }
            return facts
        }
        try await expectMatch(true, "{ spf: fail }", stage: .mail, spf("fail"))
        try await expectMatch(true, "{ spf: [fail, softfail] }", stage: .mail, spf("softfail"))
        try await expectMatch(false, "{ spf: [fail, softfail] }", stage: .mail, spf("pass"))
        try await expectMatch(false, "{ spf: fail }", stage: .mail, spf(nil), message: "no SPF check: nothing matches")
        var later = spf("softfail")
        later.earlierChecks = later.checks
        later.checks = [:]
        later.recipient = .mailbox(Mailbox(localPart: "r", domain: "example.org"))
        try await expectMatch(true, "{ spf: softfail }", stage: .data, later, message: "a data rule sees the MAIL-stage result")
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        XCTAssertEqual(fixture.errors("rules:\n  - { id: s, stage: mail, if: { spf: [fail, hardfail] }, then: reject }\n"),
                       ["policy.yaml:2:45: unknown SPF result 'hardfail' (known: pass, fail, softfail, neutral, none, temperror, permerror)"])
        XCTAssertEqual(fixture.errors("rules:\n  - { id: s, stage: connect, if: { spf: fail }, then: reject }\n").count, 1,
                       "spf needs the mail stage")
    }

    func testScoresRunWithinAndAcrossStages() async throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let policy = try fixture.compile("""
            rules:
              - { id: a, stage: mail, if: { sender: { domain: b.example } }, score: 2.5 }
              - { id: b, stage: mail, if: { sender: { domain: b.example } }, score: 1, then: continue }
              - { id: over-3, stage: mail, if: { score: { over: 3 } }, then: reject }
            """)
        XCTAssertEqual(policy.rules.map(\.score), [2.5, 1, nil])
        let refused = await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(sender: "x@b.example"))
        XCTAssertEqual(refused.rule, "over-3", "2.5 + 1 in the same stage is over 3")
        XCTAssertEqual(refused.scores, [ScoreContribution(rule: "a", score: 2.5), ScoreContribution(rule: "b", score: 1)])
        var earlier = facts(sender: "x@c.example")
        earlier.ruleScore = 3.5
        let fromEarlier = await PolicyEngine.evaluate(policy, stage: .mail, facts: earlier)
        XCTAssertEqual(fromEarlier.rule, "over-3", "a score from earlier stages counts")
        var listed = facts(sender: "x@c.example")
        listed.dnsLists = [DNSListResult(list: "zen", outcome: .listed([0x7F00_0002]), weight: 4)]
        let fromLists = await PolicyEngine.evaluate(policy, stage: .mail, facts: listed)
        XCTAssertEqual(fromLists.rule, "over-3", "the DNS lists' weights are in the score")
        // An engine's score (its spam header) counts, the latest outcome of each check; a
        // check in shadow mode does not.
        func outcome(_ score: Double, shadow: Bool = false, stage: PolicyStage = .mail) -> CheckOutcome {
            var outcome = CheckOutcome(check: "rspamd", stage: stage, result: .pass, detail: "", milliseconds: 1)
            outcome.rule = "milter:rspamd"
            outcome.effects.score = score
            outcome.shadow = shadow
            return outcome
        }
        var engine = facts(sender: "x@c.example")
        engine.earlierChecks["rspamd"] = outcome(1, stage: .helo)
        engine.checks["rspamd"] = outcome(3.5)
        XCTAssertEqual(engine.engineScores, [ScoreContribution(rule: "milter:rspamd", score: 3.5)])
        let fromEngine = await PolicyEngine.evaluate(policy, stage: .mail, facts: engine)
        XCTAssertEqual(fromEngine.rule, "over-3", "the engine's score is in the score")
        engine.checks["rspamd"] = outcome(9, shadow: true)
        XCTAssertEqual(engine.engineScores, [ScoreContribution(rule: "milter:rspamd", score: 1)], "the shadow outcome is left out")
        XCTAssertEqual(engine.score, 1)
        XCTAssertEqual(fixture.errors("rules:\n  - { id: s, stage: mail, if: { tls: true }, score: lots }\n"),
                       ["policy.yaml:2:53: score must be a number (negative to lower the score)"])
        XCTAssertEqual(fixture.errors("rules:\n  - { id: s, stage: mail, if: { score: { above: 1 } }, then: reject }\n").first?.contains("unknown key 'above'"), true)
    }

    func testDNSListErrors() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        XCTAssertEqual(fixture.errors("""
            dnsbl:
              - { name: n, zone: nodot }
              - { name: b, zone: b.example, returns: [10.0.0.1, 127.0.0.9-3], weight: heavy }
              - { zone: c.example }
              - { name: b, zone: b2.example, ttl: 5 }
            rules:
              - { id: x, stage: connect, if: { dnsbl: nosuch }, then: reject }
              - { id: y, stage: connect, if: { dnsbl: { name: b, error: true, returns: [127.0.0.2] } }, then: reject }
            """), [
            "policy.yaml:2:22: zone 'nodot' is not a DNS name (zen.spamhaus.org)",
            "policy.yaml:3:43: return code '10.0.0.1' is not 127.X.Y.Z, 127.X.Y.Z-N or 127.X.Y.Z/BITS",
            "policy.yaml:3:53: return code '127.0.0.9-3' is not 127.X.Y.Z, 127.X.Y.Z-N or 127.X.Y.Z/BITS",
            "policy.yaml:3:75: weight must be a number (negative for an allow list)",
            "policy.yaml:4:5: a DNS list needs a name and a zone",
            "policy.yaml:5:34: unknown key 'ttl' in a DNS list (expected one of: ipv6, lookup, name, returns, weight, zone)",
            "policy.yaml:5:5: DNS list 'b' is defined twice",
            "policy.yaml:7:43: unknown DNS list 'nosuch' (defined: b)",
            "policy.yaml:8:43: dnsbl: error: true and returns: cannot be combined",
        ])
    }

    func testDomainListsAskTheHELONameOrTheSenderDomainFromTheirStage() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let policy = try fixture.compile("""
            dnsbl:
              - { name: zen, zone: zen.example }
              - { name: heloes, zone: helo.example, lookup: helo }
              - { name: dbl, zone: dbl.example, lookup: sender_domain, returns: [127.0.1.2-99] }
            rules:
              - { id: helo, stage: helo, if: { dnsbl: heloes }, then: reject }
              - { id: sender, stage: mail, if: { dnsbl: dbl }, then: reject }
              - { id: both, stage: rcpt, if: { dnsbl_score: { over: 1 } }, then: reject }
            """)
        XCTAssertEqual(policy.dnsLists.map(\.lookup), [.client, .helo, .senderDomain])
        XCTAssertEqual(policy.dnsListWait, .connect(nil))
        let dbl = policy.dnsLists[2]
        XCTAssertEqual(dbl.query(forDomain: "Spam.Example."), "spam.example.dbl.example")
        XCTAssertEqual(dbl.query(forDomain: "xn--bcher-kva.example"), "xn--bcher-kva.example.dbl.example")
        for notADomain in ["[192.0.2.1]", "localhost", "bücher.example", "a..example", "", String(repeating: "a", count: 64) + ".example"] {
            XCTAssertNil(dbl.query(forDomain: notADomain), notADomain)
        }
        XCTAssertEqual(dbl.subjectKey(helo: "x", senderDomain: "A.example"), "sender:a.example")
        XCTAssertEqual(policy.dnsLists[1].subjectKey(helo: "Mx.Example", senderDomain: nil), "helo:mx.example")
        XCTAssertEqual(policy.dnsLists[0].subjectKey(helo: "Mx.Example", senderDomain: "a.example"), "client")

        // A domain list is known from its stage on; before it, a rule can never run.
        XCTAssertEqual(fixture.errors("""
            dnsbl:
              - { name: heloes, zone: helo.example, lookup: helo }
              - { name: dbl, zone: dbl.example, lookup: sender_domain }
              - { name: bad, zone: bad.example, lookup: recipient }
            rules:
              - { id: early, stage: connect, if: { dnsbl: heloes }, then: reject }
              - { id: early2, stage: helo, if: { dnsbl: { name: dbl, error: true } }, then: reject }
            """), [
            "policy.yaml:4:45: lookup must be client, helo or sender_domain",
            "policy.yaml:6:38: rule 'early' can never run: its condition needs stage helo or later, the rule is at connect",
            "policy.yaml:7:36: rule 'early2' can never run: its condition needs stage mail or later, the rule is at helo",
        ])
        // The summed weight is known from the first stage at which some list has answered.
        XCTAssertEqual(fixture.errors("""
            dnsbl: [{ name: heloes, zone: helo.example, lookup: helo }, { name: dbl, zone: dbl.example, lookup: sender_domain }]
            rules: [{ id: score, stage: connect, if: { dnsbl_score: { over: 1 } }, then: reject }]
            """), ["policy.yaml:2:42: rule 'score' can never run: its condition needs stage helo or later, the rule is at connect"])
    }

    func testDNSListWaitBoundsTheConnectStageOrMovesTheClientListsToMail() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let bounded = try fixture.compile("""
            dnsbl: [{ name: zen, zone: zen.example }]
            dnsbl_wait: 1500ms
            rules: [{ id: listed, stage: connect, if: { dnsbl: zen }, then: reject }]
            """)
        XCTAssertEqual(bounded.dnsListWait, .connect(.milliseconds(1500)))
        let atMail = try fixture.compile("""
            dnsbl: [{ name: zen, zone: zen.example }]
            dnsbl_wait: mail
            rules: [{ id: listed, stage: mail, if: { dnsbl: zen }, then: reject }]
            """)
        XCTAssertEqual(atMail.dnsListWait, .mail)
        XCTAssertEqual(fixture.errors("""
            dnsbl: [{ name: zen, zone: zen.example }]
            dnsbl_wait: mail
            rules:
              - { id: early, stage: helo, if: { dnsbl: zen }, then: reject }
              - { id: score, stage: connect, if: { dnsbl_score: { over: 1 } }, then: reject }
            """), [
            "policy.yaml:4:35: rule 'early' can never run: its condition needs stage mail or later, the rule is at helo",
            "policy.yaml:5:38: rule 'score' can never run: its condition needs stage mail or later, the rule is at connect",
        ])
        XCTAssertEqual(fixture.errors("dnsbl: [{ name: zen, zone: zen.example }]\ndnsbl_wait: soon\nrules: []\n"),
                       ["policy.yaml:2:13: dnsbl_wait (or mail) must be a duration such as 30s, 5m, 1h or 250ms"])
        XCTAssertEqual(fixture.errors("dnsbl: [{ name: zen, zone: zen.example }]\ndnsbl_wait: 0s\nrules: []\n"),
                       ["policy.yaml:2:13: dnsbl_wait must be longer than 0s (or mail, to decide at the mail stage)"])
    }

    func testAuthUserTLSAndSize() async throws {
        try await expectMatch(true, "{ auth_user: { in: users } }", stage: .mail, facts(authUser: "bob"), lists: lists)
        try await expectMatch(false, "{ auth_user: { in: users } }", stage: .mail, facts(authUser: "eve"), lists: lists)
        try await expectMatch(true, "{ auth_user: false }", stage: .mail, facts())
        try await expectMatch(true, "{ tls: false }", stage: .helo, facts(tls: false))
        try await expectMatch(false, "{ tls: false }", stage: .helo, facts(tls: true))
        try await expectMatch(true, "{ size: { over: 10MB } }", stage: .mail, facts(size: 10_000_001))
        try await expectMatch(false, "{ size: { over: 10MB } }", stage: .mail, facts(size: 10_000_000))
        try await expectMatch(false, "{ size: { over: 10MB } }", stage: .mail, facts(), message: "no SIZE declared")
    }

    func testCombinators() async throws {
        try await expectMatch(true, "{ any: [ { tls: true }, { client_ip: 203.0.113.0/24 } ] }", stage: .helo, facts())
        try await expectMatch(false, "{ all: [ { tls: true }, { client_ip: 203.0.113.0/24 } ] }", stage: .helo, facts())
        try await expectMatch(true, "{ not: { client_ip: 10.0.0.0/8 } }", stage: .connect, facts())
        try await expectMatch(true, "{ tls: false, client_ip: 203.0.113.9 }", stage: .helo, facts(), message: "several keys mean all")
    }
    /// Domains compare in `DomainName.canonical` form, as `relay_domains` does: a pattern in
    /// either form matches an address in either form. Local parts are only lower-cased.
    func testInternationalDomainsMatchInEitherForm() async throws {
        let idnLists = """
            lists:
              idn: { items: ["@bücher.example", "*@*.straße.example"] }
            """
        let cases: [(String, String, Bool)] = [
            ("{ domain: bücher.example }", "user@xn--bcher-kva.example", true),
            ("{ domain: bücher.example }", "user@bücher.example", true),
            ("{ domain: BÜCHER.example }", "user@XN--BCHER-KVA.example", true),
            ("{ domain: xn--bcher-kva.example }", "user@Bücher.example", true),
            ("{ domain: bücher.example }", "user@bucher.example", false),
            ("{ domain: bücher.example }", "user@mail.xn--bcher-kva.example", false),
            ("{ domain: \"*.bücher.example\" }", "user@mail.xn--bcher-kva.example", true),
            ("{ domain: \"*.xn--bcher-kva.example\" }", "user@mail.bücher.example", true),
            ("{ domain: \"*.bücher.example\" }", "user@xn--bcher-kva.example", false),
            ("user@bücher.example", "User@xn--bcher-kva.example", true),
            ("user@xn--bcher-kva.example", "user@bücher.example.", true),
            ("other@bücher.example", "user@xn--bcher-kva.example", false),
            ("\"*@*.bücher.example\"", "x@mail.xn--bcher-kva.example", true),
            ("\"*@*.bücher.example\"", "x@mail.bucher.example", false),
            ("{ in: idn }", "x@xn--bcher-kva.example", true),
            ("{ in: idn }", "x@a.xn--strae-oqa.example", true),
            ("{ in: idn }", "x@xn--strae-oqa.example", false),
            ("{ regex: '@xn--bcher-kva\\.example$' }", "x@bücher.example", true),
            // The local part is not a domain: only lower-cased, never Punycode.
            ("müller@example.org", "MÜLLER@example.org", true),
            ("müller@example.org", "xn--mller-kva@example.org", false),
        ]
        for (condition, recipient, expected) in cases {
            let result = try await matches("{ recipient: \(condition) }", stage: .rcpt,
                                           facts(sender: "a@b.example", recipient: recipient), lists: idnLists)
            XCTAssertEqual(result, expected, "recipient \(condition) vs \(recipient)")
        }
        try await expectMatch(true, "{ sender: { domain: bücher.example } }", stage: .mail, facts(sender: "a@xn--bcher-kva.example"))
        try await expectMatch(true, "{ sender: { domain: xn--bcher-kva.example } }", stage: .mail, facts(sender: "a@bücher.example"))

        // The reason names the address in its compared form and the pattern as written.
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let policy = try fixture.compile("""
            rules:
              - { id: r, stage: rcpt, if: { recipient: { domain: bücher.example } }, then: reject }
            """)
        let verdict = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: facts(sender: "a@b.example", recipient: "u@Bücher.example"))
        XCTAssertEqual(verdict.reason, "recipient u@xn--bcher-kva.example matches bücher.example")
    }
}
