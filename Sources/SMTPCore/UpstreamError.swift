/// Why relaying to an upstream failed: what an SMTP client, a Maildir or another delivery
/// target throws instead of making up a reply as if the upstream had sent it. The session
/// turns these into replies in one place.
public struct UpstreamError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// No upstream could be reached or would take a session.
        case unavailable
        /// The upstream did not answer in time.
        case timedOut
        /// The connection broke, or the upstream spoke nonsense, mid-transaction.
        case connectionLost
        /// Local trouble (spool, maildir write).
        case localError
        /// The transaction needs something this upstream does not offer; the connection
        /// itself is fine.
        case unsupported(UpstreamFeature)

        /// The kind's name in metrics and decision records.
        public var name: String {
            switch self {
            case .unavailable: return "unavailable"
            case .timedOut: return "timedOut"
            case .connectionLost: return "connectionLost"
            case .localError: return "localError"
            case .unsupported: return "unsupported"
            }
        }
    }

    public var kind: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { "\(kind): \(detail)" }
}

/// What a transaction can need from an upstream beyond plain SMTP.
public enum UpstreamFeature: String, Hashable, Sendable {
    /// RFC 6531: a non-ASCII address or SMTPUTF8 on MAIL.
    case smtpUTF8 = "SMTPUTF8"
    /// RFC 6152: BODY=8BITMIME.
    case eightBitMIME = "8BITMIME"
    /// RFC 1985: a queue to flush (a Maildir has none).
    case etrn = "ETRN"
}
