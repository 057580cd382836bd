import SMTPCore

/// Every reply the gateway makes up itself, and the one place where failures become replies
/// (maddy's `wrapErr`). Texts are generic: nothing internal (hosts, paths, error details)
/// reaches the client; the log has the detail. The protocol's own replies (command order,
/// syntax) come from `SMTPServerStateMachine`, the policy's from its rules.
enum SessionReplies {
    // MARK: Failures

    /// An upstream (or delivery target) failure.
    static func reply(for error: UpstreamError, etrnNode: String? = nil) -> SMTPReply {
        switch error.kind {
        case .unavailable:
            // RFC 3463 4.4.1: no answer from host.
            return SMTPReply(451, EnhancedStatusCode(4, 4, 1), "Upstream server unavailable, try again later")
        case .timedOut, .connectionLost:
            // RFC 3463 4.4.2: bad connection.
            return SMTPReply(451, EnhancedStatusCode(4, 4, 2), "Upstream connection failed, try again later")
        case .localError:
            return localError
        case .unsupported(.smtpUTF8):
            return SMTPReply(553, EnhancedStatusCode(5, 6, 7), "The upstream server does not support SMTPUTF8")
        case .unsupported(.eightBitMIME):
            return SMTPReply(554, EnhancedStatusCode(5, 6, 3), "Conversion required but not supported (upstream lacks 8BITMIME)")
        case .unsupported(.etrn):
            return SMTPReply(458, EnhancedStatusCode(4, 5, 0),
                             "Unable to queue messages for node \(etrnNode ?? ""): the upstream is a Maildir")
        }
    }

    /// A filter set recipients the upstream took none of (RFC 5321 §3.3).
    static let noValidRecipients = SMTPReply(554, EnhancedStatusCode(5, 5, 1), "No valid recipients")

    /// Local trouble: the spool, a Maildir write, anything unforeseen.
    static let localError = SMTPReply(451, EnhancedStatusCode(4, 3, 0), "Local error in processing, try again later")

    // MARK: Message content

    static let bareLineEnding = SMTPReply(550, EnhancedStatusCode(5, 6, 0),
        "Message refused: bare CR or LF in message content (lines must end with CRLF)")
    /// RFC 5321 §4.1.1.4 has no NUL in content: a receiver that drops NULs could read `<NUL>.` as the end.
    static let nulInContent = SMTPReply(550, EnhancedStatusCode(5, 6, 0), "Message refused: NUL octet in message content")
    static func overlongLine(_ limit: Int) -> SMTPReply {
        SMTPReply(550, EnhancedStatusCode(5, 6, 0), "Message refused: a line is longer than \(limit) octets")
    }
    static func messageTooBig(_ limit: Int) -> SMTPReply {
        SMTPReply(552, EnhancedStatusCode(5, 3, 4), "Message size exceeds fixed limit of \(limit) octets")
    }

    // MARK: The session

    static let timeout = SMTPReply(421, EnhancedStatusCode(4, 4, 2), "Error: timeout exceeded, closing connection")
    static let shuttingDown = SMTPReply(421, EnhancedStatusCode(4, 3, 2), "Service shutting down, closing connection")
    static let tooManyConnections = SMTPReply(421, EnhancedStatusCode(4, 7, 0), "Too many connections, try again later")
    static let tooManyConnectionsFromAddress = SMTPReply(421, EnhancedStatusCode(4, 7, 0), "Too many connections from your address, try again later")
    static let badProxyHeader = SMTPReply(421, EnhancedStatusCode(4, 7, 0), "Protocol error, closing connection")
    /// After a connect-stage refusal (RFC 5321 §3.1): only QUIT is served.
    static let refusedSessionBye = SMTPReply(221, EnhancedStatusCode(2, 0, 0), "Bye")
    static let refusedSessionCommand = SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: session refused, send QUIT")
    static let etrnNotPermitted = SMTPReply(502, EnhancedStatusCode(5, 5, 1), "Error: command not implemented")

    // MARK: Connection defences

    static let pregreet = SMTPReply(554, EnhancedStatusCode(5, 5, 1), "Protocol error: talked before the greeting")
    /// Postfix's wording for `smtpd_forbid_unauth_pipelining`, which log watchers know.
    static let improperPipelining = SMTPReply(554, EnhancedStatusCode(5, 5, 0), "Error: SMTP protocol synchronization")
    static let sessionTimeExceeded = SMTPReply(421, EnhancedStatusCode(4, 4, 2), "Error: session time limit exceeded")
    static let dataRateTooLow = SMTPReply(421, EnhancedStatusCode(4, 4, 2), "Error: data rate too low")

    // MARK: AUTH (RFC 4954 §4, §6)

    static func saslPrompt(_ challenge: String) -> SMTPReply { SMTPReply(334, nil, challenge) }
    static let authInvalid = SMTPReply(535, EnhancedStatusCode(5, 7, 8), "Authentication credentials invalid")
    static let authUnavailable = SMTPReply(454, EnhancedStatusCode(4, 7, 0), "Temporary authentication failure")
    static let authLockedOut = SMTPReply(454, EnhancedStatusCode(4, 7, 0), "Too many failed authentication attempts, try again later")
    static let authCancelled = SMTPReply(501, EnhancedStatusCode(5, 0, 0), "Authentication cancelled")
    static let authUndecodable = SMTPReply(501, EnhancedStatusCode(5, 5, 2), "Cannot decode response")
    static let authLineTooLong = SMTPReply(500, EnhancedStatusCode(5, 5, 6), "Authentication exchange line is too long")
}
