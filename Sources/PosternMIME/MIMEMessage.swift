/// A parsed Internet message (RFC 5322) with its MIME structure (RFC 2045, RFC 2046)
/// flattened into leaf parts, for the `data`-stage content conditions.
///
/// Parsing never fails and never traps: malformed MIME is read the way a lenient mail
/// reader would (as text, where nothing better fits) and each problem is recorded in
/// `malformations`. Work is bounded by `MIMELimits`.
public struct MIMEMessage: Sendable {
    /// The message's header fields, in order.
    public var headers: [MIMEHeader]
    /// Leaf body parts, depth first, in message order. Multiparts are descended into, and so
    /// are message/rfc822 (and message/global) parts: an attached message's text counts as
    /// body and its attachments as attachments.
    public var parts: [MIMEPart]
    /// Attachments in message order: leaf attachments, and attached messages themselves when
    /// they are marked as attachments or named.
    public var attachmentDetails: [MIMEAttachment]
    /// Every malformation found, each once, in the order first seen (see `MIMEMalformation`
    /// for the phrases).
    public var malformations: [String]
    /// The message as received.
    public var raw: [UInt8]

    /// Parses `bytes`, a complete message (CRLF line ends; bare LF is accepted too).
    public static func parse<Bytes: Collection>(_ bytes: Bytes, limits: MIMELimits = .init()) -> MIMEMessage
    where Bytes.Element == UInt8 {
        var walker = MIMEEntityWalker(raw: Array(bytes), limits: limits)
        return walker.run()
    }

    /// Decoded values of every message header field called `name` (case-insensitive).
    public func values(of name: String) -> [String] { headers.mimeValues(of: name) }

    /// The decoded Subject (RFC 5322 §3.6.5), if there is one.
    public var subject: String? { headers.mimeFirst("subject")?.value }

    /// The decoded text of every text/* part, HTML as HTML, attachments that are text included.
    public var textBodies: [String] { parts.compactMap(\.decodedText) }

    /// `textBodies`, with HTML reduced to its visible text.
    public var plainTextBodies: [String] { parts.compactMap(\.plainText) }

    /// (file name, media type) of every attachment (see `attachmentDetails`).
    public var attachments: [(name: String?, type: String)] { attachmentDetails.map { ($0.name, $0.type) } }
}
