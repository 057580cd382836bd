import PosternPolicy
import SMTPCore
import XCTest



final class RelayControlTests: XCTestCase {
    private func path(_ local: String, _ domain: String) -> ForwardPath { .mailbox(Mailbox(localPart: local, domain: domain)) }

    func testPunycodeMatchesRFC3492() {
        XCTAssertEqual(Punycode.encode("bücher"), "bcher-kva")
        XCTAssertEqual(Punycode.encode("münchen"), "mnchen-3ya")
        XCTAssertEqual(Punycode.encode("ü"), "tda")
        // RFC 3492 §7.1 (B) Chinese (simplified).
        XCTAssertEqual(Punycode.encode("\u{4ED6}\u{4EEC}\u{4E3A}\u{4EC0}\u{4E48}\u{4E0D}\u{8BF4}\u{4E2D}\u{6587}"), "ihqwcrb4cv8a8dqg056pqjye")
        // (L) 3<nen>B<gumi><kinpachi><sensei>
        XCTAssertEqual(Punycode.encode("3\u{5E74}B\u{7D44}\u{91D1}\u{516B}\u{5148}\u{751F}"), "3B-ww4c5e180e575a65lsy2b")
    }

    func testExactParentLiteralAndCase() {
        let domains = RelayDomains(["Example.org", ".sub.example.net", "[192.0.2.1]"])
        XCTAssertTrue(domains.contains("example.org"))
        XCTAssertTrue(domains.contains("EXAMPLE.ORG"))
        XCTAssertFalse(domains.contains("mail.example.org"), "an exact entry does not cover subdomains")
        XCTAssertTrue(domains.contains("a.sub.example.net"))
        XCTAssertTrue(domains.contains("x.y.SUB.example.net"))
        XCTAssertFalse(domains.contains("sub.example.net"), "a parent entry does not cover itself")
        XCTAssertFalse(domains.contains("evilsub.example.net"))
        XCTAssertTrue(domains.contains("[192.0.2.1]"))
        XCTAssertFalse(domains.contains("[192.0.2.2]"))
        XCTAssertFalse(domains.contains("example.org."), "a trailing dot is not the same name")
        XCTAssertFalse(domains.contains(""))
    }

    func testInternationalisedNamesMatchInEitherForm() {
        let unicode = RelayDomains(["bücher.example"])
        XCTAssertTrue(unicode.contains("xn--bcher-kva.example"))
        XCTAssertTrue(unicode.contains("BÜCHER.example"))
        let ascii = RelayDomains(["xn--bcher-kva.example"])
        XCTAssertTrue(ascii.contains("bücher.example"))
        XCTAssertFalse(ascii.contains("bucher.example"))
    }

    func testEntryValidation() {
        for good in ["example.org", ".example.org", "bücher.example", "[192.0.2.1]", "[IPv6:2001:db8::1]"] {
            XCTAssertTrue(RelayDomains.isValidEntry(good), good)
        }
        for bad in ["", ".", "example..org", "a b.example", "user@example.org", "[", "[]", String(repeating: "a", count: 64) + ".example"] {
            XCTAssertFalse(RelayDomains.isValidEntry(bad), bad)
        }
    }

    func testUntrustedClientsRelayOnlyToRelayDomainsWithPlainLocalParts() {
        let control = RelayControl(relayDomains: ["local.example"], trustedNetworks: [IPNetwork("10.0.0.0/8")!])
        XCTAssertNil(control.refusal(for: path("user", "local.example"), trusted: false, authenticated: false))
        XCTAssertNil(control.refusal(for: .postmaster, trusted: false, authenticated: false))
        for (local, domain) in [
            ("user", "remote.example"), ("user", "LOCAL.example.evil"), ("user", "[192.0.2.1]"),
            ("user%remote.example", "local.example"), ("remote.example!user", "local.example"),
            ("\"user@remote.example\"", "local.example"),
        ] {
            let refusal = control.refusal(for: path(local, domain), trusted: false, authenticated: false)
            XCTAssertNotNil(refusal, "\(local)@\(domain) must be refused")
            XCTAssertTrue(refusal?.hasPrefix("relay access denied") ?? false)
            XCTAssertNil(control.refusal(for: path(local, domain), trusted: true, authenticated: false), "trusted: anywhere")
            XCTAssertNil(control.refusal(for: path(local, domain), trusted: false, authenticated: true), "authenticated: anywhere")
        }
        XCTAssertTrue(control.isTrusted(IPAddress("10.1.2.3")!))
        XCTAssertFalse(control.isTrusted(IPAddress("192.0.2.1")!))
        let reply = RelayControl.reply(for: path("user", "remote.example"))
        XCTAssertEqual(reply.code, 554)
        XCTAssertEqual(reply.enhanced, EnhancedStatusCode(5, 7, 1))
        XCTAssertEqual(reply.text, "<user@remote.example>: Relay access denied")
    }
}
