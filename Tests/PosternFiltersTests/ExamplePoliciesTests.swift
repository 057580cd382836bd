import PosternMIME
import Foundation
import PosternFilters
import PosternPolicy
import SMTPCore
import XCTest

/// The policies shipped in Policies/ and Policies/examples/ compile with the built-in
/// filters, and the examples do what their comments say.
final class ExamplePoliciesTests: XCTestCase {
    /// The repository root, from this file's place in Tests/PosternFiltersTests/.
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    private static func policyFiles(in relative: String) throws -> [String] {
        let directory = root.appendingPathComponent(relative)
        return try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".yaml") }
            .sorted()
            .map { directory.appendingPathComponent($0).path }
    }

    private func compile(_ relative: String) throws -> Policy {
        let path = Self.root.appendingPathComponent(relative).path
        do {
            return try BuiltinFilters.compiler.compile(path: path)
        } catch {
            XCTFail("\(relative) does not compile:\n\(error.errors.map(\.description).joined(separator: "\n"))")
            throw error
        }
    }

    /// A message with CRLF line ends, parsed as a session would for the data stage.
    private func withMessage(_ base: TransactionFacts, _ text: String) -> TransactionFacts {
        var result = base
        let bytes = Array(text.replacingOccurrences(of: "\n", with: "\r\n").utf8)
        result.message = MIMEMessage.parse(bytes)
        result.size = bytes.count
        return result
    }

    private func message(attachment name: String, type: String = "application/octet-stream", subject: String = "Documents",
                         mailer: String? = nil, body: String = "Please find the file attached.") -> String {
        """
        From: Someone <someone@sender.example>
        To: office@example.com
        Subject: \(subject)
        \(mailer.map { "X-Mailer: \($0)\n" } ?? "")MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="b1"

        --b1
        Content-Type: text/plain; charset=utf-8

        \(body)
        --b1
        Content-Type: \(type)
        Content-Disposition: attachment; filename="\(name)"
        Content-Transfer-Encoding: base64

        TVqQAAMAAAAEAAAA
        --b1--

        """
    }

    private func plain(subject: String, body: String, headers: String = "") -> String {
        "From: a@sender.example\nTo: b@example.com\nSubject: \(subject)\n\(headers)\n\(body)\n"
    }

    private func assertRejected(_ verdict: PolicyVerdict, by rule: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(verdict.rule, rule, file: file, line: line)
        guard case .decided(.reject, let reply) = verdict.outcome else {
            return XCTFail("expected a reject by \(rule), got \(verdict.outcome)", file: file, line: line)
        }
        XCTAssertEqual(reply.code / 100, 5, file: file, line: line)
    }

    // MARK: - Every shipped policy

    func testEveryShippedPolicyCompilesAndHasRules() throws {
        let files = try Self.policyFiles(in: "Policies") + Self.policyFiles(in: "Policies/examples")
        let names = Set(files.map { URL(fileURLWithPath: $0).lastPathComponent })
        XCTAssertTrue(names.isSuperset(of: ["default.yaml", "small-office.yaml", "partners-and-countries.yaml", "strict-content.yaml"]),
                      "found \(names.sorted())")
        for path in files {
            do {
                let policy = try BuiltinFilters.compiler.compile(path: path)
                XCTAssertFalse(policy.rules.isEmpty, "\(path) has no rules")
                XCTAssertEqual(Set(policy.rules.map(\.id)).count, policy.rules.count, "\(path): rule ids are unique")
            } catch {
                XCTFail("\(path) does not compile:\n\(error.errors.map(\.description).joined(separator: "\n"))")
            }
        }
    }

    // MARK: - postscreen.yaml

    func testPostscreenScoresTheListsLikePostscreen() async throws {
        let policy = try compile("Policies/examples/postscreen.yaml")
        XCTAssertEqual(policy.dnsLists.map(\.name), ["zen", "zen-pbl", "barracuda", "spamcop", "dnswl", "dbl"])
        XCTAssertEqual(policy.dnsLists.last?.lookup, .senderDomain)
        func listed(_ lists: [(String, UInt32)]) -> TransactionFacts {
            var facts = facts(client: "203.0.113.9")
            facts.dnsLists = lists.map { name, code in
                let list = policy.dnsLists.first { $0.name == name }!
                return list.lists(code) ? DNSListResult(list: name, outcome: .listed([code]), weight: list.weight)
                    : DNSListResult(list: name, outcome: .notListed, weight: 0)
            }
            return facts
        }
        assertRejected(await PolicyEngine.evaluate(policy, stage: .connect, facts: listed([("zen", 0x7F00_0002)])), by: "dnsbl-threshold")
        assertRejected(await PolicyEngine.evaluate(policy, stage: .connect, facts: listed([("barracuda", 0x7F00_0002), ("spamcop", 0x7F00_0002)])),
                       by: "dnsbl-threshold")
        let one = await PolicyEngine.evaluate(policy, stage: .connect, facts: listed([("barracuda", 0x7F00_0002)]))
        XCTAssertEqual(one.outcome, .pass, "2 is not over 2")
        let allowed = await PolicyEngine.evaluate(policy, stage: .connect, facts: listed([("zen", 0x7F00_0004), ("dnswl", 0x7F00_0A02)]))
        XCTAssertEqual(allowed.outcome, .pass, "the allow list outweighs ZEN")
        let noneLevel = await PolicyEngine.evaluate(policy, stage: .connect, facts: listed([("zen", 0x7F00_0004), ("dnswl", 0x7F00_0A00)]))
        XCTAssertEqual(noneLevel.rule, "dnsbl-threshold", "DNSWL trust level 0 is no allowance")
        // A dynamic address (PBL) is not scored at connect; it is refused at RCPT.
        var pbl = listed([("zen", 0x7F00_000A), ("zen-pbl", 0x7F00_000A)])
        let connect = await PolicyEngine.evaluate(policy, stage: .connect, facts: pbl)
        XCTAssertEqual(connect.outcome, .pass)
        pbl.sender = .mailbox(Mailbox(localPart: "a", domain: "dial.example"))
        pbl.recipient = .mailbox(Mailbox(localPart: "b", domain: "example.com"))
        assertRejected(await PolicyEngine.evaluate(policy, stage: .rcpt, facts: pbl), by: "dynamic-address")
        // A sender domain in the DBL is refused at MAIL; its weight 0 leaves the score alone.
        var dbl = listed([("dbl", 0x7F00_0102)])
        dbl.sender = .mailbox(Mailbox(localPart: "a", domain: "spam.example"))
        XCTAssertEqual(dbl.dnsListScore, 0)
        assertRejected(await PolicyEngine.evaluate(policy, stage: .mail, facts: dbl), by: "listed-sender-domain")
        XCTAssertFalse(policy.dnsLists.last!.lists(0x7F00_01FF), "127.0.1.255 is a refusal, not a listing")
        XCTAssertTrue(DNSList.isError(0x7F00_01FF))
    }

    // MARK: - small-office.yaml

    func testSmallOfficeAcceptsTheOfficeAtConnect() async throws {
        let policy = try compile("Policies/examples/small-office.yaml")
        let office = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts(client: "192.168.10.25"))
        XCTAssertEqual(office.outcome, .accept)
        XCTAssertEqual(office.rule, "office-network")
        let stranger = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts(client: "203.0.113.9"))
        XCTAssertEqual(stranger.outcome, .pass)
    }

    func testSmallOfficeEnvelopeRules() async throws {
        let policy = try compile("Policies/examples/small-office.yaml")
        // The list file: an exact address and a wildcard for subdomains.
        assertRejected(await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(sender: "Invoices@billing-notice.example")),
                       by: "blocked-senders")
        assertRejected(await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(sender: "x@news.bulk-mailer.example")),
                       by: "blocked-senders")
        let friend = await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(sender: "friend@partner.example"))
        XCTAssertEqual(friend.outcome, .pass)
        // HELO checks are shadow only.
        let helo = await PolicyEngine.evaluate(policy, stage: .helo, facts: facts(helo: "[203.0.113.9]"))
        XCTAssertEqual(helo.outcome, .pass)
        XCTAssertEqual(Set(helo.shadowHits.map(\.rule)), ["helo-ip-literal", "helo-not-fqdn"])
        // A bounce to an address that never sends is refused; one to a user is only shadowed;
        // one to postmaster passes untouched.
        assertRejected(await PolicyEngine.evaluate(policy, stage: .rcpt, facts: facts(sender: "<>", recipient: "noreply@example.com")),
                       by: "backscatter-to-no-send-address")
        let toUser = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: facts(sender: "<>", recipient: "alice@example.com"))
        XCTAssertEqual(toUser.outcome, .pass)
        XCTAssertEqual(toUser.shadowHits.map(\.rule), ["null-sender-only-to-postmaster"])
        for postmaster in ["postmaster", "postmaster@example.com"] {
            let verdict = await PolicyEngine.evaluate(policy, stage: .rcpt, facts: facts(sender: "<>", recipient: postmaster))
            XCTAssertEqual(verdict.outcome, .pass, postmaster)
            XCTAssertEqual(verdict.shadowHits, [], postmaster)
        }
    }

    func testSmallOfficeRejectsExecutablesAndShadowsPhishing() async throws {
        let policy = try compile("Policies/examples/small-office.yaml")
        XCTAssertTrue(policy.needsMessage)
        let base = facts(sender: "someone@sender.example", recipient: "office@example.com")
        assertRejected(await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, message(attachment: "Invoice.PDF.exe"))),
                       by: "executable-attachment-name")
        assertRejected(await PolicyEngine.evaluate(policy, stage: .data,
                                                   facts: withMessage(base, message(attachment: "setup.bin", type: "application/x-msdownload"))),
                       by: "executable-attachment-type")
        // A PDF passes, with the note header.
        let pdf = await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, message(attachment: "report.pdf", type: "application/pdf")))
        XCTAssertEqual(pdf.outcome, .pass)
        XCTAssertEqual(pdf.headerActions, [.addHeader(name: "X-Postern-Note", value: "external sender, handled by the small-office policy")])
        // Phishing is recorded, not enforced; the RFC 2047 subject is decoded before matching.
        let phish = await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, plain(
            subject: "=?UTF-8?B?VmVyaWZ5IHlvdXIgYWNjb3VudCBub3c=?=",
            body: "Your mailbox will be suspended today.")))
        XCTAssertEqual(phish.outcome, .pass)
        XCTAssertEqual(phish.shadowHits.map(\.rule), ["phishing-subject", "phishing-body"])
    }

    // MARK: - partners-and-countries.yaml

    func testPartnersAcceptedEarlyAndCountriesAndNetworksRefused() async throws {
        let policy = try compile("Policies/examples/partners-and-countries.yaml")
        XCTAssertNotNil(policy.geoip, "the fixture databases are found relative to the policy file")
        let partner = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts(client: "198.51.100.10"))
        XCTAssertEqual(partner.outcome, .accept)
        XCTAssertEqual(partner.rule, "partner-networks")
        // 192.0.2.0/24 is AS64496 in the fixture: the hostile network.
        let hostile = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts(client: "192.0.2.7"))
        XCTAssertEqual(hostile.rule, "hostile-network")
        guard case .decided(.reject, let reply) = hostile.outcome else { return XCTFail("\(hostile.outcome)") }
        XCTAssertEqual(reply.code, 554, "a refusal at connect replaces the greeting")
        // Germany (2001:db8:1::/48) is not blocked.
        let germany = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts(client: "2001:db8:1::5"))
        XCTAssertEqual(germany.outcome, .pass)
    }

    func testPartnerSenderNeedsTLSAndFarOriginIsMarked() async throws {
        let policy = try compile("Policies/examples/partners-and-countries.yaml")
        let overTLS = await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(tls: true, sender: "orders@eu.supplier.example"))
        XCTAssertEqual(overTLS.outcome, .accept)
        XCTAssertEqual(overTLS.rule, "partner-senders")
        let plaintext = await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(tls: false, sender: "orders@eu.supplier.example"))
        XCTAssertNotEqual(plaintext.rule, "partner-senders")
        // 2001:db8:2::/48 is Brazil (South America) in the fixture: marked, and watched in shadow.
        let far = await PolicyEngine.evaluate(policy, stage: .data, facts: facts(client: "2001:db8:2::9", sender: "a@b.example"))
        XCTAssertEqual(far.outcome, .pass)
        XCTAssertEqual(far.headerActions, [.addHeader(name: "X-Postern-Origin", value: "outside the usual regions")])
        XCTAssertEqual(far.shadowHits.map(\.rule), ["watch-rare-countries"])
        let near = await PolicyEngine.evaluate(policy, stage: .data, facts: facts(client: "198.51.100.200", sender: "a@b.example"))
        XCTAssertEqual(near.headerActions, [], "the US is in North America")
    }

    func testPartnerRateLimitsCountAtTheirStages() async throws {
        let policy = try compile("Policies/examples/partners-and-countries.yaml")
        // conn_per_ip: 60/1m with a burst of 20 lets 80 connections through at once, then tempfails.
        var last = PolicyVerdict()
        for _ in 0..<81 { last = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts(client: "203.0.113.77")) }
        XCTAssertEqual(last.rule, "throttle-connections")
        guard case .decided(.tempfail, let reply) = last.outcome else { return XCTFail("\(last.outcome)") }
        XCTAssertEqual(reply.code, 450)
    }

    // MARK: - strict-content.yaml

    func testStrictContentAttachmentsAndMailers() async throws {
        let policy = try compile("Policies/examples/strict-content.yaml")
        let base = facts(sender: "someone@sender.example", recipient: "office@example.com")
        assertRejected(await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, message(attachment: "update.scr"))),
                       by: "executable-name")
        let macro = await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, message(attachment: "Q3 figures.xlsm")))
        XCTAssertEqual(macro.rule, "macro-document")
        guard case .decided(.tempfail, let reply) = macro.outcome else { return XCTFail("\(macro.outcome)") }
        XCTAssertEqual(reply.code, 451)
        let mailer = await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, message(
            attachment: "notes.txt", type: "text/plain", mailer: "PHPMailer 5.2.9 (https://github.com/PHPMailer/PHPMailer)")))
        XCTAssertEqual(mailer.rule, "old-phpmailer")
        let current = await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, message(
            attachment: "notes.txt", type: "text/plain", mailer: "PHPMailer 6.9.1 (https://github.com/PHPMailer/PHPMailer)")))
        XCTAssertEqual(current.outcome, .pass)
        // An archive is only watched.
        let zip = await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, message(attachment: "photos.zip", type: "application/zip")))
        XCTAssertEqual(zip.outcome, .pass)
        XCTAssertEqual(zip.shadowHits.map(\.rule), ["archive-attachment"])
    }

    func testStrictContentRawAndTextRules() async throws {
        let policy = try compile("Policies/examples/strict-content.yaml")
        let base = facts(sender: "someone@sender.example", recipient: "office@example.com")
        let fragment = "From: a@sender.example\nSubject: part 1\nMIME-Version: 1.0\nContent-Type: message/partial; id=\"x@y\"; number=1; total=2\n\nabc\n"
        assertRejected(await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, fragment)), by: "fragmented-message")
        assertRejected(await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, plain(
            subject: "tools", body: "begin 644 tool.exe\nM35J0``,````$````__\\``+@`````\n`\nend"))), by: "uuencoded-executable")
        assertRejected(await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, plain(
            subject: "hello", body: "hi", headers: "X-Spam-Flag: YES\n"))), by: "upstream-says-spam")
        // The tag for payment diversion accumulates; nothing is refused.
        let bank = await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, plain(
            subject: "=?ISO-8859-1?Q?Updated_bank_details?=", body: "Please use the new account from today.")))
        XCTAssertEqual(bank.outcome, .pass)
        XCTAssertEqual(bank.headerActions, [.tagSubject("[CHECK BANK DETAILS]")])
        // An ordinary message passes with nothing to say.
        let ordinary = await PolicyEngine.evaluate(policy, stage: .data, facts: withMessage(base, plain(
            subject: "Lunch on Friday?", body: "Shall we try the new place near the station?")))
        XCTAssertEqual(ordinary.outcome, .pass)
        XCTAssertEqual(ordinary.headerActions, [])
        XCTAssertEqual(ordinary.shadowHits, [])
    }

    // MARK: - default.yaml

    func testDefaultPolicyTrustsNoNetworkShadowsHELOsAndNotesPlaintext() async throws {
        let policy = try compile("Policies/default.yaml")
        // Nothing is trusted until the operator lists it: a test mail from loopback goes
        // through every rule, and a bare HELO name is a shadow hit.
        let loopback = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts(client: "127.0.0.1"))
        XCTAssertEqual(loopback.outcome, .pass)
        let bareName = await PolicyEngine.evaluate(policy, stage: .helo, facts: facts(client: "127.0.0.1", helo: "vm"))
        XCTAssertEqual(bareName.outcome, .pass)
        XCTAssertEqual(bareName.shadowHits.map(\.rule), ["helo-not-fqdn"])
        let data = await PolicyEngine.evaluate(policy, stage: .data, facts: facts(tls: false, sender: "a@b.example"))
        XCTAssertEqual(data.headerActions, [.addHeader(name: "X-Postern-TLS", value: "none")])
    }
}
