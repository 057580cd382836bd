import NIOCore
import XCTest

@testable import SMTPCore

/// Seeded random inputs built from grammar fragments: nothing crashes, every refusal is a 5xx
/// reply, and whatever parses survives encode -> parse unchanged.
final class FuzzTests: XCTestCase {
    static let fragments: [String] = [
        "MAIL FROM:", "RCPT TO:", "mail from:", "EHLO ", "BDAT ", "HELP", "VRFY ", "AUTH ", "DATA", "NOOP", "ETRN",
        "<", ">", "<>", "a", "Bc", "@", ".", "-", "\"", "\\", " ", "  ", ",", ":", "[", "]", "IPv6:", "2001:db8::1",
        "192.0.2.1", "example.com", "é", "日本", "Postmaster", "SIZE=", "42", "BODY=", "8BITMIME", "7BIT", "SMTPUTF8",
        "RET=", "HDRS", "ENVID=", "+2B", "NOTIFY=", "NEVER", "SUCCESS,DELAY", "ORCPT=", "rfc822;", "=", "LAST", "\t",
    ]

    static let locals = ["a", "first.last", "\"a b\"", "\"x@y\"", "é", "a..b", "", "Postmaster", "o'neil", "\"q\\\"q\""]
    static let domains = ["example.com", "[192.0.2.1]", "[IPv6:2001:db8::1]", "bücher.example", "-x.example", "a", "", "[1.2.3]"]
    static let parameters = [" SIZE=42", " BODY=8BITMIME", " BODY=7BIT", " SMTPUTF8", " RET=FULL", " ENVID=x+2B", " NOTIFY=NEVER",
                             " NOTIFY=SUCCESS,DELAY", " ORCPT=rfc822;a@b", " X=1", " SIZE=x", ""]

    func randomLine(using generator: inout SeededGenerator) -> [UInt8] {
        var line = ""
        if Bool.random(using: &generator) {
            // Shaped like MAIL or RCPT, from parts that are each often valid.
            line = Bool.random(using: &generator) ? "MAIL FROM:" : "RCPT TO:"
            line += Int.random(in: 0..<8, using: &generator) == 0 ? "<>" :
                "<\(Self.locals.randomElement(using: &generator)!)@\(Self.domains.randomElement(using: &generator)!)>"
            for _ in 0..<Int.random(in: 0...3, using: &generator) { line += Self.parameters.randomElement(using: &generator)! }
        } else {
            for _ in 0..<Int.random(in: 1...14, using: &generator) { line += Self.fragments.randomElement(using: &generator)! }
        }
        var bytes = Array(line.utf8)
        if Int.random(in: 0..<20, using: &generator) == 0 {
            bytes.insert([0, 13, 10, 0xFF].randomElement(using: &generator)!, at: Int.random(in: 0...bytes.count, using: &generator))
        }
        return bytes
    }

    func testCommandParserFuzz() throws {
        var generator = SeededGenerator(seed: 99)
        let parser = SMTPCommandParser()
        var parsedCount = 0
        var kinds: Set<String> = []
        for _ in 0..<30_000 {
            let line = randomLine(using: &generator)
            do {
                let command = try parser.parse(line)
                parsedCount += 1
                kinds.insert(command.verb)
                let encoded = command.encoded.bytes
                let again = try parser.parse(encoded.dropLast(2))
                XCTAssertEqual(again, command, "re-encoding \(String(decoding: line, as: UTF8.self).debugDescription)")
            } catch {
                XCTAssertTrue(error.reply.isPermanentFailure)
                XCTAssertNotNil(error.reply.enhanced)
            }
        }
        // The generator reaches real commands, not just errors.
        XCTAssertGreaterThan(parsedCount, 1_000)
        XCTAssertTrue(kinds.isSuperset(of: ["MAIL", "RCPT", "EHLO"]), "\(kinds)")
    }

    func testFramerFuzz() {
        var generator = SeededGenerator(seed: 5)
        let alphabet: [UInt8] = Array("a.\r\n\r\n..".utf8) + [0]
        for _ in 0..<500 {
            let input = (0..<Int.random(in: 0...300, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }
            var framer = SMTPInputFramer()
            var dataMode = false
            var consumed = 0
            for piece in split(input, at: randomSplitPoints(count: input.count, pieces: 10, using: &generator)) {
                framer.append(ByteBuffer(bytes: piece))
                while true {
                    if dataMode {
                        guard let event = framer.nextDataEvent(maximumLineLength: 20, bareLineEndings: Bool.random(using: &generator) ? .reject : .normalise) else { break }
                        if case .end = event { dataMode = false }
                    } else {
                        guard let event = framer.nextCommandLine(maximumLength: 16) else { break }
                        consumed += 1
                        if case .line = event, consumed % 3 == 0 { dataMode = true; framer.beginData() }
                    }
                }
                if !dataMode { XCTAssertLessThan(framer.bufferedBytes, 16 + piece.count) }
            }
        }
    }

    func testReplyParserFuzz() {
        var generator = SeededGenerator(seed: 11)
        let fragments = ["250", "-", " ", "2.0.0", "5.1.1", "ok", "\r\n", "\n", "451", "x", "354 "]
        for _ in 0..<5_000 {
            var text = ""
            for _ in 0..<Int.random(in: 1...10, using: &generator) { text += fragments.randomElement(using: &generator)! }
            var parser = SMTPReplyParser(maximumLineLength: 64, maximumLines: 4)
            var buffer = ByteBuffer(string: text)
            while let reply = try? parser.parse(&buffer) {
                XCTAssertTrue((200...599).contains(reply.code))
                XCTAssertLessThanOrEqual(reply.lines.count, 4)
                if let enhanced = reply.enhanced { XCTAssertEqual(enhanced.codeClass, reply.code / 100) }
            }
        }
    }
}
