import XCTest

@testable import SMTPCore

final class IPAddressTests: XCTestCase {
    func testIPv4Parsing() {
        let table: [(String, UInt32)] = [
            ("0.0.0.0", 0), ("127.0.0.1", 0x7F00_0001), ("192.0.2.1", 0xC000_0201), ("255.255.255.255", 0xFFFF_FFFF),
            ("10.1.2.3", 0x0A01_0203),
        ]
        for (text, value) in table {
            XCTAssertEqual(IPAddress(text), .v4(value), text)
            XCTAssertEqual(IPAddress(text)?.description, text)
            XCTAssertEqual(IPAddress(text)?.isIPv6, false)
        }
    }

    func testIPv6Parsing() {
        let table: [(String, UInt128, String)] = [
            ("::", 0, "::"),
            ("::1", 1, "::1"),
            ("2001:db8::1", (UInt128(0x2001_0db8) << 96) | 1, "2001:db8::1"),
            ("2001:0DB8:0000:0000:0000:0000:0000:0001", (UInt128(0x2001_0db8) << 96) | 1, "2001:db8::1"),
            ("fe80::1:2", (UInt128(0xfe80) << 112) | 0x0001_0002, "fe80::1:2"),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", UInt128.max, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("::ffff:192.0.2.1", (UInt128(0xffff) << 32) | 0xC000_0201, "::ffff:192.0.2.1"),
        ]
        for (text, value, description) in table {
            XCTAssertEqual(IPAddress(text), .v6(value), text)
            XCTAssertEqual(IPAddress(text)?.description, description, text)
            XCTAssertEqual(IPAddress(text)?.isIPv6, true)
        }
    }

    func testDescriptionRoundTrips() {
        for text in ["192.0.2.1", "0.0.0.0", "2001:db8::1", "::", "::1", "2001:db8:0:1:1:1:1:1", "::ffff:10.0.0.1", "fe80::"] {
            let address = IPAddress(text)
            XCTAssertNotNil(address, text)
            XCTAssertEqual(address.flatMap { IPAddress($0.description) }, address, text)
        }
    }

    func testInvalidAddresses() {
        for text in ["", " ", "1", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1.2.3.-1", "a.b.c.d", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4/32",
                     "::g", ":::", "1::2::3", "2001:db8::1::", "12345::", "[::1]", "::1%eth0", "2001:db8:0:0:0:0:0:0:1",
                     "localhost", "0x7f.0.0.1"] {
            XCTAssertNil(IPAddress(text), text.debugDescription)
        }
    }

    func testFromBytes() {
        XCTAssertEqual(IPAddress(bytes: [192, 0, 2, 1]), IPAddress("192.0.2.1"))
        var v6: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1]
        XCTAssertEqual(IPAddress(bytes: v6), IPAddress("2001:db8::1"))
        v6[15] = 2
        XCTAssertEqual(IPAddress(bytes: v6[...]), IPAddress("2001:db8::2"))
        XCTAssertNil(IPAddress(bytes: []))
        XCTAssertNil(IPAddress(bytes: [1, 2, 3]))
        XCTAssertNil(IPAddress(bytes: [UInt8](repeating: 0, count: 5)))
        XCTAssertNil(IPAddress(bytes: [UInt8](repeating: 0, count: 15)))
    }

    func testUnmapped() {
        XCTAssertEqual(IPAddress("::ffff:192.0.2.1")?.unmapped, IPAddress("192.0.2.1"))
        XCTAssertEqual(IPAddress("192.0.2.1")?.unmapped, IPAddress("192.0.2.1"))
        XCTAssertEqual(IPAddress("2001:db8::1")?.unmapped, IPAddress("2001:db8::1"))
        // IPv4-compatible (deprecated) and NAT64 forms are not IPv4-mapped.
        XCTAssertEqual(IPAddress("::192.0.2.1")?.unmapped.isIPv6, true)
        XCTAssertEqual(IPAddress("64:ff9b::192.0.2.1")?.unmapped.isIPv6, true)
        XCTAssertEqual(IPAddress("::fffe:192.0.2.1")?.unmapped.isIPv6, true)
    }

    // MARK: IPNetwork

    func testNetworkParsing() {
        let table: [(String, String)] = [
            ("192.0.2.0/24", "192.0.2.0/24"),
            ("192.0.2.77/24", "192.0.2.0/24"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.0.2.1", "192.0.2.1/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("1.2.3.4/0", "0.0.0.0/0"),
            ("192.0.2.255/31", "192.0.2.254/31"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:db8:1234::1/48", "2001:db8:1234::/48"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("::/0", "::/0"),
            ("2001:db8::ff/127", "2001:db8::fe/127"),
        ]
        for (text, description) in table {
            XCTAssertEqual(IPNetwork(text)?.description, description, text)
        }
        XCTAssertEqual(IPNetwork("192.0.2.1")?.prefixLength, 32)
        XCTAssertEqual(IPNetwork("::1")?.prefixLength, 128)
    }

    func testInvalidNetworks() {
        for text in ["", "/24", "192.0.2.0/", "192.0.2.0/33", "2001:db8::/129", "192.0.2.0/-1", "192.0.2.0/+8", "192.0.2.0/a",
                     "192.0.2.0/24/8", "192.0.2/24", "example.com/24", "192.0.2.0/ 24", "192.0.2.0/99999999999999999999999"] {
            XCTAssertNil(IPNetwork(text), text.debugDescription)
        }
    }

    func testContains() {
        let table: [(String, String, Bool)] = [
            ("192.0.2.0/24", "192.0.2.0", true),
            ("192.0.2.0/24", "192.0.2.255", true),
            ("192.0.2.0/24", "192.0.3.0", false),
            ("192.0.2.0/24", "192.0.1.255", false),
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("192.0.2.1/32", "192.0.2.1", true),
            ("192.0.2.1/32", "192.0.2.2", false),
            ("0.0.0.0/0", "255.255.255.255", true),
            ("0.0.0.0/0", "0.0.0.0", true),
            ("128.0.0.0/1", "127.255.255.255", false),
            ("128.0.0.0/1", "128.0.0.0", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8::1/128", "2001:db8::1", true),
            ("2001:db8::1/128", "2001:db8::2", false),
            ("::/0", "2001:db8::1", true),
            ("::/0", "::", true),
            ("8000::/1", "7fff::", false),
            // Families do not mix...
            ("0.0.0.0/0", "2001:db8::1", false),
            ("::/0", "192.0.2.1", false),
            ("192.0.2.0/24", "::192.0.2.1", false),
            // ...except that IPv4-mapped IPv6 addresses match IPv4 blocks.
            ("192.0.2.0/24", "::ffff:192.0.2.77", true),
            ("192.0.2.0/24", "::ffff:192.0.3.77", false),
            ("0.0.0.0/0", "::ffff:1.2.3.4", true),
            ("192.0.2.1/32", "::ffff:192.0.2.1", true),
        ]
        for (network, address, expected) in table {
            guard let block = IPNetwork(network), let candidate = IPAddress(address) else {
                XCTFail("fixture \(network) \(address) does not parse")
                continue
            }
            XCTAssertEqual(block.contains(candidate), expected, "\(network) contains \(address)")
        }
    }

    func testEveryPrefixLength() {
        // Stress the masks at every length: the block contains its first and last address, not the ones beside it.
        let v4: UInt32 = 0xC000_0280  // 192.0.2.128
        for length in 1...32 {
            let block = IPNetwork(address: .v4(v4), prefixLength: length)
            let mask = UInt32.max << (32 - length)
            let first = v4 & mask
            let last = first | ~mask
            XCTAssertTrue(block.contains(.v4(first)), "/\(length)")
            XCTAssertTrue(block.contains(.v4(last)), "/\(length)")
            if first > 0 { XCTAssertFalse(block.contains(.v4(first - 1)), "/\(length)") }
            if last < UInt32.max { XCTAssertFalse(block.contains(.v4(last + 1)), "/\(length)") }
            XCTAssertEqual(IPNetwork(block.description), block, "/\(length) description round trips")
        }
        let v6: UInt128 = (UInt128(0x2001_0db8_8000_0000) << 64) | 0x8000_0000_0000_0001
        for length in 1...128 {
            let block = IPNetwork(address: .v6(v6), prefixLength: length)
            let mask = UInt128.max << (128 - length)
            let first = v6 & mask
            let last = first | ~mask
            XCTAssertTrue(block.contains(.v6(first)), "/\(length)")
            XCTAssertTrue(block.contains(.v6(last)), "/\(length)")
            if first > 0 { XCTAssertFalse(block.contains(.v6(first - 1)), "/\(length)") }
            if last < UInt128.max { XCTAssertFalse(block.contains(.v6(last + 1)), "/\(length)") }
            XCTAssertEqual(IPNetwork(block.description), block, "/\(length) description round trips")
        }
    }
}
