/// An RFC 3463 enhanced mail system status code: `class.subject.detail`.
public struct EnhancedStatusCode: Hashable, Sendable, CustomStringConvertible {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    public var codeClass: Int
    public var subject: Int
    public var detail: Int

    public init(_ codeClass: Int, _ subject: Int, _ detail: Int) {
        self.codeClass = codeClass
        self.subject = subject
        self.detail = detail
    }

    /// Parses `d.ddd.ddd` (RFC 3463 §2); nil when the text is not one.
    public init?(parsing text: Substring) {
        // `class.subject.detail`: one digit (2, 4 or 5), then one to three digits twice, on
        // the octets (this runs for every reply an upstream sends).
        var values = (0, 0, 0)
        var part = 0
        var digits = 0
        for byte in text.utf8 {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, part < 2 else { return nil }
                part += 1
                digits = 0
                continue
            }
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), digits < (part == 0 ? 1 : 3) else { return nil }
            let digit = Int(byte - UInt8(ascii: "0"))
            switch part {
            case 0: values.0 = digit
            case 1: values.1 = values.1 * 10 + digit
            default: values.2 = values.2 * 10 + digit
            }
            digits += 1
        }
        guard part == 2, digits > 0, [2, 4, 5].contains(values.0) else { return nil }
        self.init(values.0, values.1, values.2)
    }

    public var description: String { "\(codeClass).\(subject).\(detail)" }

    /// The generic code for a reply class when a peer gave none (X.0.0).
    public static func generic(forReplyCode code: Int) -> EnhancedStatusCode {
        // 2xx and 3xx replies are successes (RFC 3463 has no class 3).
        EnhancedStatusCode(code >= 500 ? 5 : code >= 400 ? 4 : 2, 0, 0)
    }
}

extension Character {
    @inlinable var isASCIIDigit: Bool { self >= "0" && self <= "9" }
}
