import NIOCore
import XCTest

@testable import PosternMIME

/// `MIMEMessage.parse(_:headerSection:limits:)`: the top level read from the collector's
/// section gives the message `parse(_:limits:)` gives. (Every `MIMEFixture.parse` in the
/// other MIME tests checks this too, for every fixture.)
final class MIMEHeaderSectionReuseTests: XCTestCase {
    private let multipart = MIMEFixture.message([
        "Received: from a by b;",
        "\tMon, 1 Jan 2024 00:00:00 +0000",
        "Subject: =?utf-8?B?w6k=?= report",
        "Message-ID: <1@example.org>",
        "Content-Type: multipart/mixed; boundary=\"o\"",
        "",
        "--o",
        "Content-Type: text/plain; charset=iso-8859-1",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        "caf=E9",
        "--o",
        "Content-Type: application/pdf; name=\"r.pdf\"",
        "Content-Transfer-Encoding: base64",
        "",
        "JVBERi0xLjQK",
        "--o--",
        "",
    ])

    func testStreamedSectionIsUsed() {
        var collector = MessageHeaderCollector()
        for start in stride(from: 0, to: multipart.count, by: 7) {
            collector.feed(ByteBuffer(bytes: multipart[start..<min(start + 7, multipart.count)]))
        }
        let section = collector.section
        XCTAssertTrue(section.isComplete)
        XCTAssertEqual(MIMEMessage.headerLineTable(section, for: multipart), section.lineEnds)
        let reused = MIMEMessage.parse(multipart, headerSection: section)
        MIMEFixture.assertSame(reused, MIMEMessage.parse(multipart))
        XCTAssertEqual(reused.subject, "é report")
        XCTAssertEqual(reused.subject, section.decodedValue(of: "Subject"))
        XCTAssertEqual(reused.headers.map(\.name), ["Received", "Subject", "Message-ID", "Content-Type"])
        XCTAssertEqual(reused.attachments.map(\.name), ["r.pdf"])
        XCTAssertEqual(reused.textBodies, ["café"])
    }

    func testTheLineTableDrivesTheTopLevel() {
        // White box: a table that disagrees with the octets shows that it is what is read.
        let bytes = Array("A: 1\r\nB: 2\r\n\r\nbody".utf8)
        let honest = MessageHeaderSection(parsing: bytes)
        XCTAssertEqual(honest.lineEnds, [6, 12, 14])
        let skewed = MessageHeaderSection(bytes: honest.bytes, lineEnds: [12, 14], isComplete: true)
        let message = MIMEMessage.parse(bytes, headerSection: skewed)
        XCTAssertEqual(message.headers.map(\.name), ["A"])
        XCTAssertEqual(message.headers.first?.rawValue, "1\r\nB: 2")
        XCTAssertEqual(MIMEMessage.parse(bytes, headerSection: honest).headers.map(\.name), ["A", "B"])
    }

    func testSectionsThatCannotStandForTheMessageAreIgnored() {
        let other = MessageHeaderSection(parsing: Array("Subject: other\r\n\r\n".utf8))
        let incomplete = MessageHeaderSection(parsing: multipart.prefix(40))
        let longer = MessageHeaderSection(parsing: multipart)
        XCTAssertFalse(incomplete.isComplete)
        let shortMessage = Array(multipart.prefix(longer.length - 1))
        for (section, bytes) in [(other, multipart), (incomplete, multipart), (longer, shortMessage)] {
            XCTAssertNil(MIMEMessage.headerLineTable(section, for: bytes))
            MIMEFixture.assertSame(MIMEMessage.parse(bytes, headerSection: section), MIMEMessage.parse(bytes))
        }
        MIMEFixture.assertSame(MIMEMessage.parse(multipart, headerSection: nil), MIMEMessage.parse(multipart))
        XCTAssertEqual(MIMEMessage.parse(multipart, headerSection: other).subject, "é report")
    }

    /// Top-level oddities the MIME parser reads its own way; each through `MIMEFixture.parse`,
    /// which asserts the same message both ways and that the section was used.
    func testTopLevelOddities() {
        let cases: [[String]] = [
            ["From sender@example.org Mon Jan  1 00:00:00 2024", "Subject: mbox", "", "body"],
            ["Subject: a", "garbage line", "Subject: b", "", "body"],
            [" orphan continuation", "Subject: x", "", "body"],
            ["Subject : spaced", "Sub ject: not a name", "", "body"],
            ["Subject: folded", " twice", "\tand tabbed", "Content-Type: text/html", "", "<p>x</p>"],
            ["", "Subject: in the body"],
            ["Subject: no body", ""],
            ["Content-Type: message/rfc822", "", "Subject: inner", "", "inner body"],
        ]
        for lines in cases {
            for lineEnd in ["\r\n", "\n"] {
                _ = MIMEFixture.parse(lines, lineEnd: lineEnd)
                _ = MIMEFixture.parse(lines, lineEnd: lineEnd, limits: MIMELimits(maximumHeaderBytes: 20))
            }
        }
        // Mixed line ends, 8-bit octets, and a bare LF first line.
        _ = MIMEFixture.parse(bytes: Array("Subject: x\n\r\nbody".utf8))
        _ = MIMEFixture.parse(bytes: Array("Subject: ".utf8) + [0xE9, 0xFF] + Array("\r\n\r\nbody".utf8))
        _ = MIMEFixture.parse(bytes: Array("\nSubject: body".utf8))
    }

    func testHeaderBudgetSmallerThanTheSection() {
        let lines = (0..<50).map { "X-Filler-\($0): " + String(repeating: "x", count: 40) } + ["Subject: late", "", "body"]
        for budget in [0, 1, 100, 1000, 2000, 100_000] {
            let message = MIMEFixture.parse(lines, limits: MIMELimits(maximumHeaderBytes: budget))
            XCTAssertEqual(message.textBodies, ["body"], "budget \(budget)")
        }
    }

    func testSectionsPastTheCollectorCap() {
        // Complete for the MIME parser (256 KiB budget), not for the collector (64 KiB): scanned.
        let lines = ["Subject: big", "X-Filler: " + String(repeating: "f", count: MessageHeaderCollector.maximumHeaderBytes), "", "body"]
        let message = MIMEFixture.parse(lines)
        XCTAssertEqual(message.subject, "big")
        XCTAssertEqual(message.textBodies, ["body"])
        XCTAssertFalse(MessageHeaderSection(parsing: MIMEFixture.message(lines)).isComplete)
    }
}
