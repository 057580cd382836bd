import NIOCore
import SMTPCore

/// Postfix's SMTPD policy delegation protocol (SMTPD_POLICY_README), as the client speaks it:
/// a request is `name=value` lines ended by an empty line; the answer is `action=…` (other
/// attributes are skipped), ended by an empty line, on a connection that stays open. No I/O.
public enum PolicyDelegation {
    /// The longest answer line accepted: a server that sends more is broken.
    public static let maximumLine = 4096

    /// A request's lines. Attributes whose value is nil are left out; a name or value is cut at
    /// the first NUL, CR or LF, which the protocol does not allow in either.
    public static func encode(_ attributes: [(name: String, value: String?)]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for (name, value) in attributes {
            guard let value else { continue }
            buffer.writeSubstring(clean(name))
            buffer.writeInteger(UInt8(ascii: "="))
            buffer.writeSubstring(clean(value))
            buffer.writeInteger(UInt8(ascii: "\n"))
        }
        buffer.writeInteger(UInt8(ascii: "\n"))
        return buffer
    }

    private static func clean(_ text: String) -> Substring {
        text.prefix { $0 != "\0" && $0 != "\r" && $0 != "\n" && $0 != "\r\n" }
    }
}

/// A policy server's answer broke the protocol.
public struct PolicyDelegationError: Error, Hashable, Sendable, CustomStringConvertible {
    public var detail: String
    public init(_ detail: String) { self.detail = detail }
    public var description: String { detail }
}

/// Reads answers: the `action` attribute of each block of lines ended by an empty line.
public struct PolicyResponseReader: Sendable {
    private var buffer = ByteBuffer()
    private var action: String?

    public init() {}

    public mutating func append(_ bytes: ByteBuffer) {
        var bytes = bytes
        buffer.writeBuffer(&bytes)
    }

    /// The next answer's action text, or nil until it is complete.
    public mutating func next() throws(PolicyDelegationError) -> String? {
        while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            var line = buffer.readString(length: newline - buffer.readerIndex)!
            buffer.moveReaderIndex(forwardBy: 1)
            if line.utf8.last == UInt8(ascii: "\r") { line = String(line.utf8.dropLast())! }
            if line.isEmpty {
                guard let found = action else { throw PolicyDelegationError("an answer without an action attribute") }
                action = nil
                if buffer.readableBytes == 0 { buffer.clear() }
                return found
            }
            guard let equals = line.firstIndex(of: "=") else { throw PolicyDelegationError("an answer line without '=': '\(line.prefix(80))'") }
            if line[..<equals] == "action" {
                guard action == nil else { throw PolicyDelegationError("an answer with two action attributes") }
                action = String(line[line.index(after: equals)...])
            }
        }
        guard buffer.readableBytes <= PolicyDelegation.maximumLine else {
            throw PolicyDelegationError("an answer line longer than \(PolicyDelegation.maximumLine) octets")
        }
        return nil
    }
}

/// What a policy server's action means before the queue (access(5), as Postfix applies it).
public enum PolicyAction: Hashable, Sendable {
    /// `OK` (or an all-numeric value): this service accepts.
    case accept
    /// `DUNNO`: no opinion.
    case dunno
    case reject(SMTPReply)
    /// `DEFER`, a 4xx code.
    case tempfail(SMTPReply)
    /// 421/521: refuse and end the session.
    case disconnect(SMTPReply)
    /// Defer, but only if a later check would reject / would accept.
    case deferIfReject(SMTPReply)
    case deferIfPermit(SMTPReply)
    /// Add a header to the message (`PREPEND name: value`).
    case prepend(name: String, value: String)
    case discard(String)
    /// `HOLD`: Postern's quarantine.
    case hold(String)
    /// `WARN`, `INFO`: log only.
    case log(String)
    /// Anything else (FILTER, REDIRECT, BCC, a restriction name): what this gateway cannot do
    /// before the queue; the caller applies the service's default action and logs it.
    case unsupported(String)

    /// Parses `text` as Postfix does: the first word, case-insensitive, then its text.
    public init(_ text: String) {
        let trimmed = text.drop { $0 == " " || $0 == "\t" }
        let word = trimmed.prefix { $0 != " " && $0 != "\t" }
        let rest = String(trimmed.dropFirst(word.count).drop { $0 == " " || $0 == "\t" })
        let upper = word.uppercased()
        func reply(_ code: Int, _ enhanced: EnhancedStatusCode, _ fallback: String) -> SMTPReply {
            Self.reply(code: code, defaultEnhanced: enhanced, text: rest.isEmpty ? fallback : rest)
        }
        if !word.isEmpty, word.utf8.allSatisfy({ (0x30...0x39).contains($0) }) {
            if word.utf8.count == 3, let code = Int(word), (400...599).contains(code) {
                let replyCode = Self.reply(code: code, defaultEnhanced: EnhancedStatusCode(code / 100, 7, 1), text: rest.isEmpty ? "Access denied" : rest)
                self = code == 421 || code == 521 ? .disconnect(replyCode) : code < 500 ? .tempfail(replyCode) : .reject(replyCode)
            } else {
                self = .accept  // "an all-numeric value": OK
            }
            return
        }
        switch upper {
        case "OK": self = .accept
        case "DUNNO": self = .dunno
        case "REJECT": self = .reject(reply(554, EnhancedStatusCode(5, 7, 1), "Access denied"))
        case "DEFER": self = .tempfail(reply(450, EnhancedStatusCode(4, 7, 1), "Try again later"))
        case "DEFER_IF_REJECT": self = .deferIfReject(reply(450, EnhancedStatusCode(4, 7, 1), "Try again later"))
        case "DEFER_IF_PERMIT": self = .deferIfPermit(reply(450, EnhancedStatusCode(4, 7, 1), "Try again later"))
        case "PREPEND":
            if let colon = rest.firstIndex(of: ":"), !rest[..<colon].isEmpty,
               rest[..<colon].utf8.allSatisfy({ (0x21...0x7E).contains($0) }) {
                self = .prepend(name: String(rest[..<colon]), value: String(rest[rest.index(after: colon)...].drop { $0 == " " }))
            } else {
                self = .unsupported("PREPEND without a header: '\(rest)'")
            }
        case "DISCARD": self = .discard(rest)
        case "HOLD": self = .hold(rest)
        case "WARN", "INFO": self = .log(rest)
        default: self = .unsupported(String(text.prefix(200)))
        }
    }

    /// The reply, with the text's own enhanced code when it has one of the right class.
    static func reply(code: Int, defaultEnhanced: EnhancedStatusCode, text: String) -> SMTPReply {
        let word = text.prefix { $0 != " " }
        if let enhanced = EnhancedStatusCode(parsing: word), enhanced.codeClass == code / 100 {
            return SMTPReply(code, enhanced, String(text.dropFirst(word.count).drop { $0 == " " }))
        }
        return SMTPReply(code, defaultEnhanced, text)
    }
}
