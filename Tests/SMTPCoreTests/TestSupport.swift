import NIOCore
import XCTest

@testable import SMTPCore

/// A deterministic generator (SplitMix64) so randomised tests reproduce from their seed.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension ByteBuffer {
    init(_ string: String) {
        self.init(string: string)
    }

    init(bytes: [UInt8]) {
        self.init()
        self.writeBytes(bytes)
    }

    var bytes: [UInt8] { Array(readableBytesView) }
    var text: String { String(decoding: readableBytesView, as: UTF8.self) }
}

/// Splits `bytes` into consecutive pieces at `points` (sorted, within bounds).
func split(_ bytes: [UInt8], at points: [Int]) -> [[UInt8]] {
    var pieces: [[UInt8]] = []
    var start = 0
    for point in points.sorted() where point > start && point < bytes.count {
        pieces.append(Array(bytes[start..<point]))
        start = point
    }
    pieces.append(Array(bytes[start...]))
    return pieces
}

/// Random split points for `count` bytes.
func randomSplitPoints(count: Int, pieces: Int, using generator: inout SeededGenerator) -> [Int] {
    guard count > 1 else { return [] }
    return (0..<pieces).map { _ in Int.random(in: 1..<count, using: &generator) }
}

extension SMTPReply {
    /// Asserts code and enhanced code in one place so failures name both.
    func assert(
        code: Int, enhanced: EnhancedStatusCode?, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(self.code, code, "reply \(self)", file: file, line: line)
        XCTAssertEqual(self.enhanced, enhanced, "reply \(self)", file: file, line: line)
    }
}

func esc(_ major: Int, _ minor: Int, _ detail: Int) -> EnhancedStatusCode {
    EnhancedStatusCode(major, minor, detail)
}
