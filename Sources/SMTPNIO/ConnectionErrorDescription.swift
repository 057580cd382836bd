import Glibc
import NIOCore
import NIOPosix

/// An error from connecting or from a channel, as an operator reads it: "Connection refused",
/// "connect timed out after 30 s", instead of NIO's nested descriptions.
public func describeConnectionError(_ error: any Error) -> String {
    if case ChannelError.connectTimeout(let limit) = error { return "connect timed out after \(limit)" }
    if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
        return describeConnectionError(first.error)
    }
    if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) }
    return "\(error)"
}
