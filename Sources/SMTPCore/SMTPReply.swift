import NIOCore

/// An SMTP reply (RFC 5321 §4.2): a three-digit code, an optional enhanced status code
/// (RFC 3463 / RFC 2034) and one or more lines of text.
public struct SMTPReply: Hashable, Sendable, CustomStringConvertible {
    public var code: Int
    public var enhanced: EnhancedStatusCode?
    public var lines: [String]

    public init(_ code: Int, _ enhanced: EnhancedStatusCode? = nil, _ text: String) {
        self.init(code: code, enhanced: enhanced, lines: [text])
    }

    public init(code: Int, enhanced: EnhancedStatusCode?, lines: [String]) {
        precondition((200...599).contains(code), "reply code out of range")
        self.code = code
        self.enhanced = enhanced
        self.lines = lines.isEmpty ? [""] : lines
    }

    public var isPositive: Bool { code < 400 }
    public var isTransientFailure: Bool { (400..<500).contains(code) }
    public var isPermanentFailure: Bool { code >= 500 }
    public var isIntermediate: Bool { (300..<400).contains(code) }

    /// The first line's text, as logs show it.
    public var text: String { lines.joined(separator: " / ") }

    public var description: String {
        if let enhanced { return "\(code) \(enhanced) \(text)" }
        return "\(code) \(text)"
    }

    /// Writes the reply, CRLF-terminated, multi-line with `code-` continuation
    /// (RFC 5321 §4.2.1). The enhanced code, when the reply has one, prefixes every line
    /// (RFC 2034 §3); the session decides whether replies carry one.
    public func encode(into buffer: inout ByteBuffer) {
        let codeText = String(code)
        let prefix = enhanced?.description
        for (index, line) in lines.enumerated() {
            buffer.writeString(codeText)
            buffer.writeInteger(index == lines.count - 1 ? UInt8(ascii: " ") : UInt8(ascii: "-"))
            if let prefix {
                buffer.writeString(prefix)
                if !line.isEmpty { buffer.writeInteger(UInt8(ascii: " ")) }
            }
            buffer.writeString(line)
            buffer.writeStaticString("\r\n")
        }
    }

    public var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        encode(into: &buffer)
        return buffer
    }

    /// The same reply with the class-generic enhanced code filled in when it has none.
    public func withEnhancedDefault() -> SMTPReply {
        var copy = self
        if copy.enhanced == nil { copy.enhanced = .generic(forReplyCode: code) }
        return copy
    }

    /// The same reply without its enhanced code (for sessions that began with HELO).
    public func withoutEnhanced() -> SMTPReply {
        var copy = self
        copy.enhanced = nil
        return copy
    }
}
