import PosternNative
import SMTPCore

/// A DNS block or allow list of client addresses (`dnsbl:` in the policy), queried as
/// postscreen does: the client's address reversed under the list's zone, A records back.
///     dnsbl:
///       - { name: spamhaus, zone: zen.spamhaus.org, returns: [127.0.0.2-11], weight: 3 }
///       - { name: dnswl, zone: list.dnswl.org, returns: [127.0.0.0/16], weight: -5 }
public struct DNSList: Sendable, Hashable {
    /// A range of return codes, e.g. 127.0.0.4-11 (inclusive, as 32-bit values).
    public struct Returns: Sendable, Hashable, CustomStringConvertible {
        public var low: UInt32
        public var high: UInt32

        public init(low: UInt32, high: UInt32) {
            self.low = low
            self.high = high
        }

        public func contains(_ code: UInt32) -> Bool { code >= low && code <= high }

        public var description: String {
            low == high ? Self.dotted(low) : "\(Self.dotted(low))-\(Self.dotted(high))"
        }

        static func dotted(_ value: UInt32) -> String {
            (0..<4).map { String((value >> (8 * (3 - $0))) & 0xFF) }.joined(separator: ".")
        }

        /// `127.0.0.2`, `127.0.0.4-11` (a range of the last octet) or `127.0.0.0/24`.
        public static func parse(_ text: String) -> Returns? {
            if let slash = text.firstIndex(of: "/") {
                guard let base = IPAddress(String(text[..<slash])), case .v4(let value) = base,
                      let bits = Int(text[text.index(after: slash)...]), (0...32).contains(bits) else { return nil }
                let mask: UInt32 = bits == 0 ? 0 : ~UInt32(0) << (32 - bits)
                return Returns(low: value & mask, high: (value & mask) | ~mask)
            }
            if let dash = text.lastIndex(of: "-") {
                guard let base = IPAddress(String(text[..<dash])), case .v4(let value) = base,
                      let last = UInt32(text[text.index(after: dash)...]), last <= 255, last >= value & 0xFF else { return nil }
                return Returns(low: value, high: (value & ~0xFF) | last)
            }
            guard let address = IPAddress(text), case .v4(let value) = address else { return nil }
            return Returns(low: value, high: value)
        }
    }

    public var name: String
    /// Without the trailing dot.
    public var zone: String
    /// Empty: any 127.0.0.0/8 code except the refusals in `errorCodes`.
    public var returns: [Returns]
    /// Added to the transaction's DNS list score when listed; negative for allow lists.
    public var weight: Double
    /// Whether IPv6 clients are looked up (nibble format); many lists serve IPv4 only.
    public var ipv6: Bool

    public init(name: String, zone: String, returns: [Returns] = [], weight: Double = 1, ipv6: Bool = false) {
        self.name = name
        self.zone = zone
        self.returns = returns
        self.weight = weight
        self.ipv6 = ipv6
    }

    /// Codes that mean "the query was refused or the list is misused", never "listed":
    /// 127.255.255.0/24 (Spamhaus: public resolver, over quota, typing error) and
    /// 127.0.0.255 (several lists: refused). Logged, recorded as errors.
    public static let errorCodes = [Returns(low: 0x7FFF_FF00, high: 0x7FFF_FFFF), Returns(low: 0x7F00_00FF, high: 0x7F00_00FF)]

    public static func isError(_ code: UInt32) -> Bool { errorCodes.contains { $0.contains(code) } }

    /// Whether `code` means listed for this list.
    public func lists(_ code: UInt32) -> Bool {
        if Self.isError(code) { return false }
        if returns.isEmpty { return code >> 24 == 127 }
        return returns.contains { $0.contains(code) }
    }

    /// The name to look up for `address`, or nil (an IPv6 client and `ipv6: false`).
    public func query(for address: IPAddress) -> String? {
        let address = address.unmapped
        if address.isIPv6, !ipv6 { return nil }
        return ReverseDNS.name(address.bytes, under: zone)
    }
}

/// What one DNS list said about the client.
public struct DNSListResult: Sendable, Hashable {
    public enum Outcome: Sendable, Hashable {
        /// Listed, with the codes that list it.
        case listed([UInt32])
        /// Not listed (NXDOMAIN, or only codes this list does not count).
        case notListed
        /// The lookup failed (timeout, SERVFAIL), or the list answered a refusal code.
        case error(String)
        /// Not asked (an IPv6 client and `ipv6: false`).
        case skipped
    }

    public var list: String
    public var outcome: Outcome
    /// The list's weight when listed, else 0.
    public var weight: Double

    public init(list: String, outcome: Outcome, weight: Double) {
        self.list = list
        self.outcome = outcome
        self.weight = weight
    }

    public var isListed: Bool { if case .listed = outcome { true } else { false } }

    public var codes: [UInt32] { if case .listed(let codes) = outcome { codes } else { [] } }
}
