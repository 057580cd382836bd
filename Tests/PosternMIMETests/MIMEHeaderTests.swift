import XCTest
@testable import PosternMIME

final class MIMEHeaderTests: XCTestCase {
    /// RFC 2047 encoded words in Subject: (raw, decoded, malformations).
    func testEncodedWordSubjects() {
        let cases: [(raw: String, decoded: String, malformations: [String])] = [
            ("plain subject", "plain subject", []),
            ("=?UTF-8?B?SGVsbG8gd29ybGQ=?=", "Hello world", []),
            ("=?utf-8?q?caf=C3=A9_au_lait?=", "café au lait", []),
            ("=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard", []),
            // RFC 2047 §8 examples: whitespace between adjacent words disappears.
            ("(=?ISO-8859-1?Q?a?= b)", "(a b)", []),
            ("(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)", []),
            ("(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)", "(ab)", []),
            ("(=?ISO-8859-1?Q?a_b?=)", "(a b)", []),
            ("(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", "(a b)", []),
            // Mixed charsets and encodings.
            ("=?utf-8?B?w6k=?= =?windows-1252?Q?=80?= =?iso-8859-15?q?=A4?=", "é€€", []),
            // A UTF-8 character split across two words survives.
            ("=?utf-8?B?4oI=?= =?utf-8?B?rA==?=", "€", []),
            // Words glued to text are decoded anyway, as readers do.
            ("Re:=?utf-8?q?Hi?=!", "Re:Hi!", []),
            // Lowercase encoding letter, language suffix (RFC 2231 §5).
            ("=?us-ascii*en?q?Hi?=", "Hi", []),
            // Malformed words stay as written.
            ("=?utf-8?B?!!!?=", "=?utf-8?B?!!!?=", ["malformed encoded word"]),
            ("=?utf-8?X?abc?=", "=?utf-8?X?abc?=", ["malformed encoded word"]),
            ("=?utf-8?Q?no end", "=?utf-8?Q?no end", []),
            ("=?utf-8?Q?has space?=", "=?utf-8?Q?has space?=", []),
            ("=??Q?x?=", "=??Q?x?=", []),
            ("=?", "=?", []),
            ("a =?utf-8?Q?x?= =?utf-8?B?!?= b", "a x =?utf-8?B?!?= b", ["malformed encoded word"]),
            // Unknown charsets decode as UTF-8 and are flagged.
            ("=?x-unheard-of?Q?ok?=", "ok", ["unknown charset: x-unheard-of"]),
            ("=?x-unheard-of?Q?=C3=A9?=", "é", ["unknown charset: x-unheard-of"]),
        ]
        for (raw, decoded, malformations) in cases {
            let message = MIMEFixture.parse(["Subject: " + raw, "", "body"])
            XCTAssertEqual(message.subject, decoded, raw)
            XCTAssertEqual(message.headers.first?.rawValue, raw, raw)
            XCTAssertEqual(message.malformations, malformations, raw)
        }
    }

    func testFoldedHeadersAreUnfolded() {
        let message = MIMEFixture.parse([
            "Subject: =?utf-8?q?first?=",
            " =?utf-8?q?_second?=",
            "\tthird",
            "X-Long: a",
            "  b",
            "",
            "body",
        ])
        XCTAssertEqual(message.subject, "first second\tthird")
        XCTAssertEqual(message.headers[0].rawValue, "=?utf-8?q?first?= =?utf-8?q?_second?=\tthird")
        XCTAssertEqual(message.values(of: "x-long"), ["a  b"])
    }

    func testValuesOfAnyOccurrenceCaseInsensitive() {
        let message = MIMEFixture.parse([
            "Received: from a",
            "received: from b",
            "RECEIVED: =?utf-8?q?from_c?=",
            "Subject:",
            "",
        ])
        XCTAssertEqual(message.values(of: "Received"), ["from a", "from b", "from c"])
        XCTAssertEqual(message.headers.map(\.name), ["Received", "received", "RECEIVED", "Subject"])
        XCTAssertEqual(message.subject, "")
        XCTAssertEqual(message.values(of: "missing"), [])
    }

    func testEightBitHeaders() {
        var bytes = Array("Subject: caf".utf8) + [0xC3, 0xA9] + Array("\r\nX-Latin: caf".utf8) + [0xE9]
        bytes += Array("\r\n\r\nbody".utf8)
        let message = MIMEFixture.parse(bytes: bytes)
        XCTAssertEqual(message.subject, "café")
        XCTAssertEqual(message.values(of: "x-latin"), ["café"])
        XCTAssertEqual(message.malformations, ["header bytes not utf-8"])
    }

    func testHeaderSectionLimit() {
        var lines = (0..<200).map { "X-Filler-\($0): " + String(repeating: "x", count: 90) }
        lines += ["Subject: late", "", "body"]
        let limits = MIMELimits(maximumHeaderBytes: 1000)
        let message = MIMEFixture.parse(lines, limits: limits)
        XCTAssertLessThan(message.headers.count, 12)
        XCTAssertNil(message.subject)
        XCTAssertEqual(message.textBodies, ["body"])
        XCTAssertEqual(message.malformations, ["header section larger than 1000 bytes"])

        // One enormous line is cut at the limit too.
        let long = MIMEFixture.parse(["Subject: " + String(repeating: "y", count: 5000), "", "b"], limits: limits)
        XCTAssertEqual(long.subject?.utf8.count, 1000 - "Subject: ".utf8.count)
        XCTAssertEqual(long.textBodies, ["b"])
    }
}
