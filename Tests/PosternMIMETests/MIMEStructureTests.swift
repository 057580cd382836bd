import XCTest
@testable import PosternMIME

final class MIMEStructureTests: XCTestCase {
    func testSimpleTextMessage() {
        let lines = [
            "From: Alice <alice@example.org>",
            "To: bob@example.net",
            "Subject: Lunch",
            "",
            "Shall we meet at noon?",
            "-- ",
            "Alice",
        ]
        let message = MIMEFixture.parse(lines)
        XCTAssertEqual(message.subject, "Lunch")
        XCTAssertEqual(message.headers.map(\.name), ["From", "To", "Subject"])
        XCTAssertEqual(message.parts.count, 1)
        let part = message.parts[0]
        XCTAssertEqual(part.contentType, "text/plain")
        XCTAssertEqual(part.transferEncoding, .sevenBit)
        XCTAssertFalse(part.isAttachment)
        XCTAssertEqual(part.decodedText, "Shall we meet at noon?\n-- \nAlice")
        XCTAssertEqual(message.textBodies, ["Shall we meet at noon?\n-- \nAlice"])
        XCTAssertTrue(message.attachments.isEmpty)
        XCTAssertEqual(message.malformations, [])
        XCTAssertEqual(message.raw, MIMEFixture.message(lines))
        XCTAssertEqual(message.values(of: "to"), ["bob@example.net"])
    }

    func testBareLFMatchesCRLF() {
        let lines = [
            "Subject: bare",
            "Content-Type: multipart/mixed; boundary=b",
            "",
            "--b",
            "Content-Type: text/plain",
            "",
            "one",
            "--b",
            "Content-Type: text/html",
            "",
            "<p>two</p>",
            "--b--",
        ]
        let crlf = MIMEFixture.parse(lines)
        let lf = MIMEFixture.parse(lines, lineEnd: "\n")
        XCTAssertEqual(crlf.textBodies, ["one", "<p>two</p>"])
        XCTAssertEqual(lf.textBodies, crlf.textBodies)
        XCTAssertEqual(lf.malformations, [])
    }

    func testNestedMixedAlternativeAttachments() {
        let message = MIMEFixture.parse([
            "Subject: report",
            "MIME-Version: 1.0",
            "Content-Type: multipart/mixed; boundary=\"outer\"",
            "",
            "This is a multi-part message in MIME format.",
            "--outer",
            "Content-Type: multipart/alternative; boundary=\"outer-inner\"",
            "",
            "--outer-inner",
            "Content-Type: text/plain; charset=utf-8",
            "",
            "Hello plain",
            "--outer-inner",
            "Content-Type: text/html; charset=utf-8",
            "",
            "<html><body><p>Hello <b>html</b></p></body></html>",
            "--outer-inner--",
            "",
            "--outer",
            "Content-Type: application/pdf; name=\"report.pdf\"",
            "Content-Disposition: attachment; filename=\"report.pdf\"",
            "Content-Transfer-Encoding: base64",
            "",
            "JVBERi0xLjQK",
            "--outer",
            "Content-Type: image/png",
            "Content-Disposition: inline",
            "Content-Transfer-Encoding: base64",
            "",
            "iVBORw0KGgo=",
            "--outer--",
            "epilogue",
        ])
        XCTAssertEqual(message.malformations, [])
        XCTAssertEqual(message.parts.map(\.contentType), ["text/plain", "text/html", "application/pdf", "image/png"])
        XCTAssertEqual(message.parts.map(\.depth), [2, 2, 1, 1])
        XCTAssertEqual(message.textBodies, ["Hello plain", "<html><body><p>Hello <b>html</b></p></body></html>"])
        XCTAssertEqual(message.plainTextBodies, ["Hello plain", "\nHello html\n"])
        XCTAssertEqual(message.attachments.map(\.name), ["report.pdf", nil])
        XCTAssertEqual(message.attachments.map(\.type), ["application/pdf", "image/png"])
        XCTAssertEqual(message.parts[2].decodedBody(), Array("%PDF-1.4\n".utf8))
        XCTAssertEqual(message.parts[2].disposition, "attachment")
        XCTAssertEqual(message.parts[2].parameters["name"], "report.pdf")
        XCTAssertNil(message.parts[2].decodedText)
    }

    func testBoundaryLinesMatchExactly() {
        // "--b" must not end a part at "--bb" or "--b x"; transport padding is allowed.
        let message = MIMEFixture.parse([
            "Content-Type: multipart/mixed; boundary=b",
            "",
            "--b  ",
            "",
            "--bb",
            "--b x",
            "--b--trailing",
        ])
        XCTAssertEqual(message.textBodies, ["--bb\n--b x"])
        XCTAssertEqual(message.malformations, [])
    }

    func testEncapsulatedMessageIsDescended() {
        let message = MIMEFixture.parse([
            "Subject: Fwd: invoice",
            "Content-Type: multipart/mixed; boundary=x",
            "",
            "--x",
            "Content-Type: text/plain",
            "",
            "see attached",
            "--x",
            "Content-Type: message/rfc822",
            "Content-Disposition: attachment; filename=\"original.eml\"",
            "",
            "Subject: invoice",
            "Content-Type: multipart/mixed; boundary=y",
            "",
            "--y",
            "Content-Type: text/plain",
            "",
            "pay now",
            "--y",
            "Content-Type: application/x-msdownload; name=invoice.exe",
            "Content-Transfer-Encoding: base64",
            "",
            "TVqQAAMAAAAEAAAA",
            "--y--",
            "--x--",
        ])
        XCTAssertEqual(message.malformations, [])
        XCTAssertEqual(message.subject, "Fwd: invoice")
        XCTAssertEqual(message.textBodies, ["see attached", "pay now"])
        XCTAssertEqual(message.attachments.map(\.name), ["original.eml", "invoice.exe"])
        XCTAssertEqual(message.attachments.map(\.type), ["message/rfc822", "application/x-msdownload"])
        XCTAssertEqual(message.parts.map(\.depth), [1, 3, 3])
        XCTAssertEqual(message.parts[1].values(of: "CONTENT-TYPE"), ["text/plain"])
    }

    func testBase64EncodedMessageIsDecodedAndDescended() {
        let inner = Array("Subject: inner\r\n\r\nhidden text\r\n".utf8)
        let encoded = Data(inner).base64EncodedString()
        let message = MIMEFixture.parse([
            "Content-Type: multipart/mixed; boundary=x",
            "",
            "--x",
            "Content-Type: message/rfc822",
            "Content-Transfer-Encoding: base64",
            "",
            encoded,
            "--x--",
        ])
        XCTAssertEqual(message.textBodies, ["hidden text\n"])
        XCTAssertEqual(message.malformations, ["encoded message/rfc822"])
    }

    func testDigestPartsDefaultToMessage() {
        let message = MIMEFixture.parse([
            "Content-Type: multipart/digest; boundary=d",
            "",
            "--d",
            "",
            "Subject: first",
            "",
            "body one",
            "--d",
            "",
            "Subject: second",
            "",
            "body two",
            "--d--",
        ])
        XCTAssertEqual(message.textBodies, ["body one", "body two"])
        XCTAssertEqual(message.parts.map(\.depth), [2, 2])
    }

    func testMissingClosingBoundary() {
        let message = MIMEFixture.parse([
            "Content-Type: multipart/mixed; boundary=b",
            "",
            "--b",
            "Content-Type: text/plain",
            "",
            "first",
            "--b",
            "Content-Type: text/plain",
            "",
            "second, and the message just ends",
        ])
        XCTAssertEqual(message.textBodies, ["first", "second, and the message just ends"])
        XCTAssertEqual(message.malformations, ["missing closing boundary"])
    }

    func testBoundaryNeverAppearingIsReadAsText() {
        let message = MIMEFixture.parse([
            "Content-Type: multipart/mixed; boundary=nowhere",
            "",
            "--elsewhere",
            "Content-Type: text/plain",
            "",
            "buy now",
        ])
        XCTAssertEqual(message.parts.count, 1)
        XCTAssertEqual(message.parts[0].contentType, "text/plain")
        XCTAssertEqual(message.textBodies, ["--elsewhere\nContent-Type: text/plain\n\nbuy now"])
        XCTAssertEqual(message.malformations, ["boundary never appears"])
    }

    func testMultipartWithoutBoundaryIsReadAsText() {
        let message = MIMEFixture.parse(["Content-Type: multipart/mixed", "", "just text"])
        XCTAssertEqual(message.textBodies, ["just text"])
        XCTAssertEqual(message.malformations, ["multipart without boundary"])
    }

    func testMalformedHeaderSections() {
        let cases: [(lines: [String], headers: [String], body: String, malformations: [String])] = [
            // No blank line: the first non-field line starts the body.
            (["Subject: a", "this is body", "more"], ["Subject"], "this is body\nmore", ["missing blank line after headers"]),
            // Headers only.
            (["Subject: a"], ["Subject"], "", []),
            // Nothing at all.
            ([""], [], "", []),
            // mbox From line skipped.
            (["From alice@example.org Mon Jan  1 00:00:00 2024", "Subject: a", "", "b"], ["Subject"], "b", []),
            // Obsolete "Name :" syntax (RFC 5322 §4.5).
            (["Subject : spaced", "", "b"], ["Subject"], "b", []),
            // Continuation with nothing to continue.
            (["  leading", "", "b"], [], "  leading\n\nb", ["missing blank line after headers"]),
        ]
        for (lines, headers, body, malformations) in cases {
            let message = MIMEFixture.parse(lines)
            XCTAssertEqual(message.headers.map(\.name), headers, "\(lines)")
            XCTAssertEqual(message.textBodies, [body], "\(lines)")
            XCTAssertEqual(message.malformations, malformations, "\(lines)")
        }
    }

    func testInvalidAndDuplicateContentType() {
        let invalid = MIMEFixture.parse(["Content-Type: garbage", "", "x"])
        XCTAssertEqual(invalid.parts[0].contentType, "text/plain")
        XCTAssertEqual(invalid.malformations, ["invalid content type"])

        let duplicate = MIMEFixture.parse(["Content-Type: text/html", "Content-Type: application/zip", "", "<b>x</b>"])
        XCTAssertEqual(duplicate.parts[0].contentType, "text/html")
        XCTAssertEqual(duplicate.malformations, ["duplicate content-type"])
    }

    func testContentTypeCommentsAndCase() {
        let message = MIMEFixture.parse([
            "Content-Type: TEXT/Plain (Plain text); CharSet=\"ISO-8859-1\"",
            "Content-Transfer-Encoding: Quoted-Printable",
            "",
            "caf=E9",
        ])
        XCTAssertEqual(message.parts[0].contentType, "text/plain")
        XCTAssertEqual(message.parts[0].charset, "iso-8859-1")
        XCTAssertEqual(message.parts[0].transferEncoding, .quotedPrintable)
        XCTAssertEqual(message.textBodies, ["café"])
    }

    func testAttachmentClassification() {
        let cases: [(headers: [String], isAttachment: Bool, hasText: Bool)] = [
            (["Content-Type: text/plain"], false, true),
            (["Content-Type: text/plain", "Content-Disposition: inline"], false, true),
            (["Content-Type: text/plain", "Content-Disposition: attachment"], true, true),
            (["Content-Type: text/csv; name=data.csv"], true, true),
            (["Content-Type: application/octet-stream"], true, false),
            (["Content-Type: image/gif", "Content-Disposition: inline"], true, false),
        ]
        for (headers, isAttachment, hasText) in cases {
            let message = MIMEFixture.parse(headers + ["", "content"])
            XCTAssertEqual(message.parts[0].isAttachment, isAttachment, "\(headers)")
            XCTAssertEqual(message.parts[0].decodedText != nil, hasText, "\(headers)")
            XCTAssertEqual(message.attachments.count, isAttachment ? 1 : 0, "\(headers)")
        }
    }

    func testUnknownTransferEncodingIsKeptAsIs() {
        let message = MIMEFixture.parse(["Content-Transfer-Encoding: x-uuencode", "", "begin 644 a"])
        XCTAssertEqual(message.textBodies, ["begin 644 a"])
        XCTAssertEqual(message.parts[0].transferEncoding, .other("x-uuencode"))
        XCTAssertEqual(message.malformations, ["unknown transfer encoding: x-uuencode"])
    }

    func testEncodedMultipartIsFlaggedAndParsed() {
        let message = MIMEFixture.parse([
            "Content-Type: multipart/mixed; boundary=b",
            "Content-Transfer-Encoding: base64",
            "",
            "--b",
            "",
            "text",
            "--b--",
        ])
        XCTAssertEqual(message.textBodies, ["text"])
        XCTAssertEqual(message.malformations, ["transfer encoding on multipart"])
    }
}
