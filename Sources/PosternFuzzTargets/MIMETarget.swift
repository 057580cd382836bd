import PosternMIME
import PosternFilters

/// Parses `input` as a message with the default limits and, for odd-sized inputs, with
/// tight ones too.
///
/// Invariants: the parse returns (no trap, no hang); the message keeps the raw bytes; the
/// part and depth limits hold; a part has decoded text exactly when it is text/*; every
/// accessor the content conditions use returns.
public func fuzzMIME(_ input: [UInt8]) {
    guard input.count <= PosternFuzzTarget.maximumInputSize else { return }
    check(MIMEMessage.parse(input), limits: MIMELimits(), input: input)
    if input.count % 2 == 1 {
        let tight = MIMELimits(maximumNestingDepth: 3, maximumParts: 8, maximumTextScanBytes: 64, maximumHeaderBytes: 128)
        check(MIMEMessage.parse(input, limits: tight), limits: tight, input: input)
    }
}

private func check(_ message: MIMEMessage, limits: MIMELimits, input: [UInt8]) {
    expect(message.raw == input, "the message lost its raw bytes")
    expect(message.parts.count <= limits.maximumParts, "more parts than the limit")
    for part in message.parts {
        expect(part.depth <= limits.maximumNestingDepth, "part deeper than the limit")
        expect((part.decodedText != nil) == part.contentType.hasPrefix("text/"), "decoded text on a non-text part")
        expect(!part.contentType.isEmpty, "part without a media type")
        _ = part.decodedBody(maximumBytes: 4096)
        _ = (part.plainText, part.filename, part.charset)
    }
    _ = (message.subject, message.textBodies, message.plainTextBodies, message.attachments, message.values(of: "from"))
}
