import XCTest
@testable import PosternMIME

/// Random and mutated inputs never crash the parser, and limits hold on all of them.
final class MIMEFuzzTests: XCTestCase {
    /// Bytes that MIME syntax gives meaning to, so random inputs hit the parser's branches.
    private static let alphabet: [UInt8] = Array("-=?:;\"'*%()<>&#/\\_ \t\r\n\r\nBbQq0aA".utf8) + [0x80, 0xC3, 0xFF, 0x00]
    private static let tokens: [[UInt8]] = [
        "Content-Type: multipart/mixed; boundary=b\r\n", "Content-Type: message/rfc822\r\n",
        "Content-Type: text/html; charset=utf-16\r\n", "Content-Transfer-Encoding: base64\r\n",
        "Content-Transfer-Encoding: quoted-printable\r\n", "Content-Disposition: attachment; filename*0*=utf-8''%C3",
        "--b\r\n", "--b--\r\n", "\r\n", "\n", "=?utf-8?B?", "=?x?Q?=C3", "?=", "=\r\n", "=C", " filename*1=x;",
        "<script>", "<!--", "&#x", "Subject: ", " \t", "multipart/digest; boundary=b\r\n\r\n",
    ].map { Array($0.utf8) }

    func testRandomGarbageNeverCrashes() {
        var generator = MIMEFixture.SeededGenerator(seed: 0x5057_4E45_5231)
        let limits = MIMELimits(maximumNestingDepth: 8, maximumParts: 50, maximumTextScanBytes: 512, maximumHeaderBytes: 256)
        for round in 0..<3000 {
            var bytes: [UInt8] = []
            let length = Int.random(in: 0..<600, using: &generator)
            while bytes.count < length {
                switch Int.random(in: 0..<10, using: &generator) {
                case 0..<3: bytes.append(UInt8.random(in: 0...255, using: &generator))
                case 3..<6: bytes.append(Self.alphabet.randomElement(using: &generator)!)
                default: bytes += Self.tokens.randomElement(using: &generator)!
                }
            }
            let message = MIMEFixture.parse(bytes: bytes, limits: round.isMultiple(of: 2) ? limits : .init())
            check(message, limits: round.isMultiple(of: 2) ? limits : .init(), input: bytes)
        }
    }

    func testMutatedMessagesNeverCrash() {
        let seed = MIMEFixture.message([
            "Subject: =?utf-8?B?w6k=?= =?iso-8859-1?Q?caf=E9?=",
            "Content-Type: multipart/mixed; boundary=\"o\"",
            "",
            "--o",
            "Content-Type: multipart/alternative; boundary=i",
            "",
            "--i",
            "Content-Type: text/plain; charset=iso-8859-1",
            "Content-Transfer-Encoding: quoted-printable",
            "",
            "caf=E9 soft=",
            "break",
            "--i",
            "Content-Type: text/html",
            "",
            "<p>x&amp;y</p>",
            "--i--",
            "--o",
            "Content-Type: message/rfc822",
            "",
            "Subject: inner",
            "",
            "inner body",
            "--o",
            "Content-Type: application/pdf",
            "Content-Disposition: attachment; filename*0*=utf-8''%C3%A9; filename*1=.pdf",
            "Content-Transfer-Encoding: base64",
            "",
            "JVBERi0xLjQK",
            "--o--",
        ])
        var generator = MIMEFixture.SeededGenerator(seed: 2231)
        for _ in 0..<3000 {
            var bytes = seed
            for _ in 0..<Int.random(in: 1...8, using: &generator) {
                let position = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<4, using: &generator) {
                case 0: bytes[position] = UInt8.random(in: 0...255, using: &generator)
                case 1: bytes.remove(at: position)
                case 2: bytes.insert(Self.alphabet.randomElement(using: &generator)!, at: position)
                default: bytes.removeSubrange(position..<min(bytes.count, position + Int.random(in: 1...40, using: &generator)))
                }
                if bytes.isEmpty { bytes = [0x0A] }
            }
            check(MIMEFixture.parse(bytes: bytes), limits: .init(), input: bytes)
        }
    }

    private func check(_ message: MIMEMessage, limits: MIMELimits, input: [UInt8]) {
        XCTAssertEqual(message.raw, input)
        XCTAssertLessThanOrEqual(message.parts.count, limits.maximumParts)
        for part in message.parts {
            XCTAssertLessThanOrEqual(part.depth, limits.maximumNestingDepth)
            XCTAssertEqual(part.decodedText != nil, part.contentType.hasPrefix("text/"))
            _ = part.decodedBody(maximumBytes: 1024)
        }
        _ = (message.subject, message.textBodies, message.plainTextBodies, message.attachments)
    }
}
