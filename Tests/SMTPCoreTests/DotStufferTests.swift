import NIOCore
import XCTest

@testable import SMTPCore

final class DotStufferTests: XCTestCase {
    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// Stuffs `pieces` as consecutive chunks of one message and finishes it.
    func stuff(_ pieces: [[UInt8]]) -> [UInt8] {
        var stuffer = DotStuffer()
        var output = ByteBuffer()
        for piece in pieces { stuffer.stuff(ByteBuffer(bytes: piece), into: &output) }
        stuffer.finish(into: &output)
        return output.bytes
    }

    func testFixtures() {
        let table: [(String, String)] = [
            ("", ".\r\n"),
            ("a\r\n", "a\r\n.\r\n"),
            (".\r\n", "..\r\n.\r\n"),
            ("..\r\n", "...\r\n.\r\n"),
            (".a\r\n", "..a\r\n.\r\n"),
            ("a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"),
            ("a.b\r\n", "a.b\r\n.\r\n"),
            ("a\r\n.b\r\n.c\r\n", "a\r\n..b\r\n..c\r\n.\r\n"),
            ("\r\n.\r\n", "\r\n..\r\n.\r\n"),
            // Not ending in CRLF: a CRLF is added before the terminator.
            ("abc", "abc\r\n.\r\n"),
            (".", "..\r\n.\r\n"),
            ("a\r\n.", "a\r\n..\r\n.\r\n"),
            ("a\r", "a\r\r\n.\r\n"),
            // Only CRLF starts a line: a dot after a bare LF or CR is left alone.
            ("a\n.b\r\n", "a\n.b\r\n.\r\n"),
            ("a\r.b\r\n", "a\r.b\r\n.\r\n"),
            ("a\r\r\n.b\r\n", "a\r\r\n..b\r\n.\r\n"),
        ]
        for (content, expected) in table {
            XCTAssertEqual(stuff([bytes(content)]), bytes(expected), content.debugDescription)
            // Byte by byte gives the same bytes.
            XCTAssertEqual(stuff(bytes(content).map { [$0] }), bytes(expected), "byte by byte: \(content.debugDescription)")
        }
    }

    func testAcrossChunkBoundaries() {
        // CRLF ends one chunk, the dot starts the next.
        XCTAssertEqual(stuff([bytes("a\r\n"), bytes(".b\r\n")]), bytes("a\r\n..b\r\n.\r\n"))
        // CR ends one chunk, LF and the dot start the next.
        XCTAssertEqual(stuff([bytes("a\r"), bytes("\n.b\r\n")]), bytes("a\r\n..b\r\n.\r\n"))
        // The dot alone in its chunk.
        XCTAssertEqual(stuff([bytes("a\r\n"), bytes("."), bytes("\r\n")]), bytes("a\r\n..\r\n.\r\n"))
        // A dot that starts the first chunk.
        XCTAssertEqual(stuff([bytes("."), bytes(".\r\n")]), bytes("...\r\n.\r\n"))
        // Empty chunks change nothing.
        XCTAssertEqual(stuff([bytes("a\r\n"), [], bytes(".b\r\n"), []]), bytes("a\r\n..b\r\n.\r\n"))
        // A CR, then a chunk starting with something other than LF: no line start.
        XCTAssertEqual(stuff([bytes("a\r"), bytes(".b\r\n")]), bytes("a\r.b\r\n.\r\n"))
        // LF alone in a chunk after CR.
        XCTAssertEqual(stuff([bytes("a\r"), bytes("\n"), bytes(".")]), bytes("a\r\n..\r\n.\r\n"))
    }

    func testFinishResetsForTheNextMessage() {
        var stuffer = DotStuffer()
        var output = ByteBuffer()
        stuffer.stuff(ByteBuffer(string: "a"), into: &output)
        stuffer.finish(into: &output)
        stuffer.stuff(ByteBuffer(string: ".b\r\n"), into: &output)
        stuffer.finish(into: &output)
        XCTAssertEqual(output.text, "a\r\n.\r\n..b\r\n.\r\n")
    }

    func testOutputIsAppended() {
        var stuffer = DotStuffer()
        var output = ByteBuffer(string: "DATA\r\n")
        stuffer.stuff(ByteBuffer(string: ".x\r\n"), into: &output)
        XCTAssertEqual(output.text, "DATA\r\n..x\r\n")
    }

    func testManyDotLinesStress() {
        let content = Array(repeating: bytes(".\r\n"), count: 10_000).joined()
        let stuffed = stuff([Array(content)])
        XCTAssertEqual(stuffed, Array(Array(repeating: bytes("..\r\n"), count: 10_000).joined()) + bytes(".\r\n"))
    }

    /// Property: content made of CRLF lines, stuffed in random chunks and framed back in DATA
    /// mode (also at random split points), is the original content.
    func testStuffThenFrameIsIdentity() {
        var generator = SeededGenerator(seed: 2024)
        let alphabet: [UInt8] = bytes("..ab \t") + [0x00, 0x7F, 0x80, 0xC3, 0xA4, 0xFF]
        for run in 0..<300 {
            var content: [UInt8] = []
            for _ in 0..<Int.random(in: 0...15, using: &generator) {
                for _ in 0..<Int.random(in: 0...12, using: &generator) { content.append(alphabet.randomElement(using: &generator)!) }
                content += [13, 10]
            }
            let chunks = split(content, at: randomSplitPoints(count: content.count, pieces: Int.random(in: 0...6, using: &generator), using: &generator))
            let wire = stuff(chunks)
            XCTAssertEqual(Array(wire.suffix(3)), bytes(".\r\n"))

            var framer = SMTPInputFramer()
            framer.beginData()
            var framed: [UInt8] = []
            var findings: SMTPInputFramer.DataFindings?
            for piece in split(wire, at: randomSplitPoints(count: wire.count, pieces: Int.random(in: 0...10, using: &generator), using: &generator)) {
                framer.append(ByteBuffer(bytes: piece))
                while findings == nil, let event = framer.nextDataEvent(maximumLineLength: 1000, bareLineEndings: .reject) {
                    switch event {
                    case .content(let buffer): framed += buffer.bytes
                    case .end(let result): findings = result
                    }
                }
            }
            var expected = SMTPInputFramer.DataFindings()
            expected.nul = content.contains(0)  // random content may hold NUL, which the scan reports
            XCTAssertEqual(findings, expected, "run \(run)")
            XCTAssertEqual(framed, content, "run \(run)")
            XCTAssertEqual(framer.bufferedBytes, 0, "run \(run): the terminator is the last thing on the wire")
        }
    }
}
