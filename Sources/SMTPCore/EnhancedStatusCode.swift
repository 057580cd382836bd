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
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
              parts[0].count == 1, (1...3).contains(parts[1].count), (1...3).contains(parts[2].count),
              parts.allSatisfy({ $0.allSatisfy(\.isASCIIDigit) }),
              let c = Int(parts[0]), [2, 4, 5].contains(c),
              let s = Int(parts[1]), let d = Int(parts[2])
        else { return nil }
        self.init(c, s, d)
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
