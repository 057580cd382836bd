/// Authentication-Results fields (RFC 8601) that claim to be Postern's: a message arriving
/// with one under Postern's authserv-id is forging Postern's verdict for whoever reads the
/// message downstream (§5: a border MTA removes such fields).
public enum AuthenticationResults {
    /// Whether `name`/`value` is an Authentication-Results field whose authserv-id is `id`
    /// (case-insensitively; the id ends at `;`, whitespace or a comment).
    public static func claims(name: String, value: String, id: String) -> Bool {
        guard name.lowercased() == "authentication-results" else { return false }
        let trimmed = value.drop { $0 == " " || $0 == "\t" }
        let claimed = trimmed.prefix { $0 != ";" && $0 != " " && $0 != "\t" && $0 != "(" && $0 != "\r" && $0 != "\n" }
        return claimed.lowercased() == id.lowercased()
    }

    /// The complete `section` without the fields that claim `id`; nil when there are none
    /// (or the section is not complete: then nothing is rewritten).
    public static func strip(_ section: MessageHeaderSection, id: String) -> [UInt8]? {
        guard section.isComplete else { return nil }
        let forged = section.fields.filter { claims(name: $0.name, value: $0.value, id: id) }
        guard !forged.isEmpty else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(section.bytes.count)
        var next = 0
        for field in forged {
            out += section.bytes[next..<field.range.lowerBound]
            next = field.range.upperBound
        }
        out += section.bytes[next...]
        return out
    }
}
