/// Rewrites a message's header section for the `tag_subject` policy action: the Subject
/// (RFC 5322 §3.6.5) gets the tags in front, everything else stays as received.
public enum SubjectTagger {
    /// The complete `section` with the first Subject field's first line rewritten to
    /// `Subject: T1 T2 original…` (the tags joined by a space), or, when there is no Subject,
    /// a `Subject: T1 T2` field added before the empty line. Nil when the section is not
    /// complete. The message to send is this followed by the content after `section.length`
    /// octets.
    ///
    /// The octets are those the session's former rewrite produced: the name is written
    /// `Subject:`; one SP or HTAB after the colon is replaced by the space after the tags,
    /// and when there is none, two spaces separate the tags from the value; continuation
    /// lines are kept as they are.
    public static func tag(_ section: MessageHeaderSection, tags: [String]) -> [UInt8]? {
        guard section.isComplete else { return nil }
        let bytes = section.bytes
        let prefix = Array("Subject: \(tags.joined(separator: " "))".utf8)
        var rewritten: [UInt8] = []
        rewritten.reserveCapacity(bytes.count + prefix.count + 3)
        if let subject = section.fields.first(where: { isSubject($0, in: bytes) }) {
            // The line goes on past "subject:" at least to its line end, since the section is complete.
            var value = subject.colon + 1
            rewritten += bytes[..<subject.range.lowerBound]
            rewritten += prefix
            rewritten.append(MIMEByte.space)
            if bytes[value] == MIMEByte.space || bytes[value] == MIMEByte.tab { value += 1 } else { rewritten.append(MIMEByte.space) }
            rewritten += bytes[value...]
        } else {
            // The empty line is the last line; the new field goes just before it.
            let emptyLine = section.lineEnds.count >= 2 ? section.lineEnds[section.lineEnds.count - 2] : 0
            rewritten += bytes[..<emptyLine]
            rewritten += prefix
            rewritten += [MIMEByte.cr, MIMEByte.lf]
            rewritten += bytes[emptyLine...]
        }
        return rewritten
    }

    /// A field named exactly `Subject`, in any case, with nothing between the name and the
    /// colon (a `Subject :` field is not rewritten, and gets a Subject added after it).
    private static func isSubject(_ field: MessageHeaderSection.Field, in bytes: [UInt8]) -> Bool {
        let name = field.range.lowerBound..<field.colon
        return name.count == 7 && bytes[name].elementsEqual("subject".utf8) { MIMEByte.lowercased($0) == $1 }
    }
}
