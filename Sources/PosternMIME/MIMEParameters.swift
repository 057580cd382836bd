/// A structured header value with parameters: Content-Type (RFC 2045 §5.1) or
/// Content-Disposition (RFC 2183 §2), with RFC 2231 extended and continued parameters.
struct MIMEParameterizedValue: Sendable {
    /// The value before the first ";", lowercased, comments and whitespace removed.
    var value: String
    /// Parameters by lowercased name; the RFC 2231 form wins over the plain one.
    var parameters: [String: String]
    /// Every distinct value seen per lowercased name (plain and extended forms, duplicates),
    /// the preferred first: a filename checked against a policy is checked in all its forms.
    var alternatives: [String: [String]]

    /// Parses `bytes`, the unfolded field body.
    init(_ bytes: [UInt8], log: inout MIMEMalformationLog) {
        var index = 0
        let count = bytes.count
        // The main value: up to ";" outside a comment.
        var main: [UInt8] = []
        var commentDepth = 0
        while index < count, !(bytes[index] == MIMEByte.semicolon && commentDepth == 0) {
            let byte = bytes[index]
            if byte == MIMEByte.openParen { commentDepth += 1 }
            else if byte == MIMEByte.closeParen, commentDepth > 0 { commentDepth -= 1 }
            else if commentDepth == 0, !MIMEByte.isLineSpace(byte), byte != MIMEByte.quote {
                main.append(MIMEByte.lowercased(byte))
            }
            index += 1
        }
        value = String(decoding: main, as: UTF8.self)

        var plain: [String: [[UInt8]]] = [:]
        var extended: [String: [[UInt8]]] = [:]        // name*=charset'lang'%XX
        var sections: [String: [Int: (bytes: [UInt8], encoded: Bool)]] = [:]
        var order: [String] = []
        var ordered: Set<String> = []

        while index < count {
            // Skip ";" and whitespace.
            while index < count, bytes[index] == MIMEByte.semicolon || MIMEByte.isLineSpace(bytes[index]) { index += 1 }
            guard index < count else { break }
            let nameStart = index
            while index < count, bytes[index] != MIMEByte.equals, bytes[index] != MIMEByte.semicolon { index += 1 }
            let rawName = MIMEByte.trimmed(bytes[nameStart..<index])
            guard index < count, bytes[index] == MIMEByte.equals, !rawName.isEmpty else {
                // A name without a value, or a value without a name: skip to the next ";".
                while index < count, bytes[index] != MIMEByte.semicolon { index += 1 }
                continue
            }
            index += 1
            while index < count, MIMEByte.isLineSpace(bytes[index]) { index += 1 }
            var parameterValue: [UInt8] = []
            if index < count, bytes[index] == MIMEByte.quote {
                index += 1
                while index < count, bytes[index] != MIMEByte.quote {
                    if bytes[index] == MIMEByte.backslash, index + 1 < count { index += 1 }
                    parameterValue.append(bytes[index])
                    index += 1
                }
                index += 1
                // Whatever follows the closing quote up to ";" (a comment) is ignored.
                while index < count, bytes[index] != MIMEByte.semicolon { index += 1 }
            } else {
                let valueStart = index
                while index < count, bytes[index] != MIMEByte.semicolon { index += 1 }
                parameterValue = Array(MIMEByte.trimmed(bytes[valueStart..<index]))
            }

            let name = String(decoding: rawName.map(MIMEByte.lowercased), as: UTF8.self)
            if !name.contains("name") { Self.dropTrailingComment(&parameterValue) }
            // RFC 2231 §3, §4: name*, name*N, name*N*.
            if let star = name.firstIndex(of: "*") {
                let base = String(name[..<star])
                var rest = name[name.index(after: star)...]
                let encoded = rest.hasSuffix("*") || rest.isEmpty
                if rest.hasSuffix("*") { rest = rest.dropLast() }
                if ordered.insert(base).inserted { order.append(base) }
                if rest.isEmpty {
                    extended[base, default: []].append(parameterValue)
                } else if let section = Int(rest), section >= 0, section < 100_000 {
                    if sections[base, default: [:]][section] == nil {
                        sections[base, default: [:]][section] = (parameterValue, encoded)
                    }
                }
            } else {
                if ordered.insert(name).inserted { order.append(name) }
                plain[name, default: []].append(parameterValue)
            }
        }

        var parameters: [String: String] = [:]
        var alternatives: [String: [String]] = [:]
        for name in order {
            var candidates: [String] = []
            if let parts = sections[name], !parts.isEmpty {
                candidates.append(Self.joinSections(parts, log: &log))
            }
            for raw in extended[name] ?? [] {
                candidates.append(Self.decodeExtended(raw[...], log: &log))
            }
            for raw in plain[name] ?? [] {
                candidates.append(Self.decodePlain(raw, log: &log))
            }
            var distinct: [String] = []
            var seen: Set<String> = []
            for candidate in candidates where seen.insert(candidate).inserted { distinct.append(candidate) }
            guard let preferred = distinct.first else { continue }
            parameters[name] = preferred
            alternatives[name] = distinct
        }
        self.parameters = parameters
        self.alternatives = alternatives
    }

    /// `us-ascii (Plain text)` → `us-ascii` (RFC 2045 §5.1 allows comments; RFC 2045's own
    /// example has one). Not applied to file names, where "(1)" is usually part of the name.
    private static func dropTrailingComment(_ value: inout [UInt8]) {
        guard value.last == MIMEByte.closeParen,
              let open = value.lastIndex(of: MIMEByte.openParen), open > 0,
              MIMEByte.isWhitespace(value[open - 1]) else { return }
        value = Array(MIMEByte.trimmed(value[..<open]))
    }

    /// RFC 2231 §4.1: sections in order; encoded ones percent-decoded; the charset from the
    /// first section applies to the whole value.
    private static func joinSections(_ parts: [Int: (bytes: [UInt8], encoded: Bool)], log: inout MIMEMalformationLog) -> String {
        var joined: [UInt8] = []
        var charset: String?
        let sorted = parts.keys.sorted()
        for section in sorted {
            let part = parts[section]!
            if part.encoded {
                var body = part.bytes[...]
                if section == sorted.first {
                    let split = splitCharset(body)
                    charset = split.charset
                    body = split.rest
                }
                joined.append(contentsOf: percentDecode(body))
            } else {
                joined.append(contentsOf: part.bytes)
            }
        }
        if charset == nil {
            return decodePlain(joined, log: &log)
        }
        return MIMECharset.decode(joined[...], label: charset, log: &log)
    }

    /// RFC 2231 §4: charset "'" [language] "'" percent-encoded octets.
    private static func decodeExtended(_ raw: ArraySlice<UInt8>, log: inout MIMEMalformationLog) -> String {
        let split = splitCharset(raw)
        return MIMECharset.decode(percentDecode(split.rest)[...], label: split.charset, log: &log)
    }

    private static func splitCharset(_ raw: ArraySlice<UInt8>) -> (charset: String?, rest: ArraySlice<UInt8>) {
        guard let first = raw.firstIndex(of: MIMEByte.apostrophe),
              let second = raw[(first + 1)...].firstIndex(of: MIMEByte.apostrophe) else {
            return (nil, raw)
        }
        let charset = String(decoding: raw[raw.startIndex..<first], as: UTF8.self)
        return (charset.isEmpty ? nil : charset, raw[(second + 1)...])
    }

    private static func percentDecode(_ raw: ArraySlice<UInt8>) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(raw.count)
        var index = raw.startIndex
        while index < raw.endIndex {
            if raw[index] == MIMEByte.percent, index + 2 < raw.endIndex,
               let high = MIMEByte.hexValue(raw[index + 1]), let low = MIMEByte.hexValue(raw[index + 2]) {
                output.append(high << 4 | low)
                index += 3
            } else {
                output.append(raw[index])
                index += 1
            }
        }
        return output
    }

    /// A plain value: UTF-8 (windows-1252 when not), with RFC 2047 encoded words decoded,
    /// which RFC 2047 §5 forbids in parameters but common mailers write.
    private static func decodePlain(_ raw: [UInt8], log: inout MIMEMalformationLog) -> String {
        let text = MIMECharset.validUTF8(raw[...]) ?? MIMECharset.decodeWindows1252(raw[...])
        return MIMEEncodedWord.decode(text, log: &log)
    }
}
