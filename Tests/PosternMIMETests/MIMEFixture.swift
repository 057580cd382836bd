import XCTest
@testable import PosternMIME

/// Builds test messages: lines joined with CRLF (or bare LF), parsed with default limits.
enum MIMEFixture {
    static func message(_ lines: [String], lineEnd: String = "\r\n") -> [UInt8] {
        Array(lines.joined(separator: lineEnd).utf8)
    }

    static func parse(
        _ lines: [String], lineEnd: String = "\r\n", limits: MIMELimits = .init(),
        file: StaticString = #filePath, line: UInt = #line
    ) -> MIMEMessage {
        parse(bytes: message(lines, lineEnd: lineEnd), limits: limits, file: file, line: line)
    }

    /// One plain parse, for the timed tests (their header sections are past the collector's
    /// cap, so there is no section to reuse, and a second parse would only double the time).
    static func parseOnce(_ lines: [String], limits: MIMELimits = .init()) -> MIMEMessage {
        MIMEMessage.parse(message(lines), limits: limits)
    }

    /// Parses `bytes` twice, once scanning the header section and once with the
    /// `MessageHeaderSection` the collector makes of it, asserts that both give the same
    /// message (so every fixture of every MIME test proves the one-scan path), and returns it.
    static func parse(
        bytes: [UInt8], limits: MIMELimits = .init(), file: StaticString = #filePath, line: UInt = #line
    ) -> MIMEMessage {
        let scanned = MIMEMessage.parse(bytes, limits: limits)
        let section = MessageHeaderSection(parsing: bytes)
        XCTAssertEqual(MIMEMessage.headerLineTable(section, for: bytes) != nil, section.isComplete,
                       "a complete section of these bytes is used", file: file, line: line)
        assertSame(MIMEMessage.parse(bytes, headerSection: section, limits: limits), scanned, file: file, line: line)
        return scanned
    }

    /// Every observable property of two parsed messages is equal.
    static func assertSame(_ actual: MIMEMessage, _ expected: MIMEMessage, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.headers, expected.headers, "headers", file: file, line: line)
        XCTAssertEqual(actual.attachmentDetails, expected.attachmentDetails, "attachments", file: file, line: line)
        XCTAssertEqual(actual.malformations, expected.malformations, "malformations", file: file, line: line)
        XCTAssertEqual(actual.raw, expected.raw, "raw", file: file, line: line)
        XCTAssertEqual(actual.parts.count, expected.parts.count, "parts", file: file, line: line)
        for (index, (a, b)) in zip(actual.parts, expected.parts).enumerated() {
            let context = "part \(index)"
            XCTAssertEqual(a.headers, b.headers, context, file: file, line: line)
            XCTAssertEqual(a.contentType, b.contentType, context, file: file, line: line)
            XCTAssertEqual(a.parameters, b.parameters, context, file: file, line: line)
            XCTAssertEqual(a.disposition, b.disposition, context, file: file, line: line)
            XCTAssertEqual(a.dispositionParameters, b.dispositionParameters, context, file: file, line: line)
            XCTAssertEqual(a.filename, b.filename, context, file: file, line: line)
            XCTAssertEqual(a.filenames, b.filenames, context, file: file, line: line)
            XCTAssertEqual(a.transferEncoding, b.transferEncoding, context, file: file, line: line)
            XCTAssertEqual(a.decodedText, b.decodedText, context, file: file, line: line)
            XCTAssertEqual(a.plainText, b.plainText, context, file: file, line: line)
            XCTAssertEqual(a.isTextTruncated, b.isTextTruncated, context, file: file, line: line)
            XCTAssertEqual(a.isAttachment, b.isAttachment, context, file: file, line: line)
            XCTAssertEqual(a.depth, b.depth, context, file: file, line: line)
            XCTAssertEqual(a.encodedBody.indices, b.encodedBody.indices, context, file: file, line: line)
            XCTAssertEqual(a.encodedBody, b.encodedBody, context, file: file, line: line)
            XCTAssertEqual(a.malformations, b.malformations, context, file: file, line: line)
        }
    }

    /// A deterministic generator (SplitMix64), so fuzz failures reproduce.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }
}
