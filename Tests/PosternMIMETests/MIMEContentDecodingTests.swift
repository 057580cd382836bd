import XCTest
@testable import PosternMIME

final class MIMEContentDecodingTests: XCTestCase {
    private func textPart(_ headers: [String], body: [String]) -> MIMEMessage {
        MIMEFixture.parse(headers + [""] + body)
    }

    /// Base64 bodies: (body lines, decoded text, malformations).
    func testBase64Bodies() {
        let cases: [(body: [String], text: String, malformations: [String])] = [
            (["SGVsbG8sIHdvcmxkIQ=="], "Hello, world!", []),
            // Line breaks anywhere, including inside a quantum.
            (["SGVsbG8s", "IHdv", "cmxk", "IQ=="], "Hello, world!", []),
            (["SGVsbG8sIH", "dvcmxkIQ=="], "Hello, world!", []),
            // Missing padding is tolerated.
            (["SGVsbG8sIHdvcmxkIQ"], "Hello, world!", []),
            // Whitespace is fine; garbage is skipped and flagged.
            (["  SGVs bG8s\t", "IHdvcmxkIQ==  "], "Hello, world!", []),
            (["SGVs!!bG8s*IHdvcmxk~IQ=="], "Hello, world!", ["bad base64"]),
            // A dangling single character cannot decode.
            (["SGVsbG8sIHdvcmxkIQ==", "Q"], "Hello, world!", ["bad base64"]),
            ([""], "", []),
            // Text after padding is decoded too (concatenated encoders).
            (["SGk=", "IHRoZXJl"], "Hi there", []),
        ]
        for (body, text, malformations) in cases {
            let message = textPart(["Content-Transfer-Encoding: base64"], body: body)
            XCTAssertEqual(message.textBodies, [text], "\(body)")
            XCTAssertEqual(message.malformations, malformations, "\(body)")
        }
    }

    /// Quoted-printable bodies: (body lines, decoded text, malformations).
    func testQuotedPrintableBodies() {
        let cases: [(body: [String], text: String, malformations: [String])] = [
            (["caf=C3=A9"], "café", []),
            (["caf=c3=a9"], "café", []),
            // Soft line breaks, with and without trailing whitespace after "=".
            (["soft=", "break"], "softbreak", []),
            (["soft= \t", "break"], "softbreak", []),
            (["long line that wr=", "aps and=", " keeps going"], "long line that wraps and keeps going", []),
            // Hard line breaks stay; trailing whitespace is dropped (rule 3).
            (["one   ", "two"], "one\ntwo", []),
            (["tab=09inside", "=3D equals"], "tab\tinside\n= equals", []),
            // Bad escapes are kept as written.
            (["50=% off", "=ZZ", "end="], "50=% off\n=ZZ\nend", ["bad quoted-printable"]),
            (["=4"], "=4", ["bad quoted-printable"]),
        ]
        for (body, text, malformations) in cases {
            let message = textPart(["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable"], body: body)
            XCTAssertEqual(message.textBodies, [text], "\(body)")
            XCTAssertEqual(message.malformations, malformations, "\(body)")
        }
    }

    /// Charset conversion of raw 8-bit bodies: (charset, bytes, text, malformations).
    func testCharsetConversion() {
        let cases: [(charset: String?, bytes: [UInt8], text: String, malformations: [String])] = [
            ("utf-8", [0x63, 0x61, 0x66, 0xC3, 0xA9], "café", []),
            ("UTF8", [0xE2, 0x82, 0xAC], "€", []),
            ("utf-8", [0x61, 0xFF, 0x62], "a\u{FFFD}b", ["invalid utf-8"]),
            ("iso-8859-1", [0x63, 0x61, 0x66, 0xE9], "café", []),
            ("latin1", [0xA3, 0x35], "£5", []),
            // windows-1252's 0x80–0x9F (also how browsers read iso-8859-1).
            ("windows-1252", [0x80, 0x20, 0x93, 0x71, 0x94, 0x20, 0x85, 0x99], "€ “q” …™", []),
            ("iso-8859-1", [0x80], "€", []),
            ("iso-8859-15", [0xA4, 0xA6, 0xBD, 0xE9], "€Šœé", []),
            ("us-ascii", [0x68, 0x69], "hi", []),
            // Undeclared or us-ascii 8-bit: UTF-8 when valid, else windows-1252.
            (nil, [0xC3, 0xA9], "é", []),
            ("us-ascii", [0xE9, 0x74, 0xE9], "été", []),
            ("utf-16", [0xFE, 0xFF, 0x00, 0x68, 0x00, 0xE9], "hé", []),
            ("utf-16", [0xFF, 0xFE, 0x68, 0x00, 0xE9, 0x00], "hé", []),
            ("utf-16", [0x00, 0x68, 0x00, 0xE9], "hé", []),
            ("utf-16le", [0x68, 0x00, 0x0D, 0x00, 0x0A, 0x00, 0x69, 0x00], "h\ni", []),
            ("utf-16be", [0x00, 0x68, 0x00], "h\u{FFFD}", []),
            // Unknown: UTF-8 with replacement, flagged.
            ("x-klingon", [0x71, 0xC3, 0xA9, 0xFF], "qé\u{FFFD}", ["unknown charset: x-klingon"]),
            // Plain ASCII in an unknown charset reads the same, but the charset is still flagged.
            ("x-klingon", [0x71], "q", ["unknown charset: x-klingon"]),
        ]
        for (charset, bytes, text, malformations) in cases {
            var header = "Content-Type: text/plain"
            if let charset { header += "; charset=\"\(charset)\"" }
            let message = MIMEFixture.parse(bytes: Array("\(header)\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".utf8) + bytes)
            XCTAssertEqual(message.textBodies, [text], "\(charset ?? "none")")
            XCTAssertEqual(message.malformations, malformations, "\(charset ?? "none")")
        }
    }

    func testPlatformCharsets() throws {
        // Charsets beyond the built-in table come from CoreFoundation where present.
        let koi8 = MIMEFixture.parse(bytes: Array("Content-Type: text/plain; charset=koi8-r\r\n\r\n".utf8) + [0xF0, 0xD2, 0xC9, 0xD7, 0xC5, 0xD4])
        let shiftJIS = MIMEFixture.parse(bytes: Array("Content-Type: text/plain; charset=shift_jis\r\n\r\n".utf8) + [0x82, 0xA0])
        #if canImport(CoreFoundation)
        XCTAssertEqual(koi8.textBodies, ["Привет"])
        XCTAssertEqual(shiftJIS.textBodies, ["あ"])
        XCTAssertEqual(koi8.malformations + shiftJIS.malformations, [])
        #else
        XCTAssertEqual(koi8.malformations, ["unknown charset: koi8-r"])
        #endif
    }

    func testBase64AndCharsetTogether() {
        let message = MIMEFixture.parse([
            "Content-Type: text/html; charset=windows-1252",
            "Content-Transfer-Encoding: base64",
            "",
            Data([0x3C, 0x70, 0x3E, 0x80, 0x31, 0x30, 0x30, 0x3C, 0x2F, 0x70, 0x3E]).base64EncodedString(),
        ])
        XCTAssertEqual(message.textBodies, ["<p>€100</p>"])
        XCTAssertEqual(message.plainTextBodies, ["\n€100\n"])
    }

    func testLineEndsBecomeLF() {
        let message = MIMEFixture.parse(["", "a", "b", "", "c"])
        XCTAssertEqual(message.textBodies, ["a\nb\n\nc"])
    }

    func testDecodedBodyOfAttachment() {
        let message = MIMEFixture.parse([
            "Content-Type: application/octet-stream",
            "Content-Transfer-Encoding: base64",
            "",
            "AAECAwQF",
        ])
        XCTAssertEqual(message.parts[0].decodedBody(), [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(message.parts[0].decodedBody(maximumBytes: 4), [0, 1, 2])
        XCTAssertEqual(message.parts[0].encodedBody.count, 8)
    }
}

final class MIMEHTMLTextTests: XCTestCase {
    func testVisibleText() {
        let cases: [(html: String, text: String)] = [
            ("<p>Hello <b>world</b></p>", "\nHello world\n"),
            ("V<b></b>i<span>agra</span>", "Viagra"),
            ("a<br>b<br/>c", "a\nb\nc"),
            ("<table><tr><td>x</td><td>y</td></tr></table>", "\n\n x  y \n\n"),
            ("<!-- hidden -->shown", "shown"),
            ("<style>p { color: red }</style>text<SCRIPT>alert(1)</script >more", "textmore"),
            ("Fish &amp; chips &lt;3 &#8364;&#x20AC; &euro;", "Fish & chips <3 €€ €"),
            ("fr&shy;ee m&#173;oney&nbsp;now&#8203;!", "free money now!"),
            ("1 < 2 and 3 > 2", "1 < 2 and 3 > 2"),
            ("&bogus; &amp &#xZZ; &#0;", "&bogus; & &#xZZ; \u{FFFD}"),
            ("unclosed <b tag", "unclosed <b tag"),
            ("text <!-- never closed", "text "),
            ("<script>never closed", ""),
        ]
        for (html, text) in cases {
            XCTAssertEqual(MIMEHTMLText.strip(html), text, html)
        }
    }

    func testManyUnclosedTagsStayLinear() {
        let html = String(repeating: "<a", count: 200_000)
        let start = Date()
        XCTAssertEqual(MIMEHTMLText.strip(html).utf8.count, 400_000)
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
    }
}
