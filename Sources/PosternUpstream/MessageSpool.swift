import Glibc
import NIOCore

/// A message being received: held in memory up to a threshold, then in an unlinked file in
/// the spool directory, so a large message never sits whole in memory.
public final class MessageSpool {
    public struct Error: Swift.Error, CustomStringConvertible {
        public var description: String
    }

    public let memoryThreshold: Int
    public let directory: String
    public private(set) var size = 0
    private var memory = ByteBuffer()
    private var fileDescriptor: Int32 = -1

    public init(memoryThreshold: Int, directory: String) {
        self.memoryThreshold = memoryThreshold
        self.directory = directory
    }

    deinit {
        if fileDescriptor >= 0 { Glibc.close(fileDescriptor) }
    }

    public var isOnDisk: Bool { fileDescriptor >= 0 }

    public func append(_ bytes: ByteBuffer) throws(Error) {
        let count = bytes.readableBytes
        if fileDescriptor < 0 && memory.readableBytes + count <= memoryThreshold {
            var bytes = bytes
            memory.writeBuffer(&bytes)
            size += count
            return
        }
        if fileDescriptor < 0 {
            try openFile()
            try writeAll(memory)
            memory = ByteBuffer()
        }
        try writeAll(bytes)
        size += count
    }

    /// Calls `body` with the content in order, from octet `offset` on, in pieces of at most
    /// `chunkSize` bytes.
    public func forEachChunk(from offset: Int = 0, chunkSize: Int = 64 * 1024, _ body: (ByteBuffer) async throws -> Void) async throws {
        var position = offset
        while let chunk = try chunk(at: &position, chunkSize: chunkSize) { try await body(chunk) }
    }

    /// `forEachChunk` for blocking callers (NIO's thread pool): the same pieces, synchronously.
    public func forEachChunkSynchronously(from offset: Int = 0, chunkSize: Int = 64 * 1024, _ body: (ByteBuffer) throws -> Void) throws {
        var position = offset
        while let chunk = try chunk(at: &position, chunkSize: chunkSize) { try body(chunk) }
    }

    /// The first `limit` octets (fewer when the message is shorter), read synchronously.
    public func prefix(_ limit: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(min(size, limit))
        try forEachChunkSynchronously { chunk in
            guard bytes.count < limit else { return }
            bytes.append(contentsOf: chunk.readableBytesView.prefix(limit - bytes.count))
        }
        return bytes
    }

    /// The piece at `position` (moved past it), or nil at the end.
    private func chunk(at position: inout Int, chunkSize: Int) throws -> ByteBuffer? {
        guard position < size else { return nil }
        guard fileDescriptor >= 0 else {
            let length = min(chunkSize, size - position)
            defer { position += length }
            return memory.getSlice(at: memory.readerIndex + position, length: length)
        }
        var chunk = ByteBuffer()
        while true {
            chunk.clear(minimumCapacity: chunkSize)
            var readError: Int32 = 0
            let count = chunk.writeWithUnsafeMutableBytes(minimumWritableBytes: chunkSize) { pointer in
                let result = pread(fileDescriptor, pointer.baseAddress, min(chunkSize, size - position), off_t(position))
                if result < 0 { readError = errno }
                return max(result, 0)
            }
            if readError == EINTR { continue }
            // A read error or a short file must never pass for the end of the message.
            guard readError == 0, count > 0 else {
                throw Error(description: "cannot read the spool file: \(readError == 0 ? "unexpected end" : String(cString: strerror(readError)))")
            }
            position += count
            return chunk
        }
    }

    /// The whole content in one buffer; for tests and small messages.
    public func contents() async throws -> ByteBuffer {
        var all = ByteBuffer()
        try await forEachChunk { chunk in
            var chunk = chunk
            all.writeBuffer(&chunk)
        }
        return all
    }

    private func openFile() throws(Error) {
        var template = Array("\(directory)/postern-spool-XXXXXX".utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard descriptor >= 0 else {
            throw Error(description: "cannot create a spool file in \(directory): \(String(cString: strerror(errno)))")
        }
        // Unlinked at once: the file disappears with the descriptor, even after a crash.
        _ = template.withUnsafeBufferPointer { unlink($0.baseAddress!) }
        fileDescriptor = descriptor
    }

    private func writeAll(_ bytes: ByteBuffer) throws(Error) {
        do {
            try FileDescriptorWriter.writeAll(bytes, to: fileDescriptor)
        } catch {
            throw Error(description: "cannot write the spool file: \(error)")
        }
    }
}
