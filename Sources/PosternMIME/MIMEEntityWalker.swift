import Foundation

/// Walks a message's entity tree depth first with an explicit stack (no recursion, so no
/// input can exhaust the call stack), producing the flattened `MIMEMessage`.
struct MIMEEntityWalker {
    let raw: [UInt8]
    let limits: MIMELimits
    /// The top-level header section's line table, when a `MessageHeaderSection` already has it.
    let topLevelLineEnds: [Int]?
    private var log = MIMEMalformationLog()
    private var headers: [MIMEHeader] = []
    private var parts: [MIMEPart] = []
    private var attachments: [MIMEAttachment] = []
    private var entityCount = 0

    init(raw: [UInt8], limits: MIMELimits, topLevelLineEnds: [Int]? = nil) {
        self.raw = raw
        self.limits = limits
        self.topLevelLineEnds = topLevelLineEnds
    }

    /// The media type of an entity that declares none.
    private enum DefaultType { case textPlain, messageRFC822 }

    private struct Entity {
        var bytes: ArraySlice<UInt8>
        var depth: Int
        var defaultType: DefaultType
        var isTopLevel: Bool
    }

    mutating func run() -> MIMEMessage {
        var stack = [Entity(bytes: raw[...], depth: 0, defaultType: .textPlain, isTopLevel: true)]
        while let entity = stack.popLast() {
            entityCount += 1
            if entityCount > limits.maximumParts {
                log.note(MIMEMalformation.tooManyParts(limits.maximumParts))
                break
            }
            visit(entity, stack: &stack)
        }
        return MIMEMessage(headers: headers, parts: parts, attachmentDetails: attachments,
                           malformations: log.entries, raw: raw)
    }

    private mutating func visit(_ entity: Entity, stack: inout [Entity]) {
        var partLog = MIMEMalformationLog()
        defer { log.merge(partLog) }
        let section = MIMEHeaderSection.parse(entity.bytes, isTopLevel: entity.isTopLevel, limits: limits, log: &partLog,
                                              lineEnds: entity.isTopLevel ? topLevelLineEnds : nil)
        let fieldHeaders = section.fields.map { $0.header(log: &partLog) }
        if entity.isTopLevel { headers = fieldHeaders }

        // Content-Type (RFC 2045 §5).
        let typeFields = section.fields.filter { $0.lowercasedName == "content-type" }
        if typeFields.count > 1 { partLog.note(MIMEMalformation.duplicateContentType) }
        var contentType = entity.defaultType == .messageRFC822 ? "message/rfc822" : "text/plain"
        var parameters: [String: String] = [:]
        var names: [String] = []
        if let field = typeFields.first {
            let parsed = MIMEParameterizedValue(field.value, log: &partLog)
            if Self.isMediaType(parsed.value) {
                contentType = parsed.value
            } else {
                partLog.note(MIMEMalformation.invalidContentType)
                contentType = "text/plain"
            }
            parameters = parsed.parameters
            names = parsed.alternatives["name"] ?? []
        }

        // Content-Disposition (RFC 2183).
        var disposition: String?
        var dispositionParameters: [String: String] = [:]
        var filenames: [String] = []
        if let field = section.fields.first(where: { $0.lowercasedName == "content-disposition" }) {
            let parsed = MIMEParameterizedValue(field.value, log: &partLog)
            disposition = parsed.value.isEmpty ? nil : parsed.value
            dispositionParameters = parsed.parameters
            filenames = parsed.alternatives["filename"] ?? []
        }
        var seenNames = Set(filenames)
        for name in names where seenNames.insert(name).inserted { filenames.append(name) }

        let encodingField = section.fields.first { $0.lowercasedName == "content-transfer-encoding" }
        let transferEncoding = MIMETransferEncoding(encodingField.map { String(decoding: MIMEByte.trimmed($0.value[...]), as: UTF8.self) })

        // isMediaType guarantees exactly one "/".
        let pieces = contentType.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let type = pieces.first ?? ""
        let subtype = pieces.count > 1 ? pieces[1] : ""
        let body = section.body
        var effectiveType = contentType

        if type == "multipart" {
            if !transferEncoding.isIdentity { partLog.note(MIMEMalformation.encodedComposite) }
            if entity.depth >= limits.maximumNestingDepth {
                partLog.note(MIMEMalformation.nestingTooDeep(limits.maximumNestingDepth))
            } else if let boundary = parameters["boundary"], !boundary.isEmpty {
                let split = MIMEMultipart.split(body, boundary: Array(boundary.utf8),
                                                maximumParts: limits.maximumParts - entityCount + 1)
                if split.found {
                    if !split.closed, !split.capped { partLog.note(MIMEMalformation.missingClosingBoundary) }
                    let childDefault: DefaultType = subtype == "digest" ? .messageRFC822 : .textPlain
                    for child in split.parts.reversed() {
                        stack.append(Entity(bytes: child, depth: entity.depth + 1, defaultType: childDefault, isTopLevel: false))
                    }
                    return
                }
                partLog.note(MIMEMalformation.boundaryNeverAppears)
            } else {
                partLog.note(MIMEMalformation.multipartWithoutBoundary)
            }
            // Not descended into: scanned as text so its content is still seen.
            effectiveType = "text/plain"
        } else if type == "message", subtype == "rfc822" || subtype == "global" {
            if entity.depth >= limits.maximumNestingDepth {
                partLog.note(MIMEMalformation.nestingTooDeep(limits.maximumNestingDepth))
                effectiveType = "text/plain"
            } else {
                var inner = body
                if !transferEncoding.isIdentity {
                    // RFC 2046 §5.2.1 forbids it; readers decode it anyway.
                    partLog.note(MIMEMalformation.encodedMessage)
                    inner = transferEncoding.decode(body, truncated: false, log: &partLog)[...]
                }
                if disposition == "attachment" || !filenames.isEmpty {
                    attachments.append(MIMEAttachment(name: filenames.first, names: filenames, type: contentType))
                }
                stack.append(Entity(bytes: inner, depth: entity.depth + 1, defaultType: .textPlain, isTopLevel: false))
                return
            }
        }

        var part = MIMEPart(
            headers: fieldHeaders, contentType: effectiveType, parameters: parameters, disposition: disposition,
            dispositionParameters: dispositionParameters, filename: filenames.first, filenames: filenames,
            transferEncoding: transferEncoding, decodedText: nil, plainText: nil, isTextTruncated: false,
            isAttachment: false, depth: entity.depth, encodedBody: body, malformations: [])
        let isText = effectiveType.hasPrefix("text/")
        part.isAttachment = disposition == "attachment" || !filenames.isEmpty || !isText
        if isText {
            extractText(into: &part, log: &partLog)
        }
        if part.isAttachment {
            attachments.append(MIMEAttachment(name: part.filename, names: filenames, type: effectiveType))
        }
        part.malformations = partLog.entries
        parts.append(part)
    }

    /// Transfer-decodes and charset-converts a text part, up to the scan limit.
    private func extractText(into part: inout MIMEPart, log: inout MIMEMalformationLog) {
        let body = part.encodedBody
        let truncated = body.count > limits.maximumTextScanBytes
        if truncated { log.note(MIMEMalformation.textTruncated(limits.maximumTextScanBytes)) }
        let content = truncated ? body.prefix(limits.maximumTextScanBytes) : body
        var decoded = part.transferEncoding.decode(content, truncated: truncated, log: &log)
        let charset = part.parameters["charset"]
        let asciiCompatible = MIMECharset.isASCIICompatible(charset)
        if asciiCompatible { Self.normaliseLineEnds(&decoded) }
        if truncated { Self.dropIncompleteUTF8Tail(&decoded) }
        var text = MIMECharset.decode(decoded[...], label: charset, log: &log)
        if !asciiCompatible, text.contains("\r\n") { text = text.replacingOccurrences(of: "\r\n", with: "\n") }
        part.decodedText = text
        part.plainText = part.contentType == "text/html" ? MIMEHTMLText.strip(text) : text
        part.isTextTruncated = truncated
    }

    /// CRLF → LF, in place.
    private static func normaliseLineEnds(_ bytes: inout [UInt8]) {
        guard bytes.contains(MIMEByte.cr) else { return }
        var write = 0
        var read = 0
        let count = bytes.count
        while read < count {
            let byte = bytes[read]
            if byte == MIMEByte.cr, read + 1 < count, bytes[read + 1] == MIMEByte.lf {
                read += 1
                continue
            }
            bytes[write] = byte
            write += 1
            read += 1
        }
        bytes.removeLast(count - write)
    }

    /// A scan cut may split a UTF-8 sequence; drop the incomplete tail rather than flag it.
    private static func dropIncompleteUTF8Tail(_ bytes: inout [UInt8]) {
        var index = bytes.count - 1
        var continuation = 0
        while index >= 0, continuation < 3, bytes[index] & 0xC0 == 0x80 { continuation += 1; index -= 1 }
        guard index >= 0 else { return }
        let lead = bytes[index]
        let length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
        if length > 1, continuation + 1 < length { bytes.removeLast(continuation + 1) }
    }

    /// type "/" subtype, both RFC 2045 §5.1 tokens.
    private static func isMediaType(_ value: String) -> Bool {
        let pieces = value.split(separator: "/", omittingEmptySubsequences: false)
        guard pieces.count == 2 else { return false }
        return pieces.allSatisfy { piece in
            !piece.isEmpty && piece.utf8.allSatisfy { byte in
                byte > 32 && byte < 127 && !"()<>@,;:\\\"/[]?=".utf8.contains(byte)
            }
        }
    }
}
