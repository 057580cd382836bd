/// Why a Redis call failed.
public enum RedisError: Error, Hashable, Sendable, CustomStringConvertible {
    /// No reply within the call's timeout; the connection was closed so replies cannot
    /// fall out of step.
    case timeout
    /// The connection could not be made, or was lost before the reply arrived.
    case connectionFailed(String)
    /// The pool is waiting before its next connection attempt (Redis was unreachable).
    case backingOff
    /// The pool was shut down.
    case poolClosed
    /// The server answered with an error reply (`-ERR …`, `-NOSCRIPT …`, `-WRONGPASS …`).
    case server(String)
    /// A reply that is not what the command returns, or a reply that cannot be parsed.
    case protocolError(String)

    public var description: String {
        switch self {
        case .timeout: return "redis: timed out"
        case .connectionFailed(let why): return "redis: connection failed: \(why)"
        case .backingOff: return "redis: unreachable, waiting before reconnecting"
        case .poolClosed: return "redis: client closed"
        case .server(let message): return "redis: \(message)"
        case .protocolError(let why): return "redis: protocol error: \(why)"
        }
    }

    /// True for the `NOSCRIPT` error of `EVALSHA` (the server lost its script cache).
    public var isNoScript: Bool {
        if case .server(let message) = self { return message.hasPrefix("NOSCRIPT") }
        return false
    }
}
