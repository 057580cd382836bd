/// A pattern that is one character repeated and nothing else — `X{200}`, `(?-i)-{20,}`,
/// `\*{3,8}` — which matches a subject exactly when the subject holds a run of at least
/// `minimum` of that character (of either case, for a letter, when the pattern is
/// case-insensitive). Such a pattern is the worst case of both engines on text made of long
/// runs shorter than the repeat (lines of 79 `X`s: PCRE2 starts a match at every `X`, and
/// Hyperscan's bounded-repeat engine is busy all along), while counting runs is one linear
/// pass. So the prefilter counts runs for these patterns instead of scanning for them; PCRE2
/// still confirms a subject that has the run.
struct LiteralRun: Hashable, Sendable {
    /// The octets of the run: one, or a letter's two cases.
    let octets: [UInt8]
    let minimum: Int

    /// Nil unless `pattern` (PCRE2 syntax) is a single ASCII character, literal or escaped
    /// punctuation, with a counted repeat `{n}`, `{n,}` or `{n,m}` (n ≥ 2), optionally after a
    /// leading `(?i)` or `(?-i)`. Anything else (classes, alternation, anchors, other flags,
    /// lazy or possessive repeats) is left to the other engines.
    init?(_ pattern: String, caseInsensitive: Bool) {
        var rest = Substring(pattern)
        var insensitive = caseInsensitive
        if rest.hasPrefix("(?i)") {
            insensitive = true
            rest = rest.dropFirst(4)
        } else if rest.hasPrefix("(?-i)") {
            insensitive = false
            rest = rest.dropFirst(5)
        }
        let bytes = Array(rest.utf8)
        guard let first = bytes.first, first < 0x80 else { return nil }
        var index = 1
        let character: UInt8
        if first == UInt8(ascii: "\\") {
            // An escaped punctuation character is itself; an escaped letter or digit is a class
            // or a special (\d, \w, \1…), not a literal.
            guard bytes.count > 1, bytes[1] < 0x80, bytes[1] > 0x20, !Self.isAlphanumeric(bytes[1]) else { return nil }
            character = bytes[1]
            index = 2
        } else {
            guard first > 0x20, first != 0x7F, !Self.metacharacters.contains(first) else { return nil }
            character = first
        }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{"), bytes.last == UInt8(ascii: "}") else { return nil }
        let counts = bytes[(index + 1)..<(bytes.count - 1)].split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        guard (1...2).contains(counts.count), let minimum = Self.number(counts[0]), minimum >= 2 else { return nil }
        if counts.count == 2, !counts[1].isEmpty {
            guard let maximum = Self.number(counts[1]), maximum >= minimum else { return nil }
        }
        // Case-insensitive in UTF mode, k and s have a third case (KELVIN SIGN, LONG S).
        if insensitive, Set("kKsS".utf8).contains(character) { return nil }
        self.minimum = minimum
        if insensitive, let other = Self.otherCase(character) {
            octets = [character, other]
        } else {
            octets = [character]
        }
    }

    /// Whether `bytes` holds `minimum` of the run's octets in a row.
    func occurs(in bytes: UnsafeRawBufferPointer) -> Bool {
        let (a, b) = (octets[0], octets[octets.count - 1])
        var run = 0
        for byte in bytes {
            if byte == a || byte == b {
                run += 1
                if run >= minimum { return true }
            } else {
                run = 0
            }
        }
        return false
    }

    func occurs(in text: String) -> Bool {
        var text = text
        return text.withUTF8 { occurs(in: UnsafeRawBufferPointer($0)) }
    }

    /// PCRE2's metacharacters outside a class.
    private static let metacharacters = Set("\\^$.|?*+()[]{}".utf8)

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
    }

    private static func otherCase(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x41...0x5A: byte + 0x20
        case 0x61...0x7A: byte - 0x20
        default: nil
        }
    }

    /// A decimal count PCRE2 accepts in a repeat (at most 65535).
    private static func number(_ digits: ArraySlice<UInt8>) -> Int? {
        guard !digits.isEmpty, digits.count <= 5, digits.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
        let value = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        return value <= 65535 ? value : nil
    }
}
