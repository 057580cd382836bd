import PosternNative
import SMTPCore

/// A DNS block or allow list (`dnsbl:` in the policy). Of client addresses, queried as
/// postscreen does (the address reversed under the list's zone, A records back), or of
/// domains (`lookup: helo | sender_domain`, as Spamhaus's DBL: the domain under the zone).
///     dnsbl:
///       - { name: spamhaus, zone: zen.spamhaus.org, returns: [127.0.0.2-11], weight: 3 }
///       - { name: dnswl, zone: list.dnswl.org, returns: [127.0.0.0/16], weight: -5 }
///       - { name: dbl, zone: dbl.spamhaus.org, lookup: sender_domain, returns: [127.0.1.2-99] }
public struct DNSList: Sendable, Hashable {
    /// What the list is asked about.
    public enum Lookup: String, Sendable, Hashable, CaseIterable {
        /// The client's address (the default), asked when the client connects.
        case client
        /// The HELO/EHLO name, asked at the helo stage (not an address literal).
        case helo
        /// The MAIL FROM domain, asked at the mail stage (not for the null sender).
        case senderDomain = "sender_domain"

        /// The first stage whose rules can know the answer.
        public var stage: PolicyStage {
            switch self {
            case .client: .connect
            case .helo: .helo
            case .senderDomain: .mail
            }
        }
    }

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
    public var lookup: Lookup

    public init(name: String, zone: String, returns: [Returns] = [], weight: Double = 1, ipv6: Bool = false, lookup: Lookup = .client) {
        self.name = name
        self.zone = zone
        self.returns = returns
        self.weight = weight
        self.ipv6 = ipv6
        self.lookup = lookup
    }

    /// Codes that mean "the query was refused or the list is misused", never "listed":
    /// 127.255.255.0/24 (Spamhaus: public resolver, over quota, typing error),
    /// 127.0.0.255 (several lists: refused) and 127.0.1.255 (Spamhaus DBL: an address was
    /// asked of a domain list). Logged, recorded as errors.
    public static let errorCodes = [Returns(low: 0x7FFF_FF00, high: 0x7FFF_FFFF), Returns(low: 0x7F00_00FF, high: 0x7F00_00FF),
                                    Returns(low: 0x7F00_01FF, high: 0x7F00_01FF)]

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

    public static let clientSubject = "client"

    /// What the list asks about for a session with this HELO name and sender domain: the
    /// session asks again when it changes.
    public func subjectKey(helo: String?, senderDomain: String?) -> String {
        switch lookup {
        case .client: Self.clientSubject
        case .helo: "helo:" + (helo?.lowercased() ?? "")
        case .senderDomain: "sender:" + (senderDomain?.lowercased() ?? "")
        }
    }

    /// The name to look up for a domain list (`lookup: helo | sender_domain`): the domain,
    /// lower-cased, under the zone; nil for what is not an ASCII domain name (an address
    /// literal, a bare word, an internationalized name).
    public func query(forDomain domain: String) -> String? {
        var name = domain.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard labels.count >= 2, name.utf8.count + zone.utf8.count < 253,
              labels.allSatisfy({ label in
                  !label.isEmpty && label.utf8.count < 64 && label.utf8.allSatisfy { byte in
                      (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2D || byte == 0x5F
                  }
              }) else { return nil }
        return "\(name).\(zone)"
    }
}

/// When the answers of the client-address lists are awaited (`dnsbl_wait:` in the policy).
public enum DNSListWait: Sendable, Hashable {
    /// Before the greeting, at most this long (nil: the resolver's timeout); a list that has
    /// not answered by then is an error for this session, never a listing.
    case connect(Duration?)
    /// The greeting goes out at once; the answers are awaited before the mail stage, so
    /// connect and helo rules cannot use them.
    case mail

    /// The first stage whose rules can know a client-address list's answer.
    public var stage: PolicyStage { if case .mail = self { .mail } else { .connect } }
}

/// DNS lists to ask, and what each kind of list looks up.
public struct DNSListLookup: Sendable, Hashable {
    public var lists: [DNSList]
    public var client: IPAddress
    /// The HELO/EHLO name (`lookup: helo`).
    public var helo: String?
    /// The MAIL FROM domain (`lookup: sender_domain`); nil for the null sender.
    public var senderDomain: String?

    public init(lists: [DNSList], client: IPAddress, helo: String? = nil, senderDomain: String? = nil) {
        self.lists = lists
        self.client = client
        self.helo = helo
        self.senderDomain = senderDomain
    }
}

/// What one DNS list said (about the client, its HELO name or its sender domain).
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
