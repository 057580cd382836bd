import NIOCore
import XCTest

@testable import SMTPCore

final class LineEndingInspectorTests: XCTestCase {
    typealias Findings = SMTPInputFramer.DataFindings

    func findings(_ bytes: [UInt8], maximumLineLength: Int = 1000, pieces: [[UInt8]]? = nil) -> Findings {
        var inspector = LineEndingInspector(maximumLineLength: maximumLineLength)
        for piece in pieces ?? [bytes] { inspector.inspect(ByteBuffer(bytes: piece)) }
        return inspector.finish().findings
    }

    /// The content as the normalising inspector keeps it, fed in `pieces`.
    func normalised(_ pieces: [String]) -> (String, Findings) {
        var inspector = LineEndingInspector(maximumLineLength: 1000, normalising: true)
        var kept = ByteBuffer()
        for piece in pieces {
            var out = inspector.inspect(ByteBuffer(string: piece))
            kept.writeBuffer(&out)
        }
        let (findings, tail) = inspector.finish()
        if var tail { kept.writeBuffer(&tail) }
        return (String(buffer: kept), findings)
    }

    func testNormalisingMakesEveryBareLineEndingCRLFAcrossChunks() {
        let table: [(String, String)] = [
            ("a\r\nb\r\n", "a\r\nb\r\n"),
            ("a\nb\n", "a\r\nb\r\n"),
            ("a\rb\r", "a\r\nb\r\n"),
            ("\n.\n", "\r\n.\r\n"),
            ("a\r\r\n", "a\r\n\r\n"),
            ("a\n\r", "a\r\n\r\n"),
            ("Su SMTPUTF8\n", "Su SMTPUTF8\r\n"),
        ]
        for (input, expected) in table {
            XCTAssertEqual(normalised([input]).0, expected, input.debugDescription)
            let bytes = input.map { String($0) }
            XCTAssertEqual(normalised(input.unicodeScalars.map { String($0) }).0, expected, "byte by byte: \(input.debugDescription) \(bytes.count)")
        }
        // A CRLF split across chunks is left alone; a CR that ends a chunk and is not followed
        // by LF gets its LF at the start of the next one.
        XCTAssertEqual(normalised(["a\r", "\nb\r\n"]).0, "a\r\nb\r\n")
        XCTAssertEqual(normalised(["a\r", "b\r\n"]).0, "a\r\nb\r\n")
        // What was normalised is still found (and logged), but the content has CRLF only.
        XCTAssertEqual(normalised(["a\nb"]).1, make(lf: true))
        // Without normalising, the bytes are kept as they are.
        var plain = LineEndingInspector(maximumLineLength: 1000)
        XCTAssertEqual(String(buffer: plain.inspect(ByteBuffer(string: "a\nb\r"))), "a\nb\r")
        XCTAssertNil(plain.finish().tail)
    }

    func make(cr: Bool = false, lf: Bool = false, overlong: Bool = false) -> Findings {
        var findings = Findings()
        findings.bareCarriageReturn = cr
        findings.bareLineFeed = lf
        findings.overlongLine = overlong
        return findings
    }

    func testFixtures() {
        let table: [(String, Findings)] = [
            ("", make()),
            ("a\r\nb\r\n", make()),
            ("a\r\n.\r\n..\r\n", make()),
            ("a\nb\r\n", make(lf: true)),
            ("\n", make(lf: true)),
            ("a\rb\r\n", make(cr: true)),
            ("a\r\r\n", make(cr: true)),
            ("a\r", make(cr: true)),
            ("a\n\r", make(cr: true, lf: true)),
            ("\r\n\n.\n", make(lf: true)),
            ("\r.\r\n", make(cr: true)),
        ]
        for (input, expected) in table {
            let bytes = Array(input.utf8)
            XCTAssertEqual(findings(bytes), expected, input.debugDescription)
            XCTAssertEqual(findings(bytes, pieces: bytes.map { [$0] }), expected, "byte by byte: \(input.debugDescription)")
        }
    }

    func testCRLFSplitAcrossChunks() {
        XCTAssertEqual(findings([], pieces: [Array("a\r".utf8), Array("\nb\r\n".utf8)]), make())
        XCTAssertEqual(findings([], pieces: [Array("a\r".utf8), Array("b\r\n".utf8)]), make(cr: true))
        XCTAssertEqual(findings([], pieces: [Array("a\r".utf8), [], Array("\n".utf8)]), make())
    }

    func testOverlongLines() {
        XCTAssertEqual(findings(Array("12345678\r\n".utf8), maximumLineLength: 10), make())
        XCTAssertEqual(findings(Array("123456789\r\n".utf8), maximumLineLength: 10), make(overlong: true))
        XCTAssertEqual(findings(Array("12345678\r\n12345678\r\n".utf8), maximumLineLength: 10), make())
        XCTAssertEqual(findings(Array("1234\n56789".utf8), maximumLineLength: 10), make(lf: true))
        XCTAssertEqual(findings(Array("1234\r5678".utf8), maximumLineLength: 10), make(cr: true))
        // No dot-stuffing in BDAT: a leading dot counts.
        XCTAssertEqual(findings(Array(".12345678\r\n".utf8), maximumLineLength: 10), make(overlong: true))
        let long = [UInt8](repeating: UInt8(ascii: "x"), count: 999) + [13, 10]
        XCTAssertEqual(findings(long, pieces: [Array(long[..<500]), Array(long[500...])]), make(overlong: true))
        XCTAssertEqual(findings(Array(long.dropFirst())), make())
    }

    /// The inspector agrees with the DATA framer's findings for the same content.
    func testAgreesWithTheFramer() {
        var generator = SeededGenerator(seed: 8)
        let alphabet: [UInt8] = Array("ab\r\n\r\n".utf8)
        for _ in 0..<300 {
            var content = (0..<Int.random(in: 0...40, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }
            // Avoid dots so framing and raw inspection see the same bytes; end with CRLF.
            content += [13, 10]
            var framer = SMTPInputFramer()
            framer.beginData()
            framer.append(ByteBuffer(bytes: content + Array(".\r\n".utf8)))
            var framed: Findings?
            while framed == nil, let event = framer.nextDataEvent(maximumLineLength: 8, bareLineEndings: .reject) {
                if case .end(let result) = event { framed = result }
            }
            // A bare CR right before the final CRLF.CRLF: the framer sees CR CR LF; both call it bare.
            XCTAssertEqual(findings(content, maximumLineLength: 8), framed, String(decoding: content, as: UTF8.self).debugDescription)
        }
    }
}
