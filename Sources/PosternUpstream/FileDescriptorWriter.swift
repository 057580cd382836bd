import Glibc
import NIOCore

/// Writes a whole buffer to a file descriptor, retrying after EINTR and short writes: the
/// spool and the Maildir write through this one loop.
enum FileDescriptorWriter {
    struct Failure: Error, CustomStringConvertible {
        var errno: Int32
        var description: String { String(cString: strerror(errno)) }
    }

    static func writeAll(_ bytes: ByteBuffer, to descriptor: Int32) throws(Failure) {
        var remaining = bytes
        while remaining.readableBytes > 0 {
            let written = remaining.withUnsafeReadableBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw Failure(errno: errno)
            }
            remaining.moveReaderIndex(forwardBy: written)
        }
    }
}
