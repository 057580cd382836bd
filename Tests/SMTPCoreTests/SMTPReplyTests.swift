import NIOCore
import XCTest

@testable import SMTPCore

final class SMTPReplyTests: XCTestCase {
    // MARK: SMTPReply

    func testEncoding() {
        let table: [(SMTPReply, String)] = [
            (SMTPReply(250, nil, "Ok"), "250 Ok\r\n"),
            (SMTPReply(250, esc(2, 0, 0), "Ok"), "250 2.0.0 Ok\r\n"),
            (SMTPReply(550, esc(5, 1, 1), "No such user"), "550 5.1.1 No such user\r\n"),
            (SMTPReply(250, esc(2, 0, 0), ""), "250 2.0.0\r\n"),
            (SMTPReply(250, nil, ""), "250 \r\n"),
            (SMTPReply(code: 250, enhanced: nil, lines: []), "250 \r\n"),
            (SMTPReply(code: 250, enhanced: nil, lines: ["mx.example", "PIPELINING", "SIZE 100"]),
             "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"),
            (SMTPReply(code: 452, enhanced: esc(4, 5, 3), lines: ["Too many", "recipients"]),
             "452-4.5.3 Too many\r\n452 4.5.3 recipients\r\n"),
            (SMTPReply(code: 214, enhanced: esc(2, 0, 0), lines: ["", "x"]), "214-2.0.0\r\n214 2.0.0 x\r\n"),
        ]
        for (reply, text) in table {
            XCTAssertEqual(reply.encoded.text, text)
            var buffer = ByteBuffer(string: ">")
            reply.encode(into: &buffer)
            XCTAssertEqual(buffer.text, ">" + text)
        }
    }

    func testClassification() {
        let table: [(Int, Bool, Bool, Bool, Bool)] = [
            // code, positive, intermediate, transient, permanent
            (220, true, false, false, false),
            (250, true, false, false, false),
            (354, true, true, false, false),
            (421, false, false, true, false),
            (452, false, false, true, false),
            (499, false, false, true, false),
            (500, false, false, false, true),
            (554, false, false, false, true),
        ]
        for (code, positive, intermediate, transient, permanent) in table {
            let reply = SMTPReply(code, nil, "x")
            XCTAssertEqual(reply.isPositive, positive, "\(code)")
            XCTAssertEqual(reply.isIntermediate, intermediate, "\(code)")
            XCTAssertEqual(reply.isTransientFailure, transient, "\(code)")
            XCTAssertEqual(reply.isPermanentFailure, permanent, "\(code)")
        }
    }

    func testDescriptionsAndText() {
        XCTAssertEqual(SMTPReply(250, nil, "Ok").description, "250 Ok")
        XCTAssertEqual(SMTPReply(550, esc(5, 7, 1), "Denied").description, "550 5.7.1 Denied")
        XCTAssertEqual(SMTPReply(code: 250, enhanced: nil, lines: ["a", "b"]).text, "a / b")
    }

    func testEnhancedDefaults() {
        XCTAssertEqual(SMTPReply(250, nil, "x").withEnhancedDefault().enhanced, esc(2, 0, 0))
        XCTAssertEqual(SMTPReply(451, nil, "x").withEnhancedDefault().enhanced, esc(4, 0, 0))
        XCTAssertEqual(SMTPReply(554, nil, "x").withEnhancedDefault().enhanced, esc(5, 0, 0))
        XCTAssertEqual(SMTPReply(550, esc(5, 7, 1), "x").withEnhancedDefault().enhanced, esc(5, 7, 1), "keeps a code it has")
        XCTAssertNil(SMTPReply(550, esc(5, 7, 1), "x").withoutEnhanced().enhanced)
        XCTAssertEqual(SMTPReply(550, esc(5, 7, 1), "x").withoutEnhanced().lines, ["x"])
    }

    // MARK: EnhancedStatusCode

    func testEnhancedStatusCodeParsing() {
        let valid: [(String, EnhancedStatusCode)] = [
            ("2.0.0", esc(2, 0, 0)), ("4.7.0", esc(4, 7, 0)), ("5.1.1", esc(5, 1, 1)),
            ("5.123.999", esc(5, 123, 999)), ("2.01.001", esc(2, 1, 1)),
        ]
        for (text, code) in valid {
            XCTAssertEqual(EnhancedStatusCode(parsing: Substring(text)), code, text)
        }
        for text in ["", "2", "2.0", "2.0.0.0", "3.0.0", "1.0.0", "6.0.0", "22.0.0", "2.1234.0", "2.0.1234",
                     "2..0", "2.0.", ".0.0", "2.a.0", "2.0.0 ", "-2.0.0", "2.+1.0"] {
            XCTAssertNil(EnhancedStatusCode(parsing: Substring(text)), text.debugDescription)
        }
        XCTAssertEqual(esc(5, 3, 4).description, "5.3.4")
        XCTAssertEqual(EnhancedStatusCode.generic(forReplyCode: 221), esc(2, 0, 0))
        XCTAssertEqual(EnhancedStatusCode.generic(forReplyCode: 354), esc(2, 0, 0))
        XCTAssertEqual(EnhancedStatusCode.generic(forReplyCode: 421), esc(4, 0, 0))
        XCTAssertEqual(EnhancedStatusCode.generic(forReplyCode: 530), esc(5, 0, 0))
    }

    // MARK: SMTPReplyParser

    enum Expected {
        case reply(SMTPReply)
        case incomplete
        case failure
    }

    func parse(_ text: String, parser: SMTPReplyParser = SMTPReplyParser()) -> (Expected, Int) {
        var parser = parser
        var buffer = ByteBuffer(string: text)
        do {
            if let reply = try parser.parse(&buffer) { return (.reply(reply), buffer.readableBytes) }
            return (.incomplete, buffer.readableBytes)
        } catch {
            return (.failure, buffer.readableBytes)
        }
    }

    func testParserFixtures() {
        let fixtures: [(String, Expected)] = [
            ("250 Ok\r\n", .reply(SMTPReply(250, nil, "Ok"))),
            ("250 Ok\n", .reply(SMTPReply(250, nil, "Ok"))),
            ("250\r\n", .reply(SMTPReply(250, nil, ""))),
            ("250 \r\n", .reply(SMTPReply(250, nil, ""))),
            ("220 mx.example ESMTP\r\n", .reply(SMTPReply(220, nil, "mx.example ESMTP"))),
            ("250 2.1.0 Sender ok\r\n", .reply(SMTPReply(250, esc(2, 1, 0), "Sender ok"))),
            ("550 5.1.1 <x@y>: Recipient address rejected\r\n",
             .reply(SMTPReply(550, esc(5, 1, 1), "<x@y>: Recipient address rejected"))),
            ("250 2.0.0\r\n", .reply(SMTPReply(250, esc(2, 0, 0), ""))),
            // An enhanced code of the wrong class is text, not a code.
            ("250 5.0.0 odd\r\n", .reply(SMTPReply(250, nil, "5.0.0 odd"))),
            ("354 2.0.0 go\r\n", .reply(SMTPReply(354, nil, "2.0.0 go"))),
            ("250 2.0 partial\r\n", .reply(SMTPReply(250, nil, "2.0 partial"))),
            ("250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
             .reply(SMTPReply(code: 250, enhanced: nil, lines: ["mx.example", "PIPELINING", "8BITMIME"]))),
            ("452-4.5.3 Too many\r\n452 4.5.3 recipients\r\n",
             .reply(SMTPReply(code: 452, enhanced: esc(4, 5, 3), lines: ["Too many", "recipients"]))),
            ("250-mx.example\r\n250", .incomplete),
            ("250 Ok", .incomplete),
            ("", .incomplete),
            ("25", .incomplete),
            ("250-first\r\n", .incomplete),
            ("25\r\n", .failure),
            ("\r\n", .failure),
            ("abc Ok\r\n", .failure),
            ("2x0 Ok\r\n", .failure),
            ("199 Ok\r\n", .failure),
            ("600 Ok\r\n", .failure),
            ("+250 Ok\r\n", .failure),
            ("250_Ok\r\n", .failure),
            ("250-first\r\n251 second\r\n", .failure),
            ("HTTP/1.1 400 Bad Request\r\n", .failure),
        ]
        for (input, expected) in fixtures {
            let (result, _) = parse(input)
            switch (expected, result) {
            case (.reply(let want), .reply(let got)):
                XCTAssertEqual(got, want, input.debugDescription)
            case (.incomplete, .incomplete), (.failure, .failure):
                break
            default:
                XCTFail("\(input.debugDescription): expected \(expected), got \(result)")
            }
        }
    }

    func testParserLeavesTheNextReplyInTheBuffer() throws {
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: "250 2.1.0 Ok\r\n250-2.1.5 a\r\n250 2.1.5 b\r\n354 go ahead\r\n221")
        XCTAssertEqual(try parser.parse(&buffer), SMTPReply(250, esc(2, 1, 0), "Ok"))
        XCTAssertEqual(try parser.parse(&buffer), SMTPReply(code: 250, enhanced: esc(2, 1, 5), lines: ["a", "b"]))
        XCTAssertEqual(try parser.parse(&buffer), SMTPReply(354, nil, "go ahead"))
        XCTAssertNil(try parser.parse(&buffer))
        XCTAssertEqual(buffer.text, "221")
        buffer.writeString(" 2.0.0 Bye\r\n")
        XCTAssertEqual(try parser.parse(&buffer), SMTPReply(221, esc(2, 0, 0), "Bye"))
        XCTAssertEqual(buffer.readableBytes, 0)
    }

    func testEnhancedCodeOnlyStrippedWhereRepeated() throws {
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: "250-2.0.0 first\r\n250 second\r\n")
        let reply = try XCTUnwrap(try parser.parse(&buffer))
        XCTAssertEqual(reply.enhanced, esc(2, 0, 0))
        XCTAssertEqual(reply.lines, ["first", "second"])
    }

    /// Feeding one byte at a time returns nil until the last byte, then the reply.
    func testByteByByte() throws {
        let inputs = [
            "250 Ok\r\n",
            "250-mx.example\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 2.0.0 x\r\n",
            "550-5.7.1 Policy\r\n550-5.7.1 says\r\n550 5.7.1 no\r\n",
        ]
        for input in inputs {
            var whole = ByteBuffer(string: input)
            var parser = SMTPReplyParser()
            let expected = try XCTUnwrap(try parser.parse(&whole))
            var incremental = SMTPReplyParser()
            var buffer = ByteBuffer()
            let bytes = Array(input.utf8)
            for (index, byte) in bytes.enumerated() {
                buffer.writeInteger(byte)
                let result = try incremental.parse(&buffer)
                if index == bytes.count - 1 {
                    XCTAssertEqual(result, expected, input.debugDescription)
                } else {
                    XCTAssertNil(result, "\(input.debugDescription) complete after \(index + 1) bytes")
                }
            }
            XCTAssertEqual(buffer.readableBytes, 0)
        }
    }

    func testRoundTrips() throws {
        let replies: [SMTPReply] = [
            SMTPReply(220, nil, "mx.example ESMTP Postern"),
            SMTPReply(250, nil, "Ok"),
            SMTPReply(250, esc(2, 0, 0), "Ok"),
            SMTPReply(250, esc(2, 1, 5), "Recipient <a@b.example> ok"),
            SMTPReply(354, nil, "End data with <CR><LF>.<CR><LF>"),
            SMTPReply(421, esc(4, 7, 0), "mx.example Error: too many errors"),
            SMTPReply(550, esc(5, 123, 456), "x"),
            SMTPReply(554, esc(5, 0, 0), ""),
            SMTPReply(code: 250, enhanced: nil, lines: ["mx.example", "SIZE 26214400", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]),
            SMTPReply(code: 550, enhanced: esc(5, 7, 1), lines: ["Message refused", "see https://example.com/why", "bye"]),
            SMTPReply(code: 214, enhanced: esc(2, 0, 0), lines: ["", "middle", ""]),
        ]
        var stream = ByteBuffer()
        for reply in replies {
            var one = reply.encoded
            var parser = SMTPReplyParser()
            XCTAssertEqual(try parser.parse(&one), reply, reply.encoded.text.debugDescription)
            XCTAssertEqual(one.readableBytes, 0)
            reply.encode(into: &stream)
        }
        // The same replies back to back in one buffer, and again split at random points.
        var parser = SMTPReplyParser()
        var parsed: [SMTPReply] = []
        while let reply = try parser.parse(&stream) { parsed.append(reply) }
        XCTAssertEqual(parsed, replies)

        var generator = SeededGenerator(seed: 7)
        var wire: [UInt8] = []
        for reply in replies { wire += reply.encoded.bytes }
        for _ in 0..<50 {
            var parser = SMTPReplyParser()
            var buffer = ByteBuffer()
            var parsed: [SMTPReply] = []
            for piece in split(wire, at: randomSplitPoints(count: wire.count, pieces: 8, using: &generator)) {
                buffer.writeBytes(piece)
                while let reply = try parser.parse(&buffer) { parsed.append(reply) }
            }
            XCTAssertEqual(parsed, replies)
        }
    }

    // MARK: Limits

    func testLineLimitWithoutNewline() {
        var parser = SMTPReplyParser(maximumLineLength: 100)
        var buffer = ByteBuffer(string: "250 " + String(repeating: "x", count: 96))
        XCTAssertNil(try parser.parse(&buffer), "exactly the limit is still incomplete")
        buffer.writeString("x")
        XCTAssertThrowsError(try parser.parse(&buffer))
    }

    func testLineLimitStressFedInPieces() {
        // A server that never sends a newline cannot make the client buffer without bound.
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: "250 ")
        var threw = false
        for _ in 0..<1_000 {
            buffer.writeBytes([UInt8](repeating: UInt8(ascii: "x"), count: 1024))
            do {
                _ = try parser.parse(&buffer)
            } catch {
                threw = true
                break
            }
        }
        XCTAssertTrue(threw)
        XCTAssertLessThanOrEqual(buffer.readableBytes, 4096 + 1024 + 4)
    }

    func testLinesLimit() {
        let maximum = 256
        let ok = String(repeating: "250-x\r\n", count: maximum - 1) + "250 x\r\n"
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: ok)
        XCTAssertEqual(try parser.parse(&buffer)?.lines.count, maximum)

        var tooMany = ByteBuffer(string: String(repeating: "250-x\r\n", count: maximum) + "250 x\r\n")
        var second = SMTPReplyParser()
        XCTAssertThrowsError(try second.parse(&tooMany))

        // An endless continuation is refused once the limit is crossed, not buffered forever.
        var endless = SMTPReplyParser(maximumLineLength: 4096, maximumLines: 10)
        var stream = ByteBuffer()
        var threw = false
        for _ in 0..<1_000 {
            stream.writeString("250-more\r\n")
            do { _ = try endless.parse(&stream) } catch { threw = true; break }
        }
        XCTAssertTrue(threw)
    }
}
