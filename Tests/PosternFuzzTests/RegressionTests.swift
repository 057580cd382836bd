import NIOCore
import PosternRedis
import SMTPCore
import XCTest

/// One test per crash the fuzzer found, asserting the corrected behaviour at the API level.
/// The minimised inputs themselves are in Fuzz/regressions/ and replay in `CorpusReplayTests`.
final class FuzzRegressionTests: XCTestCase {
    // Fuzz/regressions/parser/help-invalid-utf8-grows-past-line-limit: `HELP`, `VRFY`,
    // `EXPN`, `EHLO`… decoded their argument leniently, so each bad byte became U+FFFD (3
    // octets). The command no longer matched what was sent, and re-encoded it could pass the
    // 512-octet limit. Now a free-text argument that is not UTF-8 is 500 5.5.2.
    func testFreeTextArgumentsMustBeUTF8() throws {
        let parser = SMTPCommandParser()
        for verb in ["HELP", "VRFY", "EXPN", "EHLO", "HELO", "AUTH", "ETRN", "NOOP"] {
            let line = Array("\(verb) a".utf8) + [0xFF, 0xC3] + Array("b".utf8)
            XCTAssertThrowsError(try parser.parse(line), verb) { error in
                let error = error as? SMTPSyntaxError
                XCTAssertEqual(error?.kind, .invalidCharacters, verb)
                XCTAssertEqual(error?.reply.code, 500, verb)
                XCTAssertEqual(error?.reply.enhanced, EnhancedStatusCode(5, 5, 2), verb)
            }
        }
        // The minimised input itself: 170 bad octets after HELP, under the line limit as sent.
        let minimised = Array("HELP MEXPNtaf".utf8) + [UInt8](repeating: 0xFF, count: 170)
        XCTAssertThrowsError(try parser.parse(minimised)) { error in
            XCTAssertEqual((error as? SMTPSyntaxError)?.kind, .invalidCharacters)
        }
        // Well-formed UTF-8 still parses, and addresses keep their own error (501 5.1.3).
        XCTAssertEqual(try parser.parse(Array("EHLO bücher.example".utf8)), .ehlo("bücher.example"))
        XCTAssertEqual(try parser.parse(Array("HELP été".utf8)), .help("été"))
        let badAddress = Array("MAIL FROM:<a".utf8) + [0xFF] + Array("@b.example> SMTPUTF8".utf8)
        XCTAssertThrowsError(try parser.parse(badAddress)) { error in
            XCTAssertEqual((error as? SMTPSyntaxError)?.kind, .badAddress)
        }
    }

    // Fuzz/regressions/proxy/v1-nul-after-address: `IPAddress(String)` hands the text to
    // inet_pton, which stops at a NUL, so `PROXY TCP6 :: ::\0 1 2` was accepted with the
    // bytes after the NUL ignored. Now text holding a NUL is not an address.
    func testAddressTextWithNULIsRefused() {
        var buffer = ByteBuffer(bytes: Array("PROXY TCP6 :: ::".utf8) + [0] + Array(" 1 2\r\n".utf8))
        XCTAssertThrowsError(try ProxyProtocolParser.parse(&buffer)) { error in
            XCTAssertEqual((error as? ProxyProtocolParser.Error)?.reason, "v1 line has a byte outside printable US-ASCII")
        }
        var tcp4 = ByteBuffer(bytes: Array("PROXY TCP4 192.0.2.1".utf8) + [0, 0x41] + Array(" 198.51.100.1 1 25\r\n".utf8))
        XCTAssertThrowsError(try ProxyProtocolParser.parse(&tcp4))
        XCTAssertNil(IPAddress("192.0.2.1\0"))
        XCTAssertNil(IPAddress("2001:db8::1\0junk"))
        XCTAssertNil(IPNetwork("192.0.2.0\0/24"))
        XCTAssertEqual(IPAddress("192.0.2.1"), .v4(0xC000_0201))
        // A clean header still decodes.
        var clean = ByteBuffer(string: "PROXY TCP6 :: ::1 1 2\r\n")
        XCTAssertEqual(try ProxyProtocolParser.parse(&clean)?.source?.port, 1)
    }

    // Fuzz/regressions/proxy/v1-combining-mark-joins-the-space-after-PROXY: the v1 line was
    // split into words as a String, and a combining mark (U+0AFC) right after `PROXY ` joined
    // that space into one Character, so `PROXY <mark>junk TCP6 …` split as if the junk were
    // part of `PROXY` and decoded. Now a v1 line is printable US-ASCII, checked octet by octet.
    func testAV1LineIsPrintableASCIIOctetByOctet() {
        var joined = ByteBuffer(bytes: Array("PROXY ".utf8) + [0xE0, 0xAB, 0xBC] + Array("xROXY TCP6 200:db8::1 2::2 1008 40\r\n".utf8))
        XCTAssertThrowsError(try ProxyProtocolParser.parse(&joined)) { error in
            XCTAssertEqual((error as? ProxyProtocolParser.Error)?.reason, "v1 line has a byte outside printable US-ASCII")
        }
        var control = ByteBuffer(bytes: Array("PROXY TCP4 192.0.2.1 198.51.100.1 1\t 25\r\n".utf8))
        XCTAssertThrowsError(try ProxyProtocolParser.parse(&control))
        var clean = ByteBuffer(string: "PROXY TCP6 200:db8::1 2::2 1008 40\r\n")
        XCTAssertEqual(try ProxyProtocolParser.parse(&clean)?.source?.port, 1008)
    }

    // Fuzz/regressions/resp/bulk-error-with-crlf-encodes-as-two-lines: `RESPEncoder` replaced
    // CR and LF in simple strings and errors Character by Character, and CR LF is one
    // Character, equal to neither. A bulk error holding CRLF (`!6\r\n\r\n\n\n\n\n\r\n`) was
    // written as a simple error running over two lines, which read back as two values. Now
    // every CR and LF octet becomes a space.
    func testSimpleStringsAndErrorsEncodeOnOneLine() throws {
        var buffer = ByteBuffer()
        RESPEncoder.write(.error("a\r\nb"), into: &buffer)
        XCTAssertEqual(String(buffer: buffer), "-a  b\r\n")
        buffer.clear()
        RESPEncoder.write(.simpleString("x\r\n\ny\r"), into: &buffer)
        XCTAssertEqual(String(buffer: buffer), "+x   y \r\n")
        // The minimised input: read, encoded, read back as one error.
        var wire = ByteBuffer(string: "!6\r\n\r\n\n\n\n\n\r\n")
        let value = try XCTUnwrap(try RESPParser().next(&wire))
        XCTAssertEqual(value, .error("\r\n\n\n\n\n"))
        var encoded = ByteBuffer()
        RESPEncoder.write(value, into: &encoded)
        XCTAssertEqual(try RESPParser().next(&encoded), .error("      "))
        XCTAssertEqual(encoded.readableBytes, 0)
    }

    // Fuzz/regressions/resp/attributes-in-a-row-overflow-the-stack: a RESP3 attribute (`|`)
    // was read and the value after it parsed by a recursive call at the same depth, so 16 000
    // attributes in a row (64 KB from a Redis server, or whoever sits between) overflowed
    // the stack. Found by feeding the resp target a long run of `|0\r\n` (the fuzzer keeps
    // inputs under 4 KB by default, too short to reach it). Now each attribute counts as a
    // level of nesting, within `maximumDepth`.
    func testAttributesInARowAreBoundedByTheDepthLimit() throws {
        var endless = ByteBuffer(string: String(repeating: "|0\r\n", count: 16_000) + "+OK\r\n")
        XCTAssertThrowsError(try RESPParser().next(&endless)) { error in
            XCTAssertEqual((error as? RESPParseError)?.kind, .tooDeep)
        }
        // An attribute before a reply, as a server sends one, is still read and dropped.
        var one = ByteBuffer(string: "|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2\r\n")
        XCTAssertEqual(try RESPParser().next(&one), .array([.integer(2)]))
        var limited = ByteBuffer(string: "|0\r\n|0\r\n+OK\r\n")
        XCTAssertEqual(try RESPParser(limits: .init(maximumDepth: 2)).next(&limited), .simpleString("OK"))
        var tooMany = ByteBuffer(string: "|0\r\n|0\r\n|0\r\n+OK\r\n")
        XCTAssertThrowsError(try RESPParser(limits: .init(maximumDepth: 2)).next(&tooMany))
    }
}
