import NIOCore
import XCTest

@testable import PosternMIME

final class SubjectTaggerTests: XCTestCase {
    /// The tagged header section of `header` (a complete section followed by a body).
    private func tagged(_ message: String, _ tags: [String] = ["[T]"]) -> String? {
        let section = MessageHeaderSection(parsing: Array(message.utf8))
        return SubjectTagger.tag(section, tags: tags).map { String(decoding: $0, as: UTF8.self) }
    }

    func testRewrites() {
        // (header section, tags, expected section)
        let cases: [(String, [String], String)] = [
            ("Subject: hello\r\nTo: x\r\n\r\n", ["[SPAM]"], "Subject: [SPAM] hello\r\nTo: x\r\n\r\n"),
            ("From: a\r\nSubject: hello\r\n\r\n", ["[T1]", "[T2]"], "From: a\r\nSubject: [T1] [T2] hello\r\n\r\n"),
            // Folded: only the first line changes.
            ("Subject: hello\r\n world\r\n\tagain\r\nTo: x\r\n\r\n", ["[T]"], "Subject: [T] hello\r\n world\r\n\tagain\r\nTo: x\r\n\r\n"),
            // Any case in; "Subject:" out.
            ("subject: lower\r\n\r\n", ["[T]"], "Subject: [T] lower\r\n\r\n"),
            ("SUBJECT: upper\r\n\r\n", ["[T]"], "Subject: [T] upper\r\n\r\n"),
            // No space after the colon: two spaces after the tags (the former rewrite's octets).
            ("Subject:hi\r\n\r\n", ["[T]"], "Subject: [T]  hi\r\n\r\n"),
            // A tab after the colon becomes the space after the tags; a second blank stays.
            ("Subject:\thi\r\n\r\n", ["[T]"], "Subject: [T] hi\r\n\r\n"),
            ("Subject: \thi\r\n\r\n", ["[T]"], "Subject: [T] \thi\r\n\r\n"),
            ("Subject:  hi\r\n\r\n", ["[T]"], "Subject: [T]  hi\r\n\r\n"),
            ("Subject:\t\thi\r\n\r\n", ["[T]"], "Subject: [T] \thi\r\n\r\n"),
            // Empty Subjects.
            ("Subject:\r\n\r\n", ["[T]"], "Subject: [T]  \r\n\r\n"),
            ("Subject: \r\n\r\n", ["[T]"], "Subject: [T] \r\n\r\n"),
            // Only the first Subject.
            ("Subject: one\r\nSubject: two\r\n\r\n", ["[T]"], "Subject: [T] one\r\nSubject: two\r\n\r\n"),
            // Already tagged: tagged again, as before.
            ("Subject: [T] again\r\n\r\n", ["[T]"], "Subject: [T] [T] again\r\n\r\n"),
            // Encoded words and 8-bit octets are kept as they are; tags are written in UTF-8.
            ("Subject: =?utf-8?Q?caf=C3=A9?=\r\n\r\n", ["[späm]"], "Subject: [späm] =?utf-8?Q?caf=C3=A9?=\r\n\r\n"),
            ("Subject: café\r\n\r\n", ["[T]"], "Subject: [T] café\r\n\r\n"),
            // No Subject: one is added at the end, before the empty line.
            ("From: a\r\nTo: b\r\n\r\n", ["[T1]", "[T2]"], "From: a\r\nTo: b\r\nSubject: [T1] [T2]\r\n\r\n"),
            ("From: a\r\n folded\r\n\r\n", ["[T]"], "From: a\r\n folded\r\nSubject: [T]\r\n\r\n"),
            ("\r\n", ["[T]"], "Subject: [T]\r\n\r\n"),
            // Not Subjects: a space before the colon, a longer name, a continuation line.
            ("Subject : spaced\r\n\r\n", ["[T]"], "Subject : spaced\r\nSubject: [T]\r\n\r\n"),
            ("X-Subject: no\r\nSubjects: no\r\n\r\n", ["[T]"], "X-Subject: no\r\nSubjects: no\r\nSubject: [T]\r\n\r\n"),
            ("X-A: b\r\n Subject: no\r\n\r\n", ["[T]"], "X-A: b\r\n Subject: no\r\nSubject: [T]\r\n\r\n"),
            // After a line that is not a field.
            ("garbage\r\nSubject: late\r\n\r\n", ["[T]"], "garbage\r\nSubject: [T] late\r\n\r\n"),
        ]
        for (header, tags, expected) in cases {
            XCTAssertEqual(tagged(header + "Subject: in the body\r\n", tags), expected, header.debugDescription)
            XCTAssertEqual(tagged(header, tags), expected, header.debugDescription)
        }
    }

    func testBareLineFeedSections() {
        // The section ends at its own empty line, whatever the line ends.
        XCTAssertEqual(tagged("Subject: x\nTo: y\n\nbody\r\n\r\n"), "Subject: [T] x\nTo: y\n\n")
        XCTAssertEqual(tagged("To: y\n\nbody\r\n\r\n"), "To: y\nSubject: [T]\r\n\n")
    }

    func testIncompleteSectionsAreNotTagged() {
        XCTAssertNil(tagged(""))
        XCTAssertNil(tagged("Subject: x\r\n"))
        XCTAssertNil(tagged("Subject: x\r\nTo: y"))
        XCTAssertNil(tagged("Subject: x\r\n\r"))
        let capped = "Subject: x\r\nX-Filler: " + String(repeating: "f", count: MessageHeaderCollector.maximumHeaderBytes) + "\r\n\r\n"
        XCTAssertNil(tagged(capped), "past the cap")
    }

    func testSendingTheRewrittenSectionThenTheRest() {
        let message = Array("Received: x\r\nSubject: hi\r\n\r\nbody\r\n".utf8)
        var collector = MessageHeaderCollector()
        collector.feed(ByteBuffer(bytes: message[..<5]))
        collector.feed(ByteBuffer(bytes: message[5...]))
        let section = collector.section
        let sent = SubjectTagger.tag(section, tags: ["[T]"])! + message[section.length...]
        XCTAssertEqual(String(decoding: sent, as: UTF8.self), "Received: x\r\nSubject: [T] hi\r\n\r\nbody\r\n")
    }

    // MARK: Against the rewrite it replaces

    /// `SMTPSession.taggingSubject` at 137bc93, on bytes instead of spools: the oracle.
    private static func formerTagging(_ message: [UInt8], tags: [String]) -> [UInt8]? {
        let head = Array(message.prefix(256 * 1024))
        var end: Int?
        var index = 0
        while index + 1 < head.count {
            if head[index] == 13 && head[index + 1] == 10 && (index == 0 || (index >= 2 && head[index - 2] == 13 && head[index - 1] == 10)) {
                end = index
                break
            }
            index += 1
        }
        guard let end else { return nil }
        let section = head[..<end]
        let tag = tags.joined(separator: " ")
        var rewritten: [UInt8] = []
        var tagged = false
        var lineStart = section.startIndex
        while lineStart < section.endIndex {
            let lineEnd = section[lineStart...].firstIndex(of: 10).map { $0 + 1 } ?? section.endIndex
            let line = section[lineStart..<lineEnd]
            if !tagged, line.count >= 8, String(decoding: line.prefix(8), as: UTF8.self).lowercased() == "subject:" {
                rewritten += Array("Subject: \(tag)".utf8)
                var value = line.dropFirst(8)
                if value.first != 32 && value.first != 9 { rewritten.append(32) } else { value = value.dropFirst() }
                rewritten.append(32)
                rewritten += value
                tagged = true
            } else {
                rewritten += line
            }
            lineStart = lineEnd
        }
        if !tagged { rewritten += Array("Subject: \(tag)\r\n".utf8) }
        return rewritten + message[end...]
    }

    func testSameOctetsAsTheFormerRewrite() {
        let lines = [
            "Subject: hello", "subject:hi", "SUBJECT:\tTabbed ", "Subject:", "Subject: ", "Subject : spaced", "Subject:  two",
            "sUbJeCt: mixed", "X-Subject: no", "To: a@b", " folded", "\tfolded tab", " Subject: folded", "garbage line",
            "From sender", "Subject: =?utf-8?Q?caf=C3=A9?=", "Subject: ét\r", ": empty name", "Subject:\r", "Subjec", "",
        ]
        let tagSets = [["[SPAM]"], ["[T1]", "[T2]"], ["***"], ["[späm]", "x"], [""]]
        var generator = MIMEFixture.SeededGenerator(seed: 2047)
        for _ in 0..<4000 {
            // CRLF only: DATA content reaches the tagger with bare line ends rejected or normalised.
            var message: [UInt8] = []
            for _ in 0..<Int.random(in: 0...12, using: &generator) {
                message += Array(lines.randomElement(using: &generator)!.utf8) + [13, 10]
            }
            if Int.random(in: 0..<5, using: &generator) == 0 { message += Array("trailing".utf8) }
            let tags = tagSets.randomElement(using: &generator)!
            let section = MessageHeaderSection(parsing: message)
            let rewritten = SubjectTagger.tag(section, tags: tags).map { $0 + message[section.length...] }
            XCTAssertEqual(rewritten, Self.formerTagging(message, tags: tags), String(decoding: message, as: UTF8.self).debugDescription)
        }
    }
}
