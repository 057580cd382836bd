import XCTest
@testable import PosternMIME

/// Every limit in `MIMELimits`, stressed.
final class MIMELimitTests: XCTestCase {
    func testDefaults() {
        let limits = MIMELimits()
        XCTAssertEqual(limits.maximumNestingDepth, 20)
        XCTAssertEqual(limits.maximumParts, 1000)
        XCTAssertEqual(limits.maximumTextScanBytes, 1_048_576)
        XCTAssertEqual(limits.maximumHeaderBytes, 262_144)
    }

    func testNestingBombStopsAtTheCap() {
        let depth = 1000
        var lines: [String] = []
        for level in 0..<depth {
            lines += ["Content-Type: multipart/mixed; boundary=\"level\(level)\"", "", "--level\(level)"]
        }
        lines += ["Content-Type: text/plain", "", "innermost"]
        for level in (0..<depth).reversed() { lines.append("--level\(level)--") }

        let start = Date()
        let message = MIMEFixture.parse(lines)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        XCTAssertTrue(message.malformations.contains("nesting deeper than 20"), "\(message.malformations)")
        XCTAssertEqual(message.parts.count, 1)
        XCTAssertEqual(message.parts[0].depth, 20)
        // Not descended, but still scanned as text.
        XCTAssertEqual(message.parts[0].contentType, "text/plain")
        XCTAssertTrue(message.parts[0].decodedText?.contains("innermost") ?? false)
    }

    func testMessageNestingBombStopsAtTheCap() {
        var bytes: [UInt8] = []
        for _ in 0..<500 { bytes += Array("Content-Type: message/rfc822\r\n\r\n".utf8) }
        bytes += Array("Subject: deep\r\n\r\nbottom".utf8)
        let message = MIMEFixture.parse(bytes: bytes, limits: MIMELimits(maximumNestingDepth: 5))
        XCTAssertEqual(message.malformations, ["nesting deeper than 5"])
        XCTAssertEqual(message.parts.count, 1)
        XCTAssertEqual(message.parts[0].depth, 5)
    }

    func testTenThousandPartsAreCapped() {
        var lines = ["Content-Type: multipart/mixed; boundary=p", ""]
        for index in 0..<10_000 { lines += ["--p", "Content-Type: text/plain", "", "part \(index)"] }
        lines.append("--p--")
        let start = Date()
        let message = MIMEFixture.parse(lines)
        XCTAssertLessThan(Date().timeIntervalSince(start), 20)
        XCTAssertEqual(message.parts.count, 999)   // the multipart itself is the 1000th entity
        XCTAssertEqual(message.textBodies.first, "part 0")
        XCTAssertEqual(message.textBodies.last, "part 998")
        XCTAssertEqual(message.malformations, ["more than 1000 parts"])
    }

    func testPartCapCountsNestedEntities() {
        var lines = ["Content-Type: multipart/mixed; boundary=outer", ""]
        for group in 0..<10 {
            lines += ["--outer", "Content-Type: multipart/mixed; boundary=g\(group)", ""]
            for index in 0..<10 { lines += ["--g\(group)", "", "\(group).\(index)"] }
            lines.append("--g\(group)--")
        }
        lines.append("--outer--")
        let message = MIMEFixture.parse(lines, limits: MIMELimits(maximumParts: 25))
        // outer, group 0 and its 10 leaves, group 1 and its 10, group 2 and 1 leaf: 25 entities.
        XCTAssertEqual(message.parts.count, 21)
        XCTAssertEqual(message.textBodies.last, "2.0")
        XCTAssertEqual(message.malformations, ["more than 25 parts"])
    }

    func testLargeTextPartIsScannedUpToTheCap() {
        let line = String(repeating: "a", count: 99) + "\r\n"
        let body = String(repeating: line, count: 5 * 1024 * 1024 / 100)
        let bytes = Array(("Content-Type: text/plain\r\n\r\n" + body + "NEEDLE at the end").utf8)
        XCTAssertGreaterThan(bytes.count, 5_000_000)
        let start = Date()
        let message = MIMEMessage.parse(bytes)
        XCTAssertLessThan(Date().timeIntervalSince(start), 20)
        MIMEFixture.assertSame(MIMEMessage.parse(bytes, headerSection: MessageHeaderSection(parsing: bytes)), message)
        let part = message.parts[0]
        XCTAssertTrue(part.isTextTruncated)
        XCTAssertEqual(part.encodedBody.count, bytes.count - "Content-Type: text/plain\r\n\r\n".utf8.count)
        let text = part.decodedText ?? ""
        XCTAssertFalse(text.contains("NEEDLE"))
        XCTAssertEqual(text.utf8.count, 1_048_576 / 101 * 100 + 1_048_576 % 101)
        XCTAssertEqual(message.malformations, ["text part truncated at 1048576 bytes"])
        XCTAssertEqual(part.malformations, ["text part truncated at 1048576 bytes"])
    }

    func testScanCapDoesNotFlagCutEncodings() {
        let limits = MIMELimits(maximumTextScanBytes: 10)
        let base64 = MIMEFixture.parse(["Content-Transfer-Encoding: base64", "", "SGVsbG8sIHdvcmxkIQ=="], limits: limits)
        XCTAssertEqual(base64.textBodies, ["Hello, "])
        XCTAssertEqual(base64.malformations, ["text part truncated at 10 bytes"])

        let qp = MIMEFixture.parse(["Content-Transfer-Encoding: quoted-printable", "", "abcdefgh=C3=A9"], limits: limits)
        XCTAssertEqual(qp.textBodies, ["abcdefgh"])
        XCTAssertEqual(qp.malformations, ["text part truncated at 10 bytes"])

        // A UTF-8 sequence cut in half is dropped, not replaced.
        let utf8 = MIMEFixture.parse(bytes: Array("Content-Type: text/plain; charset=utf-8\r\n\r\n123456789".utf8) + [0xE2, 0x82, 0xAC], limits: limits)
        XCTAssertEqual(utf8.textBodies, ["123456789"])
    }
}

/// Inputs built to make a careless parser quadratic finish quickly.
final class MIMEPathologicalInputTests: XCTestCase {
    private func assertFast(_ name: String, seconds: TimeInterval = 10, _ body: () -> Void) {
        let start = Date()
        body()
        XCTAssertLessThan(Date().timeIntervalSince(start), seconds, name)
    }

    func testEncodedWordsThatNeverEnd() {
        let subject = String(repeating: "=?u?q?a", count: 30_000)
        assertFast("unterminated encoded words") {
            let message = MIMEFixture.parseOnce(["Subject: " + subject, "", "b"])
            XCTAssertEqual(message.subject, subject)
        }
    }

    func testManyParameters() {
        let parameters = (0..<30_000).map { "p\($0)=v; filename=f\($0); name*\($0)=n" }.joined(separator: "; ")
        assertFast("many parameters") {
            let message = MIMEFixture.parseOnce(["Content-Type: application/zip; " + parameters,
                                                 "Content-Disposition: attachment; " + parameters, "", "b"],
                                                limits: MIMELimits(maximumHeaderBytes: 8 << 20))
            XCTAssertEqual(message.malformations, [])
            // 30,000 filename= values, then the name*N sections joined into one name.
            XCTAssertEqual(message.parts[0].filenames.count, 30_001)
            XCTAssertEqual(message.parts[0].filenames.last, String(repeating: "n", count: 30_000))
            XCTAssertEqual(message.parts[0].filename, "f0")
        }
    }

    func testManyHeaderLinesAndDelimiterLookalikes() {
        var lines = (0..<20_000).map { "X-H\($0): v" }
        lines += ["Content-Type: multipart/mixed; boundary=b", ""]
        lines += Array(repeating: "--bx", count: 50_000)
        lines += ["--b", "", "t", "--b--"]
        assertFast("header lines and near-delimiters") {
            let message = MIMEFixture.parseOnce(lines)
            XCTAssertEqual(message.headers.count, 20_001)
            XCTAssertEqual(message.textBodies, ["t"])
        }
    }
}
