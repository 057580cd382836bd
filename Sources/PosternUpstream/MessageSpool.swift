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

    /// Calls `body` with the content in order, in pieces of at most `chunkSize` bytes.
    public func forEachChunk(chunkSize: Int = 64 * 1024, _ body: (ByteBuffer) async throws -> Void) async throws {
        guard fileDescriptor >= 0 else {
            var content = memory
            while content.readableBytes > 0 {
                try await body(content.readSlice(length: min(chunkSize, content.readableBytes))!)
            }
            return
        }
        var offset: off_t = 0
        var chunk = ByteBuffer()
        while offset < size {
            chunk.clear(minimumCapacity: chunkSize)
            var readError: Int32 = 0
            let count = chunk.writeWithUnsafeMutableBytes(minimumWritableBytes: chunkSize) { pointer in
                let result = pread(fileDescriptor, pointer.baseAddress, chunkSize, offset)
                if result < 0 { readError = errno }
                return max(result, 0)
            }
            if readError == EINTR { continue }
            // A read error or a short file must never pass for the end of the message.
            guard readError == 0, count > 0 else {
                throw Error(description: "cannot read the spool file: \(readError == 0 ? "unexpected end" : String(cString: strerror(readError)))")
            }
            offset += off_t(count)
            try await body(chunk)
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
        var remaining = bytes
        while remaining.readableBytes > 0 {
            let written = remaining.withUnsafeReadableBytes { pointer in
                Glibc.write(fileDescriptor, pointer.baseAddress, pointer.count)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw Error(description: "cannot write the spool file: \(String(cString: strerror(errno)))")
            }
            remaining.moveReaderIndex(forwardBy: written)
        }
    }
}
