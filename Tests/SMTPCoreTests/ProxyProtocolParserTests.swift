@testable import SMTPCore
import NIOCore
import XCTest

final class ProxyProtocolParserTests: XCTestCase {
    private func endpoint(_ address: String, _ port: Int) -> ProxyEndpoint {
        ProxyEndpoint(IPAddress(address)!, port)
    }

    /// Parses `bytes`, returning the header and what is left in the buffer.
    private func parse(_ bytes: [UInt8]) throws -> (ProxyHeader?, [UInt8]) {
        var buffer = ByteBuffer(bytes: bytes)
        let header = try ProxyProtocolParser.parse(&buffer)
        return (header, Array(buffer.readableBytesView))
    }

    /// Every proper prefix of `bytes` must ask for more and leave the buffer untouched.
    private func assertEveryPrefixIsIncomplete(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
        for length in 0..<bytes.count {
            var buffer = ByteBuffer(bytes: Array(bytes.prefix(length)))
            do {
                let header = try ProxyProtocolParser.parse(&buffer)
                XCTAssertNil(header, "prefix of \(length) octets", file: file, line: line)
                XCTAssertEqual(buffer.readableBytes, length, "prefix of \(length) octets consumed bytes", file: file, line: line)
            } catch {
                XCTFail("prefix of \(length) octets threw \(error)", file: file, line: line)
            }
        }
    }

    // MARK: Version 1

    func testV1ValidHeaders() throws {
        let fixtures: [(String, ProxyHeader, UInt)] = [
            ("PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n",
             ProxyHeader(source: endpoint("192.0.2.1", 56324), destination: endpoint("198.51.100.1", 25)), #line),
            ("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
             ProxyHeader(source: endpoint("0.0.0.0", 0), destination: endpoint("255.255.255.255", 65535)), #line),
            ("PROXY TCP6 2001:db8::1 2001:db8::2 1234 587\r\n",
             ProxyHeader(source: endpoint("2001:db8::1", 1234), destination: endpoint("2001:db8::2", 587)), #line),
            ("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
             ProxyHeader(source: endpoint("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
                         destination: endpoint("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)), #line),
            ("PROXY UNKNOWN\r\n", ProxyHeader(source: nil, destination: nil), #line),
            ("PROXY UNKNOWN 192.0.2.1 198.51.100.1 56324 25\r\n", ProxyHeader(source: nil, destination: nil), #line),
        ]
        for (text, expected, line) in fixtures {
            let (header, rest) = try parse(Array(text.utf8))
            XCTAssertEqual(header, expected, text, line: line)
            XCTAssertEqual(rest, [], text, line: line)
        }
    }

    func testV1BytesAfterTheHeaderStayInTheBuffer() throws {
        let (header, rest) = try parse(Array("PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\nEHLO client\r\n".utf8))
        XCTAssertEqual(header?.source, endpoint("192.0.2.1", 56324))
        XCTAssertEqual(rest, Array("EHLO client\r\n".utf8))
    }

    func testV1WithANonZeroReaderIndex() throws {
        var buffer = ByteBuffer(string: "xxPROXY TCP4 192.0.2.1 198.51.100.1 1 2\r\nQUIT\r\n")
        buffer.moveReaderIndex(forwardBy: 2)
        let header = try ProxyProtocolParser.parse(&buffer)
        XCTAssertEqual(header, ProxyHeader(source: endpoint("192.0.2.1", 1), destination: endpoint("198.51.100.1", 2)))
        XCTAssertEqual(buffer.text, "QUIT\r\n")
    }

    func testV1EveryPrefixIsIncomplete() {
        assertEveryPrefixIsIncomplete(Array("PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n".utf8))
        assertEveryPrefixIsIncomplete(Array("PROXY TCP6 2001:db8::1 2001:db8::2 1234 587\r\n".utf8))
        assertEveryPrefixIsIncomplete(Array("PROXY UNKNOWN\r\n".utf8))
    }

    func testV1LineAtTheLimitIsAccepted() throws {
        // 107 octets, CRLF included, the longest line the spec allows.
        var text = "PROXY UNKNOWN "
        text += String(repeating: "x", count: 107 - text.utf8.count - 2) + "\r\n"
        XCTAssertEqual(text.utf8.count, 107)
        let (header, rest) = try parse(Array(text.utf8))
        XCTAssertEqual(header, ProxyHeader(source: nil, destination: nil))
        XCTAssertEqual(rest, [])
    }

    func testV1Rejections() {
        let fixtures: [(String, UInt)] = [
            // Not a PROXY header at all.
            ("EHLO client\r\n", #line),
            ("PROXX TCP4", #line),
            ("proxy TCP4 192.0.2.1 198.51.100.1 1 2\r\n", #line),
            // Too long: 108 octets with CRLF, and 107 without a line end yet.
            ("PROXY UNKNOWN " + String(repeating: "x", count: 92) + "\r\n", #line),
            ("PROXY UNKNOWN " + String(repeating: "x", count: 93), #line),
            // Line ends.
            ("PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\n", #line),
            ("PROXY\r\n", #line),
            // Protocol and field count.
            ("PROXY UDP4 192.0.2.1 198.51.100.1 56324 25\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 56324\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 56324 25 extra\r\n", #line),
            ("PROXY TCP4  192.0.2.1 198.51.100.1 56324 25\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 56324 25 \r\n", #line),
            // Bad addresses.
            ("PROXY TCP4 256.0.2.1 198.51.100.1 56324 25\r\n", #line),
            ("PROXY TCP4 192.0.2 198.51.100.1 56324 25\r\n", #line),
            ("PROXY TCP4 192.0.2.1 mx.example 56324 25\r\n", #line),
            ("PROXY TCP6 2001:db8::g 2001:db8::2 1 2\r\n", #line),
            // Address family does not match the protocol.
            ("PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n", #line),
            ("PROXY TCP4 192.0.2.1 2001:db8::2 1 2\r\n", #line),
            ("PROXY TCP6 192.0.2.1 198.51.100.1 1 2\r\n", #line),
            ("PROXY TCP6 2001:db8::1 198.51.100.1 1 2\r\n", #line),
            // Bad ports.
            ("PROXY TCP4 192.0.2.1 198.51.100.1 65536 25\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 56324 99999\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 -1 25\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 +1 25\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 025 25\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 port 25\r\n", #line),
            ("PROXY TCP4 192.0.2.1 198.51.100.1 100000 25\r\n", #line),
        ]
        for (text, line) in fixtures {
            var buffer = ByteBuffer(string: text)
            XCTAssertThrowsError(try ProxyProtocolParser.parse(&buffer), text.debugDescription, line: line) { error in
                XCTAssertTrue(error is ProxyProtocolParser.Error, line: line)
            }
        }
    }

    // MARK: Version 2

    private static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    /// A v2 header: signature, version/command, family/protocol, length, then `payload`.
    private func v2(command: UInt8 = 0x21, family: UInt8, payload: [UInt8], declaredLength: Int? = nil) -> [UInt8] {
        let length = declaredLength ?? payload.count
        return Self.signature + [command, family, UInt8(length >> 8), UInt8(length & 0xFF)] + payload
    }

    private func bigEndian(_ port: Int) -> [UInt8] { [UInt8(port >> 8), UInt8(port & 0xFF)] }

    /// A TLV: PP2_TYPE_AUTHORITY (0x02) carrying a host name, then a NOOP (0x04).
    private let tlvs: [UInt8] = [0x02, 0x00, 0x0B] + Array("mx.example.".utf8) + [0x04, 0x00, 0x02, 0x00, 0x00]

    private var ipv4Payload: [UInt8] { [192, 0, 2, 1] + [198, 51, 100, 1] + bigEndian(56324) + bigEndian(25) }

    private var ipv6Payload: [UInt8] {
        let source: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [0x01]
        let destination: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [0x02]
        return source + destination + bigEndian(1234) + bigEndian(587)
    }

    func testV2ProxyOverIPv4WithTLVs() throws {
        let header = v2(family: 0x11, payload: ipv4Payload + tlvs)
        let (parsed, rest) = try parse(header + Array("EHLO c\r\n".utf8))
        XCTAssertEqual(parsed, ProxyHeader(source: endpoint("192.0.2.1", 56324), destination: endpoint("198.51.100.1", 25)))
        XCTAssertEqual(rest, Array("EHLO c\r\n".utf8), "TLVs are consumed, what follows the header is not")
    }

    func testV2ProxyOverIPv6WithTLVs() throws {
        let header = v2(family: 0x21, payload: ipv6Payload + tlvs)
        let (parsed, rest) = try parse(header + [0x45])
        XCTAssertEqual(parsed, ProxyHeader(source: endpoint("2001:db8::1", 1234), destination: endpoint("2001:db8::2", 587)))
        XCTAssertEqual(rest, [0x45])
    }

    func testV2UDPFamiliesCarryAddressesToo() throws {
        XCTAssertEqual(try parse(v2(family: 0x12, payload: ipv4Payload)).0?.source, endpoint("192.0.2.1", 56324))
        XCTAssertEqual(try parse(v2(family: 0x22, payload: ipv6Payload)).0?.destination, endpoint("2001:db8::2", 587))
    }

    func testV2LocalCommandHasNoAddressesAndConsumesItsPayload() throws {
        let (empty, rest) = try parse(v2(command: 0x20, family: 0x00, payload: []) + [0x51])
        XCTAssertEqual(empty, ProxyHeader(source: nil, destination: nil))
        XCTAssertEqual(rest, [0x51])
        // LOCAL with addresses: they are ignored but still consumed.
        let (withAddresses, restAfter) = try parse(v2(command: 0x20, family: 0x11, payload: ipv4Payload + tlvs) + [0x51])
        XCTAssertEqual(withAddresses, ProxyHeader(source: nil, destination: nil))
        XCTAssertEqual(restAfter, [0x51])
    }

    func testV2UnspecifiedFamilyHasNoAddresses() throws {
        let (parsed, rest) = try parse(v2(family: 0x00, payload: tlvs))
        XCTAssertEqual(parsed, ProxyHeader(source: nil, destination: nil))
        XCTAssertEqual(rest, [])
    }

    func testV2EveryPrefixIsIncomplete() {
        assertEveryPrefixIsIncomplete(v2(family: 0x11, payload: ipv4Payload + tlvs))
        assertEveryPrefixIsIncomplete(v2(family: 0x21, payload: ipv6Payload))
        assertEveryPrefixIsIncomplete(v2(command: 0x20, family: 0x00, payload: []))
    }

    func testV2WithANonZeroReaderIndex() throws {
        var buffer = ByteBuffer(bytes: [0xAA, 0xBB] + v2(family: 0x11, payload: ipv4Payload) + [0xCC])
        buffer.moveReaderIndex(forwardBy: 2)
        let header = try ProxyProtocolParser.parse(&buffer)
        XCTAssertEqual(header?.destination, endpoint("198.51.100.1", 25))
        XCTAssertEqual(Array(buffer.readableBytesView), [0xCC])
    }

    func testV2Rejections() {
        var badSignature = v2(family: 0x11, payload: ipv4Payload)
        badSignature[7] = 0x00
        let fixtures: [([UInt8], UInt)] = [
            (badSignature, #line),
            (Array(Self.signature.prefix(5)) + [0xFF], #line),
            // Version 1 and 3 in the high nibble.
            (v2(command: 0x11, family: 0x11, payload: ipv4Payload), #line),
            (v2(command: 0x31, family: 0x11, payload: ipv4Payload), #line),
            // Unknown command.
            (v2(command: 0x22, family: 0x11, payload: ipv4Payload), #line),
            (v2(command: 0x2F, family: 0x11, payload: ipv4Payload), #line),
            // Declared length too short for the addresses of the family.
            (v2(family: 0x11, payload: Array(ipv4Payload.prefix(11))), #line),
            (v2(family: 0x21, payload: Array(ipv6Payload.prefix(35))), #line),
            (v2(family: 0x21, payload: ipv4Payload), #line),
            // Unsupported family (AF_UNIX stream) and a made-up one.
            (v2(family: 0x31, payload: Array(repeating: 0, count: 216)), #line),
            (v2(family: 0x41, payload: ipv4Payload), #line),
        ]
        for (bytes, line) in fixtures {
            var buffer = ByteBuffer(bytes: bytes)
            XCTAssertThrowsError(try ProxyProtocolParser.parse(&buffer), "\(bytes)", line: line) { error in
                XCTAssertTrue(error is ProxyProtocolParser.Error, line: line)
            }
        }
    }

    func testV2TooLongIsRefusedBeforeItsPayloadArrives() {
        // 16 + 2049 exceeds the 16 + 2048 limit; only the fixed part is present.
        var buffer = ByteBuffer(bytes: v2(family: 0x11, payload: [], declaredLength: 2049))
        XCTAssertThrowsError(try ProxyProtocolParser.parse(&buffer))
    }

    func testV2AtTheLengthLimitIsAccepted() throws {
        let padding = [UInt8](repeating: 0, count: 2048 - ipv4Payload.count - 3)
        let noop: [UInt8] = [0x04] + bigEndian(padding.count) + padding
        let (parsed, rest) = try parse(v2(family: 0x11, payload: ipv4Payload + noop))
        XCTAssertEqual(parsed?.source, endpoint("192.0.2.1", 56324))
        XCTAssertEqual(rest, [])
    }

    func testEmptyBufferNeedsMoreBytes() throws {
        var buffer = ByteBuffer()
        XCTAssertNil(try ProxyProtocolParser.parse(&buffer))
    }
}
