import PosternNative
import PosternPolicy
import Yams

extension ConditionCompileContext {
    /// Compiles a PCRE2 pattern once; an error names PCRE2's message and the offset.
    /// Envelope values are short and valid UTF-8, so patterns run in UTF mode, case-insensitive
    /// unless the pattern says otherwise with `(?-i)`.
    mutating func envelopePattern(_ node: Node, _ what: String) -> PCRERegex? {
        guard let pattern = reader.string(node, what) else { return nil }
        do {
            return try PCRERegex(pattern: pattern, options: [.utf, .caseInsensitive])
        } catch {
            reader.fail(node, "\(what): invalid regular expression at offset \(error.offset): \(error.message)")
            return nil
        }
    }
}

extension PCRERegex {
    /// True on a match; a match that hits a limit counts as no match (and never blocks mail).
    func matchesSafely(_ text: String) -> Bool {
        (try? matches(text)) ?? false
    }
}
