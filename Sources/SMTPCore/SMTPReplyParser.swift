import NIOCore

/// Parses replies from an SMTP server (client side, RFC 5321 §4.2), pulling complete
/// replies out of a byte buffer. Returns nil while a reply is incomplete.
public struct SMTPReplyParser: Sendable {
    /// Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512; servers exceed it in practice).
    public var maximumLineLength: Int
    /// Most lines in one multi-line reply (an EHLO reply has a few dozen at most).
    public var maximumLines: Int

    private var pendingLines: [Substring] = []
    private var pendingCode: Int?

    public init(maximumLineLength: Int = 4096, maximumLines: Int = 256) {
        self.maximumLineLength = maximumLineLength
        self.maximumLines = maximumLines
    }

    public struct Error: Swift.Error, Hashable, CustomStringConvertible {
        public var reason: String
        public var description: String { "malformed reply from server: \(reason)" }
    }

    /// Consumes bytes from `buffer` and returns the next complete reply, nil if more bytes
    /// are needed.
    public mutating func parse(_ buffer: inout ByteBuffer) throws(Error) -> SMTPReply? {
        do {
            return try parseReply(&buffer)
        } catch {
            // A broken reply leaves nothing half-read behind.
            pendingLines = []
            pendingCode = nil
            throw error
        }
    }

    private mutating func parseReply(_ buffer: inout ByteBuffer) throws(Error) -> SMTPReply? {
        while true {
            guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
                if buffer.readableBytes > maximumLineLength {
                    throw Error(reason: "reply line longer than \(maximumLineLength) octets")
                }
                return nil
            }
            let length = newline - buffer.readerIndex
            guard length <= maximumLineLength else {
                throw Error(reason: "reply line longer than \(maximumLineLength) octets")
            }
            var line = buffer.readString(length: length)!
            buffer.moveReaderIndex(forwardBy: 1)
            if line.hasSuffix("\r") { line.removeLast() }
            guard line.utf8.count >= 3 else { throw Error(reason: "short line \(line.debugDescription)") }
            let codeText = line.prefix(3)
            guard codeText.allSatisfy(\.isASCIIDigit), let code = Int(codeText), (200...599).contains(code) else {
                throw Error(reason: "bad reply code in \(line.debugDescription)")
            }
            if let pendingCode, pendingCode != code {
                throw Error(reason: "reply code changed within a multi-line reply")
            }
            let rest = line.dropFirst(3)
            let isLast: Bool
            switch rest.first {
            case nil, " ": isLast = true
            case "-": isLast = false
            default: throw Error(reason: "bad separator in \(line.debugDescription)")
            }
            pendingCode = code
            pendingLines.append(rest.dropFirst())
            if pendingLines.count > maximumLines { throw Error(reason: "more than \(maximumLines) lines") }
            if isLast {
                defer { pendingLines = []; pendingCode = nil }
                return Self.makeReply(code: code, lines: pendingLines)
            }
        }
    }

    /// Splits an enhanced status code off the text when every line carries the same one.
    static func makeReply(code: Int, lines: [Substring]) -> SMTPReply {
        var enhanced: EnhancedStatusCode?
        var texts = lines.map(String.init)
        if let first = lines.first, let space = first.firstIndex(of: " ") ?? (first.isEmpty ? nil : first.endIndex),
           let parsed = EnhancedStatusCode(parsing: first[..<space]), parsed.codeClass == code / 100 {
            enhanced = parsed
            let token = first[..<space]
            texts = lines.map { line in
                guard line.hasPrefix(token) else { return String(line) }
                return String(line.dropFirst(token.count).drop(while: { $0 == " " }))
            }
        }
        return SMTPReply(code: code, enhanced: enhanced, lines: texts)
    }
}
