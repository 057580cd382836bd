import NIOCore

/// Collects a message's header section (RFC 5322 §2.1: up to the first empty line) as the
/// content streams past, within a size cap, and parses it once into a `MessageHeaderSection`.
///
/// Feeding is cheap, as it runs for every content piece of every message: each piece is
/// searched for LF once (recording the line table the section is split along) and copied
/// only up to the end of the section or the cap; after that, pieces are ignored.
public struct MessageHeaderCollector: Sendable {
    /// Header sections past this are not collected further (the section is then incomplete).
    public static let maximumHeaderBytes = 64 * 1024

    private var collected: [UInt8] = []
    /// The offset just past each LF collected (see `MessageHeaderSection.lineEnds`).
    private var lineEnds: [Int] = []
    /// Set once collecting ends, so the fields are split exactly once.
    private var finished: MessageHeaderSection?

    public init() {}

    /// Whether collecting has ended: the empty line was seen, or the cap was reached (then
    /// `section.isComplete` is false). Content fed after that is ignored.
    public var isComplete: Bool { finished != nil }

    /// The header section: the one parsed when collecting ended, or, before that (a message
    /// that ended inside its header section), one parsed from what arrived.
    public var section: MessageHeaderSection {
        finished ?? MessageHeaderSection(bytes: collected, lineEnds: lineEnds, isComplete: false)
    }

    /// Takes the next piece of message content (dot-unstuffed DATA or BDAT bytes).
    public mutating func feed(_ content: ByteBuffer) {
        guard finished == nil else { return }
        content.withUnsafeReadableBytes { collect($0) }
    }

    /// The unfolded value of the first field named `name` (case-insensitive), trimmed
    /// (see `MessageHeaderSection.value(of:)`).
    public func value(of name: String) -> String? { section.value(of: name) }

    /// Looks for the empty line in `input` and copies up to it, or up to the cap.
    mutating func collect(_ input: UnsafeRawBufferPointer) {
        guard finished == nil, !input.isEmpty else { return }
        let base = collected.count
        let available = min(input.count, Self.maximumHeaderBytes - base)
        var lineStart = lineEnds.last ?? 0
        var index = 0
        var sectionEnd: Int?
        while index < available, let newline = input[index..<available].firstIndex(of: MIMEByte.lf) {
            let position = base + newline
            // An empty line is LF or CR LF at the start of a line; the CR may be in an earlier piece.
            let empty = position == lineStart
                || (position == lineStart + 1 && (lineStart < base ? collected[lineStart] : input[lineStart - base]) == MIMEByte.cr)
            lineStart = position + 1
            lineEnds.append(lineStart)
            index = newline + 1
            if empty {
                sectionEnd = index
                break
            }
        }
        collected.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[..<(sectionEnd ?? available)]))
        if sectionEnd != nil || collected.count >= Self.maximumHeaderBytes {
            finished = MessageHeaderSection(bytes: collected, lineEnds: lineEnds, isComplete: sectionEnd != nil)
            collected = []
            lineEnds = []
        }
    }
}
