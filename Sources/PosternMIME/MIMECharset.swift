import Foundation
#if canImport(CoreFoundation)
import CoreFoundation
#endif

/// Charset conversion to Swift strings (RFC 2046 §4.1.2 `charset`, RFC 2047 §2, RFC 2231 §4).
///
/// The common charsets are converted by a built-in table (utf-8, us-ascii, iso-8859-1,
/// iso-8859-15, windows-1252, utf-16); the rest through CoreFoundation's IANA charset
/// registry where the platform has it (Linux's swift-corelibs-foundation does). A charset
/// nobody knows is read as UTF-8 with replacement characters, and flagged.
enum MIMECharset {
    /// Decodes `bytes` in the charset named by `label` (nil: none declared).
    ///
    /// Like browsers (WHATWG Encoding), iso-8859-1 and us-ascii labels are read as
    /// windows-1252; undeclared or us-ascii text that is valid UTF-8 is read as UTF-8,
    /// which is what the sender almost always meant.
    static func decode(_ bytes: ArraySlice<UInt8>, label: String?, log: inout MIMEMalformationLog) -> String {
        let name = normalised(label)
        switch name {
        case "", "us-ascii", "ascii", "us", "ansi_x3.4-1968", "iso646-us", "default", "unknown-8bit", "x-unknown":
            return validUTF8(bytes) ?? decodeWindows1252(bytes)
        case "utf-8", "utf8", "unicode-1-1-utf-8", "x-unicode20utf8":
            if let text = validUTF8(bytes) { return text }
            log.note(MIMEMalformation.invalidUTF8)
            return String(decoding: bytes, as: UTF8.self)
        case "iso-8859-1", "iso8859-1", "iso_8859-1", "iso_8859-1:1987", "latin1", "latin-1", "l1", "cp819", "ibm819",
             "windows-1252", "cp1252", "x-cp1252", "win-1252":
            return decodeWindows1252(bytes)
        case "iso-8859-15", "iso8859-15", "iso_8859-15", "latin-9", "latin9", "l9":
            return decodeSingleByte(bytes, high: latin9High)
        case "utf-16", "utf16", "unicode":
            return decodeUTF16(bytes, bigEndianByDefault: true, honourBOM: true)
        case "utf-16be", "unicodefffe":
            return decodeUTF16(bytes, bigEndianByDefault: true, honourBOM: false)
        case "utf-16le", "unicodefeff":
            return decodeUTF16(bytes, bigEndianByDefault: false, honourBOM: false)
        default:
            guard let encoding = platformEncoding(name) else {
                log.note(MIMEMalformation.unknownCharset(name))
                return String(decoding: bytes, as: UTF8.self)
            }
            if isASCII(bytes) { return String(decoding: bytes, as: UTF8.self) }
            if let text = String(data: Data(bytes), encoding: encoding) { return text }
            log.note(MIMEMalformation.charsetConversionFailed(name))
            return validUTF8(bytes) ?? decodeWindows1252(bytes)
        }
    }

    /// Charsets whose line ends are the ASCII bytes CR and LF (all but UTF-16 and UTF-32).
    static func isASCIICompatible(_ label: String?) -> Bool {
        let name = normalised(label)
        return !(name.hasPrefix("utf-16") || name.hasPrefix("utf-32") || name.hasPrefix("utf16")
            || name.hasPrefix("utf32") || name.hasPrefix("ucs-") || name == "unicode" || name.hasPrefix("unicodef"))
    }

    static func normalised(_ label: String?) -> String {
        guard let label else { return "" }
        var name = label.lowercased()
        name = name.trimmingCharacters(in: CharacterSet(charactersIn: " \t\r\n\"'"))
        // RFC 2231 §5 language suffix in an encoded word's charset: "us-ascii*en".
        if let star = name.firstIndex(of: "*") { name = String(name[..<star]) }
        return name
    }

    /// `bytes` as a string when they are valid UTF-8.
    static func validUTF8(_ bytes: ArraySlice<UInt8>) -> String? {
        if isASCII(bytes) { return String(decoding: bytes, as: UTF8.self) }
        let failed = transcode(bytes.makeIterator(), from: UTF8.self, to: UTF32.self, stoppingOnError: true) { _ in }
        return failed ? nil : String(decoding: bytes, as: UTF8.self)
    }

    static func isASCII(_ bytes: ArraySlice<UInt8>) -> Bool {
        for byte in bytes where byte >= 0x80 { return false }
        return true
    }

    /// windows-1252, the WHATWG reading of iso-8859-1 too.
    static func decodeWindows1252(_ bytes: ArraySlice<UInt8>) -> String {
        decodeSingleByte(bytes, high: windows1252High)
    }

    /// A single-byte charset whose bytes 0x00–0x7F are ASCII; `high` maps 0x80–0xFF.
    private static func decodeSingleByte(_ bytes: ArraySlice<UInt8>, high: [UInt16]) -> String {
        if isASCII(bytes) { return String(decoding: bytes, as: UTF8.self) }
        var units: [UInt16] = []
        units.reserveCapacity(bytes.count)
        for byte in bytes { units.append(byte < 0x80 ? UInt16(byte) : high[Int(byte) - 0x80]) }
        return String(decoding: units, as: UTF16.self)
    }

    /// RFC 2781: a byte order mark decides; without one, big endian (§4.3).
    private static func decodeUTF16(_ bytes: ArraySlice<UInt8>, bigEndianByDefault: Bool, honourBOM: Bool) -> String {
        var start = bytes.startIndex
        var bigEndian = bigEndianByDefault
        if honourBOM, bytes.count >= 2 {
            let first = bytes[start], second = bytes[start + 1]
            if first == 0xFE, second == 0xFF { bigEndian = true; start += 2 }
            else if first == 0xFF, second == 0xFE { bigEndian = false; start += 2 }
        }
        var units: [UInt16] = []
        units.reserveCapacity(bytes.count / 2)
        var index = start
        while index + 1 < bytes.endIndex {
            let a = UInt16(bytes[index]), b = UInt16(bytes[index + 1])
            units.append(bigEndian ? (a << 8 | b) : (b << 8 | a))
            index += 2
        }
        if index < bytes.endIndex { units.append(0xFFFD) }
        return String(decoding: units, as: UTF16.self)
    }

    /// The platform's encoding for an IANA charset name (RFC 2978), if it has one.
    private static func platformEncoding(_ name: String) -> String.Encoding? {
        #if canImport(CoreFoundation)
        guard !name.isEmpty, name.utf8.count < 64,
              let cfName = CFStringCreateWithCString(nil, name, CFStringBuiltInEncodings.UTF8.rawValue) else {
            return nil
        }
        let cfEncoding = CFStringConvertIANACharSetNameToEncoding(cfName)
        guard cfEncoding != kCFStringEncodingInvalidId else { return nil }
        return String.Encoding(rawValue: CFStringConvertEncodingToNSStringEncoding(cfEncoding))
        #else
        return nil
        #endif
    }

    /// windows-1252 0x80–0xFF (the five unassigned bytes map to the C1 controls, as WHATWG).
    static let windows1252High: [UInt16] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
        0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
    ] + (0xA0...0xFF).map { UInt16($0) }

    /// iso-8859-15 0x80–0xFF: Latin-1 with eight code points replaced (€ Š š Ž ž Œ œ Ÿ).
    static let latin9High: [UInt16] = (0x80...0xFF).map { byte -> UInt16 in
        switch byte {
        case 0xA4: return 0x20AC
        case 0xA6: return 0x0160
        case 0xA8: return 0x0161
        case 0xB4: return 0x017D
        case 0xB8: return 0x017E
        case 0xBC: return 0x0152
        case 0xBD: return 0x0153
        case 0xBE: return 0x0178
        default: return UInt16(byte)
        }
    }
}
