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
    /// What failed, for `postern_upstream_failures_total{kind}` and the health log lines.
    public var failure: UpstreamFailureKind

    public init(_ kind: Kind, _ detail: String, failure: UpstreamFailureKind? = nil) {
        self.kind = kind
        self.detail = detail
        self.failure = failure ?? UpstreamFailureKind(kind)
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

/// What went wrong with an upstream, as operators count it: the `kind` label of
/// `postern_upstream_failures_total`.
public enum UpstreamFailureKind: String, Hashable, Sendable, CaseIterable {
    /// The connection was refused or could not be made (no route, reset at connect).
    case refused
    /// No answer in time: the connect, the greeting, or a reply later on.
    case timeout
    /// The greeting was not 220 (a 421 or 554 "go away").
    case greetingRefused = "greeting_refused"
    /// EHLO and HELO were both refused.
    case ehloRefused = "ehlo_refused"
    /// STARTTLS was refused, missing while required, or its handshake failed.
    case tls
    /// AUTH was refused or not offered while credentials are configured.
    case auth
    /// XCLIENT was refused, or the configured way to pass the client on is not offered.
    case forwardRefused = "forward_refused"
    /// The connection broke, or the upstream spoke nonsense, after it was set up.
    case lost
    /// Local trouble (spool, maildir write).
    case local
    /// The transaction needs an extension the upstream does not offer.
    case unsupported

    /// What a kind of error is when nobody said more precisely.
    public init(_ kind: UpstreamError.Kind) {
        switch kind {
        case .unavailable: self = .refused
        case .timedOut: self = .timeout
        case .connectionLost: self = .lost
        case .localError: self = .local
        case .unsupported: self = .unsupported
        }
    }
}
