/// `BODY=` values (RFC 6152). BINARYMIME is not offered, so it never parses.
public enum MessageBodyType: String, Hashable, Sendable {
    case sevenBit = "7BIT"
    case eightBitMIME = "8BITMIME"
}

/// Parameters of `MAIL FROM` that Postern understands (RFC 1870, 6152, 6531, 3461, 4954).
public struct MailParameters: Hashable, Sendable {
    /// `SIZE=` declared message size (RFC 1870).
    public var size: Int?
    public var body: MessageBodyType?
    /// `SMTPUTF8` (RFC 6531 §3.4).
    public var smtpUTF8: Bool = false
    /// DSN `RET=FULL|HDRS` (RFC 3461 §4.3).
    public var ret: String?
    /// DSN `ENVID=` xtext (RFC 3461 §4.4), kept encoded.
    public var envelopeID: String?
    /// `AUTH=` (RFC 4954 §5): the xtext-encoded identity the message was submitted by, or
    /// `<>`. Accepted and recorded, never trusted and never forwarded.
    public var auth: String?

    public init(size: Int? = nil, body: MessageBodyType? = nil, smtpUTF8: Bool = false, ret: String? = nil, envelopeID: String? = nil) {
        self.size = size
        self.body = body
        self.smtpUTF8 = smtpUTF8
        self.ret = ret
        self.envelopeID = envelopeID
    }

    public var hasDSN: Bool { ret != nil || envelopeID != nil }
}

/// Parameters of `RCPT TO` that Postern understands (RFC 3461).
public struct RecipientParameters: Hashable, Sendable {
    /// `NOTIFY=NEVER` or a comma list of SUCCESS, FAILURE, DELAY.
    public var notify: String?
    /// `ORCPT=addr-type;xtext`, kept encoded.
    public var originalRecipient: String?

    public init(notify: String? = nil, originalRecipient: String? = nil) {
        self.notify = notify
        self.originalRecipient = originalRecipient
    }

    public var hasDSN: Bool { notify != nil || originalRecipient != nil }
}

/// One SMTP command (RFC 5321 §4.1.1 plus the ESMTP extensions Postern offers).
public enum SMTPCommand: Hashable, Sendable {
    case ehlo(String)
    case helo(String)
    case mail(ReversePath, MailParameters)
    case rcpt(ForwardPath, RecipientParameters)
    case data
    /// `BDAT chunk-size [LAST]` (RFC 3030 §2).
    case bdat(size: Int, last: Bool)
    case rset
    case noop
    case quit
    case vrfy(String)
    case expn(String)
    case help(String?)
    case starttls
    /// `AUTH mechanism [initial-response]` (RFC 4954); the arguments are kept raw.
    case auth(String)
    /// `ETRN node` (RFC 1985): `domain`, `@domain` or `#queue`, kept as sent.
    case etrn(String)
    /// Commands of the classic table that Postern recognises but does not offer:
    /// ATRN, TURN, SAML, SEND, SOML.
    case notImplemented(String)

    /// The verb as sent on the wire.
    public var verb: String {
        switch self {
        case .ehlo: return "EHLO"
        case .helo: return "HELO"
        case .mail: return "MAIL"
        case .rcpt: return "RCPT"
        case .data: return "DATA"
        case .bdat: return "BDAT"
        case .rset: return "RSET"
        case .noop: return "NOOP"
        case .quit: return "QUIT"
        case .vrfy: return "VRFY"
        case .expn: return "EXPN"
        case .help: return "HELP"
        case .starttls: return "STARTTLS"
        case .auth: return "AUTH"
        case .etrn: return "ETRN"
        case .notImplemented(let verb): return verb
        }
    }
}
