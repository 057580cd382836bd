import XCTest
@testable import PosternPolicy

final class RateLimitKeyTests: XCTestCase {
    func testClientNetworkIPv4() {
        XCTAssertEqual(RateLimitKey.clientNetwork("192.0.2.77"), "192.0.2.0/24")
        XCTAssertEqual(RateLimitKey.clientNetwork(bytes: [192, 0, 2, 77]), "192.0.2.0/24")
        XCTAssertEqual(RateLimitKey.clientNetwork("192.0.2.77", ipv4Prefix: 16), "192.0.0.0/16")
        XCTAssertEqual(RateLimitKey.clientNetwork("192.0.2.77", ipv4Prefix: 20), "192.0.0.0/20")
        XCTAssertEqual(RateLimitKey.clientNetwork("203.0.113.255", ipv4Prefix: 25), "203.0.113.128/25")
        XCTAssertEqual(RateLimitKey.clientNetwork("192.0.2.77", ipv4Prefix: 32), "192.0.2.77/32")
        XCTAssertEqual(RateLimitKey.clientNetwork("192.0.2.77", ipv4Prefix: 0), "0.0.0.0/0")
        XCTAssertEqual(RateLimitKey.clientNetwork("192.0.2.77", ipv4Prefix: 99), "192.0.2.77/32") // clamped
        // An IPv4-mapped IPv6 client is grouped as IPv4.
        XCTAssertEqual(RateLimitKey.clientNetwork("::ffff:192.0.2.77"), "192.0.2.0/24")
        XCTAssertNil(RateLimitKey.clientNetwork("192.0.2"))
        XCTAssertNil(RateLimitKey.clientNetwork("not an address"))
        XCTAssertNil(RateLimitKey.clientNetwork(bytes: [1, 2, 3]))
    }

    func testClientNetworkIPv6() {
        XCTAssertEqual(RateLimitKey.clientNetwork("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        XCTAssertEqual(RateLimitKey.clientNetwork("2001:DB8:1:2::ABCD"), "2001:db8:1:2::/64")
        XCTAssertEqual(RateLimitKey.clientNetwork("2001:db8:1:2:3:4:5:6", ipv6Prefix: 48), "2001:db8:1::/48")
        XCTAssertEqual(RateLimitKey.clientNetwork("2001:db8:1:2:3:4:5:6", ipv6Prefix: 56), "2001:db8:1::/56")
        XCTAssertEqual(RateLimitKey.clientNetwork("2001:db8:1:2ff:3:4:5:6", ipv6Prefix: 56), "2001:db8:1:200::/56")
        XCTAssertEqual(RateLimitKey.clientNetwork("2001:db8::1", ipv6Prefix: 128), "2001:db8::1/128")
        XCTAssertEqual(RateLimitKey.clientNetwork("2001:db8:0:0:1:0:0:1", ipv6Prefix: 128), "2001:db8::1:0:0:1/128")
        XCTAssertEqual(RateLimitKey.clientNetwork("::1", ipv6Prefix: 0), "::/0")
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes[0] = 0x20; bytes[1] = 0x01; bytes[2] = 0x0d; bytes[3] = 0xb8; bytes[15] = 9
        XCTAssertEqual(RateLimitKey.clientNetwork(bytes: bytes), "2001:db8::/64")
        XCTAssertEqual(RateLimitKey.clientAddress(bytes: bytes), "2001:db8::9")
    }

    func testClientAddressCanonical() {
        XCTAssertEqual(RateLimitKey.clientAddress("192.0.2.1"), "192.0.2.1")
        XCTAssertEqual(RateLimitKey.clientAddress("::ffff:192.0.2.1"), "192.0.2.1")
        XCTAssertEqual(RateLimitKey.clientAddress("2001:0DB8:0000:0000:0000:0000:0000:0001"), "2001:db8::1")
        XCTAssertEqual(RateLimitKey.clientAddress("1:0:0:2:0:0:0:3"), "1:0:0:2::3")
        XCTAssertEqual(RateLimitKey.clientAddress("1:0:2:3:4:5:6:7"), "1:0:2:3:4:5:6:7")
        XCTAssertEqual(RateLimitKey.clientAddress("::"), "::")
        XCTAssertNil(RateLimitKey.clientAddress("example.com"))
        XCTAssertEqual(RateLimitKey.addressBytes("192.0.2.1"), [192, 0, 2, 1])
        XCTAssertEqual(RateLimitKey.addressBytes("::1")?.count, 16)
        XCTAssertNil(RateLimitKey.addressBytes("192.0.2.1/24"))
    }

    func testDomainsAndAddresses() {
        XCTAssertEqual(RateLimitKey.domain("Alice@Example.COM"), "example.com")
        XCTAssertEqual(RateLimitKey.domain("<bob@Example.org.>"), "example.org")
        XCTAssertEqual(RateLimitKey.domain("\"a@b\"@Mail.Example.net"), "mail.example.net")
        XCTAssertEqual(RateLimitKey.domain("user@[192.0.2.1]"), "[192.0.2.1]")
        XCTAssertEqual(RateLimitKey.domain(""), "<>")
        XCTAssertEqual(RateLimitKey.domain("<>"), "<>")
        XCTAssertNil(RateLimitKey.domain("postmaster"))
        XCTAssertNil(RateLimitKey.domain("user@"))
        XCTAssertEqual(RateLimitKey.address("<Alice@Example.COM>"), "alice@example.com")
        XCTAssertEqual(RateLimitKey.address("<>"), "<>")
        XCTAssertEqual(RateLimitKey.address(""), "<>")
    }

    func testEscapingIsInjective() {
        XCTAssertEqual(RateLimitKey.escape("a|b%c"), "a%7Cb%25c")
        XCTAssertEqual(RateLimitKey.unescape("a%7Cb%25c"), "a|b%c")
        XCTAssertEqual(RateLimitKey.unescape(RateLimitKey.escape("%7C|%25")), "%7C|%25")
        let one = RateLimitKey.compose(limit: "L", parts: ["a|b", "c"])
        let two = RateLimitKey.compose(limit: "L", parts: ["a", "b|c"])
        let three = RateLimitKey.compose(limit: "L|a", parts: ["b", "c"])
        XCTAssertEqual(Set([one, two, three]).count, 3)
        XCTAssertEqual(one, "L|a%7Cb|c")
        // Round trip: split on the separator, unescape each piece.
        let tricky = ["x%7Cy", "|", "%", "", "ünï|cødé"]
        let key = RateLimitKey.compose(limit: "per|ip", parts: tricky)
        let pieces = key.split(separator: RateLimitKey.separator, omittingEmptySubsequences: false).map(RateLimitKey.unescape)
        XCTAssertEqual(pieces, ["per|ip"] + tricky)
    }

    func testFieldsParsing() {
        XCTAssertEqual(RateLimitKeyFields(parsing: "client_ip")?.fields, [.clientIP])
        XCTAssertEqual(RateLimitKeyFields(parsing: "client_ip+sender_domain")?.fields, [.clientIP, .senderDomain])
        XCTAssertEqual(RateLimitKeyFields(parsing: "auth_user, recipient_domain")?.fields, [.authUser, .recipientDomain])
        XCTAssertEqual(RateLimitKeyFields(parsing: "client_net+sender+country")?.description, "client_net+sender+country")
        XCTAssertNil(RateLimitKeyFields(parsing: ""))
        XCTAssertNil(RateLimitKeyFields(parsing: "client_ip+client_ip"))
        XCTAssertNil(RateLimitKeyFields(parsing: "client_ip+helo"))
        XCTAssertEqual(Set(RateLimitKeyField.allCases.map(\.rawValue)),
                       ["client_ip", "client_net", "sender", "sender_domain", "recipient", "recipient_domain", "auth_user", "country"])
        XCTAssertEqual(RateLimitCounter.allCases.map(\.rawValue), ["connections", "messages", "recipients", "bytes"])
    }

    func testMakeKeys() {
        let subject = RateLimitSubject(clientAddress: [198, 51, 100, 7], sender: "<Alice@Example.COM>",
                                       recipient: "Bob@Example.ORG", authUser: "alice", country: "de")
        func key(_ fields: String, prefixes: RateLimitNetworkPrefixes = .init(), _ s: RateLimitSubject? = nil) -> String? {
            RateLimitKey.make(limit: "per_x", fields: RateLimitKeyFields(parsing: fields)!, subject: s ?? subject, prefixes: prefixes)
        }
        XCTAssertEqual(key("client_ip"), "per_x|198.51.100.7")
        XCTAssertEqual(key("client_net"), "per_x|198.51.100.0/24")
        XCTAssertEqual(key("client_net", prefixes: .init(ipv4: 28)), "per_x|198.51.100.0/28")
        XCTAssertEqual(key("sender"), "per_x|alice@example.com")
        XCTAssertEqual(key("sender_domain"), "per_x|example.com")
        XCTAssertEqual(key("recipient"), "per_x|bob@example.org")
        XCTAssertEqual(key("recipient_domain"), "per_x|example.org")
        XCTAssertEqual(key("auth_user"), "per_x|alice")
        XCTAssertEqual(key("country"), "per_x|DE")
        XCTAssertEqual(key("client_ip+sender_domain"), "per_x|198.51.100.7|example.com")
        XCTAssertEqual(key("sender_domain+client_ip"), "per_x|example.com|198.51.100.7")
        // Not applicable when a part is unknown.
        let early = RateLimitSubject(clientAddress: [198, 51, 100, 7])
        XCTAssertNil(key("recipient", early))
        XCTAssertNil(key("client_ip+auth_user", early))
        XCTAssertNil(key("country", early))
        XCTAssertNil(key("auth_user", RateLimitSubject(authUser: "")))
        XCTAssertNil(key("client_ip", RateLimitSubject(clientAddress: [1, 2])))
        // The null sender is one pseudo-sender.
        XCTAssertEqual(key("sender+sender_domain", RateLimitSubject(sender: "")), "per_x|<>|<>")
        // A separator inside a part cannot forge another key.
        let forged = key("auth_user+country", RateLimitSubject(authUser: "a|DE", country: "FR"))
        XCTAssertNotEqual(forged, key("auth_user+country", RateLimitSubject(authUser: "a", country: "DE|FR")))
        // Different limits never share a key.
        let fields = RateLimitKeyFields(parsing: "client_ip")!
        XCTAssertNotEqual(RateLimitKey.make(limit: "a", fields: fields, subject: subject),
                          RateLimitKey.make(limit: "b", fields: fields, subject: subject))
    }

    func testKeysDriveTheStore() throws {
        let clock = ManualRateLimitClock()
        let store = InMemoryRateLimitStore(clock: clock)
        let limit = RateLimitSpec(parsing: "2/1m")!
        let fields = RateLimitKeyFields(parsing: "client_net")!
        func consume(_ ip: String) throws -> Bool {
            let bytes: [UInt8] = ip.split(separator: ".").map { UInt8($0)! }
            let key = RateLimitKey.make(limit: "per_net", fields: fields, subject: RateLimitSubject(clientAddress: bytes))!
            return try store.consume(key: key, spec: limit, at: clock.now()).allowed
        }
        XCTAssertTrue(try consume("192.0.2.1"))
        XCTAssertTrue(try consume("192.0.2.200"))
        XCTAssertFalse(try consume("192.0.2.99")) // same /24
        XCTAssertTrue(try consume("192.0.3.1"))   // another /24
    }
}
