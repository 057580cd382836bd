/// Splitting a multipart body at its boundary (RFC 2046 §5.1.1).
enum MIMEMultipart {
    struct Split {
        /// Body parts between delimiters (without the CRLF that belongs to the next delimiter).
        var parts: [ArraySlice<UInt8>] = []
        /// Whether any delimiter line was found.
        var found = false
        /// Whether the close delimiter was found.
        var closed = false
        /// Whether splitting stopped at `maximumParts`.
        var capped = false
    }

    /// A delimiter line is "--" boundary, then optional whitespace (transport padding), then
    /// the line end; the close delimiter adds "--" (anything after it is epilogue). Matching
    /// is exact, so an inner boundary that merely starts with an outer one is not mistaken
    /// for it. The CRLF before a delimiter belongs to the delimiter. Bare LF is accepted.
    static func split(_ body: ArraySlice<UInt8>, boundary: [UInt8], maximumParts: Int) -> Split {
        var result = Split()
        let end = body.endIndex
        var lineStart = body.startIndex
        var partStart: Int?
        let delimiterLength = boundary.count + 2

        while lineStart < end {
            let newline = body[lineStart...].firstIndex(of: MIMEByte.lf)
            var contentEnd = newline ?? end
            if contentEnd > lineStart, body[contentEnd - 1] == MIMEByte.cr { contentEnd -= 1 }
            let next = newline.map { $0 + 1 } ?? end

            if contentEnd - lineStart >= delimiterLength, body[lineStart] == MIMEByte.dash,
               body[lineStart + 1] == MIMEByte.dash,
               body[(lineStart + 2)..<(lineStart + delimiterLength)].elementsEqual(boundary) {
                let rest = body[(lineStart + delimiterLength)..<contentEnd]
                let isClose = rest.starts(with: [MIMEByte.dash, MIMEByte.dash])
                if isClose || rest.allSatisfy(MIMEByte.isWhitespace) {
                    result.found = true
                    if let start = partStart {
                        var partEnd = lineStart
                        if partEnd > start, body[partEnd - 1] == MIMEByte.lf { partEnd -= 1 }
                        if partEnd > start, body[partEnd - 1] == MIMEByte.cr { partEnd -= 1 }
                        result.parts.append(body[start..<partEnd])
                    }
                    if isClose {
                        result.closed = true
                        return result
                    }
                    if result.parts.count >= maximumParts {
                        result.capped = true
                        return result
                    }
                    partStart = next
                }
            }
            lineStart = next
        }
        if let start = partStart { result.parts.append(body[start..<end]) }
        return result
    }
}
