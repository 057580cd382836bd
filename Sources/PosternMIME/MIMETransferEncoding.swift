/// A Content-Transfer-Encoding (RFC 2045 §6).
public enum MIMETransferEncoding: Sendable, Hashable {
    case sevenBit, eightBit, binary
    /// RFC 2045 §6.7.
    case quotedPrintable
    /// RFC 2045 §6.8.
    case base64
    /// Anything else (e.g. x-uuencode), lowercased; its content is not decoded.
    case other(String)

    /// Reads a trimmed Content-Transfer-Encoding value; none declared means 7bit (RFC 2045 §6.1).
    init(_ value: String?) {
        let name = (value ?? "7bit").lowercased()
        switch name {
        case "", "7bit": self = .sevenBit
        case "8bit": self = .eightBit
        case "binary": self = .binary
        case "quoted-printable": self = .quotedPrintable
        case "base64": self = .base64
        default: self = .other(name)
        }
    }

    /// Whether the content is the bytes themselves.
    var isIdentity: Bool {
        switch self {
        case .sevenBit, .eightBit, .binary: return true
        default: return false
        }
    }

    /// The decoded bytes of `content`. `truncated` says the input was cut at a scan limit,
    /// so an incomplete final quantum or escape is not malformed.
    func decode(_ content: ArraySlice<UInt8>, truncated: Bool, log: inout MIMEMalformationLog) -> [UInt8] {
        switch self {
        case .sevenBit, .eightBit, .binary:
            return Array(content)
        case .quotedPrintable:
            return MIMEQuotedPrintable.decode(content, truncated: truncated, log: &log)
        case .base64:
            let result = MIMEBase64.decode(content, truncated: truncated)
            if !result.clean { log.note(MIMEMalformation.badBase64) }
            return result.bytes
        case .other(let name):
            log.note(MIMEMalformation.unknownTransferEncoding(name))
            return Array(content)
        }
    }
}

/// Base64 (RFC 2045 §6.8), leniently: characters outside the alphabet are skipped (and make
/// the result unclean unless they are whitespace), padding ends a quantum, a missing
/// padding is tolerated.
enum MIMEBase64 {
    private static let invalid: UInt8 = 0xFF
    private static let table: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (value, byte) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() {
            table[Int(byte)] = UInt8(value)
        }
        return table
    }()

    static func decode(_ input: ArraySlice<UInt8>, truncated: Bool = false) -> (bytes: [UInt8], clean: Bool) {
        var output: [UInt8] = []
        output.reserveCapacity(input.count / 4 * 3 + 3)
        var clean = true
        var quantum: UInt32 = 0
        var count = 0
        for byte in input {
            let value = table[Int(byte)]
            if value != invalid {
                quantum = quantum << 6 | UInt32(value)
                count += 1
                if count == 4 {
                    output.append(UInt8(truncatingIfNeeded: quantum >> 16))
                    output.append(UInt8(truncatingIfNeeded: quantum >> 8))
                    output.append(UInt8(truncatingIfNeeded: quantum))
                    quantum = 0
                    count = 0
                }
            } else if byte == MIMEByte.equals {
                if count == 1 { clean = false }
                flush(&quantum, &count, into: &output)
            } else if !MIMEByte.isLineSpace(byte) {
                clean = false
            }
        }
        if count == 1, !truncated { clean = false }
        flush(&quantum, &count, into: &output)
        return (output, clean)
    }

    /// Emits the whole bytes of a partial quantum (2 or 3 characters) and resets it.
    private static func flush(_ quantum: inout UInt32, _ count: inout Int, into output: inout [UInt8]) {
        switch count {
        case 2:
            output.append(UInt8(truncatingIfNeeded: quantum >> 4))
        case 3:
            output.append(UInt8(truncatingIfNeeded: quantum >> 10))
            output.append(UInt8(truncatingIfNeeded: quantum >> 2))
        default:
            break
        }
        quantum = 0
        count = 0
    }
}

/// Quoted-printable (RFC 2045 §6.7): `=XX` octets, `=` at the end of a line is a soft line
/// break, trailing whitespace on a line is dropped (rule 3). An `=` not followed by two hex
/// digits is kept as written and flagged. Bare LF ends lines as CRLF does; decoded hard
/// line breaks are CRLF.
enum MIMEQuotedPrintable {
    static func decode(_ input: ArraySlice<UInt8>, truncated: Bool, log: inout MIMEMalformationLog) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(input.count)
        var lineStart = input.startIndex
        let end = input.endIndex
        var bad = false
        while lineStart < end {
            let newline = input[lineStart...].firstIndex(of: MIMEByte.lf)
            var contentEnd = newline ?? end
            while contentEnd > lineStart, MIMEByte.isLineSpace(input[contentEnd - 1]) { contentEnd -= 1 }
            var softBreak = false
            var index = lineStart
            while index < contentEnd {
                let byte = input[index]
                if byte != MIMEByte.equals {
                    output.append(byte)
                    index += 1
                } else if index + 1 == contentEnd {
                    softBreak = true
                    index += 1
                } else if index + 2 < contentEnd,
                          let high = MIMEByte.hexValue(input[index + 1]),
                          let low = MIMEByte.hexValue(input[index + 2]) {
                    output.append(high << 4 | low)
                    index += 3
                } else {
                    // Not an escape: keep it, unless the scan limit cut it short.
                    let cutShort = truncated && newline == nil && contentEnd - index <= 2
                    if !cutShort { bad = true; output.append(byte) }
                    index += 1
                    if cutShort { index = contentEnd }
                }
            }
            if let newline {
                if !softBreak { output.append(MIMEByte.cr); output.append(MIMEByte.lf) }
                lineStart = newline + 1
            } else {
                lineStart = end
            }
        }
        if bad { log.note(MIMEMalformation.badQuotedPrintable) }
        return output
    }
}
