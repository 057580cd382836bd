/// One leaf body part of a message (RFC 2045 §2.5, RFC 2046 §5.1), after multiparts and
/// encapsulated messages have been flattened.
public struct MIMEPart: Sendable {
    /// The part's own header fields (for a single-part message, the message's).
    public var headers: [MIMEHeader]
    /// The media type used, `type/subtype` lowercased (RFC 2045 §5.1). Undeclared means
    /// text/plain (RFC 2045 §5.2), or message/rfc822 inside multipart/digest (RFC 2046 §5.1.5);
    /// an invalid one, or a container that could not be parsed, is read as text/plain.
    public var contentType: String
    /// Content-Type parameters by lowercased name, RFC 2231 and RFC 2047 decoded.
    public var parameters: [String: String]
    /// The Content-Disposition type, lowercased (RFC 2183 §2), if any.
    public var disposition: String?
    /// Content-Disposition parameters by lowercased name, RFC 2231 and RFC 2047 decoded.
    public var dispositionParameters: [String: String]
    /// The file name: Content-Disposition `filename` (RFC 2183 §2.3, RFC 2231 `filename*`
    /// with charset and continuations), else Content-Type `name`.
    public var filename: String?
    /// Every distinct file name the part declares (filename, filename*, name, name*, duplicates),
    /// `filename` first: mail readers disagree on which wins, so a policy checks them all.
    public var filenames: [String]
    /// The Content-Transfer-Encoding (RFC 2045 §6).
    public var transferEncoding: MIMETransferEncoding
    /// The declared charset parameter, lowercased.
    public var charset: String? { parameters["charset"].map { $0.lowercased() } }
    /// For text/* parts: the content, transfer-decoded, converted to UTF-8, line ends as "\n".
    /// HTML is kept as HTML. Only the first `MIMELimits.maximumTextScanBytes` encoded bytes.
    public var decodedText: String?
    /// For text/* parts: `decodedText`, with HTML reduced to its visible text for text/html.
    public var plainText: String?
    /// Whether `decodedText` stops at the scan limit.
    public var isTextTruncated: Bool
    /// Whether the part is an attachment: disposition "attachment", a file name, or a type
    /// other than text/*.
    public var isAttachment: Bool
    /// Nesting depth (the message is 0; each multipart or message/rfc822 adds one).
    public var depth: Int
    /// The part's body as transmitted (still transfer-encoded).
    public var encodedBody: ArraySlice<UInt8>
    /// Malformations found in this part.
    public var malformations: [String]

    /// The body with its transfer encoding undone (not charset-converted), at most
    /// `maximumBytes` encoded bytes of it.
    public func decodedBody(maximumBytes: Int = .max) -> [UInt8] {
        var ignored = MIMEMalformationLog()
        let truncated = encodedBody.count > maximumBytes
        let content = truncated ? encodedBody.prefix(maximumBytes) : encodedBody
        return transferEncoding.decode(content, truncated: truncated, log: &ignored)
    }

    /// Decoded values of every field of this part called `name` (case-insensitive).
    public func values(of name: String) -> [String] { headers.mimeValues(of: name) }
}

/// An attachment as content conditions see it: a leaf attachment, or an attached message.
public struct MIMEAttachment: Sendable, Hashable {
    /// The preferred file name, if the sender gave one.
    public var name: String?
    /// Every distinct file name declared (see `MIMEPart.filenames`).
    public var names: [String]
    /// The media type, `type/subtype` lowercased.
    public var type: String
}
