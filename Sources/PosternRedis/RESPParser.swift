import NIOCore

/// A reply Postern cannot read: the connection is out of step and must be closed.
public struct RESPParseError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// The first byte names no RESP type.
        case unknownType(UInt8)
        /// A line ended with a bare CR, or a bulk payload was not followed by CRLF.
        case missingCRLF
        /// A line (a type's header) longer than ``RESPParser/Limits/maximumLineLength``.
        case lineTooLong
        /// An integer, length or count that is not a decimal number in range.
        case badNumber(String)
        /// A boolean other than `t`/`f`, a double that is not a number, a verbatim string without `fmt:`.
        case badValue(String)
        /// A bulk payload longer than ``RESPParser/Limits/maximumBulkLength``.
        case bulkTooLong(Int)
        /// An aggregate with more elements than ``RESPParser/Limits/maximumAggregateCount``.
        case aggregateTooLarge(Int)
        /// Aggregates (or attributes in a row) nested deeper than ``RESPParser/Limits/maximumDepth``.
        case tooDeep
    }

    public var kind: Kind

    public var description: String {
        switch kind {
        case .unknownType(let byte): return "RESP: unknown type byte 0x\(String(byte, radix: 16))"
        case .missingCRLF: return "RESP: missing CRLF"
        case .lineTooLong: return "RESP: line too long"
        case .badNumber(let text): return "RESP: bad number '\(text.prefix(32))'"
        case .badValue(let text): return "RESP: bad value '\(text.prefix(32))'"
        case .bulkTooLong(let length): return "RESP: bulk string of \(length) bytes over the limit"
        case .aggregateTooLarge(let count): return "RESP: aggregate of \(count) elements over the limit"
        case .tooDeep: return "RESP: aggregates nested too deep"
        }
    }
}

/// Reads one RESP2/RESP3 value at a time from a buffer.
///
/// `next` returns nil, leaving the buffer untouched, when the value is not complete yet;
/// a malformed value throws ``RESPParseError``. The limits protect the client from a
/// server (or a man in the middle) that sends an endless line or a huge declared length.
public struct RESPParser: Sendable {
    /// Upper bounds on what one reply may declare (DoS protection).
    public struct Limits: Hashable, Sendable {
        /// The longest bulk string accepted (Postern's replies are tiny; 16 MiB by default).
        public var maximumBulkLength: Int
        /// The most elements in one array, set, map or push.
        public var maximumAggregateCount: Int
        /// The deepest nesting of aggregates; each attribute before a value counts as a level.
        public var maximumDepth: Int
        /// The longest header line (type byte, text, CRLF excluded).
        public var maximumLineLength: Int

        public init(maximumBulkLength: Int = 16 << 20, maximumAggregateCount: Int = 1 << 20,
                    maximumDepth: Int = 32, maximumLineLength: Int = 64 << 10) {
            self.maximumBulkLength = maximumBulkLength
            self.maximumAggregateCount = maximumAggregateCount
            self.maximumDepth = maximumDepth
            self.maximumLineLength = maximumLineLength
        }
    }

    public var limits: Limits

    public init(limits: Limits = Limits()) { self.limits = limits }

    /// The next complete value, consumed from `buffer`; nil (nothing consumed) when more
    /// bytes are needed.
    public func next(_ buffer: inout ByteBuffer) throws(RESPParseError) -> RESPValue? {
        var copy = buffer
        guard let value = try parseValue(&copy, depth: 0) else { return nil }
        buffer = copy
        return value
    }

    // MARK: - Grammar

    /// value = type-byte line-or-payload; nil when incomplete.
    private func parseValue(_ buffer: inout ByteBuffer, depth: Int) throws(RESPParseError) -> RESPValue? {
        guard let type = buffer.readInteger(as: UInt8.self) else { return nil }
        switch type {
        case UInt8(ascii: "+"):
            return try readLine(&buffer).map { .simpleString(String(decoding: $0, as: UTF8.self)) }
        case UInt8(ascii: "-"):
            return try readLine(&buffer).map { .error(String(decoding: $0, as: UTF8.self)) }
        case UInt8(ascii: ":"):
            guard let line = try readLine(&buffer) else { return nil }
            return .integer(try integer(line))
        case UInt8(ascii: "$"):
            guard let payload = try readBulk(&buffer) else { return nil }
            return .bulkString(payload.value)
        case UInt8(ascii: "!"):
            guard let payload = try readBulk(&buffer, nullable: false) else { return nil }
            return .error(String(decoding: payload.value ?? [], as: UTF8.self))
        case UInt8(ascii: "="):
            guard let payload = try readBulk(&buffer, nullable: false) else { return nil }
            let bytes = payload.value ?? []
            guard bytes.count >= 4, bytes[3] == UInt8(ascii: ":") else {
                throw RESPParseError(kind: .badValue(String(decoding: bytes.prefix(8), as: UTF8.self)))
            }
            return .verbatim(format: String(decoding: bytes[0..<3], as: UTF8.self), text: Array(bytes[4...]))
        case UInt8(ascii: "_"):
            guard let line = try readLine(&buffer) else { return nil }
            guard line.isEmpty else { throw RESPParseError(kind: .badValue(String(decoding: line, as: UTF8.self))) }
            return .null
        case UInt8(ascii: "#"):
            guard let line = try readLine(&buffer) else { return nil }
            switch line {
            case [UInt8(ascii: "t")]: return .boolean(true)
            case [UInt8(ascii: "f")]: return .boolean(false)
            default: throw RESPParseError(kind: .badValue(String(decoding: line, as: UTF8.self)))
            }
        case UInt8(ascii: ","):
            guard let line = try readLine(&buffer) else { return nil }
            return .double(try double(line))
        case UInt8(ascii: "("):
            guard let line = try readLine(&buffer) else { return nil }
            let digits = line.first == UInt8(ascii: "-") || line.first == UInt8(ascii: "+") ? line.dropFirst() : line[...]
            guard !digits.isEmpty, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                throw RESPParseError(kind: .badNumber(String(decoding: line, as: UTF8.self)))
            }
            return .bigNumber(String(decoding: line, as: UTF8.self))
        case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"):
            guard let elements = try readAggregate(&buffer, depth: depth, nullable: type == UInt8(ascii: "*")) else { return nil }
            switch type {
            case UInt8(ascii: "*"): return .array(elements.value)
            case UInt8(ascii: "~"): return .set(elements.value ?? [])
            default: return .push(elements.value ?? [])
            }
        case UInt8(ascii: "%"):
            guard let elements = try readAggregate(&buffer, depth: depth, nullable: false, pairs: true) else { return nil }
            let flat = elements.value ?? []
            return .map(stride(from: 0, to: flat.count, by: 2).map { RESPMapEntry(key: flat[$0], value: flat[$0 + 1]) })
        case UInt8(ascii: "|"):
            // An attribute: metadata about the value that follows. Read and dropped. It counts as
            // a level of nesting: attributes in a row would otherwise recurse without a bound.
            guard try readAggregate(&buffer, depth: depth, nullable: false, pairs: true) != nil else { return nil }
            return try parseValue(&buffer, depth: depth + 1)
        default:
            throw RESPParseError(kind: .unknownType(type))
        }
    }

    /// The bytes up to CRLF (consumed with it); nil when no CRLF yet.
    private func readLine(_ buffer: inout ByteBuffer) throws(RESPParseError) -> [UInt8]? {
        let view = buffer.readableBytesView
        guard let cr = view.firstIndex(of: UInt8(ascii: "\r")) else {
            if view.count > limits.maximumLineLength { throw RESPParseError(kind: .lineTooLong) }
            return nil
        }
        let length = cr - view.startIndex
        if length > limits.maximumLineLength { throw RESPParseError(kind: .lineTooLong) }
        guard view.count > length + 1 else { return nil }
        guard view[cr + 1] == UInt8(ascii: "\n") else { throw RESPParseError(kind: .missingCRLF) }
        let line = buffer.readBytes(length: length)!
        buffer.moveReaderIndex(forwardBy: 2)
        if line.contains(UInt8(ascii: "\n")) { throw RESPParseError(kind: .missingCRLF) }
        return line
    }

    /// `<len>\r\n<bytes>\r\n`; `value` nil for `-1` when `nullable`. Outer nil when incomplete.
    private func readBulk(_ buffer: inout ByteBuffer, nullable: Bool = true) throws(RESPParseError) -> (value: [UInt8]?, Void)? {
        guard let line = try readLine(&buffer) else { return nil }
        let length = try integer(line)
        if length == -1, nullable { return (nil, ()) }
        guard length >= 0 else { throw RESPParseError(kind: .badNumber(String(length))) }
        guard length <= limits.maximumBulkLength else { throw RESPParseError(kind: .bulkTooLong(Int(clamping: length))) }
        let count = Int(length)
        guard buffer.readableBytes >= count + 2 else { return nil }
        let bytes = buffer.readBytes(length: count)!
        guard buffer.readBytes(length: 2) == [UInt8(ascii: "\r"), UInt8(ascii: "\n")] else {
            throw RESPParseError(kind: .missingCRLF)
        }
        return (bytes, ())
    }

    /// `<n>\r\n` and n (or 2n for `pairs`) values; `value` nil for `-1` when `nullable`.
    private func readAggregate(_ buffer: inout ByteBuffer, depth: Int, nullable: Bool, pairs: Bool = false)
        throws(RESPParseError) -> (value: [RESPValue]?, Void)? {
        guard depth < limits.maximumDepth else { throw RESPParseError(kind: .tooDeep) }
        guard let line = try readLine(&buffer) else { return nil }
        let declared = try integer(line)
        if declared == -1, nullable { return (nil, ()) }
        guard declared >= 0 else { throw RESPParseError(kind: .badNumber(String(declared))) }
        guard declared <= limits.maximumAggregateCount else {
            throw RESPParseError(kind: .aggregateTooLarge(Int(clamping: declared)))
        }
        let count = Int(declared) * (pairs ? 2 : 1)
        var values: [RESPValue] = []
        values.reserveCapacity(Swift.min(count, 1024))
        for _ in 0..<count {
            guard let value = try parseValue(&buffer, depth: depth + 1) else { return nil }
            values.append(value)
        }
        return (values, ())
    }

    private func integer(_ line: [UInt8]) throws(RESPParseError) -> Int64 {
        let text = String(decoding: line, as: UTF8.self)
        let digits = line.first == UInt8(ascii: "-") || line.first == UInt8(ascii: "+") ? line.dropFirst() : line[...]
        guard !digits.isEmpty, digits.count <= 19, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let value = Int64(text) else {
            throw RESPParseError(kind: .badNumber(text))
        }
        return value
    }

    private func double(_ line: [UInt8]) throws(RESPParseError) -> Double {
        let text = String(decoding: line, as: UTF8.self)
        switch text.lowercased() {
        case "inf", "+inf": return .infinity
        case "-inf": return -.infinity
        case "nan": return .nan
        default:
            guard !text.isEmpty, text.allSatisfy({ "0123456789+-.eE".contains($0) }), let value = Double(text) else {
                throw RESPParseError(kind: .badValue(text))
            }
            return value
        }
    }
}
