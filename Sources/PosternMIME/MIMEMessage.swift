import Foundation
import Synchronization

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
    /// What readers derive from the message once (the content rules' one-pass scan), shared
    /// by every copy of this value.
    public let memo = MessageMemo()

    /// Parses `bytes`, a complete message (CRLF line ends; bare LF is accepted too).
    public static func parse<Bytes: Collection>(_ bytes: Bytes, limits: MIMELimits = .init()) -> MIMEMessage
    where Bytes.Element == UInt8 {
        var walker = MIMEEntityWalker(raw: Array(bytes), limits: limits)
        return walker.run()
    }

    /// Parses `bytes` as `parse(_:limits:)` does, with the top-level header fields taken from
    /// `headerSection` (the one header scan per message) when it is complete and is the start
    /// of `bytes`; otherwise they are scanned here. The result is the same either way.
    public static func parse<Bytes: Collection>(
        _ bytes: Bytes, headerSection: MessageHeaderSection?, limits: MIMELimits = .init()
    ) -> MIMEMessage where Bytes.Element == UInt8 {
        let raw = Array(bytes)
        var walker = MIMEEntityWalker(raw: raw, limits: limits, topLevelLineEnds: headerLineTable(headerSection, for: raw))
        return walker.run()
    }

    /// The section's line table if it can stand for the start of `raw`. Comparing the octets
    /// (a memory compare, at most the collector's cap) guards against a section from another
    /// message, or from content that was changed since.
    static func headerLineTable(_ section: MessageHeaderSection?, for raw: [UInt8]) -> [Int]? {
        guard let section, section.isComplete, raw.count >= section.length,
              raw.withUnsafeBytes({ message in
                  section.bytes.withUnsafeBytes { header in
                      header.isEmpty || memcmp(message.baseAddress!, header.baseAddress!, header.count) == 0
                  }
              })
        else { return nil }
        return section.lineEnds
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

/// Values derived from a message by its readers, each computed once per key and kept with
/// the message.
public final class MessageMemo: Sendable {
    private let values = Mutex<[ObjectIdentifier: any Sendable]>([:])

    public init() {}

    /// The value under `key`, made by `make` the first time.
    public func value<Value: Sendable>(for key: ObjectIdentifier, make: () -> Value) -> Value {
        values.withLock { values in
            if let value = values[key] as? Value { return value }
            let value = make()
            values[key] = value
            return value
        }
    }
}
