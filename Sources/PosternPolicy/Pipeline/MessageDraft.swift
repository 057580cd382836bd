import NIOCore
import SMTPCore

/// Where the original body of a message is read from (the session's spool).
public protocol MessageBodySource: Sendable {
    /// The stored message's octets from `offset` on, in chunks of at most `maximum` octets.
    func forEachChunk(from offset: Int, maximum: Int, _ body: (ByteBuffer) async throws -> Void) async throws
}

/// The message as the content checks of the data stage see and edit it, one after another
/// (a milter's header and body edits reach the next milter): its header fields, its body
/// (the stored original or a replacement) and its envelope. Postern's own Received header is
/// not in it: it stays on top when the message is relayed.
public struct MessageDraft: Sendable {
    /// One header field: `name` and the raw octets after the colon, continuation lines
    /// joined with CRLF, without the final CRLF.
    public struct Field: Hashable, Sendable {
        public var name: String
        public var value: [UInt8]

        public init(name: String, value: [UInt8]) {
            self.name = name
            self.value = value
        }

        /// `name: value` for `value` as a check writes it, with LF or CRLF between folded lines
        /// and its leading space given or not. It can never end the header section or start a
        /// field of its own: CRs are dropped, empty continuation lines left out, and a
        /// continuation line that does not start with white space gets a space.
        public init(name: String, text: String, leadingSpace: Bool) {
            self.name = name
            var octets: [UInt8] = leadingSpace ? [] : [UInt8(ascii: " ")]
            let lines = text.utf8.filter { $0 != 0x0D }.split(separator: 0x0A, omittingEmptySubsequences: false)
            for (number, line) in lines.enumerated() {
                if number == 0 { octets += line; continue }
                guard line.contains(where: { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }) else { continue }
                octets += [0x0D, 0x0A]
                if line.first != UInt8(ascii: " "), line.first != UInt8(ascii: "\t") { octets.append(UInt8(ascii: " ")) }
                octets += line
            }
            self.value = octets
        }

        /// The value as a filter is shown it: folds as LF, one leading space dropped unless `leadingSpace`.
        public func shownValue(leadingSpace: Bool) -> [UInt8] {
            var octets: [UInt8] = []
            octets.reserveCapacity(value.count)
            var index = value.startIndex
            if !leadingSpace, value.first == UInt8(ascii: " ") { index += 1 }
            while index < value.endIndex {
                let byte = value[index]
                if byte == 0x0D, index + 1 < value.endIndex, value[index + 1] == 0x0A { index += 1; continue }
                octets.append(byte)
                index += 1
            }
            return octets
        }

        public func encoded(into buffer: inout ByteBuffer) {
            buffer.writeString(name)
            buffer.writeInteger(UInt8(ascii: ":"))
            buffer.writeBytes(value)
            buffer.writeStaticString("\r\n")
        }
    }

    public enum Body: Sendable {
        /// The stored message from octet `offset` on.
        case original(any MessageBodySource, offset: Int)
        case replaced(ByteBuffer)
    }

    public var fields: [Field]
    public var body: Body
    public var sender: ReversePath
    /// The MAIL parameters as they go to the upstream.
    public var senderParameters: MailParameters
    public var recipients: [ForwardPath]
    /// Something changed the header fields or the body.
    public private(set) var contentChanged = false
    /// Something changed the sender or the recipients.
    public private(set) var envelopeChanged = false

    public init(fields: [Field], body: Body, sender: ReversePath, senderParameters: MailParameters = MailParameters(),
                recipients: [ForwardPath]) {
        self.fields = fields
        self.body = body
        self.sender = sender
        self.senderParameters = senderParameters
        self.recipients = recipients
    }

    // MARK: Reading a stored message

    /// Splits a header section (the message's first octets) into fields. It ends at the empty
    /// line, or at the first line that is neither a field nor a continuation (that line is
    /// body, as Postfix's cleanup reads it). Returns the fields and the octets they took,
    /// including the empty line; nil when `bytes` holds no complete header section.
    public static func parseHeaderSection(_ bytes: some Collection<UInt8>) -> (fields: [Field], length: Int)? {
        var fields: [Field] = []
        let octets = Array(bytes)
        var position = 0
        while position < octets.count {
            guard let lineEnd = Self.lineEnd(octets, from: position) else { return nil }
            if lineEnd == position {  // the empty line
                return (fields, position + 2)
            }
            let first = octets[position]
            if first == UInt8(ascii: " ") || first == UInt8(ascii: "\t"), !fields.isEmpty {
                fields[fields.count - 1].value += [0x0D, 0x0A] + octets[position..<lineEnd]
            } else if let colon = octets[position..<lineEnd].firstIndex(of: UInt8(ascii: ":")), colon > position,
                      octets[position..<colon].allSatisfy({ (0x21...0x7E).contains($0) }) {
                fields.append(Field(name: String(decoding: octets[position..<colon], as: UTF8.self),
                                    value: Array(octets[(colon + 1)..<lineEnd])))
            } else {
                return (fields, position)  // a line that is body
            }
            position = lineEnd + 2
        }
        return nil
    }

    private static func lineEnd(_ octets: [UInt8], from start: Int) -> Int? {
        var index = start
        while index + 1 < octets.count {
            if octets[index] == 0x0D, octets[index + 1] == 0x0A { return index }
            index += 1
        }
        return nil
    }

    /// The header section as it goes out: every field, then the empty line.
    public func encodedHeaderSection() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(fields.reduce(2) { $0 + $1.name.utf8.count + $1.value.count + 3 })
        for field in fields { field.encoded(into: &buffer) }
        buffer.writeStaticString("\r\n")
        return buffer
    }

    // MARK: Edits (the milter protocol's rules, which Postfix's cleanup follows)

    /// Appends a field after the last one.
    public mutating func addHeader(_ field: Field) {
        fields.append(field)
        contentChanged = true
    }

    /// Inserts a field at `index`, counted over the header as delivered, whose first field is
    /// Postern's Received: 0 and 1 both put it on top of the fields here (Postern's trace
    /// header stays first); past the end appends.
    public mutating func insertHeader(_ field: Field, at index: Int) {
        fields.insert(field, at: min(max(index - 1, 0), fields.count))
        contentChanged = true
    }

    /// Changes the `index`-th field named `name` (from 1; 0 counts as 1; names compare
    /// without case). A nil value deletes it. When there is no such field a new value is
    /// appended and a deletion does nothing.
    public mutating func changeHeader(name: String, index: Int, to field: Field?) {
        let wanted = max(index, 1)
        var seen = 0
        for position in fields.indices where fields[position].name.lowercased() == name.lowercased() {
            seen += 1
            guard seen == wanted else { continue }
            if let field {
                fields[position].value = field.value
            } else {
                fields.remove(at: position)
            }
            contentChanged = true
            return
        }
        if let field {
            fields.append(field)
            contentChanged = true
        }
    }

    /// Replaces the body. Lines end with CRLF however the check ended them (a bare CR or LF
    /// becomes CRLF), and the last line is ended.
    public mutating func replaceBody(_ bytes: ByteBuffer) {
        var normalized = ByteBuffer()
        normalized.reserveCapacity(bytes.readableBytes + 2)
        var previous: UInt8 = 0
        for byte in bytes.readableBytesView {
            if byte == 0x0A {
                if previous != 0x0D { normalized.writeInteger(UInt8(0x0D)) }
            } else if previous == 0x0D {
                normalized.writeInteger(UInt8(0x0A))
            }
            normalized.writeInteger(byte)
            previous = byte
        }
        if previous == 0x0D { normalized.writeInteger(UInt8(0x0A)) } else if previous != 0x0A, normalized.readableBytes > 0 {
            normalized.writeStaticString("\r\n")
        }
        body = .replaced(normalized)
        contentChanged = true
    }

    public mutating func changeSender(_ path: ReversePath, parameters: MailParameters) {
        sender = path
        senderParameters = parameters
        envelopeChanged = true
    }

    /// Adds a recipient unless it is already one.
    public mutating func addRecipient(_ path: ForwardPath) {
        guard !recipients.contains(path) else { return }
        recipients.append(path)
        envelopeChanged = true
    }

    /// Removes a recipient (compared without case in the domain and local part, as the filter
    /// may have lowered either).
    public mutating func deleteRecipient(_ path: ForwardPath) {
        let key = path.description.lowercased()
        let before = recipients.count
        recipients.removeAll { $0.description.lowercased() == key }
        if recipients.count != before { envelopeChanged = true }
    }
}
