/// RFC 2047 encoded words in header values: `=?charset?B?...?=` and `=?charset?Q?...?=`.
///
/// Decoded wherever they appear (also inside quoted strings and glued to other text, as
/// mail readers do), since a policy must see what the reader sees. Whitespace between two
/// adjacent encoded words is dropped (RFC 2047 §6.2), and adjacent words in one charset are
/// joined before conversion, so a character split across words survives. A word that does
/// not decode (bad base64, an unknown encoding letter) is left as written and flagged.
enum MIMEEncodedWord {
    static func decode(_ value: String, log: inout MIMEMalformationLog) -> String {
        guard value.contains("=?") else { return value }
        let bytes = Array(value.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var pending: (charset: String, bytes: [UInt8])?
        var literalStart = 0
        var previousWordEnd: Int?
        var index = 0

        func flushPending(into output: inout [UInt8], log: inout MIMEMalformationLog) {
            guard let word = pending else { return }
            output.append(contentsOf: MIMECharset.decode(word.bytes[...], label: word.charset, log: &log).utf8)
            pending = nil
        }

        while index + 1 < bytes.count {
            guard bytes[index] == MIMEByte.equals, bytes[index + 1] == MIMEByte.question else {
                index += 1
                continue
            }
            switch parseWord(bytes, at: index) {
            case .notAWord(let resume):
                index = max(index + 2, resume)
            case .undecodable(let end):
                log.note(MIMEMalformation.malformedEncodedWord)
                index = end
            case .word(let charset, let decoded, let end):
                let gap = bytes[literalStart..<index]
                if previousWordEnd == literalStart, gap.allSatisfy(MIMEByte.isLineSpace) {
                    // RFC 2047 §6.2: linear whitespace between encoded words is not displayed.
                } else {
                    flushPending(into: &output, log: &log)
                    output.append(contentsOf: gap)
                }
                if pending?.charset == charset {
                    pending!.bytes.append(contentsOf: decoded)
                } else {
                    flushPending(into: &output, log: &log)
                    pending = (charset, decoded)
                }
                index = end
                literalStart = end
                previousWordEnd = end
            }
        }
        flushPending(into: &output, log: &log)
        output.append(contentsOf: bytes[literalStart...])
        return String(decoding: output, as: UTF8.self)
    }

    private enum ParsedWord {
        /// Not an encoded word; scanning may resume at the index (everything before it is known
        /// not to start a word that can end).
        case notAWord(resume: Int)
        case undecodable(end: Int)
        case word(charset: String, decoded: [UInt8], end: Int)
    }

    /// encoded-word = "=?" charset "?" encoding "?" encoded-text "?=" (RFC 2047 §2), where
    /// encoded-text holds no whitespace and no "?".
    private static func parseWord(_ bytes: [UInt8], at start: Int) -> ParsedWord {
        let count = bytes.count
        var index = start + 2
        let charsetStart = index
        while index < count, index - charsetStart <= 64 {
            let byte = bytes[index]
            if byte == MIMEByte.question || MIMEByte.isLineSpace(byte) || byte < 33 || byte > 126 { break }
            index += 1
        }
        guard index < count, bytes[index] == MIMEByte.question, index > charsetStart else { return .notAWord(resume: start + 2) }
        let charset = MIMECharset.normalised(String(decoding: bytes[charsetStart..<index], as: UTF8.self))
        guard index + 2 < count, bytes[index + 2] == MIMEByte.question else { return .notAWord(resume: start + 2) }
        let encoding = MIMEByte.lowercased(bytes[index + 1])
        let textStart = index + 3
        index = textStart
        // The text ends at "?="; whitespace first means no word can end in this run of text.
        while index < count {
            let byte = bytes[index]
            if MIMEByte.isLineSpace(byte) { return .notAWord(resume: index) }
            if byte == MIMEByte.question, index + 1 < count, bytes[index + 1] == MIMEByte.equals { break }
            index += 1
        }
        guard index < count else { return .notAWord(resume: count) }
        let text = bytes[textStart..<index]
        let end = index + 2
        switch encoding {
        case UInt8(ascii: "b"):
            let result = MIMEBase64.decode(text)
            return result.clean ? .word(charset: charset, decoded: result.bytes, end: end) : .undecodable(end: end)
        case UInt8(ascii: "q"):
            return .word(charset: charset, decoded: decodeQ(text), end: end)
        default:
            return .undecodable(end: end)
        }
    }

    /// The "Q" encoding (RFC 2047 §4.2): "_" is a space, "=XX" an octet; a stray "=" is kept.
    private static func decodeQ(_ text: ArraySlice<UInt8>) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(text.count)
        var index = text.startIndex
        while index < text.endIndex {
            let byte = text[index]
            if byte == MIMEByte.underscore {
                output.append(MIMEByte.space)
            } else if byte == MIMEByte.equals, index + 2 < text.endIndex,
                      let high = MIMEByte.hexValue(text[index + 1]), let low = MIMEByte.hexValue(text[index + 2]) {
                output.append(high << 4 | low)
                index += 2
            } else {
                output.append(byte)
            }
            index += 1
        }
        return output
    }
}

extension MIMEMessage {
    /// A header value with RFC 2047 encoded words decoded (for logs: the Subject).
    public static func decodeHeaderValue(_ value: String) -> String {
        var log = MIMEMalformationLog()
        return MIMEEncodedWord.decode(value, log: &log)
    }
}
