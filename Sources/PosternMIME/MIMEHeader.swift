/// One header field of a message or body part (RFC 5322 §2.2).
public struct MIMEHeader: Sendable, Hashable {
    /// The field name as written (case preserved).
    public var name: String
    /// The field body, unfolded (RFC 5322 §2.2.3) and trimmed, otherwise as written.
    /// Bytes that are not UTF-8 (RFC 6532) are read as windows-1252.
    public var rawValue: String
    /// `rawValue` with RFC 2047 encoded words decoded; whitespace between adjacent
    /// encoded words dropped (RFC 2047 §6.2).
    public var value: String

    public init(name: String, rawValue: String, value: String) {
        self.name = name
        self.rawValue = rawValue
        self.value = value
    }
}

extension Array where Element == MIMEHeader {
    /// Decoded values of every field called `name` (case-insensitive), in order.
    func mimeValues(of name: String) -> [String] {
        let wanted = name.lowercased()
        return compactMap { $0.name.lowercased() == wanted ? $0.value : nil }
    }

    /// The first field called `name` (case-insensitive).
    func mimeFirst(_ name: String) -> MIMEHeader? {
        let wanted = name.lowercased()
        return first { $0.name.lowercased() == wanted }
    }
}

/// A header field while parsing: the unfolded value kept as bytes, for the parameter parser.
struct MIMERawField: Sendable {
    var name: String
    var lowercasedName: String
    var value: [UInt8]
}

/// The header section of one entity and where its body starts.
struct MIMEHeaderSection {
    var fields: [MIMERawField] = []
    var body: ArraySlice<UInt8>

    /// Splits `entity` into header fields and body (RFC 5322 §2.1: the header section ends at
    /// the first empty line). A line that is neither a field nor a continuation also ends the
    /// header section (flagged), and so does the end of input. Bare LF ends lines as CRLF does.
    /// A leading mbox "From " line of the top-level message is skipped.
    ///
    /// `lineEnds`, the offsets just past each LF from the start of `entity` (a
    /// `MessageHeaderSection`'s line table), spares the search for line ends in those lines;
    /// the fields are assembled from them exactly as from lines found here.
    static func parse(
        _ entity: ArraySlice<UInt8>,
        isTopLevel: Bool,
        limits: MIMELimits,
        log: inout MIMEMalformationLog,
        lineEnds: [Int]? = nil
    ) -> MIMEHeaderSection {
        var assembler = Assembler(entity: entity, isTopLevel: isTopLevel, limits: limits)
        var lineStart = entity.startIndex
        for next in lineEnds ?? [] {
            let next = entity.startIndex + next
            if let section = assembler.line(from: lineStart, newline: next - 1, log: &log) { return section }
            lineStart = next
        }
        while lineStart < entity.endIndex {
            let newline = entity[lineStart...].firstIndex(of: MIMEByte.lf)
            if let section = assembler.line(from: lineStart, newline: newline, log: &log) { return section }
            lineStart = newline.map { $0 + 1 } ?? entity.endIndex
        }
        return assembler.finish()
    }

    /// Builds the fields one line at a time, whoever found the lines.
    private struct Assembler {
        let entity: ArraySlice<UInt8>
        let isTopLevel: Bool
        let limits: MIMELimits
        let budgetEnd: Int
        var section: MIMEHeaderSection
        var storing = true
        var current: MIMERawField?

        init(entity: ArraySlice<UInt8>, isTopLevel: Bool, limits: MIMELimits) {
            self.entity = entity
            self.isTopLevel = isTopLevel
            self.limits = limits
            self.budgetEnd = entity.startIndex + min(limits.maximumHeaderBytes, entity.count)
            self.section = MIMEHeaderSection(body: entity[entity.endIndex...])
        }

        private mutating func flush() {
            if let done = current { section.fields.append(done) }
            current = nil
        }

        /// A single line longer than the budget is cut at it.
        private func clamp(_ index: Int, log: inout MIMEMalformationLog) -> Int {
            if index > budgetEnd { log.note(MIMEMalformation.headerSectionTooLarge(limits.maximumHeaderBytes)) }
            return Swift.min(index, budgetEnd)
        }

        /// Takes the line starting at `lineStart` and ending at `newline` (nil: at the end of
        /// input). Returns the section when this line ends it.
        mutating func line(from lineStart: Int, newline: Int?, log: inout MIMEMalformationLog) -> MIMEHeaderSection? {
            let end = entity.endIndex
            var contentEnd = newline ?? end
            if contentEnd > lineStart, entity[contentEnd - 1] == MIMEByte.cr { contentEnd -= 1 }
            let next = newline.map { $0 + 1 } ?? end

            if contentEnd == lineStart {
                // Empty line: the body follows.
                flush()
                section.body = entity[next...]
                return section
            }
            if storing, lineStart - entity.startIndex >= limits.maximumHeaderBytes {
                storing = false
                flush()
                log.note(MIMEMalformation.headerSectionTooLarge(limits.maximumHeaderBytes))
            }
            let first = entity[lineStart]
            if first == MIMEByte.space || first == MIMEByte.tab {
                if current != nil {
                    if storing { current!.value.append(contentsOf: entity[lineStart..<clamp(contentEnd, log: &log)]) }
                } else if storing {
                    // A continuation with nothing to continue: not a header section after all.
                    log.note(MIMEMalformation.missingHeaderSeparator)
                    section.body = entity[lineStart...]
                    return section
                }
            } else if let colon = entity[lineStart..<contentEnd].firstIndex(of: MIMEByte.colon),
                      let name = MIMEHeaderSection.fieldName(entity[lineStart..<colon]) {
                flush()
                if storing {
                    current = MIMERawField(name: name, lowercasedName: name.lowercased(),
                                           value: Array(entity[(colon + 1)..<max(colon + 1, clamp(contentEnd, log: &log))]))
                }
            } else if isTopLevel, section.fields.isEmpty, current == nil, lineStart == entity.startIndex,
                      entity[lineStart..<contentEnd].starts(with: MIMEByte.mboxFrom) {
                // mbox separator line: not part of the message.
            } else {
                flush()
                log.note(MIMEMalformation.missingHeaderSeparator)
                section.body = entity[lineStart...]
                return section
            }
            return nil
        }

        /// The end of input ended the section.
        mutating func finish() -> MIMEHeaderSection {
            flush()
            return section
        }
    }

    /// RFC 5322 §3.6.8 field-name: printable ASCII except colon; obsolete syntax allows
    /// whitespace before the colon (RFC 5322 §4.5).
    fileprivate static func fieldName(_ bytes: ArraySlice<UInt8>) -> String? {
        var end = bytes.endIndex
        while end > bytes.startIndex, MIMEByte.isWhitespace(bytes[end - 1]) { end -= 1 }
        guard end > bytes.startIndex else { return nil }
        for byte in bytes[bytes.startIndex..<end] where byte < 33 || byte > 126 { return nil }
        return String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
    }
}

extension MIMERawField {
    /// Builds the public header: trimmed, read as UTF-8 (windows-1252 when it is not),
    /// with encoded words decoded.
    func header(log: inout MIMEMalformationLog) -> MIMEHeader {
        let trimmed = MIMEByte.trimmed(value[...])
        let raw: String
        if let utf8 = MIMECharset.validUTF8(trimmed) {
            raw = utf8
        } else {
            log.note(MIMEMalformation.headerNotUTF8)
            raw = MIMECharset.decodeWindows1252(trimmed)
        }
        return MIMEHeader(name: name, rawValue: raw, value: MIMEEncodedWord.decode(raw, log: &log))
    }
}
