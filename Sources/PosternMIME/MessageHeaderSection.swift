/// The header section of a message as received (RFC 5322 §2.2: the header fields up to the
/// first empty line), split into fields once, so that the decision record, `tag_subject` and
/// the MIME parser all read the same single scan.
public struct MessageHeaderSection: Sendable, Hashable {
    /// One header field (RFC 5322 §2.2): its name, where it lies in `bytes`, and its value.
    public struct Field: Sendable, Hashable {
        /// The field name as written: every octet before the first colon (so `Subject :` is
        /// named "Subject ", which is not "Subject").
        public let name: String
        /// The whole field in `bytes`: its first line, its folded continuation lines
        /// (RFC 5322 §2.2.3) and its last line end.
        public let range: Range<Int>
        /// The value unfolded and trimmed of SP and HTAB: each continuation line, trimmed, is
        /// joined with one space. Octets that are not UTF-8 read as U+FFFD.
        public let value: String
        /// Where the colon ending the name is in `bytes`.
        let colon: Int
    }

    /// What was collected: the section with its terminating empty line when complete, else
    /// the octets that arrived up to the cap.
    public let bytes: [UInt8]
    /// Whether the empty line ending the section was seen within the cap.
    public let isComplete: Bool
    /// The fields in order. A line that is neither a field (no colon) nor a continuation ends
    /// the field before it and is skipped; so is a continuation with nothing to continue.
    public let fields: [Field]
    /// The offset just past each LF in `bytes`, in order: the line table, kept so that the
    /// tagger and the MIME parser never search for line ends again. When complete, the last
    /// one is `bytes.count`, the end of the empty line.
    let lineEnds: [Int]

    /// Octets of the section including its terminating empty line (when complete; otherwise
    /// how much was collected, a lower bound): the message content after them is the body.
    public var length: Int { bytes.count }

    /// The header section at the start of `message`, read as `MessageHeaderCollector` reads
    /// streamed content (the same cap, the same line ends).
    public init<Bytes: Collection>(parsing message: Bytes) where Bytes.Element == UInt8 {
        var collector = MessageHeaderCollector()
        let fed: Void? = message.withContiguousStorageIfAvailable { collector.collect(UnsafeRawBufferPointer($0)) }
        if fed == nil {
            Array(message.prefix(MessageHeaderCollector.maximumHeaderBytes)).withUnsafeBytes { collector.collect($0) }
        }
        self = collector.section
    }

    /// Splits `bytes` into fields along its line table. A line ends at LF, and one CR before
    /// it is not content (bare LF is accepted, as the MIME parser accepts it); an incomplete
    /// section's last line may have no line end.
    init(bytes: [UInt8], lineEnds: [Int], isComplete: Bool) {
        self.bytes = bytes
        self.lineEnds = lineEnds
        self.isComplete = isComplete

        var fields: [Field] = []
        var current: (start: Int, colon: Int, end: Int, value: String)?
        func close() {
            if let done = current {
                fields.append(Field(
                    name: String(decoding: bytes[done.start..<done.colon], as: UTF8.self),
                    range: done.start..<done.end, value: done.value.trimmingSpaceAndTab(), colon: done.colon))
            }
            current = nil
        }

        var lineStart = 0
        var lineIndex = 0
        while lineStart < bytes.count {
            let hasLineEnd = lineIndex < lineEnds.count
            let next = hasLineEnd ? lineEnds[lineIndex] : bytes.count
            lineIndex += 1
            var contentEnd = hasLineEnd ? next - 1 : next
            if contentEnd > lineStart, bytes[contentEnd - 1] == MIMEByte.cr { contentEnd -= 1 }
            defer { lineStart = next }
            if contentEnd == lineStart { break }  // the empty line

            let first = bytes[lineStart]
            if first == MIMEByte.space || first == MIMEByte.tab {
                if current != nil {
                    current!.value += " " + String(decoding: bytes[lineStart..<contentEnd], as: UTF8.self).trimmingSpaceAndTab()
                    current!.end = next
                }
                continue
            }
            close()
            if let colon = bytes[lineStart..<contentEnd].firstIndex(of: MIMEByte.colon) {
                current = (lineStart, colon, next, String(decoding: bytes[(colon + 1)..<contentEnd], as: UTF8.self))
            }
        }
        close()
        self.fields = fields
    }

    /// The first field called `name` (case-insensitive), if any.
    public func field(named name: String) -> Field? {
        fields.first { Self.sameName($0.name, name) }
    }

    /// The value of the first field called `name` (case-insensitive), unfolded and trimmed;
    /// encoded words are left as written.
    public func value(of name: String) -> String? { field(named: name)?.value }

    /// `value(of:)` with RFC 2047 encoded words decoded (for the decision record's Subject).
    public func decodedValue(of name: String) -> String? { value(of: name).map(MIMEMessage.decodeHeaderValue) }

    /// Field names compare without regard to case (RFC 5322 §1.2.2); ASCII names, the usual
    /// case, without allocating.
    static func sameName(_ a: String, _ b: String) -> Bool {
        let isASCII = { (s: String) in s.utf8.allSatisfy { $0 < 0x80 } }
        guard isASCII(a), isASCII(b) else { return a.lowercased() == b.lowercased() }
        return a.utf8.elementsEqual(b.utf8) { MIMEByte.lowercased($0) == MIMEByte.lowercased($1) }
    }
}

extension String {
    /// Without leading and trailing SP and HTAB (not CR, which a value may keep).
    fileprivate func trimmingSpaceAndTab() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" { view = view.dropLast() }
        return String(view)
    }
}
