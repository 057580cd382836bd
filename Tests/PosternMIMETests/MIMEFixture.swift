import XCTest
@testable import PosternMIME

/// Builds test messages: lines joined with CRLF (or bare LF), parsed with default limits.
enum MIMEFixture {
    static func message(_ lines: [String], lineEnd: String = "\r\n") -> [UInt8] {
        Array(lines.joined(separator: lineEnd).utf8)
    }

    static func parse(_ lines: [String], lineEnd: String = "\r\n", limits: MIMELimits = .init()) -> MIMEMessage {
        MIMEMessage.parse(message(lines, lineEnd: lineEnd), limits: limits)
    }

    /// A deterministic generator (SplitMix64), so fuzz failures reproduce.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }
}
