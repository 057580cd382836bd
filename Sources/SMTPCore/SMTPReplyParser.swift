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
            // On the octets: the code, the separator, then the text as a string.
            let view = buffer.readableBytesView
            let start = view.startIndex
            var end = newline
            if end > start && view[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            buffer.moveReaderIndex(forwardBy: length + 1)
            func describe() -> String { String(decoding: view[start..<end], as: UTF8.self).debugDescription }
            guard end - start >= 3 else { throw Error(reason: "short line \(describe())") }
            let digits = (view[start], view[start + 1], view[start + 2])
            func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
            guard isDigit(digits.0), isDigit(digits.1), isDigit(digits.2) else { throw Error(reason: "bad reply code in \(describe())") }
            let code = Int(digits.0 - 48) * 100 + Int(digits.1 - 48) * 10 + Int(digits.2 - 48)
            guard (200...599).contains(code) else { throw Error(reason: "bad reply code in \(describe())") }
            if let pendingCode, pendingCode != code {
                throw Error(reason: "reply code changed within a multi-line reply")
            }
            let isLast: Bool
            switch end > start + 3 ? view[start + 3] : nil {
            case nil, UInt8(ascii: " "): isLast = true
            case UInt8(ascii: "-"): isLast = false
            default: throw Error(reason: "bad separator in \(describe())")
            }
            let text = end > start + 4 ? String(decoding: view[(start + 4)..<end], as: UTF8.self) : ""
            pendingCode = code
            pendingLines.append(text[...])
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
