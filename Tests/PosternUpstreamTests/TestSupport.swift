import Foundation
import NIOCore
import XCTest

extension ByteBuffer {
    init(bytes: [UInt8]) {
        self.init()
        self.writeBytes(bytes)
    }

    var text: String { String(decoding: readableBytesView, as: UTF8.self) }
}

/// A fresh directory under the system temporary directory, removed by `tearDown`.
func makeTemporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "postern-upstream-tests-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Deterministic pseudo-random bytes (SplitMix64), so failures reproduce.
func pseudoRandomBytes(count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    var bytes: [UInt8] = []
    bytes.reserveCapacity(count)
    while bytes.count < count {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        withUnsafeBytes(of: z) { bytes.append(contentsOf: $0.prefix(count - bytes.count)) }
    }
    return bytes
}

func directoryEntries(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}
