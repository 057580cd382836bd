import NIOCore

/// Dot-stuffs message content for DATA (RFC 5321 §4.5.2) as it streams out: a "." at the
/// start of a line is doubled. Lines are CRLF-terminated (content reaching it has been
/// checked for bare CR/LF), so line starts are exact.
public struct DotStuffer: Sendable {
    private var atLineStart = true
    private var lastByteWasCR = false

    public init() {}

    /// Appends `content`, stuffed, to `output`.
    public mutating func stuff(_ content: ByteBuffer, into output: inout ByteBuffer) {
        var content = content
        while content.readableBytes > 0 {
            // Find the next position that starts a line and holds a dot.
            var stuffAt: Int?
            var state = (atLineStart, lastByteWasCR)
            content.withUnsafeReadableBytes { bytes in
                for index in 0..<bytes.count {
                    let byte = bytes[index]
                    if state.0 && byte == UInt8(ascii: ".") { stuffAt = index; return }
                    state.0 = state.1 && byte == UInt8(ascii: "\n")
                    state.1 = byte == UInt8(ascii: "\r")
                }
            }
            if let stuffAt {
                var head = content.readSlice(length: stuffAt)!
                output.writeBuffer(&head)
                output.writeInteger(UInt8(ascii: "."))
                // The dot itself is written with the rest; it no longer starts a stuffable line.
                var dot = content.readSlice(length: 1)!
                output.writeBuffer(&dot)
                atLineStart = false
                lastByteWasCR = false
            } else {
                output.writeBuffer(&content)
                (atLineStart, lastByteWasCR) = state
            }
        }
    }

    /// Ends the content: a CRLF if it did not end with one, then `.CRLF`.
    public mutating func finish(into output: inout ByteBuffer) {
        if !atLineStart { output.writeStaticString("\r\n") }
        output.writeStaticString(".\r\n")
        atLineStart = true
        lastByteWasCR = false
    }
}
