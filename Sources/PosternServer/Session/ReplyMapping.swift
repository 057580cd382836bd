import PosternUpstream
import SMTPCore

/// The one place where internal failures become SMTP replies. Texts are generic: nothing
/// internal (hosts, paths, errors) reaches the client; the log has the detail.
enum ReplyMapping {
    static func reply(for error: UpstreamError) -> SMTPReply {
        switch error.kind {
        case .unavailable:
            // RFC 3463 4.4.1: no answer from host.
            return SMTPReply(451, EnhancedStatusCode(4, 4, 1), "Upstream server unavailable, try again later")
        case .timedOut, .connectionLost:
            // RFC 3463 4.4.2: bad connection.
            return SMTPReply(451, EnhancedStatusCode(4, 4, 2), "Upstream connection failed, try again later")
        case .localError, .unsupported:
            return SMTPReply(451, EnhancedStatusCode(4, 3, 0), "Local error in processing, try again later")
        }
    }

    static func reply(for error: MessageSpool.Error) -> SMTPReply {
        SMTPReply(451, EnhancedStatusCode(4, 3, 0), "Local error in processing, try again later")
    }

    /// A generic reply for anything unforeseen.
    static let unexpected = SMTPReply(451, EnhancedStatusCode(4, 3, 0), "Local error in processing, try again later")

    static let bareLineEnding = SMTPReply(550, EnhancedStatusCode(5, 6, 0),
        "Message refused: bare CR or LF in message content (lines must end with CRLF)")
    static func overlongLine(_ limit: Int) -> SMTPReply {
        SMTPReply(550, EnhancedStatusCode(5, 6, 0), "Message refused: a line is longer than \(limit) octets")
    }
    static func messageTooBig(_ limit: Int) -> SMTPReply {
        SMTPReply(552, EnhancedStatusCode(5, 3, 4), "Message size exceeds fixed limit of \(limit) octets")
    }
    static let timeout = SMTPReply(421, EnhancedStatusCode(4, 4, 2), "Error: timeout exceeded, closing connection")
    static let shuttingDown = SMTPReply(421, EnhancedStatusCode(4, 3, 2), "Service shutting down, closing connection")
    static let tooManyConnections = SMTPReply(421, EnhancedStatusCode(4, 7, 0), "Too many connections, try again later")
    static let tooManyConnectionsFromAddress = SMTPReply(421, EnhancedStatusCode(4, 7, 0), "Too many connections from your address, try again later")
    static let badProxyHeader = SMTPReply(421, EnhancedStatusCode(4, 7, 0), "Protocol error, closing connection")

    // Connection defences.
    static let pregreet = SMTPReply(554, EnhancedStatusCode(5, 5, 1), "Protocol error: talked before the greeting")
    static let sessionTimeExceeded = SMTPReply(421, EnhancedStatusCode(4, 4, 2), "Error: session time limit exceeded")
    static let dataRateTooLow = SMTPReply(421, EnhancedStatusCode(4, 4, 2), "Error: data rate too low")

    // AUTH (RFC 4954 §6).
    static let authInvalid = SMTPReply(535, EnhancedStatusCode(5, 7, 8), "Authentication credentials invalid")
    static let authUnavailable = SMTPReply(454, EnhancedStatusCode(4, 7, 0), "Temporary authentication failure")
    static let authLockedOut = SMTPReply(454, EnhancedStatusCode(4, 7, 0), "Too many failed authentication attempts, try again later")
    static let authCancelled = SMTPReply(501, EnhancedStatusCode(5, 0, 0), "Authentication cancelled")
    static let authUndecodable = SMTPReply(501, EnhancedStatusCode(5, 5, 2), "Cannot decode response")
    static let authLineTooLong = SMTPReply(500, EnhancedStatusCode(5, 5, 6), "Authentication exchange line is too long")
}
