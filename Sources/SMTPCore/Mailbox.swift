/// A mailbox, `Local-part "@" ( Domain / address-literal )` (RFC 5321 §4.1.2).
public struct Mailbox: Hashable, Sendable, CustomStringConvertible {
    /// The local part as written, quotes included when it was a Quoted-string.
    public var localPart: String
    /// The domain or address literal (`[192.0.2.1]`, `[IPv6:…]`) as written.
    public var domain: String

    public init(localPart: String, domain: String) {
        self.localPart = localPart
        self.domain = domain
    }

    public var description: String { "\(localPart)@\(domain)" }

    /// True when the address needs SMTPUTF8 (RFC 6531) to be carried.
    public var isASCII: Bool { localPart.utf8.allSatisfy { $0 < 0x80 } && domain.utf8.allSatisfy { $0 < 0x80 } }

    /// True for `[…]` address literals.
    public var isAddressLiteral: Bool { domain.hasPrefix("[") }
}

/// `Reverse-path = Path / "<>"` (RFC 5321 §4.1.2): the envelope sender.
public enum ReversePath: Hashable, Sendable, CustomStringConvertible {
    /// The null reverse-path `<>`, used by bounces (RFC 5321 §4.5.5).
    case null
    case mailbox(Mailbox)

    public var description: String {
        switch self {
        case .null: return "<>"
        case .mailbox(let mailbox): return "<\(mailbox)>"
        }
    }

    public var mailbox: Mailbox? {
        if case .mailbox(let mailbox) = self { return mailbox }
        return nil
    }
}

/// `Forward-path = Path`, plus the special `<Postmaster>` (RFC 5321 §4.1.1.3).
public enum ForwardPath: Hashable, Sendable, CustomStringConvertible {
    /// `<Postmaster>` without a domain, which every SMTP server must accept.
    case postmaster
    case mailbox(Mailbox)

    public var description: String {
        switch self {
        case .postmaster: return "<Postmaster>"
        case .mailbox(let mailbox): return "<\(mailbox)>"
        }
    }

    public var mailbox: Mailbox? {
        if case .mailbox(let mailbox) = self { return mailbox }
        return nil
    }
}

extension ReversePath {
    /// A path as people and logs write it (`a@b.example`, `<a@b.example>`; `<>` or nothing
    /// for the null sender), checked by the same grammar as MAIL FROM; nil when it is not one.
    public init?(text: String) {
        if text.isEmpty || text == "<>" {
            self = .null
            return
        }
        let path = text.hasPrefix("<") ? text : "<\(text)>"
        guard case .mail(let parsed, _)? = try? SMTPCommandParser().parse(Array("MAIL FROM:\(path)".utf8)) else { return nil }
        self = parsed
    }
}

extension ForwardPath {
    /// A recipient as people and logs write it (`a@b.example`, `<a@b.example>`, `postmaster`),
    /// checked by the same grammar as RCPT TO; nil when it is not one.
    public init?(text: String) {
        let path = text.hasPrefix("<") ? text : "<\(text)>"
        guard case .rcpt(let parsed, _)? = try? SMTPCommandParser().parse(Array("RCPT TO:\(path)".utf8)) else { return nil }
        self = parsed
    }
}
