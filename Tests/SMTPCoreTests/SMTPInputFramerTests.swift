import NIOCore
import XCTest

@testable import SMTPCore

final class SMTPInputFramerTests: XCTestCase {
    typealias Findings = SMTPInputFramer.DataFindings

    // MARK: Helpers

    enum LineResult: Equatable {
        case line(String)
        case failure(SMTPSyntaxError.Kind)
    }

    /// Feeds `pieces` one after another, pulling every command line after each.
    func commandLines(_ pieces: [[UInt8]], maximumLength: Int = 512, framer: inout SMTPInputFramer) -> [LineResult] {
        var results: [LineResult] = []
        for piece in pieces.isEmpty ? [[]] : pieces {
            framer.append(ByteBuffer(bytes: piece))
            while let event = framer.nextCommandLine(maximumLength: maximumLength) {
                switch event {
                case .line(let line): results.append(.line(line.text))
                case .failure(let error): results.append(.failure(error.kind))
                }
            }
        }
        return results
    }

    func commandLines(_ pieces: [[UInt8]], maximumLength: Int = 512) -> [LineResult] {
        var framer = SMTPInputFramer()
        return commandLines(pieces, maximumLength: maximumLength, framer: &framer)
    }

    struct DataResult {
        var content: [UInt8] = []
        var findings: Findings?
        var eventsAfterEnd = 0
    }

    /// Feeds `pieces` in DATA mode until the end of the message; bytes after it stay in `framer`.
    func readData(
        _ pieces: [[UInt8]], policy: SMTPInputFramer.BareLineEndingPolicy = .reject, maximumLineLength: Int = 1000,
        framer: inout SMTPInputFramer
    ) -> DataResult {
        var result = DataResult()
        framer.beginData()
        for piece in pieces.isEmpty ? [[]] : pieces {
            framer.append(ByteBuffer(bytes: piece))
            guard result.findings == nil else { continue }
            while result.findings == nil, let event = framer.nextDataEvent(maximumLineLength: maximumLineLength, bareLineEndings: policy) {
                switch event {
                case .content(let content):
                    XCTAssertGreaterThan(content.readableBytes, 0, "content events are never empty")
                    result.content += content.bytes
                case .end(let findings):
                    result.findings = findings
                }
            }
        }
        return result
    }

    func readData(
        _ pieces: [[UInt8]], policy: SMTPInputFramer.BareLineEndingPolicy = .reject, maximumLineLength: Int = 1000
    ) -> DataResult {
        var framer = SMTPInputFramer()
        return readData(pieces, policy: policy, maximumLineLength: maximumLineLength, framer: &framer)
    }

    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// Every way of feeding `input` this test uses: whole, byte by byte, and random splits.
    func feedings(of input: [UInt8], seed: UInt64 = 1, randomRuns: Int = 30) -> [[[UInt8]]] {
        var generator = SeededGenerator(seed: seed)
        var result: [[[UInt8]]] = [[input], input.map { [$0] }]
        for _ in 0..<randomRuns {
            let pieces = Int.random(in: 1...max(1, input.count / 2), using: &generator)
            result.append(split(input, at: randomSplitPoints(count: input.count, pieces: pieces, using: &generator)))
        }
        return result
    }

    // MARK: Command lines

    func testCommandLineFixtures() {
        let fixtures: [(String, [LineResult], Int)] = [
            // input, events, bytes left buffered
            ("EHLO x\r\n", [.line("EHLO x")], 0),
            ("EHLO x", [], 6),
            ("EHLO x\r", [], 7),
            ("\r\n", [.line("")], 0),
            ("NOOP\r\nNOOP\r\nQUIT\r\n", [.line("NOOP"), .line("NOOP"), .line("QUIT")], 0),
            ("NOOP\r\nQUI", [.line("NOOP")], 3),
            // Only CRLF ends a line: a bare LF is inside it, and the line is refused once.
            ("NOOP\nQUIT\r\n", [.failure(.invalidCharacters)], 0),
            ("\nQUIT\r\n", [.failure(.invalidCharacters)], 0),
            ("MAIL FROM:<a@b.example>\nNOOP\r\nQUIT\r\n", [.failure(.invalidCharacters), .line("QUIT")], 0),
            ("NOOP\n", [], 5),
            ("NOOP\n\r\n", [.failure(.invalidCharacters)], 0),
            // A bare CR inside a line is left for the command parser to refuse.
            ("NO\rOP\r\n", [.line("NO\rOP")], 0),
            ("NOOP\r\r\n", [.line("NOOP\r")], 0),
        ]
        for (input, expected, left) in fixtures {
            var framer = SMTPInputFramer()
            XCTAssertEqual(commandLines([bytes(input)], framer: &framer), expected, input.debugDescription)
            XCTAssertEqual(framer.bufferedBytes, left, input.debugDescription)
        }
    }

    func testBareLFInACommandIsRefusedByTheParserToo() throws {
        var framer = SMTPInputFramer()
        let results = commandLines([bytes("NO\rOP\r\n")], framer: &framer)
        guard case .line(let text) = results.first else { return XCTFail("\(results)") }
        XCTAssertThrowsError(try SMTPCommandParser().parse(Array(text.utf8))) { error in
            XCTAssertEqual((error as? SMTPSyntaxError)?.kind, .invalidCharacters)
        }
    }

    func testPipelinedCommandsByteByByteAndInOnePacket() {
        let session = "EHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=10\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\nDATA\r\n"
        let expected: [LineResult] = [
            .line("EHLO client.example"), .line("MAIL FROM:<a@b.example> SIZE=10"), .line("RCPT TO:<c@d.example>"),
            .line("RCPT TO:<e@f.example>"), .line("DATA"),
        ]
        for pieces in feedings(of: bytes(session)) {
            var framer = SMTPInputFramer()
            XCTAssertEqual(commandLines(pieces, framer: &framer), expected)
            XCTAssertEqual(framer.bufferedBytes, 0)
        }
    }

    func testByteByByteReturnsNilUntilCRLF() {
        var framer = SMTPInputFramer()
        let line = bytes("MAIL FROM:<a@b.example>\r\n")
        for (index, byte) in line.enumerated() {
            framer.append(ByteBuffer(bytes: [byte]))
            let event = framer.nextCommandLine(maximumLength: 512)
            if index < line.count - 1 {
                XCTAssertNil(event, "line complete after \(index + 1) bytes")
            } else if case .line(let text)? = event {
                XCTAssertEqual(text.text, "MAIL FROM:<a@b.example>")
            } else {
                XCTFail("\(String(describing: event))")
            }
        }
    }

    func testLineLengthLimitIncludesCRLF() {
        let ok = String(repeating: "x", count: 510)
        XCTAssertEqual(commandLines([bytes(ok + "\r\n")]), [.line(ok)])
        XCTAssertEqual(commandLines([bytes(ok + "x\r\nQUIT\r\n")]), [.failure(.lineTooLong), .line("QUIT")])
        XCTAssertEqual(commandLines([bytes("12345678\r\n")], maximumLength: 10), [.line("12345678")])
        XCTAssertEqual(commandLines([bytes("123456789\r\n")], maximumLength: 10), [.failure(.lineTooLong)])
        // Byte by byte: 510 octets plus CR is still a candidate; the LF completes it.
        XCTAssertEqual(commandLines(bytes(ok + "\r\n").map { [$0] }), [.line(ok)])
        XCTAssertEqual(commandLines(bytes(ok + "x\r\nQUIT\r\n").map { [$0] }), [.failure(.lineTooLong), .line("QUIT")])
    }

    func testOverlongLineIsDiscardedWithBoundedBuffer() {
        var framer = SMTPInputFramer()
        let chunk = [UInt8](repeating: UInt8(ascii: "A"), count: 4096)
        var failures = 0
        for _ in 0..<256 {  // 1 MiB without a newline
            framer.append(ByteBuffer(bytes: chunk))
            while let event = framer.nextCommandLine(maximumLength: 512) {
                if case .failure = event { failures += 1 } else { XCTFail("unexpected \(event)") }
            }
            XCTAssertLessThanOrEqual(framer.bufferedBytes, 512, "the framer holds at most one line")
        }
        XCTAssertEqual(failures, 0, "the failure is reported when the line ends")
        XCTAssertEqual(commandLines([bytes("AAAA\r\nNOOP\r\n")], framer: &framer), [.failure(.lineTooLong), .line("NOOP")])
        XCTAssertEqual(framer.bufferedBytes, 0)
        XCTAssertEqual(commandLines([bytes("QUIT\r\n")], framer: &framer), [.line("QUIT")], "framing is back to normal")
    }

    func testOverlongLineStressAtManyBoundaries() {
        // However the bytes arrive, one overlong line is one failure, and the next line survives.
        let input = [UInt8](repeating: UInt8(ascii: "B"), count: 3000) + bytes("\r\nRSET\r\n")
        for pieces in feedings(of: input, seed: 3, randomRuns: 20) {
            var framer = SMTPInputFramer()
            XCTAssertEqual(commandLines(pieces, framer: &framer), [.failure(.lineTooLong), .line("RSET")])
            XCTAssertEqual(framer.bufferedBytes, 0)
        }
    }

    func testDiscardBufferedInput() {
        var framer = SMTPInputFramer()
        framer.append(ByteBuffer(string: "STARTTLS\r\nMAIL FROM:<a@b.example>\r\nRCPT"))
        guard case .line(let line)? = framer.nextCommandLine(maximumLength: 512) else { return XCTFail() }
        XCTAssertEqual(line.text, "STARTTLS")
        XCTAssertEqual(framer.discardBufferedInput(), 29)
        XCTAssertEqual(framer.bufferedBytes, 0)
        XCTAssertNil(framer.nextCommandLine(maximumLength: 512))
        XCTAssertEqual(commandLines([bytes("EHLO x\r\n")], framer: &framer), [.line("EHLO x")])
    }

    // MARK: DATA

    func testDataFixtures() {
        let fixtures: [(String, String, Findings, String)] = [
            // input, unstuffed content, findings, left for the command framer
            (".\r\n", "", Findings(), ""),
            ("Subject: x\r\n\r\nbody\r\n.\r\n", "Subject: x\r\n\r\nbody\r\n", Findings(), ""),
            ("..\r\n.\r\n", ".\r\n", Findings(), ""),
            ("...\r\n.\r\n", "..\r\n", Findings(), ""),
            ("..leading\r\nmid.dle\r\n.trailing.\r\n.\r\n", ".leading\r\nmid.dle\r\ntrailing.\r\n", Findings(), ""),
            ("a\r\n.\r\nQUIT\r\n", "a\r\n", Findings(), "QUIT\r\n"),
            ("a\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT", "a\r\n", Findings(), "MAIL FROM:<a@b.example>\r\nRCPT"),
            (". \r\n.\r\n", " \r\n", Findings(), ""),
            (".x\r\n.\r\n", "x\r\n", Findings(), ""),
            ("\r\n.\r\n", "\r\n", Findings(), ""),
            ("\r\n\r\n.\r\n", "\r\n\r\n", Findings(), ""),
        ]
        for (input, content, findings, left) in fixtures {
            for pieces in feedings(of: bytes(input), randomRuns: 10) {
                var framer = SMTPInputFramer()
                let result = readData(pieces, framer: &framer)
                XCTAssertEqual(result.content, bytes(content), input.debugDescription)
                XCTAssertEqual(result.findings, findings, input.debugDescription)
                XCTAssertEqual(framer.bufferedBytes, bytes(left).count, input.debugDescription)
            }
        }
    }

    func testDataIncompleteUntilTerminator() {
        for input in ["", "a", "a\r\n", "a\r\n.", "a\r\n.\r", "a\r\n.\n", "a.\r\n", "a\r\n..\r\n", "a\n.\n", "a\r.\r"] {
            let result = readData([bytes(input)])
            XCTAssertNil(result.findings, "\(input.debugDescription) must not end the message")
        }
    }

    func testBytesAfterTheEndAreLeftForCommands() {
        var framer = SMTPInputFramer()
        let result = readData([bytes("body\r\n.\r\nRSET\r\nQUIT\r\n")], framer: &framer)
        XCTAssertEqual(result.content, bytes("body\r\n"))
        XCTAssertNotNil(result.findings)
        XCTAssertEqual(commandLines([], framer: &framer), [.line("RSET"), .line("QUIT")])
        // And a second message after the first starts at a line start again.
        let second = readData([bytes(".x\r\n.\r\n")], framer: &framer)
        XCTAssertEqual(second.content, bytes("x\r\n"))
        XCTAssertEqual(second.findings, Findings())
    }

    /// A DATA command pipelined in one packet with the message, as a client ignoring 354 does.
    func testCommandsThenDataInOnePacket() {
        var framer = SMTPInputFramer()
        framer.append(ByteBuffer(string: "DATA\r\n.hidden\r\n.\r\nQUIT\r\n"))
        guard case .line(let line)? = framer.nextCommandLine(maximumLength: 512) else { return XCTFail() }
        XCTAssertEqual(line.text, "DATA")
        let result = readData([], framer: &framer)
        XCTAssertEqual(result.content, bytes("hidden\r\n"))
        XCTAssertEqual(commandLines([], framer: &framer), [.line("QUIT")])
    }

    func testEightBitContentIsPreserved() {
        var content: [UInt8] = bytes("Subject: ")
        content += Array("Grüße aus Köln 日本語".utf8)
        content += [0xFF, 0xFE, 0x80, 0x00, 0x7F, 0x01] + bytes("\r\n")
        content += (0...255).map { UInt8($0) }.filter { $0 != 13 && $0 != 10 } + bytes("\r\n")
        // The framer keeps every octet; it reports the NUL, which the session refuses.
        var expected = Findings()
        expected.nul = true
        for pieces in feedings(of: content + bytes(".\r\n"), randomRuns: 10) {
            let result = readData(pieces)
            XCTAssertEqual(result.content, content)
            XCTAssertEqual(result.findings, expected)
        }
    }

    func testNULIsReportedWhereverItIs() {
        for input in ["\0\r\n.\r\n", "a\0b\r\n.\r\n", "a\r\n\0.\r\n.\r\n", "..\0\r\n.\r\n"] {
            let result = readData([bytes(input)])
            XCTAssertEqual(result.findings?.nul, true, input.debugDescription)
            XCTAssertEqual(result.findings?.hasBareLineEnding, false, input.debugDescription)
        }
        XCTAssertEqual(readData([bytes("clean\r\n.\r\n")]).findings?.nul, false)
        var inspector = LineEndingInspector(maximumLineLength: 1000)
        inspector.inspect(ByteBuffer(bytes: [0x61, 0x00, 0x0D, 0x0A]))
        XCTAssertEqual(inspector.finish().findings.nul, true, "BDAT content too")
    }

    /// RFC 5321 §4.1.1.4 and the 2023 SMTP smuggling advisories: only CRLF.CRLF ends a message.
    func testSmugglingSequencesNeverEndTheMessage() {
        let table: [(String, String, Bool, Bool)] = [
            // sequence, expected unstuffed content (reject mode), bare CR, bare LF
            ("\n.\n", "a\n.\nsmuggled\r\n", false, true),
            ("\r.\r", "a\r.\rsmuggled\r\n", true, false),
            ("\n.\r\n", "a\n.\r\nsmuggled\r\n", false, true),
            ("\r\n.\n", "a\r\n\nsmuggled\r\n", false, true),
        ]
        for (sequence, content, bareCR, bareLF) in table {
            let input = bytes("a" + sequence + "smuggled\r\n.\r\nQUIT\r\n")
            for pieces in feedings(of: input, randomRuns: 10) {
                var framer = SMTPInputFramer()
                let result = readData(pieces, framer: &framer)
                XCTAssertEqual(result.content, bytes(content), sequence.debugDescription)
                XCTAssertEqual(result.findings?.bareCarriageReturn, bareCR, sequence.debugDescription)
                XCTAssertEqual(result.findings?.bareLineFeed, bareLF, sequence.debugDescription)
                XCTAssertEqual(result.findings?.hasBareLineEnding, true, sequence.debugDescription)
                XCTAssertEqual(framer.bufferedBytes, 6, "only QUIT is left after \(sequence.debugDescription)")
            }
        }
    }

    func testSmuggledCommandsStayContent() {
        // The classic attack: a fake end followed by a second envelope, then the real end.
        let attack = "Subject: hi\r\n\r\nhello\n.\nMAIL FROM:<admin@victim.example>\r\nRCPT TO:<x@victim.example>\r\nDATA\r\nfake\r\n.\r\n"
        for policy in [SMTPInputFramer.BareLineEndingPolicy.reject, .normalise] {
            for pieces in feedings(of: bytes(attack), randomRuns: 10) {
                var framer = SMTPInputFramer()
                let result = readData(pieces, policy: policy, framer: &framer)
                XCTAssertNotNil(result.findings)
                XCTAssertEqual(result.findings?.bareLineFeed, true)
                XCTAssertEqual(framer.bufferedBytes, 0, "nothing of the attack is framed as commands")
                let text = String(decoding: result.content, as: UTF8.self)
                XCTAssertTrue(text.contains("MAIL FROM:<admin@victim.example>"), policy.rawValue)
                XCTAssertTrue(text.hasSuffix("fake\r\n"), policy.rawValue)
            }
        }
    }

    func testNormaliseReplacesBareLineEndings() {
        let table: [(String, String, Bool, Bool)] = [
            ("a\nb\r\n.\r\n", "a\r\nb\r\n", false, true),
            ("a\rb\r\n.\r\n", "a\r\nb\r\n", true, false),
            ("a\r\rb\r\n.\r\n", "a\r\n\r\nb\r\n", true, false),
            ("a\n\nb\r\n.\r\n", "a\r\n\r\nb\r\n", false, true),
            ("a\r\r\n.\r\n", "a\r\n\r\n", true, false),
            ("a\n\r\n.\r\n", "a\r\n\r\n", false, true),
            ("\n.\n\r\n.\r\n", "\r\n.\r\n\r\n", false, true),
            ("x\r.\ry\r\n.\r\n", "x\r\n.\r\ny\r\n", true, false),
            ("clean\r\n.\r\n", "clean\r\n", false, false),
        ]
        for (input, content, bareCR, bareLF) in table {
            for pieces in feedings(of: bytes(input), randomRuns: 10) {
                let result = readData(pieces, policy: .normalise)
                XCTAssertEqual(result.content, bytes(content), input.debugDescription)
                XCTAssertEqual(result.findings?.bareCarriageReturn, bareCR, input.debugDescription)
                XCTAssertEqual(result.findings?.bareLineFeed, bareLF, input.debugDescription)
                // After normalising, the content holds no bare CR or LF.
                var previous: UInt8 = 0
                for (index, byte) in result.content.enumerated() {
                    if byte == 10 { XCTAssertEqual(previous, 13, "bare LF at \(index) of \(input.debugDescription)") }
                    if previous == 13 { XCTAssertEqual(byte, 10, "bare CR at \(index - 1) of \(input.debugDescription)") }
                    previous = byte
                }
            }
        }
    }

    func testOverlongLineIsFlagged() {
        let limit = 1000
        let ok = String(repeating: "x", count: limit - 2)
        let long = ok + "x"
        let cases: [(String, Bool)] = [
            (ok + "\r\n.\r\n", false),
            (long + "\r\n.\r\n", true),
            ("short\r\n" + long + "\r\nshort\r\n.\r\n", true),
            (ok + "\r\n" + ok + "\r\n.\r\n", false),
            // The stuffed dot does not count (RFC 5321 §4.5.3.1.6).
            ("." + ok + "\r\n.\r\n", false),
            (".." + ok + "\r\n.\r\n", true),
            // No line ending in the count: 998 then CRLF then 998 never adds up.
            (ok + "\r\n" + String(repeating: "y", count: 500) + "\r\n.\r\n", false),
        ]
        for (input, overlong) in cases {
            for pieces in feedings(of: bytes(input), randomRuns: 5) {
                let result = readData(pieces, maximumLineLength: limit)
                XCTAssertEqual(result.findings?.overlongLine, overlong, "\(input.utf8.count) octets")
                XCTAssertEqual(result.findings?.hasBareLineEnding, false)
            }
        }
        // A small limit, to see the boundary exactly.
        XCTAssertEqual(readData([bytes("12345678\r\n.\r\n")], maximumLineLength: 10).findings?.overlongLine, false)
        XCTAssertEqual(readData([bytes("123456789\r\n.\r\n")], maximumLineLength: 10).findings?.overlongLine, true)
        XCTAssertEqual(readData([bytes("1234\n56789\r\n.\r\n")], maximumLineLength: 10).findings?.overlongLine, false)
        XCTAssertEqual(readData([bytes("1234\n56789\r\n.\r\n")], policy: .normalise, maximumLineLength: 10).findings?.overlongLine, false)
    }

    func testFindingsResetBetweenMessages() {
        var framer = SMTPInputFramer()
        let first = readData([bytes("a\nb\r" + String(repeating: "x", count: 2000) + "\r\n.\r\n")], framer: &framer)
        XCTAssertEqual(first.findings?.bareLineFeed, true)
        XCTAssertEqual(first.findings?.bareCarriageReturn, true)
        XCTAssertEqual(first.findings?.overlongLine, true)
        let second = readData([bytes("clean\r\n.\r\n")], framer: &framer)
        XCTAssertEqual(second.findings, Findings())
    }

    /// Random content, stuffed by hand, split at random points: the framer gives back the content exactly.
    func testRandomContentAtRandomSplitPoints() {
        var generator = SeededGenerator(seed: 42)
        let alphabet: [UInt8] = bytes("ab.. \t.xyz") + [0xC3, 0xA4, 0xFF]
        for _ in 0..<200 {
            var content: [UInt8] = []
            var stuffed: [UInt8] = []
            for _ in 0..<Int.random(in: 0...12, using: &generator) {
                var line: [UInt8] = []
                for _ in 0..<Int.random(in: 0...20, using: &generator) { line.append(alphabet.randomElement(using: &generator)!) }
                content += line + [13, 10]
                stuffed += (line.first == UInt8(ascii: ".") ? [UInt8(ascii: ".")] : []) + line + [13, 10]
            }
            let input = stuffed + bytes(".\r\nNOOP\r\n")
            let pieces = split(input, at: randomSplitPoints(count: input.count, pieces: Int.random(in: 1...20, using: &generator), using: &generator))
            var framer = SMTPInputFramer()
            let result = readData(pieces, framer: &framer)
            XCTAssertEqual(result.content, content)
            XCTAssertEqual(result.findings, Findings())
            XCTAssertEqual(commandLines([], framer: &framer), [.line("NOOP")])
        }
    }

    func testLargeMessageStreamsWithoutHoldingIt() {
        // A 4 MiB message in 64 KiB reads: each read becomes content right away.
        var framer = SMTPInputFramer()
        framer.beginData()
        let line = [UInt8](repeating: UInt8(ascii: "m"), count: 78) + [13, 10]
        let read = Array([[UInt8]](repeating: line, count: 64 * 1024 / 80).joined())
        var total = 0
        for _ in 0..<64 {
            framer.append(ByteBuffer(bytes: read))
            while case .content(let content)? = framer.nextDataEvent(maximumLineLength: 1000, bareLineEndings: .reject) {
                total += content.readableBytes
            }
            XCTAssertLessThanOrEqual(framer.bufferedBytes, 2, "at most a partial line end is held back")
        }
        framer.append(ByteBuffer(string: ".\r\n"))
        guard case .end(let findings)? = framer.nextDataEvent(maximumLineLength: 1000, bareLineEndings: .reject) else {
            return XCTFail()
        }
        XCTAssertEqual(findings, Findings())
        XCTAssertEqual(total, read.count * 64)
    }

    // MARK: BDAT

    func testChunkBytes() {
        var framer = SMTPInputFramer()
        XCTAssertNil(framer.nextChunkBytes(maximum: 10))
        framer.append(ByteBuffer(string: "0123456789.\r\n\nBDAT 1 LAST\r\n"))
        XCTAssertNil(framer.nextChunkBytes(maximum: 0))
        XCTAssertEqual(framer.nextChunkBytes(maximum: 4)?.text, "0123")
        XCTAssertEqual(framer.nextChunkBytes(maximum: 10)?.text, "456789.\r\n\n", "no dot-unstuffing, bare LF kept")
        XCTAssertEqual(commandLines([], framer: &framer), [.line("BDAT 1 LAST")])
        framer.append(ByteBuffer(string: "xyz"))
        XCTAssertEqual(framer.nextChunkBytes(maximum: 100)?.text, "xyz", "short of the maximum: what there is")
        XCTAssertNil(framer.nextChunkBytes(maximum: 100))
    }

    func testChunkByteByByte() {
        var framer = SMTPInputFramer()
        var collected: [UInt8] = []
        var remaining = 7
        for byte in bytes("ab\r\n.\r\nQUIT\r\n") {
            framer.append(ByteBuffer(bytes: [byte]))
            if remaining > 0, let chunk = framer.nextChunkBytes(maximum: remaining) {
                collected += chunk.bytes
                remaining -= chunk.readableBytes
            }
        }
        XCTAssertEqual(collected, bytes("ab\r\n.\r\n"))
        XCTAssertEqual(commandLines([], framer: &framer), [.line("QUIT")])
    }
}
