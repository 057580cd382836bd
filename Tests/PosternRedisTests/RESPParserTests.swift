import NIOCore
import XCTest
@testable import PosternRedis

final class RESPParserTests: XCTestCase {
    private func parse(_ text: String, limits: RESPParser.Limits = .init()) throws -> (RESPValue?, remaining: Int) {
        var buffer = ByteBuffer(string: text)
        let value = try RESPParser(limits: limits).next(&buffer)
        return (value, buffer.readableBytes)
    }

    /// Every type, as a table: wire text → value.
    func testEveryType() throws {
        let table: [(String, RESPValue)] = [
            ("+OK\r\n", .simpleString("OK")),
            ("+\r\n", .simpleString("")),
            ("-ERR unknown command\r\n", .error("ERR unknown command")),
            (":0\r\n", .integer(0)),
            (":-42\r\n", .integer(-42)),
            (":+7\r\n", .integer(7)),
            (":9223372036854775807\r\n", .integer(.max)),
            ("$5\r\nhello\r\n", .bulkString(Array("hello".utf8))),
            ("$0\r\n\r\n", .bulkString([])),
            ("$4\r\na\r\nb\r\n", .bulkString(Array("a\r\nb".utf8))),  // binary-safe
            ("$-1\r\n", .bulkString(nil)),
            ("*0\r\n", .array([])),
            ("*-1\r\n", .array(nil)),
            ("*3\r\n:1\r\n$1\r\nx\r\n*1\r\n+y\r\n", .array([.integer(1), .bulkString([0x78]), .array([.simpleString("y")])])),
            ("_\r\n", .null),
            ("#t\r\n", .boolean(true)),
            ("#f\r\n", .boolean(false)),
            (",3.5\r\n", .double(3.5)),
            (",-1e3\r\n", .double(-1000)),
            (",inf\r\n", .double(.infinity)),
            (",-inf\r\n", .double(-.infinity)),
            ("(3492890328409238509324850943850943825024385\r\n", .bigNumber("3492890328409238509324850943850943825024385")),
            ("!21\r\nSYNTAX invalid syntax\r\n", .error("SYNTAX invalid syntax")),
            ("=15\r\ntxt:Some string\r\n", .verbatim(format: "txt", text: Array("Some string".utf8))),
            ("%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n", .map([RESPMapEntry(key: .simpleString("a"), value: .integer(1)),
                                                  RESPMapEntry(key: .simpleString("b"), value: .integer(2))])),
            ("~2\r\n:1\r\n:2\r\n", .set([.integer(1), .integer(2)])),
            (">2\r\n+message\r\n+hi\r\n", .push([.simpleString("message"), .simpleString("hi")])),
            ("|1\r\n+ttl\r\n:3600\r\n:5\r\n", .integer(5)),  // an attribute is read and dropped
        ]
        for (wire, expected) in table {
            let (value, remaining) = try parse(wire)
            XCTAssertEqual(value, expected, wire.debugDescription)
            XCTAssertEqual(remaining, 0, wire.debugDescription)
        }
        let (nan, _) = try parse(",nan\r\n")
        guard case .double(let number)? = nan else { return XCTFail("nan: \(String(describing: nan))") }
        XCTAssertTrue(number.isNaN)
    }

    /// Encode → parse gives the value back, for every type.
    func testRoundTrip() throws {
        let values: [RESPValue] = [
            .simpleString("PONG"), .error("NOSCRIPT No matching script"), .integer(-9_000_000_000), .bulkString(nil),
            .bulkString(Array(0...255)), .array(nil), .array([]), .null, .boolean(true), .boolean(false), .double(2.25),
            .double(.infinity), .bigNumber("-12345678901234567890"), .verbatim(format: "mkd", text: Array("# hi".utf8)),
            .map([RESPMapEntry(key: .bulkString(Array("k".utf8)), value: .array([.integer(1), .null]))]),
            .set([.simpleString("a")]), .push([.bulkString([1, 2])]),
            .array([.array([.array([.integer(1)])]), .map([]), .set([])]),
        ]
        for value in values {
            var buffer = ByteBuffer()
            RESPEncoder.write(value, into: &buffer)
            let parsed = try RESPParser().next(&buffer)
            XCTAssertEqual(parsed, value)
            XCTAssertEqual(buffer.readableBytes, 0)
        }
    }

    func testCommandEncoding() {
        var buffer = ByteBuffer()
        RESPEncoder.writeCommand(["SET", "clé", ""], into: &buffer)
        XCTAssertEqual(String(buffer: buffer), "*3\r\n$3\r\nSET\r\n$4\r\nclé\r\n$0\r\n\r\n")
    }

    /// Every prefix of a valid stream is "incomplete" and consumes nothing; byte by byte, the
    /// values come out exactly once, in order.
    func testPartialInputByteByByte() throws {
        let wire = "*2\r\n$5\r\nhello\r\n%1\r\n+k\r\n,1.5\r\n:12\r\n=7\r\ntxt:abc\r\n$-1\r\n"
        let bytes = Array(wire.utf8)
        let parser = RESPParser()
        for cut in 0..<bytes.count - "$-1\r\n".count {
            var prefix = ByteBuffer(bytes: bytes[0..<cut])
            var values: [RESPValue] = []
            while let value = try parser.next(&prefix) { values.append(value) }
            XCTAssertLessThan(values.count, 4, "cut \(cut)")
        }
        var buffer = ByteBuffer()
        var values: [RESPValue] = []
        for byte in bytes {
            buffer.writeInteger(byte)
            while let value = try parser.next(&buffer) { values.append(value) }
        }
        let expected: [RESPValue] = [
            .array([.bulkString(Array("hello".utf8)), .map([RESPMapEntry(key: .simpleString("k"), value: .double(1.5))])]),
            .integer(12), .verbatim(format: "txt", text: Array("abc".utf8)), .bulkString(nil),
        ]
        XCTAssertEqual(values, expected)
        XCTAssertEqual(buffer.readableBytes, 0)
    }

    func testIncompleteLeavesBufferUntouched() throws {
        for partial in ["", "+OK", "+OK\r", "$5\r\nhel", "$5\r\nhello", "$5\r\nhello\r", "*2\r\n:1\r\n", "%1\r\n+k\r\n", ":12"] {
            var buffer = ByteBuffer(string: partial)
            XCTAssertNil(try RESPParser().next(&buffer), partial.debugDescription)
            XCTAssertEqual(buffer.readableBytes, partial.utf8.count, partial.debugDescription)
        }
    }

    /// Malformed input is a typed error, never a crash or a hang.
    func testMalformedInput() {
        let table: [(String, RESPParseError.Kind)] = [
            ("?what\r\n", .unknownType(UInt8(ascii: "?"))),
            ("hello\r\n", .unknownType(UInt8(ascii: "h"))),
            ("+OK\rX", .missingCRLF),
            (":12a\r\n", .badNumber("12a")),
            (":\r\n", .badNumber("")),
            (":-\r\n", .badNumber("-")),
            (":99999999999999999999\r\n", .badNumber("99999999999999999999")),
            ("$abc\r\n", .badNumber("abc")),
            ("$-2\r\n", .badNumber("-2")),
            ("*-5\r\n", .badNumber("-5")),
            ("$3\r\nabcde\r\n", .missingCRLF),
            ("#x\r\n", .badValue("x")),
            (",1.2.3x\r\n", .badValue("1.2.3x")),
            ("_x\r\n", .badValue("x")),
            ("(12a\r\n", .badNumber("12a")),
            ("=2\r\nab\r\n", .badValue("ab")),
            ("!-1\r\n", .badNumber("-1")),
            ("~-1\r\n", .badNumber("-1")),
            ("*1\r\n?\r\n", .unknownType(UInt8(ascii: "?"))),
        ]
        for (wire, kind) in table {
            var buffer = ByteBuffer(string: wire)
            XCTAssertThrowsError(try RESPParser().next(&buffer), wire.debugDescription) { error in
                XCTAssertEqual((error as? RESPParseError)?.kind, kind, wire.debugDescription)
            }
        }
    }

    /// Each limit: just under passes, just over is an error (before any payload arrives).
    func testLimits() throws {
        let limits = RESPParser.Limits(maximumBulkLength: 10, maximumAggregateCount: 3, maximumDepth: 2, maximumLineLength: 16)
        XCTAssertEqual(try parse("$10\r\n0123456789\r\n", limits: limits).0, .bulkString(Array("0123456789".utf8)))
        XCTAssertThrowsError(try parse("$11\r\n", limits: limits)) {
            XCTAssertEqual(($0 as? RESPParseError)?.kind, .bulkTooLong(11))
        }
        XCTAssertThrowsError(try parse("$9223372036854775807\r\n")) {
            XCTAssertEqual(($0 as? RESPParseError)?.kind, .bulkTooLong(Int.max))
        }
        XCTAssertEqual(try parse("*3\r\n:1\r\n:2\r\n:3\r\n", limits: limits).0, .array([.integer(1), .integer(2), .integer(3)]))
        XCTAssertThrowsError(try parse("*4\r\n", limits: limits)) {
            XCTAssertEqual(($0 as? RESPParseError)?.kind, .aggregateTooLarge(4))
        }
        XCTAssertThrowsError(try parse("%4\r\n", limits: limits)) {
            XCTAssertEqual(($0 as? RESPParseError)?.kind, .aggregateTooLarge(4))
        }
        XCTAssertEqual(try parse("*1\r\n*1\r\n:1\r\n", limits: limits).0, .array([.array([.integer(1)])]))
        XCTAssertThrowsError(try parse("*1\r\n*1\r\n*1\r\n:1\r\n", limits: limits)) {
            XCTAssertEqual(($0 as? RESPParseError)?.kind, .tooDeep)
        }
        XCTAssertEqual(try parse("+0123456789abcdef\r\n", limits: limits).0, .simpleString("0123456789abcdef"))
        XCTAssertThrowsError(try parse("+0123456789abcdefg\r\n", limits: limits)) {
            XCTAssertEqual(($0 as? RESPParseError)?.kind, .lineTooLong)
        }
        // An endless line is refused once it passes the limit, without waiting for CRLF.
        XCTAssertThrowsError(try parse("+" + String(repeating: "x", count: 17), limits: limits)) {
            XCTAssertEqual(($0 as? RESPParseError)?.kind, .lineTooLong)
        }
        // The default depth limit stops a deeply nested reply without exhausting the stack.
        XCTAssertThrowsError(try parse(String(repeating: "*1\r\n", count: 10_000) + ":1\r\n")) {
            XCTAssertEqual(($0 as? RESPParseError)?.kind, .tooDeep)
        }
    }

    /// Random bytes never crash the parser (a small fuzz).
    func testRandomBytesNeverCrash() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("+-:$*_#,(!=%~>|\r\n0123456789-abc".utf8)
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...24, using: &generator)
            var buffer = ByteBuffer(bytes: (0..<length).map { _ in alphabet.randomElement(using: &generator)! })
            while let _ = try? RESPParser().next(&buffer), buffer.readableBytes > 0 {}
        }
    }
}
