import NIOCore
@testable import PosternUpstream
import XCTest

final class MessageSpoolTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory()
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func chunks(of spool: MessageSpool, size: Int) async throws -> [[UInt8]] {
        var chunks: [[UInt8]] = []
        try await spool.forEachChunk(chunkSize: size) { chunks.append(Array($0.readableBytesView)) }
        return chunks
    }

    func testStaysInMemoryUpToTheThreshold() async throws {
        let spool = MessageSpool(memoryThreshold: 1024, directory: directory)
        try spool.append(ByteBuffer(bytes: Array(repeating: 0x41, count: 1000)))
        XCTAssertFalse(spool.isOnDisk)
        try spool.append(ByteBuffer(bytes: Array(repeating: 0x42, count: 24)))
        XCTAssertFalse(spool.isOnDisk, "exactly the threshold still fits in memory")
        XCTAssertEqual(spool.size, 1024)
        XCTAssertEqual(directoryEntries(directory), [])
        let contents = try await spool.contents()
        XCTAssertEqual(Array(contents.readableBytesView), Array(repeating: 0x41, count: 1000) + Array(repeating: 0x42, count: 24))
    }

    func testMovesToDiskPastTheThresholdAndLeavesNoFileBehind() async throws {
        let spool = MessageSpool(memoryThreshold: 1024, directory: directory)
        try spool.append(ByteBuffer(bytes: Array(repeating: 0x41, count: 1024)))
        XCTAssertFalse(spool.isOnDisk)
        try spool.append(ByteBuffer(bytes: [0x42]))
        XCTAssertTrue(spool.isOnDisk)
        XCTAssertEqual(spool.size, 1025)
        XCTAssertEqual(directoryEntries(directory), [], "the spool file is unlinked as soon as it is created")
        let contents = try await spool.contents()
        XCTAssertEqual(Array(contents.readableBytesView), Array(repeating: 0x41, count: 1024) + [0x42])
    }

    func testOneLargeAppendGoesStraightToDisk() async throws {
        let spool = MessageSpool(memoryThreshold: 100, directory: directory)
        let bytes = pseudoRandomBytes(count: 101, seed: 1)
        try spool.append(ByteBuffer(bytes: bytes))
        XCTAssertTrue(spool.isOnDisk)
        let contents = try await spool.contents()
        XCTAssertEqual(Array(contents.readableBytesView), bytes)
    }

    func testContentsAreExactAroundTheThreshold() async throws {
        let threshold = 4096
        for total in [0, 1, threshold - 1, threshold, threshold + 1, 2 * threshold, 2 * threshold + 7] {
            for piece in [1, 100, 4095, 4096, 5000] {
                let bytes = pseudoRandomBytes(count: total, seed: UInt64(total * 31 + piece))
                let spool = MessageSpool(memoryThreshold: threshold, directory: directory)
                var offset = 0
                while offset < bytes.count {
                    let end = min(offset + piece, bytes.count)
                    try spool.append(ByteBuffer(bytes: Array(bytes[offset..<end])))
                    offset = end
                }
                XCTAssertEqual(spool.isOnDisk, total > threshold, "total \(total) piece \(piece)")
                XCTAssertEqual(spool.size, total)
                let contents = try await spool.contents()
                XCTAssertEqual(Array(contents.readableBytesView), bytes, "total \(total) piece \(piece)")
                let pieces = try await chunks(of: spool, size: 1000)
                XCTAssertEqual(pieces.flatMap { $0 }, bytes, "total \(total) piece \(piece)")
                XCTAssertTrue(pieces.allSatisfy { !$0.isEmpty && $0.count <= 1000 }, "total \(total) piece \(piece)")
            }
        }
    }

    func testSeveralMegabytesOnDiskComeBackInOrder() async throws {
        let bytes = pseudoRandomBytes(count: 5 * 1024 * 1024 + 333, seed: 42)
        let spool = MessageSpool(memoryThreshold: 64 * 1024, directory: directory)
        var offset = 0
        var piece = 1
        while offset < bytes.count {
            // Uneven pieces, as the network delivers them.
            piece = (piece * 7919) % 70_000 + 1
            let end = min(offset + piece, bytes.count)
            try spool.append(ByteBuffer(bytes: Array(bytes[offset..<end])))
            offset = end
        }
        XCTAssertTrue(spool.isOnDisk)
        XCTAssertEqual(spool.size, bytes.count)
        let contents = try await spool.contents()
        XCTAssertEqual(contents.readableBytes, bytes.count)
        XCTAssertTrue(Array(contents.readableBytesView) == bytes)
        let pieces = try await chunks(of: spool, size: 64 * 1024)
        XCTAssertTrue(pieces.dropLast().allSatisfy { $0.count == 64 * 1024 })
        XCTAssertTrue(pieces.flatMap { $0 } == bytes)
    }

    func testSeveralMegabytesInMemoryComeBackInOrder() async throws {
        let bytes = pseudoRandomBytes(count: 3 * 1024 * 1024, seed: 7)
        let spool = MessageSpool(memoryThreshold: 4 * 1024 * 1024, directory: directory)
        for start in stride(from: 0, to: bytes.count, by: 10_000) {
            try spool.append(ByteBuffer(bytes: Array(bytes[start..<min(start + 10_000, bytes.count)])))
        }
        XCTAssertFalse(spool.isOnDisk)
        let pieces = try await chunks(of: spool, size: 64 * 1024)
        XCTAssertTrue(pieces.dropLast().allSatisfy { $0.count == 64 * 1024 })
        XCTAssertTrue(pieces.flatMap { $0 } == bytes)
    }

    func testContentsCanBeReadTwice() async throws {
        let bytes = pseudoRandomBytes(count: 10_000, seed: 3)
        for threshold in [100, 100_000] {
            let spool = MessageSpool(memoryThreshold: threshold, directory: directory)
            try spool.append(ByteBuffer(bytes: bytes))
            let first = try await spool.contents()
            let second = try await spool.contents()
            XCTAssertEqual(Array(first.readableBytesView), bytes)
            XCTAssertEqual(first, second)
        }
    }

    func testErrorFromTheBodyStopsTheIteration() async throws {
        struct Stop: Error {}
        let spool = MessageSpool(memoryThreshold: 10, directory: directory)
        try spool.append(ByteBuffer(bytes: pseudoRandomBytes(count: 100, seed: 5)))
        var calls = 0
        do {
            try await spool.forEachChunk(chunkSize: 10) { _ in
                calls += 1
                throw Stop()
            }
            XCTFail("the body's error is rethrown")
        } catch {
            XCTAssertTrue(error is Stop)
        }
        XCTAssertEqual(calls, 1)
    }

    func testMissingSpoolDirectoryFailsOnlyPastTheThreshold() throws {
        let spool = MessageSpool(memoryThreshold: 16, directory: directory + "/does-not-exist")
        XCTAssertNoThrow(try spool.append(ByteBuffer(bytes: Array(repeating: 1, count: 16))))
        XCTAssertThrowsError(try spool.append(ByteBuffer(bytes: [2]))) { error in
            XCTAssertTrue(error is MessageSpool.Error, "\(error)")
            XCTAssertTrue("\(error)".contains("does-not-exist"), "\(error)")
        }
        XCTAssertFalse(spool.isOnDisk)
    }

    func testReadingFromAnOffsetAndThePrefixInMemoryAndOnDisk() async throws {
        let content = pseudoRandomBytes(count: 200_000, seed: 9)
        for threshold in [1 << 20, 1024] {
            let spool = MessageSpool(memoryThreshold: threshold, directory: directory)
            try spool.append(ByteBuffer(bytes: content))
            XCTAssertEqual(spool.isOnDisk, threshold == 1024)
            for offset in [0, 1, 65_535, 65_536, 199_999, 200_000, 250_000] {
                var asynchronous: [UInt8] = []
                try await spool.forEachChunk(from: offset) { asynchronous += $0.readableBytesView }
                var synchronous: [UInt8] = []
                try spool.forEachChunkSynchronously(from: offset, chunkSize: 7_000) { synchronous += $0.readableBytesView }
                let expected = Array(content.dropFirst(offset))
                XCTAssertEqual(asynchronous, expected, "from \(offset), threshold \(threshold)")
                XCTAssertEqual(synchronous, expected, "from \(offset), threshold \(threshold)")
            }
            XCTAssertEqual(try spool.prefix(1000), Array(content.prefix(1000)))
            XCTAssertEqual(try spool.prefix(1 << 30), content, "a prefix longer than the message is the message")
        }
    }
}
