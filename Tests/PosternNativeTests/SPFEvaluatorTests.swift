import Foundation
@testable import PosternNative
import XCTest

/// RFC 7208 against records served by a DNS server on a loopback port: the examples of
/// Appendix A (on example.test instead of example.com), the macro examples of §7.4, and the
/// limits and error results of §4 and §5.
final class SPFEvaluatorTests: XCTestCase {
    /// Appendix A.1's zone, moved under .test.
    private func zone(_ record: String?, extra: [String: TestDNSServer.Behaviour] = [:]) -> [String: TestDNSServer.Behaviour] {
        var table: [String: TestDNSServer.Behaviour] = [
            "example.test A": .records([.a([192, 0, 2, 10]), .a([192, 0, 2, 11])]),
            "example.test MX": .records([.mx(10, "mail-a.example.test"), .mx(20, "mail-b.example.test")]),
            "amy.example.test A": .records([.a([192, 0, 2, 65])]),
            "bob.example.test A": .records([.a([192, 0, 2, 66])]),
            "mail-a.example.test A": .records([.a([192, 0, 2, 129])]),
            "mail-b.example.test A": .records([.a([192, 0, 2, 130])]),
            "example.org.test MX": .records([.mx(10, "mail-c.example.org.test")]),
            "mail-c.example.org.test A": .records([.a([192, 0, 2, 140])]),
            "10.2.0.192.in-addr.arpa PTR": .records([.ptr("example.test")]),
            "11.2.0.192.in-addr.arpa PTR": .records([.ptr("example.test")]),
            "65.2.0.192.in-addr.arpa PTR": .records([.ptr("amy.example.test")]),
            "66.2.0.192.in-addr.arpa PTR": .records([.ptr("bob.example.test")]),
            "129.2.0.192.in-addr.arpa PTR": .records([.ptr("mail-a.example.test")]),
            "130.2.0.192.in-addr.arpa PTR": .records([.ptr("mail-b.example.test")]),
            "140.2.0.192.in-addr.arpa PTR": .records([.ptr("mail-c.example.org.test")]),
            "10.0.0.10.in-addr.arpa PTR": .records([.ptr("bob.example.test")]),
        ]
        if let record { table["example.test TXT"] = .records([.txt([record])]) }
        for (key, value) in extra { table[key] = value }
        return table
    }

    private func check(_ table: [String: TestDNSServer.Behaviour], ip: String, domain: String = "example.test",
                       sender: String = "user@example.test") async throws -> SPFEvaluator.Outcome {
        let server = try TestDNSServer(table)
        let resolver = try DNSResolver(DNSResolver.Configuration(servers: [server.server], timeout: .seconds(2), cacheSize: 0))
        defer { resolver.shutdown() }
        let address = SPFEvaluator.ipv4(ip) ?? {
            var v6 = in6_addr()
            _ = inet_pton(AF_INET6, ip, &v6)
            return withUnsafeBytes(of: &v6) { Array($0) }
        }()
        return await SPFEvaluator(resolver: resolver).check(address: address, domain: domain, sender: sender, helo: "mx.client.test")
    }

    /// Every listed host passes; every other of `hosts` fails.
    private func assertPasses(_ record: String, _ passing: Set<String>, file: StaticString = #filePath, line: UInt = #line) async throws {
        let hosts = ["192.0.2.10", "192.0.2.11", "192.0.2.65", "192.0.2.66", "192.0.2.129", "192.0.2.130", "192.0.2.131",
                     "192.0.2.140", "192.0.2.141", "192.0.2.200", "10.0.0.10"]
        let table = zone(record)
        for host in hosts {
            let outcome = try await check(table, ip: host)
            XCTAssertEqual(outcome.result, passing.contains(host) ? .pass : .fail, "\(record) for \(host): \(outcome.reason)",
                           file: file, line: line)
        }
    }

    // MARK: Appendix A.1

    func testAppendixAMechanisms() async throws {
        try await assertPasses("v=spf1 +all", Set(["192.0.2.10", "192.0.2.11", "192.0.2.65", "192.0.2.66", "192.0.2.129", "192.0.2.130",
                                                   "192.0.2.131", "192.0.2.140", "192.0.2.141", "192.0.2.200", "10.0.0.10"]))
        try await assertPasses("v=spf1 a -all", ["192.0.2.10", "192.0.2.11"])
        try await assertPasses("v=spf1 a:example.org.test -all", [])
        try await assertPasses("v=spf1 mx -all", ["192.0.2.129", "192.0.2.130"])
        try await assertPasses("v=spf1 mx:example.org.test -all", ["192.0.2.140"])
        try await assertPasses("v=spf1 mx mx:example.org.test -all", ["192.0.2.129", "192.0.2.130", "192.0.2.140"])
        try await assertPasses("v=spf1 mx/30 mx:example.org.test/30 -all", ["192.0.2.129", "192.0.2.130", "192.0.2.131", "192.0.2.140", "192.0.2.141"])
        // ptr: 10.0.0.10's PTR (bob) does not lead back to it.
        try await assertPasses("v=spf1 ptr -all", ["192.0.2.10", "192.0.2.11", "192.0.2.65", "192.0.2.66", "192.0.2.129", "192.0.2.130"])
        try await assertPasses("v=spf1 ip4:192.0.2.128/28 -all", ["192.0.2.129", "192.0.2.130", "192.0.2.131", "192.0.2.140", "192.0.2.141"])
    }

    func testQualifiersAndTheDefault() async throws {
        let table = zone("v=spf1 ip4:192.0.2.10 ~ip4:192.0.2.11 ?ip4:192.0.2.65 -ip4:192.0.2.66")
        for (ip, result) in [("192.0.2.10", SPFEvaluator.Result.pass), ("192.0.2.11", .softfail), ("192.0.2.65", .neutral),
                             ("192.0.2.66", .fail), ("192.0.2.200", .neutral)] {
            let outcome = try await check(table, ip: ip)
            XCTAssertEqual(outcome.result, result, "\(ip): \(outcome.reason)")
        }
    }

    func testIPv6MechanismsAndAMappedClient() async throws {
        let table = zone("v=spf1 ip6:2001:db8::/32 a//64 -all", extra: ["example.test AAAA": .records([.aaaa([0x20, 0x01, 0x0d, 0xb9] + Array(repeating: 0, count: 12))])])
        let inside = try await check(table, ip: "2001:db8::25")
        XCTAssertEqual(inside.result, .pass, inside.reason)
        let aaaa = try await check(table, ip: "2001:db9::1:2")
        XCTAssertEqual(aaaa.result, .pass, aaaa.reason)
        let outside = try await check(table, ip: "2001:dba::1")
        XCTAssertEqual(outside.result, .fail, outside.reason)
        // An IPv4-mapped client is the IPv4 address (ip4 mechanisms apply).
        let mapped = try await check(zone("v=spf1 ip4:192.0.2.10 -all"), ip: "::ffff:192.0.2.10")
        XCTAssertEqual(mapped.result, .pass, mapped.reason)
    }

    // MARK: include, redirect, exp

    func testIncludeAndRedirect() async throws {
        let extra: [String: TestDNSServer.Behaviour] = [
            "partner.test TXT": .records([.txt(["v=spf1 ip4:198.51.100.0/24 -all"])]),
            "soft.test TXT": .records([.txt(["v=spf1 ~all"])]),
            "nospf.test TXT": .records([.txt(["google-site-verification=abc"])]),
        ]
        let include = zone("v=spf1 include:partner.test -all", extra: extra)
        let included = try await check(include, ip: "198.51.100.7")
        XCTAssertEqual(included.result, .pass, included.reason)
        let notIncluded = try await check(include, ip: "203.0.113.7")
        XCTAssertEqual(notIncluded.result, .fail, "an include's fail is no match; -all decides: \(notIncluded.reason)")
        let softInclude = try await check(zone("v=spf1 include:soft.test ?all", extra: extra), ip: "203.0.113.7")
        XCTAssertEqual(softInclude.result, .neutral, softInclude.reason)
        let noRecord = try await check(zone("v=spf1 include:nospf.test -all", extra: extra), ip: "203.0.113.7")
        XCTAssertEqual(noRecord.result, .permerror, "include of a domain without SPF: \(noRecord.reason)")
        let redirect = try await check(zone("v=spf1 redirect=partner.test", extra: extra), ip: "198.51.100.9")
        XCTAssertEqual(redirect.result, .pass, redirect.reason)
        XCTAssertEqual(redirect.domain, "partner.test")
        let redirectFail = try await check(zone("v=spf1 redirect=partner.test", extra: extra), ip: "203.0.113.7")
        XCTAssertEqual(redirectFail.result, .fail, redirectFail.reason)
        let mechanismFirst = try await check(zone("v=spf1 ip4:203.0.113.7 redirect=partner.test", extra: extra), ip: "203.0.113.7")
        XCTAssertEqual(mechanismFirst.result, .pass, "redirect only when nothing matched: \(mechanismFirst.reason)")
        let redirectNone = try await check(zone("v=spf1 redirect=nospf.test", extra: extra), ip: "203.0.113.7")
        XCTAssertEqual(redirectNone.result, .permerror, redirectNone.reason)
    }

    func testExplanationIsExpanded() async throws {
        let table = zone("v=spf1 -all exp=explain._spf.%{d}", extra: [
            "explain._spf.example.test TXT": .records([.txt(["%{i} is not one of %{d}'s designated mail servers."])]),
        ])
        let outcome = try await check(table, ip: "192.0.2.200")
        XCTAssertEqual(outcome.result, .fail)
        XCTAssertEqual(outcome.explanation, "192.0.2.200 is not one of example.test's designated mail servers.")
    }

    func testExistsWithMacros() async throws {
        let table = zone("v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all", extra: ["200.2.0.192.user._spf.example.test A": .records([.a([127, 0, 0, 2])])])
        let listed = try await check(table, ip: "192.0.2.200")
        XCTAssertEqual(listed.result, .pass, listed.reason)
        let other = try await check(table, ip: "192.0.2.201")
        XCTAssertEqual(other.result, .fail, other.reason)
    }

    // MARK: §7.4 macro examples

    func testMacroExamples() throws {
        let context = SPFEvaluator.Context(address: [192, 0, 2, 3], sender: "strong-bad@email.example.com", helo: "mx.example.org")
        func expand(_ spec: String, _ ctx: SPFEvaluator.Context = context) throws -> String {
            try SPFEvaluator.expand(spec, domain: "email.example.com", context: ctx, explanation: false, validated: "unknown")
        }
        XCTAssertEqual(try expand("%{s}"), "strong-bad@email.example.com")
        XCTAssertEqual(try expand("%{o}"), "email.example.com")
        XCTAssertEqual(try expand("%{d}"), "email.example.com")
        XCTAssertEqual(try expand("%{d4}"), "email.example.com")
        XCTAssertEqual(try expand("%{d3}"), "email.example.com")
        XCTAssertEqual(try expand("%{d2}"), "example.com")
        XCTAssertEqual(try expand("%{d1}"), "com")
        XCTAssertEqual(try expand("%{dr}"), "com.example.email")
        XCTAssertEqual(try expand("%{d2r}"), "example.email")
        XCTAssertEqual(try expand("%{l}"), "strong-bad")
        XCTAssertEqual(try expand("%{l-}"), "strong.bad")
        XCTAssertEqual(try expand("%{lr}"), "strong-bad")
        XCTAssertEqual(try expand("%{lr-}"), "bad.strong")
        XCTAssertEqual(try expand("%{l1r-}"), "strong")
        XCTAssertEqual(try expand("%{ir}.%{v}._spf.%{d2}"), "3.2.0.192.in-addr._spf.example.com")
        XCTAssertEqual(try expand("%{lr-}.lp._spf.%{d2}"), "bad.strong.lp._spf.example.com")
        XCTAssertEqual(try expand("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}"), "bad.strong.lp.3.2.0.192.in-addr._spf.example.com")
        XCTAssertEqual(try expand("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}"), "3.2.0.192.in-addr.strong.lp._spf.example.com")
        XCTAssertEqual(try expand("%{d2}.trusted-domains.example.net"), "example.com.trusted-domains.example.net")
        var v6 = in6_addr()
        _ = inet_pton(AF_INET6, "2001:db8::cb01", &v6)
        let ipv6 = SPFEvaluator.Context(address: withUnsafeBytes(of: &v6) { Array($0) }, sender: "strong-bad@email.example.com", helo: "h")
        XCTAssertEqual(try expand("%{ir}.%{v}._spf.%{d2}", ipv6),
                       "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
        XCTAssertEqual(try expand("%% %_ %-"), "%   %20")
        XCTAssertEqual(try expand("%{L}"), "strong-bad")
        XCTAssertEqual(try expand("%{S}"), "strong-bad%40email.example.com")
        XCTAssertThrowsError(try expand("%{x}"))
        XCTAssertThrowsError(try expand("%{d0}"))
        XCTAssertThrowsError(try expand("%q"))
        XCTAssertThrowsError(try expand("%{c}"), "c only in explanations")
    }

    // MARK: Limits and errors (§4.4, §4.5, §4.6.4)

    func testRecordSelectionAndSyntax() async throws {
        let none = try await check(zone(nil), ip: "192.0.2.10")
        XCTAssertEqual(none.result, .none)
        let notSPF = try await check(zone("v=spf10 -all"), ip: "192.0.2.10")
        XCTAssertEqual(notSPF.result, .none)
        let two = try await check(zone(nil, extra: ["example.test TXT": .records([.txt(["v=spf1 -all"]), .txt(["v=spf1 +all"])])]), ip: "192.0.2.10")
        XCTAssertEqual(two.result, .permerror)
        for bad in ["v=spf1 ip4:192.0.2.300 -all", "v=spf1 a:example.test/33", "v=spf1 foo:bar", "v=spf1 redirect=a.test redirect=b.test",
                    "v=spf1 include:", "v=spf1 exists:%{q}.example.test", "v=spf1 ip6:zz::1"] {
            let outcome = try await check(zone(bad), ip: "192.0.2.10")
            XCTAssertEqual(outcome.result, .permerror, "\(bad): \(outcome.reason)")
        }
        let unknownModifier = try await check(zone("v=spf1 moo=cow ip4:192.0.2.10 -all"), ip: "192.0.2.10")
        XCTAssertEqual(unknownModifier.result, .pass, "unknown modifiers are ignored")
        let invalidDomain = try await check(zone("v=spf1 -all"), ip: "192.0.2.10", domain: "localhost")
        XCTAssertEqual(invalidDomain.result, .none)
    }

    func testTemporaryErrors() async throws {
        let servfail = try await check(zone(nil, extra: ["example.test TXT": .rcode(2)]), ip: "192.0.2.10")
        XCTAssertEqual(servfail.result, .temperror, servfail.reason)
        let aFails = try await check(zone("v=spf1 a:broken.test -all", extra: ["broken.test A": .rcode(2)]), ip: "192.0.2.10")
        XCTAssertEqual(aFails.result, .temperror, aFails.reason)
    }

    func testTheTenLookupAndTwoVoidLimits() async throws {
        var extra: [String: TestDNSServer.Behaviour] = [:]
        for i in 0..<11 {
            extra["l\(i).test TXT"] = .records([.txt([i == 10 ? "v=spf1 ip4:198.51.100.1 -all" : "v=spf1 include:l\(i + 1).test -all"])])
        }
        let tooDeep = try await check(zone("v=spf1 include:l0.test -all", extra: extra), ip: "198.51.100.1")
        XCTAssertEqual(tooDeep.result, .permerror, "11 includes are more than 10 lookups: \(tooDeep.reason)")
        var nine: [String: TestDNSServer.Behaviour] = [:]
        for i in 0..<9 {
            nine["n\(i).test TXT"] = .records([.txt([i == 8 ? "v=spf1 ip4:198.51.100.1 -all" : "v=spf1 include:n\(i + 1).test -all"])])
        }
        let deepEnough = try await check(zone("v=spf1 include:n0.test -all", extra: nine), ip: "198.51.100.1")
        XCTAssertEqual(deepEnough.result, .pass, "9 includes are within the limit: \(deepEnough.reason)")
        let voids = try await check(zone("v=spf1 a:v1.test a:v2.test a:v3.test +all"), ip: "192.0.2.10")
        XCTAssertEqual(voids.result, .permerror, "three void lookups: \(voids.reason)")
        let twoVoids = try await check(zone("v=spf1 a:v1.test a:v2.test +all"), ip: "192.0.2.10")
        XCTAssertEqual(twoVoids.result, .pass, twoVoids.reason)
    }
}
