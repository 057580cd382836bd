import NIOCore
import XCTest

@testable import PosternMIME

final class MessageHeaderSectionTests: XCTestCase {
    private func section(_ text: String) -> MessageHeaderSection {
        MessageHeaderSection(parsing: Array(text.utf8))
    }

    /// Feeds `bytes` in pieces cut at `cuts` (offsets), as the session streams content.
    private func streamed(_ bytes: [UInt8], cuts: [Int]) -> MessageHeaderCollector {
        var collector = MessageHeaderCollector()
        var start = 0
        for cut in cuts.sorted() + [bytes.count] where cut >= start {
            collector.feed(ByteBuffer(bytes: bytes[start..<cut]))
            start = cut
        }
        return collector
    }

    func testFieldsNamesRangesAndValues() {
        let header = "From: Alice <a@b.example>\r\nSubject:  Hello \r\n there\r\n\tagain \r\nX-Empty:\r\nto:c@d.example\r\n\r\n"
        let section = section(header + "Subject: body\r\n")
        XCTAssertTrue(section.isComplete)
        XCTAssertEqual(section.length, header.utf8.count)
        XCTAssertEqual(section.bytes, Array(header.utf8), "nothing past the empty line")
        XCTAssertEqual(section.fields.map(\.name), ["From", "Subject", "X-Empty", "to"])
        XCTAssertEqual(section.fields.map(\.value), ["Alice <a@b.example>", "Hello  there again", "", "c@d.example"])
        let texts = section.fields.map { String(decoding: section.bytes[$0.range], as: UTF8.self) }
        XCTAssertEqual(texts, [
            "From: Alice <a@b.example>\r\n", "Subject:  Hello \r\n there\r\n\tagain \r\n", "X-Empty:\r\n", "to:c@d.example\r\n",
        ])
        XCTAssertEqual(section.value(of: "SUBJECT"), "Hello  there again")
        XCTAssertEqual(section.field(named: "To")?.name, "to")
        XCTAssertNil(section.value(of: "Date"))
    }

    func testLinesThatAreNotFields() {
        // A line with no colon ends the field before it and is skipped, and so is a
        // continuation with nothing to continue, as the collector always read them.
        let section = section(" orphan\r\nSubject: one\r\ngarbage line\r\n continued garbage\r\nTo: x\r\n\r\n")
        XCTAssertTrue(section.isComplete)
        XCTAssertEqual(section.fields.map(\.name), ["Subject", "To"])
        XCTAssertEqual(section.value(of: "Subject"), "one")
        XCTAssertEqual(section.fields[0].range, 9..<23)
        XCTAssertEqual(self.section("Subject : spaced\r\n\r\n").fields.map(\.name), ["Subject "])
        XCTAssertEqual(self.section(": no name\r\n\r\n").value(of: ""), "no name")
    }

    func testDecodedValue() {
        let section = section("Subject: =?utf-8?q?caf=C3=A9?= =?utf-8?B?IGF1IGxhaXQ=?=\r\nMessage-ID: <a=?x?=@b>\r\n\r\n")
        XCTAssertEqual(section.value(of: "subject"), "=?utf-8?q?caf=C3=A9?= =?utf-8?B?IGF1IGxhaXQ=?=")
        XCTAssertEqual(section.decodedValue(of: "subject"), "café au lait")
        XCTAssertEqual(section.decodedValue(of: "Subject"), MIMEMessage.decodeHeaderValue(section.value(of: "Subject")!))
        XCTAssertNil(section.decodedValue(of: "Date"))
    }

    func testNamesCompareWithoutCase() {
        let section = section("X-ÄNDERUNG: umlaut\r\nContent-TYPE: text/plain\r\n\r\n")
        XCTAssertEqual(section.value(of: "content-type"), "text/plain")
        XCTAssertEqual(section.value(of: "x-änderung"), "umlaut")
        XCTAssertNil(section.value(of: "content-typ"))
        XCTAssertNil(section.value(of: "content-types"))
    }

    func testBareLineFeeds() {
        let lf = section("Subject: bare\nX-Folded: a\n b\n\nbody\n")
        XCTAssertTrue(lf.isComplete)
        XCTAssertEqual(lf.length, "Subject: bare\nX-Folded: a\n b\n\n".utf8.count)
        XCTAssertEqual(lf.value(of: "x-folded"), "a b")
        XCTAssertEqual(lf.fields.last?.range, 14..<29)
        // A CRLF empty line after a bare LF, and the other way round.
        XCTAssertEqual(section("Subject: x\n\r\nbody").length, 13)
        XCTAssertEqual(section("Subject: x\r\n\nbody").length, 13)
        // A bare LF or a CRLF first: no header fields at all.
        XCTAssertEqual(section("\nSubject: body").length, 1)
        XCTAssertEqual(section("\r\nSubject: body").length, 2)
        XCTAssertTrue(section("\r\n").fields.isEmpty)
        // CR CR LF is not an empty line, and a bare CR stays in the value.
        let cr = section("Subject: a\r\n\r\r\nTo: b\r\r\n\r\nbody")
        XCTAssertEqual(cr.length, "Subject: a\r\n\r\r\nTo: b\r\r\n\r\n".utf8.count)
        XCTAssertEqual(cr.value(of: "To"), "b\r")
    }

    func testIncompleteSections() {
        let none = section("")
        XCTAssertFalse(none.isComplete)
        XCTAssertTrue(none.fields.isEmpty)
        let partial = section("Subject: partial\r\nTo: y")
        XCTAssertFalse(partial.isComplete)
        XCTAssertEqual(partial.length, partial.bytes.count)
        XCTAssertEqual(partial.value(of: "Subject"), "partial")
        XCTAssertEqual(partial.value(of: "To"), "y", "the last line has no line end yet")
        XCTAssertEqual(partial.fields.last?.range, 18..<23)
        XCTAssertEqual(section("Subject: x\r\nTo: y\r").value(of: "To"), "y")
    }

    func testStreamingMatchesWholeInAnyPieces() {
        let header = "Subject: =?utf-8?q?a?=\r\n b\r\nTo: c\nX: \r\n\r\n"
        let message = Array((header + "body\r\n\r\nX: late\r\n").utf8)
        let whole = MessageHeaderSection(parsing: message)
        XCTAssertTrue(whole.isComplete)
        XCTAssertEqual(whole.length, header.utf8.count)
        XCTAssertEqual(whole.value(of: "subject"), "=?utf-8?q?a?= b")
        // Every single cut, and every byte on its own.
        for cut in 0...message.count {
            XCTAssertEqual(streamed(message, cuts: [cut]).section, whole, "cut at \(cut)")
        }
        XCTAssertEqual(streamed(message, cuts: Array(0...message.count)).section, whole)
        // The CR of the empty line in one piece, its LF in the next.
        XCTAssertEqual(streamed(message, cuts: [header.utf8.count - 1]).section, whole)
        XCTAssertEqual(MessageHeaderSection(parsing: message[...]), whole, "a collection that is not an Array")
        XCTAssertEqual(MessageHeaderSection(parsing: AnySequenceCollection(message)), whole)
    }

    func testCollectorKeepsItsSectionOnceDone() {
        var collector = MessageHeaderCollector()
        XCTAssertFalse(collector.isComplete)
        collector.feed(ByteBuffer(string: "Subject: x\r\n"))
        XCTAssertFalse(collector.isComplete)
        XCTAssertFalse(collector.section.isComplete)
        XCTAssertEqual(collector.section.value(of: "Subject"), "x", "answers before the end")
        collector.feed(ByteBuffer(string: "\r\nbody"))
        XCTAssertTrue(collector.isComplete)
        let done = collector.section
        collector.feed(ByteBuffer(string: "Late: field\r\n\r\n"))
        XCTAssertEqual(collector.section, done)
        XCTAssertEqual(done.bytes, Array("Subject: x\r\n\r\n".utf8))
        // Feeding an empty piece, or a buffer read part-way, is fine.
        var partly = MessageHeaderCollector()
        partly.feed(ByteBuffer())
        var buffer = ByteBuffer(string: "ignored:Subject: y\r\n\r\n")
        buffer.moveReaderIndex(forwardBy: 8)
        partly.feed(buffer)
        XCTAssertEqual(partly.section.bytes, Array("Subject: y\r\n\r\n".utf8))
    }

    // MARK: The 64 KiB cap

    /// A section of exactly `length` octets: a Subject, one filler field, the empty line.
    private func header(length: Int) -> [UInt8] {
        let fixed = "Subject: cap\r\n".utf8.count + "X-Filler: \r\n".utf8.count + 2
        return Array(("Subject: cap\r\nX-Filler: " + String(repeating: "f", count: length - fixed) + "\r\n\r\n").utf8)
    }

    func testSectionEndingAtTheCapIsComplete() {
        let cap = MessageHeaderCollector.maximumHeaderBytes
        XCTAssertEqual(cap, 65536)
        let exact = header(length: cap)
        let body = Array("body\r\n".utf8)
        for cuts in [[], [cap - 1], [cap - 2], [1000, 40000]] {
            let collector = streamed(exact + body, cuts: cuts)
            XCTAssertTrue(collector.isComplete)
            XCTAssertTrue(collector.section.isComplete, "the empty line's LF is the last octet within the cap")
            XCTAssertEqual(collector.section.length, cap)
            XCTAssertEqual(collector.section.bytes, exact)
            XCTAssertEqual(collector.section.value(of: "Subject"), "cap")
            XCTAssertNotNil(SubjectTagger.tag(collector.section, tags: ["[T]"]))
        }
    }

    func testSectionPastTheCapIsIncompleteAndNotCopiedFurther() {
        let cap = MessageHeaderCollector.maximumHeaderBytes
        // One octet too many: the empty line's CR is within the cap, its LF is not.
        let oneOver = streamed(header(length: cap + 1), cuts: [])
        XCTAssertTrue(oneOver.isComplete)
        XCTAssertFalse(oneOver.section.isComplete)
        XCTAssertEqual(oneOver.section.bytes, Array(header(length: cap + 1).prefix(cap)))
        XCTAssertEqual(oneOver.section.fields.last?.range.upperBound, cap - 1)

        let over = header(length: cap + 100)
        for cuts in [[], [cap], [cap - 1], [1000, 40000]] {
            var collector = streamed(over + Array("body".utf8), cuts: cuts)
            XCTAssertTrue(collector.isComplete, "collecting has stopped")
            let section = collector.section
            XCTAssertFalse(section.isComplete)
            XCTAssertEqual(section.bytes, Array(over.prefix(cap)), "exactly the cap is kept")
            XCTAssertEqual(section.length, cap)
            XCTAssertEqual(section.value(of: "Subject"), "cap")
            XCTAssertEqual(section.fields.last?.range.upperBound, cap, "the cut filler line is still a field")
            XCTAssertNil(SubjectTagger.tag(section, tags: ["[T]"]))
            collector.feed(ByteBuffer(string: "\r\n\r\n"))
            XCTAssertEqual(collector.section, section)
        }
        // One piece far larger than the cap.
        let huge = Array(repeating: UInt8(ascii: "x"), count: 3 * cap)
        XCTAssertEqual(streamed(huge, cuts: []).section.bytes.count, cap)
        XCTAssertEqual(MessageHeaderSection(parsing: huge).bytes.count, cap)
    }

    // MARK: Against the collector as it was

    /// `MessageHeaderCollector` before the one-scan rework (137bc93), kept to compare against.
    private struct LegacyCollector {
        var collected: [UInt8] = []
        var isComplete = false

        mutating func feed(_ content: [UInt8]) {
            guard !isComplete else { return }
            for byte in content {
                collected.append(byte)
                let count = collected.count
                if count >= 2 && collected[count - 1] == 10 && collected[count - 2] == 10 {
                    isComplete = true
                } else if count >= 4 && collected[count - 1] == 10 && collected[count - 2] == 13 && collected[count - 3] == 10 {
                    isComplete = true
                } else if count == 2 && collected == [13, 10] {
                    isComplete = true
                }
                if isComplete || count >= 65536 {
                    isComplete = true
                    return
                }
            }
        }

        func value(of name: String) -> String? {
            let wanted = name.lowercased() + ":"
            var current: String?
            for rawLine in collected.split(separator: 10, omittingEmptySubsequences: false) {
                var bytes = rawLine
                if bytes.last == 13 { bytes = bytes.dropLast() }
                let line = Substring(String(decoding: bytes, as: UTF8.self))
                if line.isEmpty { break }
                if let first = line.first, first == " " || first == "\t" {
                    if current != nil { current! += " " + Self.trim(line) }
                    continue
                }
                if let current { return Self.trim(current) }
                if line.lowercased().hasPrefix(wanted) { current = String(line.dropFirst(wanted.count)) }
            }
            return current.map { Self.trim($0) }
        }

        static func trim<S: StringProtocol>(_ text: S) -> String {
            var view = Substring(text)
            while let first = view.first, first == " " || first == "\t" { view = view.dropFirst() }
            while let last = view.last, last == " " || last == "\t" { view = view.dropLast() }
            return String(view)
        }
    }

    private static let lines = [
        "Subject: hello", "subject:hi", "SUBJECT:\tTabbed ", "Subject:", "Subject : spaced", "Message-ID: <1@x>",
        "To: a@b", " folded", "\tfolded tab", "  ", "garbage line", "From sender", "X-Subject: no", "Received: one",
        "Subject: =?utf-8?Q?caf=C3=A9?=", "Subject: ét\u{e9}", ": empty name", "x:\r", "", "\r",
    ]

    func testSameAnswersAsTheFormerCollector() {
        var generator = MIMEFixture.SeededGenerator(seed: 5322)
        let names = ["Subject", "subject", "Message-ID", "To", "X-Subject", "Received", "", "From sender", "x"]
        for round in 0..<3000 {
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 0...10, using: &generator) {
                bytes += Array(Self.lines.randomElement(using: &generator)!.utf8)
                bytes += Bool.random(using: &generator) || round.isMultiple(of: 3) ? [13, 10] : [10]
                if Int.random(in: 0..<8, using: &generator) == 0 { bytes.append(UInt8.random(in: 0...255, using: &generator)) }
            }
            var legacy = LegacyCollector()
            legacy.feed(bytes)
            let cuts = (0..<Int.random(in: 0...3, using: &generator)).map { _ in Int.random(in: 0...bytes.count, using: &generator) }
            let collector = streamed(bytes, cuts: cuts)
            let section = collector.section
            XCTAssertEqual(section, MessageHeaderSection(parsing: bytes))
            for name in names {
                XCTAssertEqual(collector.value(of: name), legacy.value(of: name), "\(name) in \(String(decoding: bytes, as: UTF8.self).debugDescription)")
            }
            if bytes.first == 10 {
                // The former collector missed a bare-LF empty line as the very first line.
                XCTAssertTrue(section.isComplete)
                XCTAssertEqual(section.length, 1)
            } else {
                XCTAssertEqual(collector.isComplete, legacy.isComplete)
                XCTAssertEqual(section.bytes, legacy.collected)
                XCTAssertEqual(section.isComplete, legacy.isComplete, "these inputs are far below the cap")
            }
        }
    }
}

/// A collection without contiguous storage, for `init(parsing:)`'s other path.
private struct AnySequenceCollection: Collection {
    let base: [UInt8]
    init(_ base: [UInt8]) { self.base = base }
    var startIndex: Int { base.startIndex }
    var endIndex: Int { base.endIndex }
    subscript(position: Int) -> UInt8 { base[position] }
    func index(after i: Int) -> Int { i + 1 }
}
