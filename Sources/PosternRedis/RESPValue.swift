import NIOCore

/// One value of the Redis serialization protocol: RESP2, and the RESP3 types a server
/// sends after `HELLO 3` (Postern never sends it, but a reply it cannot parse must be an
/// error, never a crash).
public enum RESPValue: Hashable, Sendable {
    /// `+OK\r\n`
    case simpleString(String)
    /// `-ERR …\r\n`, and RESP3's bulk error `!<len>\r\n…\r\n`.
    case error(String)
    /// `:42\r\n`
    case integer(Int64)
    /// `$<len>\r\n…\r\n`; nil for RESP2's null bulk string `$-1\r\n`.
    case bulkString([UInt8]?)
    /// `*<n>\r\n…`; nil for RESP2's null array `*-1\r\n`.
    case array([RESPValue]?)
    /// RESP3 `_\r\n`.
    case null
    /// RESP3 `#t\r\n` / `#f\r\n`.
    case boolean(Bool)
    /// RESP3 `,3.14\r\n` (`inf`, `-inf`, `nan` included).
    case double(Double)
    /// RESP3 `(<digits>\r\n`, kept as text.
    case bigNumber(String)
    /// RESP3 `=<len>\r\n<fmt>:<text>\r\n`.
    case verbatim(format: String, text: [UInt8])
    /// RESP3 `%<n>\r\n` followed by n key/value pairs.
    case map([RESPMapEntry])
    /// RESP3 `~<n>\r\n`.
    case set([RESPValue])
    /// RESP3 `><n>\r\n`: out-of-band data, never the reply to a command.
    case push([RESPValue])

    /// The value as text when it is a string of some kind (simple, bulk, verbatim).
    public var string: String? {
        switch self {
        case .simpleString(let text): return text
        case .bulkString(let bytes?): return String(decoding: bytes, as: UTF8.self)
        case .verbatim(_, let text): return String(decoding: text, as: UTF8.self)
        default: return nil
        }
    }

    /// The value as an integer (an integer reply, or a string holding one).
    public var int64: Int64? {
        switch self {
        case .integer(let value): return value
        default: return string.flatMap { Int64($0) }
        }
    }

    /// The elements of an array, set or push.
    public var elements: [RESPValue]? {
        switch self {
        case .array(let values?), .set(let values), .push(let values): return values
        default: return nil
        }
    }
}

/// One key/value pair of a RESP3 map (ordered, as received).
public struct RESPMapEntry: Hashable, Sendable {
    public var key: RESPValue
    public var value: RESPValue
    public init(key: RESPValue, value: RESPValue) {
        self.key = key
        self.value = value
    }
}

/// Writes RESP values and commands.
public enum RESPEncoder {
    /// A command as Redis expects it: an array of bulk strings.
    public static func writeCommand(_ arguments: [String], into buffer: inout ByteBuffer) {
        buffer.writeStaticString("*")
        buffer.writeString(String(arguments.count))
        buffer.writeStaticString("\r\n")
        for argument in arguments {
            let utf8 = argument.utf8
            buffer.writeStaticString("$")
            buffer.writeString(String(utf8.count))
            buffer.writeStaticString("\r\n")
            buffer.writeBytes(utf8)
            buffer.writeStaticString("\r\n")
        }
    }

    /// Any value, in the encoding the parser reads (for tests and tools). Simple strings and
    /// errors must not contain CR or LF; they are replaced by spaces.
    public static func write(_ value: RESPValue, into buffer: inout ByteBuffer) {
        func line(_ prefix: StaticString, _ text: String) {
            buffer.writeStaticString(prefix)
            // Octets, not Characters: CR LF is one Character, equal to neither "\r" nor "\n".
            buffer.writeBytes(text.utf8.map { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") ? UInt8(ascii: " ") : $0 })
            buffer.writeStaticString("\r\n")
        }
        func bulk(_ prefix: StaticString, _ bytes: [UInt8]) {
            buffer.writeStaticString(prefix)
            buffer.writeString(String(bytes.count))
            buffer.writeStaticString("\r\n")
            buffer.writeBytes(bytes)
            buffer.writeStaticString("\r\n")
        }
        func aggregate(_ prefix: StaticString, _ values: [RESPValue]) {
            line(prefix, String(values.count))
            for value in values { write(value, into: &buffer) }
        }
        switch value {
        case .simpleString(let text): line("+", text)
        case .error(let text): line("-", text)
        case .integer(let number): line(":", String(number))
        case .bulkString(nil): line("$", "-1")
        case .bulkString(let bytes?): bulk("$", bytes)
        case .array(nil): line("*", "-1")
        case .array(let values?): aggregate("*", values)
        case .null: line("_", "")
        case .boolean(let flag): line("#", flag ? "t" : "f")
        case .double(let number):
            line(",", number.isNaN ? "nan" : number.isInfinite ? (number < 0 ? "-inf" : "inf") : "\(number)")
        case .bigNumber(let digits): line("(", digits)
        case .verbatim(let format, let text): bulk("=", Array(format.utf8.prefix(3)) + [UInt8(ascii: ":")] + text)
        case .map(let entries):
            line("%", String(entries.count))
            for entry in entries {
                write(entry.key, into: &buffer)
                write(entry.value, into: &buffer)
            }
        case .set(let values): aggregate("~", values)
        case .push(let values): aggregate(">", values)
        }
    }
}
