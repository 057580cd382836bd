/// The visible text of an HTML part, roughly: tags removed (block tags become line breaks,
/// inline tags vanish, so `V<b></b>iagra` reads "Viagra"), comments, `<script>` and `<style>`
/// content dropped, character references decoded. Soft hyphens and zero-width characters
/// written as references are dropped, and `&nbsp;` is a plain space, so content checks see
/// words as a reader does. Linear in the input.
enum MIMEHTMLText {
    static func strip(_ html: String) -> String {
        let bytes = Array(html.utf8)
        let count = bytes.count
        var output: [UInt8] = []
        output.reserveCapacity(count)
        var index = 0
        // Once a search for ">" fails, no later "<" can close either: keep the rest as text.
        var noMoreTags = false

        while index < count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "<"), !noMoreTags, index + 1 < count, startsTag(bytes[index + 1]) {
                if matches(bytes, at: index, "<!--") {
                    guard let close = find(bytes, "-->", from: index + 4) else { break }
                    index = close + 3
                    continue
                }
                guard let close = bytes[(index + 1)...].firstIndex(of: UInt8(ascii: ">")) else {
                    noMoreTags = true
                    output.append(byte)
                    index += 1
                    continue
                }
                let name = tagName(bytes, from: index + 1, to: close)
                index = close + 1
                if !name.closing, name.name == "script" || name.name == "style" {
                    guard let end = find(bytes, "</" + name.name, from: index, ignoringCase: true) else { break }
                    index = bytes[end...].firstIndex(of: UInt8(ascii: ">")).map { $0 + 1 } ?? count
                    continue
                }
                if blockTags.contains(name.name) { output.append(MIMEByte.lf) }
                else if cellTags.contains(name.name) { output.append(MIMEByte.space) }
            } else if byte == UInt8(ascii: "&"), let reference = characterReference(bytes, at: index) {
                output.append(contentsOf: reference.text.utf8)
                index = reference.end
            } else {
                output.append(byte)
                index += 1
            }
        }
        return String(decoding: output, as: UTF8.self)
    }

    private static let blockTags: Set<String> = [
        "br", "p", "div", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6",
        "blockquote", "hr", "pre", "title", "section", "article", "header", "footer", "dt", "dd",
    ]
    private static let cellTags: Set<String> = ["td", "th"]

    private static func startsTag(_ byte: UInt8) -> Bool {
        (65...90).contains(byte) || (97...122).contains(byte) || byte == UInt8(ascii: "/")
            || byte == UInt8(ascii: "!") || byte == UInt8(ascii: "?")
    }

    private static func tagName(_ bytes: [UInt8], from start: Int, to end: Int) -> (name: String, closing: Bool) {
        var index = start
        var closing = false
        if index < end, bytes[index] == UInt8(ascii: "/") { closing = true; index += 1 }
        var name: [UInt8] = []
        while index < end, name.count < 16 {
            let byte = MIMEByte.lowercased(bytes[index])
            guard (97...122).contains(byte) || (48...57).contains(byte) else { break }
            name.append(byte)
            index += 1
        }
        return (String(decoding: name, as: UTF8.self), closing)
    }

    private static func matches(_ bytes: [UInt8], at index: Int, _ literal: String) -> Bool {
        bytes[index...].starts(with: literal.utf8)
    }

    /// The index where `needle` next occurs at or after `from`.
    private static func find(_ bytes: [UInt8], _ needle: String, from: Int, ignoringCase: Bool = false) -> Int? {
        let pattern = Array(needle.utf8)
        guard let first = pattern.first, from <= bytes.count else { return nil }
        var index = from
        while index + pattern.count <= bytes.count {
            let byte = ignoringCase ? MIMEByte.lowercased(bytes[index]) : bytes[index]
            if byte == first {
                let window = bytes[index..<(index + pattern.count)]
                if ignoringCase ? MIMEByte.hasPrefixIgnoringCase(window, pattern) : window.elementsEqual(pattern) {
                    return index
                }
            }
            index += 1
        }
        return nil
    }

    /// `&name;`, `&#NNN;`, `&#xHH;` (HTML §13.2.5.72–80, the common subset).
    private static func characterReference(_ bytes: [UInt8], at start: Int) -> (text: String, end: Int)? {
        var index = start + 1
        let limit = min(bytes.count, start + 12)
        var body: [UInt8] = []
        while index < limit, bytes[index] != UInt8(ascii: ";") {
            let byte = bytes[index]
            guard (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte) || byte == UInt8(ascii: "#") else { break }
            body.append(byte)
            index += 1
        }
        let terminated = index < bytes.count && bytes[index] == UInt8(ascii: ";")
        let end = terminated ? index + 1 : index
        guard !body.isEmpty else { return nil }
        if body[0] == UInt8(ascii: "#") {
            var digits = body[1...]
            var radix = 10
            if let x = digits.first, x == UInt8(ascii: "x") || x == UInt8(ascii: "X") { radix = 16; digits = digits.dropFirst() }
            guard !digits.isEmpty, digits.count <= 8,
                  let value = UInt32(String(decoding: digits, as: UTF8.self), radix: radix) else { return nil }
            return (visible(value), end)
        }
        let name = String(decoding: body, as: UTF8.self)
        if let text = namedReferences[name], terminated || unterminatedAllowed.contains(name) { return (text, end) }
        return nil
    }

    private static func visible(_ value: UInt32) -> String {
        switch value {
        case 0xAD, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF: return ""
        case 0xA0: return " "
        default:
            guard let scalar = Unicode.Scalar(value), value != 0 else { return "\u{FFFD}" }
            return String(Character(scalar))
        }
    }

    private static let unterminatedAllowed: Set<String> = ["amp", "lt", "gt", "quot", "nbsp", "AMP", "LT", "GT", "QUOT"]
    private static let namedReferences: [String: String] = [
        "amp": "&", "AMP": "&", "lt": "<", "LT": "<", "gt": ">", "GT": ">", "quot": "\"", "QUOT": "\"",
        "apos": "'", "nbsp": " ", "shy": "", "zwj": "", "zwnj": "", "copy": "©", "reg": "®", "trade": "™",
        "euro": "€", "pound": "£", "yen": "¥", "cent": "¢", "hellip": "…", "mdash": "—", "ndash": "–",
        "laquo": "«", "raquo": "»", "lsquo": "‘", "rsquo": "’", "ldquo": "“", "rdquo": "”", "bull": "•",
        "middot": "·", "deg": "°", "times": "×", "eacute": "é", "egrave": "è", "agrave": "à", "aacute": "á",
        "ccedil": "ç", "uuml": "ü", "ouml": "ö", "auml": "ä", "szlig": "ß", "ntilde": "ñ", "iacute": "í",
        "oacute": "ó", "uacute": "ú", "Eacute": "É", "Uuml": "Ü", "Ouml": "Ö", "Auml": "Ä",
    ]
}
