import NIOCore

/// Splits what a client sends into command lines, DATA content and BDAT chunks.
///
/// It is pulled, not pushed: the session asks for the next command line, or for DATA
/// content, depending on where the transaction is, so no byte is ever framed in the wrong
/// mode. Only CRLF ends a line (RFC 5321 §2.3.8). In DATA, only `CRLF "." CRLF` ends the
/// message (§4.1.1.4); a bare CR or bare LF never does, which closes SMTP smuggling.
/// Memory held is bounded by one read plus the line limit: an over-long command line is
/// discarded as it arrives.
public struct SMTPInputFramer: Sendable {
    /// What to do with a bare CR or LF inside message content.
    public enum BareLineEndingPolicy: String, Sendable {
        /// Flag it; the session rejects the message with 550 5.6.0.
        case reject
        /// Replace it with CRLF and go on.
        case normalise
    }

    /// What the content scan saw, reported with the end of the message.
    public struct DataFindings: Hashable, Sendable {
        public var bareCarriageReturn = false
        public var bareLineFeed = false
        /// A line longer than the text line limit (RFC 5321 §4.5.3.1.6).
        public var overlongLine = false
        /// A NUL octet: never relayed, since a receiver that drops NULs could read
        /// `<NUL>.` CRLF as the end of the message.
        public var nul = false
        public init() {}
        public var hasBareLineEnding: Bool { bareCarriageReturn || bareLineFeed }
    }

    public enum CommandLineEvent: Sendable {
        /// A line without its CRLF.
        case line(ByteBuffer)
        case failure(SMTPSyntaxError)
    }

    public enum DataEvent: Sendable {
        /// Dot-unstuffed content bytes.
        case content(ByteBuffer)
        /// The terminating `CRLF.CRLF` was read; framing is back in command mode.
        case end(DataFindings)
    }

    private var buffer: ByteBuffer
    private var discardingOverlongLine = false
    private var scan = ContentScan()

    private struct ContentScan: Sendable {
        var atLineStart = true
        var previousLineEndedWithCRLF = true
        var lineLength = 0
        var findings = DataFindings()
    }

    public init(allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        buffer = allocator.buffer(capacity: 0)
    }

    /// Bytes received and not yet framed.
    public var bufferedBytes: Int { buffer.readableBytes }

    public mutating func append(_ bytes: ByteBuffer) {
        if buffer.readableBytes == 0 {
            buffer = bytes
        } else {
            var bytes = bytes
            buffer.writeBuffer(&bytes)
        }
    }

    /// Lets go of the last read's storage once everything in it has been framed, so an
    /// idle session holds no receive buffer while it waits (memory per idle connection).
    public mutating func releaseStorageIfEmpty() {
        if buffer.readableBytes == 0 && buffer.capacity > 0 { buffer = ByteBuffer() }
    }

    /// Drops everything buffered: the bytes a client pipelined after STARTTLS (RFC 3207 §4.2)
    /// or after a reply that ends the session. Returns how many bytes were dropped.
    @discardableResult
    public mutating func discardBufferedInput() -> Int {
        let count = buffer.readableBytes
        buffer.moveReaderIndex(forwardBy: count)
        buffer.discardReadBytes()
        return count
    }

    /// The next command line, nil when more bytes are needed.
    /// `maximumLength` counts the CRLF (RFC 5321 §4.5.3.1.4).
    ///
    /// Only CRLF ends a line (RFC 5321 §2.3.8): `MAIL FROM:<a@b.example>` LF `NOOP` CRLF is
    /// one line, refused as a whole (`invalidCharacters`, "bare LF"), so it gets one reply,
    /// never two. A bare CR inside a line is left for the command parser to refuse.
    public mutating func nextCommandLine(maximumLength: Int) -> CommandLineEvent? {
        let end = lineEnd()
        if discardingOverlongLine {
            guard let end else {
                discardKeepingTrailingCR()
                return nil
            }
            buffer.moveReaderIndex(to: end + 2)
            discardingOverlongLine = false
            return .failure(SMTPSyntaxError(.lineTooLong, "maximum \(maximumLength) octets"))
        }
        guard let end else {
            if buffer.readableBytes >= maximumLength {
                discardingOverlongLine = true
                discardKeepingTrailingCR()
            }
            return nil
        }
        let length = end - buffer.readerIndex
        guard length + 2 <= maximumLength else {
            buffer.moveReaderIndex(to: end + 2)
            return .failure(SMTPSyntaxError(.lineTooLong, "maximum \(maximumLength) octets"))
        }
        let line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 2)
        if line.readableBytesView.contains(UInt8(ascii: "\n")) {
            return .failure(SMTPSyntaxError(.invalidCharacters, "bare LF"))
        }
        return .line(line)
    }

    /// Where the first CRLF starts (the index of its CR), if the buffer holds one.
    private func lineEnd() -> Int? {
        let view = buffer.readableBytesView
        var from = view.startIndex
        while let newline = view[from...].firstIndex(of: UInt8(ascii: "\n")) {
            if newline > view.startIndex && view[newline - 1] == UInt8(ascii: "\r") { return newline - 1 }
            from = newline + 1
        }
        return nil
    }

    /// Drops an over-long line's bytes as they arrive; a final CR may start the CRLF that ends it.
    private mutating func discardKeepingTrailingCR() {
        let keep = buffer.readableBytesView.last == UInt8(ascii: "\r") ? 1 : 0
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes - keep)
        buffer.discardReadBytes()
    }

    /// Call after the 354 reply to DATA: content starts at the beginning of a line.
    public mutating func beginData() {
        scan = ContentScan()
    }

    /// The next piece of message content, or the end of the message; nil when more bytes
    /// are needed. `maximumLineLength` counts the CRLF (RFC 5321 §4.5.3.1.6).
    public mutating func nextDataEvent(maximumLineLength: Int, bareLineEndings: BareLineEndingPolicy) -> DataEvent? {
        let contentLimit = maximumLineLength - 2
        while true {
            let (stop, reason) = scanContent(contentLimit: contentLimit, normalise: bareLineEndings == .normalise)
            if stop > 0 {
                return .content(buffer.readSlice(length: stop)!)
            }
            switch reason {
            case .exhausted, .needMore:
                return nil
            case .endOfData:
                buffer.moveReaderIndex(forwardBy: 3)
                let findings = scan.findings
                scan = ContentScan()
                return .end(findings)
            case .stuffedDot:
                buffer.moveReaderIndex(forwardBy: 1)
                scan.atLineStart = false
            case .bareLineEnding:
                buffer.moveReaderIndex(forwardBy: 1)
                scan.lineLength = 0
                scan.atLineStart = false
                scan.previousLineEndedWithCRLF = false
                var lineEnding = ByteBuffer()
                lineEnding.writeStaticString("\r\n")
                return .content(lineEnding)
            }
        }
    }

    /// Up to `maximum` raw bytes of a BDAT chunk (RFC 3030: no dot-stuffing, no framing).
    public mutating func nextChunkBytes(maximum: Int) -> ByteBuffer? {
        guard buffer.readableBytes > 0, maximum > 0 else { return nil }
        return buffer.readSlice(length: min(maximum, buffer.readableBytes))
    }

    private enum StopReason { case exhausted, needMore, endOfData, stuffedDot, bareLineEnding }

    /// Scans plain content from the reader index. Returns how many bytes are plain content
    /// and why it stopped there; the scan state describes the stop position.
    private mutating func scanContent(contentLimit: Int, normalise: Bool) -> (Int, StopReason) {
        var state = scan
        let result: (Int, StopReason) = buffer.withUnsafeReadableBytes { bytes in
            let count = bytes.count
            var index = 0
            while index < count {
                let byte = bytes[index]
                if state.atLineStart && byte == UInt8(ascii: ".") {
                    guard index + 1 < count else { return (index, .needMore) }
                    if bytes[index + 1] == UInt8(ascii: "\r") {
                        guard index + 2 < count else { return (index, .needMore) }
                        if bytes[index + 2] == UInt8(ascii: "\n") && state.previousLineEndedWithCRLF {
                            return (index, .endOfData)
                        }
                    }
                    return (index, .stuffedDot)
                }
                state.atLineStart = false
                switch byte {
                case UInt8(ascii: "\r"):
                    guard index + 1 < count else { return (index, .needMore) }
                    if bytes[index + 1] == UInt8(ascii: "\n") {
                        index += 2
                        state.atLineStart = true
                        state.previousLineEndedWithCRLF = true
                        state.lineLength = 0
                        continue
                    }
                    state.findings.bareCarriageReturn = true
                    if normalise { return (index, .bareLineEnding) }
                    state.previousLineEndedWithCRLF = false
                    state.lineLength = 0
                case UInt8(ascii: "\n"):
                    state.findings.bareLineFeed = true
                    if normalise { return (index, .bareLineEnding) }
                    state.previousLineEndedWithCRLF = false
                    state.lineLength = 0
                case 0:
                    state.findings.nul = true
                    state.lineLength += 1
                    if state.lineLength > contentLimit { state.findings.overlongLine = true }
                default:
                    state.lineLength += 1
                    if state.lineLength > contentLimit { state.findings.overlongLine = true }
                }
                index += 1
            }
            return (count, .exhausted)
        }
        scan = state
        return result
    }
}

/// Checks BDAT content, which arrives unframed, for what DATA framing catches: bare CR or
/// LF and over-long lines. Without BINARYMIME, chunked content is still CRLF lines. With
/// `normalising` (`bare_line_endings: normalise`), each bare CR or LF is made CRLF in what
/// `inspect` returns, as DATA framing does: the content is then relayed with CRLF lines only.
public struct LineEndingInspector: Sendable {
    public private(set) var findings = SMTPInputFramer.DataFindings()
    private var lastWasCR = false
    private var lineLength = 0
    private let contentLimit: Int
    private let normalising: Bool

    /// `maximumLineLength` counts the CRLF (RFC 5321 §4.5.3.1.6).
    public init(maximumLineLength: Int, normalising: Bool = false) {
        contentLimit = maximumLineLength - 2
        self.normalising = normalising
    }

    /// Inspects the next piece of content; returns it as it is to be kept (`bytes` itself
    /// unless normalising changed it). A CR at the end of a piece is judged with the next.
    @discardableResult
    public mutating func inspect(_ bytes: ByteBuffer) -> ByteBuffer {
        var output: [UInt8]?
        var index = 0
        /// Begins the output (as `bytes` up to `index`) at its first change.
        func change(_ inserted: UInt8) {
            if output == nil {
                var copy: [UInt8] = []
                copy.reserveCapacity(bytes.readableBytes + 16)
                copy.append(contentsOf: bytes.readableBytesView.prefix(index))
                output = copy
            }
            output!.append(inserted)
        }
        for byte in bytes.readableBytesView {
            defer { index += 1 }
            if lastWasCR {
                lastWasCR = false
                if byte == UInt8(ascii: "\n") {
                    output?.append(byte)
                    lineLength = 0
                    continue
                }
                findings.bareCarriageReturn = true
                lineLength = 0
                // The CR is already out (in this piece or the one before): its LF goes now.
                if normalising { change(UInt8(ascii: "\n")) }
            }
            switch byte {
            case UInt8(ascii: "\r"):
                lastWasCR = true
            case UInt8(ascii: "\n"):
                findings.bareLineFeed = true
                lineLength = 0
                if normalising { change(UInt8(ascii: "\r")) }
            case 0:
                findings.nul = true
                lineLength += 1
                if lineLength > contentLimit { findings.overlongLine = true }
            default:
                lineLength += 1
                if lineLength > contentLimit { findings.overlongLine = true }
            }
            output?.append(byte)
        }
        return output.map { ByteBuffer(bytes: $0) } ?? bytes
    }

    /// Call at the end of the content: a trailing CR is bare. `tail`: what normalising adds
    /// after the last piece (the LF of that CR), to be kept after it.
    public mutating func finish() -> (findings: SMTPInputFramer.DataFindings, tail: ByteBuffer?) {
        var tail: ByteBuffer?
        if lastWasCR {
            findings.bareCarriageReturn = true
            if normalising { tail = ByteBuffer(bytes: [UInt8(ascii: "\n")]) }
        }
        lastWasCR = false
        return (findings, tail)
    }
}
