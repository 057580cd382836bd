/// The malformations `MIMEMessage.parse` records. Each is a short stable phrase, so that a
/// policy can match on it; a few carry a limit or a charset name after a colon or number.
enum MIMEMalformation {
    static let missingClosingBoundary = "missing closing boundary"
    static let boundaryNeverAppears = "boundary never appears"
    static let multipartWithoutBoundary = "multipart without boundary"
    static let missingHeaderSeparator = "missing blank line after headers"
    static let headerNotUTF8 = "header bytes not utf-8"
    static let malformedEncodedWord = "malformed encoded word"
    static let badBase64 = "bad base64"
    static let badQuotedPrintable = "bad quoted-printable"
    static let invalidUTF8 = "invalid utf-8"
    static let invalidContentType = "invalid content type"
    static let duplicateContentType = "duplicate content-type"
    static let encodedComposite = "transfer encoding on multipart"
    static let encodedMessage = "encoded message/rfc822"

    static func nestingTooDeep(_ limit: Int) -> String { "nesting deeper than \(limit)" }
    static func tooManyParts(_ limit: Int) -> String { "more than \(limit) parts" }
    static func textTruncated(_ limit: Int) -> String { "text part truncated at \(limit) bytes" }
    static func headerSectionTooLarge(_ limit: Int) -> String { "header section larger than \(limit) bytes" }
    static func unknownCharset(_ name: String) -> String { "unknown charset: \(name.prefix(64))" }
    static func charsetConversionFailed(_ name: String) -> String { "charset conversion failed: \(name.prefix(64))" }
    static func unknownTransferEncoding(_ name: String) -> String { "unknown transfer encoding: \(name.prefix(64))" }
}

/// Malformations noted while parsing, each once, in the order first seen.
struct MIMEMalformationLog: Sendable {
    private(set) var entries: [String] = []
    private var seen: Set<String> = []

    mutating func note(_ malformation: String) {
        if seen.insert(malformation).inserted { entries.append(malformation) }
    }

    mutating func merge(_ other: MIMEMalformationLog) {
        for entry in other.entries { note(entry) }
    }
}

/// Byte constants and small scanners over `[UInt8]`.
enum MIMEByte {
    static let tab: UInt8 = 9
    static let lf: UInt8 = 10
    static let cr: UInt8 = 13
    static let space: UInt8 = 32
    static let quote: UInt8 = 34
    static let percent: UInt8 = 37
    static let apostrophe: UInt8 = 39
    static let openParen: UInt8 = 40
    static let closeParen: UInt8 = 41
    static let star: UInt8 = 42
    static let dash: UInt8 = 45
    static let slash: UInt8 = 47
    static let colon: UInt8 = 58
    static let semicolon: UInt8 = 59
    static let equals: UInt8 = 61
    static let question: UInt8 = 63
    static let backslash: UInt8 = 92
    static let underscore: UInt8 = 95
    static let mboxFrom: [UInt8] = Array("From ".utf8)

    static func isWhitespace(_ byte: UInt8) -> Bool { byte == space || byte == tab }
    static func isLineSpace(_ byte: UInt8) -> Bool { byte == space || byte == tab || byte == cr || byte == lf }

    /// `bytes` without leading and trailing SP, HT, CR, LF.
    static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var start = bytes.startIndex
        var end = bytes.endIndex
        while start < end, isLineSpace(bytes[start]) { start += 1 }
        while end > start, isLineSpace(bytes[end - 1]) { end -= 1 }
        return bytes[start..<end]
    }

    /// The value of an ASCII hex digit, or nil.
    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 48...57: return byte - 48
        case 65...70: return byte - 55
        case 97...102: return byte - 87
        default: return nil
        }
    }

    static func lowercased(_ byte: UInt8) -> UInt8 { (65...90).contains(byte) ? byte + 32 : byte }

    /// ASCII case-insensitive prefix test.
    static func hasPrefixIgnoringCase(_ bytes: ArraySlice<UInt8>, _ prefix: [UInt8]) -> Bool {
        guard bytes.count >= prefix.count else { return false }
        var index = bytes.startIndex
        for expected in prefix {
            if lowercased(bytes[index]) != expected { return false }
            index += 1
        }
        return true
    }
}
