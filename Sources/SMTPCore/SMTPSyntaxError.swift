/// A command line that cannot be executed, with the reply it earns
/// (RFC 5321 §4.2.4 and §4.3.2; enhanced codes from RFC 3463).
public struct SMTPSyntaxError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// 500 5.5.1: the verb is not one Postern knows.
        case unknownCommand
        /// 501 5.5.4 (or 501 5.1.x for addresses): arguments do not follow the grammar.
        case syntax
        /// 501 5.1.3: an address that does not follow RFC 5321 §4.1.2.
        case badAddress
        /// 555 5.5.4: a MAIL or RCPT parameter that was not offered (RFC 5321 §4.1.1.11).
        case unknownParameter
        /// 500 5.5.2: longer than the command line limit.
        case lineTooLong
        /// 500 5.5.2: a bare CR or LF, or a NUL, inside a command.
        case invalidCharacters
    }

    public var kind: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { "\(kind): \(detail)" }

    public var reply: SMTPReply {
        switch kind {
        case .unknownCommand: return SMTPReply(500, EnhancedStatusCode(5, 5, 1), "Error: command not recognized")
        case .syntax: return SMTPReply(501, EnhancedStatusCode(5, 5, 4), "Syntax error: \(detail)")
        case .badAddress: return SMTPReply(501, EnhancedStatusCode(5, 1, 3), "Bad address syntax: \(detail)")
        case .unknownParameter: return SMTPReply(555, EnhancedStatusCode(5, 5, 4), "Unsupported parameter: \(detail)")
        case .lineTooLong: return SMTPReply(500, EnhancedStatusCode(5, 5, 2), "Line too long (\(detail))")
        case .invalidCharacters: return SMTPReply(500, EnhancedStatusCode(5, 5, 2), "Invalid characters in command: \(detail)")
        }
    }
}
