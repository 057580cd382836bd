/// Bounds on the work `MIMEMessage.parse` does for one message: DoS protection for the
/// `data` stage. Crossing a limit never fails the parse; it stops the work and records a
/// malformation, so a policy can act on it.
public struct MIMELimits: Sendable, Hashable {
    /// Deepest nesting of multipart and message/rfc822 entities that is descended into
    /// (the message itself is depth 0). A container at this depth is scanned as text/plain
    /// instead, and "nesting deeper than N" is recorded. Default 20.
    public var maximumNestingDepth: Int

    /// Most entities (the message, every body part, every encapsulated message) parsed.
    /// Anything past it is left unparsed, and "more than N parts" is recorded. Default 1000.
    public var maximumParts: Int

    /// Most encoded bytes of one text part that are decoded for text extraction
    /// (`decodedText`). The rest of the part is not decoded; the part is marked
    /// `isTextTruncated` and "text part truncated at N bytes" is recorded. Default 1 MiB.
    public var maximumTextScanBytes: Int

    /// Most bytes of one header section (of the message or of a body part) that are parsed
    /// into header fields. Fields past it are skipped, and "header section larger than N bytes"
    /// is recorded. Default 256 KiB.
    public var maximumHeaderBytes: Int

    public init(
        maximumNestingDepth: Int = 20,
        maximumParts: Int = 1000,
        maximumTextScanBytes: Int = 1 << 20,
        maximumHeaderBytes: Int = 256 * 1024
    ) {
        self.maximumNestingDepth = max(0, maximumNestingDepth)
        self.maximumParts = max(1, maximumParts)
        self.maximumTextScanBytes = max(0, maximumTextScanBytes)
        self.maximumHeaderBytes = max(0, maximumHeaderBytes)
    }
}
