#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a limit counts (`count:` in the policy), i.e. the cost of one charge.
///
/// - `connections`: 1 per accepted TCP connection (stage `connect`).
/// - `messages`: 1 per message (stage `mail`, or `data` to count only completed ones).
/// - `recipients`: 1 per recipient at stage `rcpt`, or the recipient count at `data`.
/// - `bytes`: the message size (`SIZE=` at `mail`, the received octets at `data`).
public enum RateLimitCounter: String, CaseIterable, Hashable, Sendable {
    case connections, messages, recipients, bytes
}

/// One part of a limit's key (`key:` in the policy).
public enum RateLimitKeyField: String, CaseIterable, Hashable, Sendable {
    /// The client's address, canonical text (IPv4-mapped IPv6 as IPv4).
    case clientIP = "client_ip"
    /// The client's network: IPv4 /24 and IPv6 /64 unless configured otherwise.
    case clientNet = "client_net"
    /// The envelope sender, lower-cased; the null sender is `<>`.
    case sender
    /// The sender's domain, lower-cased; the null sender's is `<>`.
    case senderDomain = "sender_domain"
    /// The recipient being decided, lower-cased.
    case recipient
    /// The recipient's domain, lower-cased.
    case recipientDomain = "recipient_domain"
    /// The SASL authenticated user, exactly as authenticated.
    case authUser = "auth_user"
    /// The client's country (ISO 3166 code, upper-cased), as GeoIP reports it.
    case country
}

/// The ordered, duplicate-free fields a limit is keyed on: `client_ip`, or a combination
/// such as `client_ip+sender_domain`.
public struct RateLimitKeyFields: Hashable, Sendable, CustomStringConvertible {
    public let fields: [RateLimitKeyField]

    /// Nil when empty or when a field repeats.
    public init?(_ fields: [RateLimitKeyField]) {
        guard !fields.isEmpty, Set(fields).count == fields.count else { return nil }
        self.fields = fields
    }

    /// Parses `client_ip`, `client_ip+sender` or `client_ip, sender` (YAML may also give a
    /// list: map it with ``RateLimitKeyField/init(rawValue:)``). Nil on an unknown or
    /// repeated field.
    public init?(parsing text: String) {
        let names = text.split(whereSeparator: { $0 == "+" || $0 == "," })
            .map { $0.trimmed(" \t") }
        var fields: [RateLimitKeyField] = []
        for name in names {
            guard let field = RateLimitKeyField(rawValue: String(name)) else { return nil }
            fields.append(field)
        }
        self.init(fields)
    }

    /// `client_ip+sender_domain`.
    public var description: String { fields.map(\.rawValue).joined(separator: "+") }
}

/// The prefix lengths that `client_net` groups clients by.
public struct RateLimitNetworkPrefixes: Hashable, Sendable {
    /// 0…32; default 24.
    public var ipv4: Int
    /// 0…128; default 64.
    public var ipv6: Int

    /// Values out of range are clamped (the policy compiler reports them first).
    public init(ipv4: Int = 24, ipv6: Int = 64) {
        self.ipv4 = Swift.min(Swift.max(ipv4, 0), 32)
        self.ipv6 = Swift.min(Swift.max(ipv6, 0), 128)
    }
}

/// The facts a key is built from, as plain values so the engine does not depend on the
/// protocol types. A `nil` field means "not known at this stage".
public struct RateLimitSubject: Hashable, Sendable {
    /// The client address, as 4 or 16 network-order bytes.
    public var clientAddress: [UInt8]?
    /// The envelope sender's address (`local@domain`, angle brackets optional); `""` or
    /// `<>` for the null sender.
    public var sender: String?
    /// The recipient being decided.
    public var recipient: String?
    /// The authenticated user; nil (or empty) when the client did not authenticate.
    public var authUser: String?
    /// The client's country code; nil when unknown.
    public var country: String?

    public init(clientAddress: [UInt8]? = nil, sender: String? = nil, recipient: String? = nil,
                authUser: String? = nil, country: String? = nil) {
        self.clientAddress = clientAddress
        self.sender = sender
        self.recipient = recipient
        self.authUser = authUser
        self.country = country
    }
}

/// Builds store keys: normalised parts, namespaced by the limit's name, joined so that
/// different inputs can never produce the same key.
///
/// Format: `escape(limit) | escape(part1) | escape(part2) …`, where `escape` replaces `%`
/// with `%25` and `|` with `%7C`. Escaped text contains no `|`, so splitting on `|` and
/// unescaping recovers every part: the mapping is injective (`a|b` + `c` and `a` + `b|c`
/// differ), and two limits never share a key.
public enum RateLimitKey {
    /// The separator between the namespace and the parts. Never present in an escaped part.
    public static let separator: Character = "|"

    /// Percent-escapes `%` and `|`.
    public static func escape(_ part: String) -> String {
        guard part.contains(where: { $0 == "%" || $0 == "|" }) else { return part }
        var result = ""
        result.reserveCapacity(part.utf8.count + 4)
        for character in part {
            switch character {
            case "%": result += "%25"
            case "|": result += "%7C"
            default: result.append(character)
            }
        }
        return result
    }

    /// Reverses ``escape(_:)``.
    public static func unescape(_ part: some StringProtocol) -> String {
        String(part).replacingAll("%7C", with: "|").replacingAll("%25", with: "%")
    }

    /// `limit|part1|part2…`, every piece escaped.
    public static func compose(limit: String, parts: [String]) -> String {
        ([limit] + parts).map(escape).joined(separator: String(separator))
    }

    /// The key for `limit` keyed on `fields`, or nil when a field is not known for this
    /// subject (the limit does not apply: no recipient at `mail`, no `auth_user` for an
    /// unauthenticated client, no country when GeoIP has none, a sender without a domain
    /// for `sender_domain`).
    public static func make(limit: String, fields: RateLimitKeyFields, subject: RateLimitSubject,
                            prefixes: RateLimitNetworkPrefixes = .init()) -> String? {
        var parts: [String] = []
        parts.reserveCapacity(fields.fields.count)
        for field in fields.fields {
            guard let part = value(of: field, in: subject, prefixes: prefixes) else { return nil }
            parts.append(part)
        }
        return compose(limit: limit, parts: parts)
    }

    /// One field's normalised value, or nil when unknown.
    public static func value(of field: RateLimitKeyField, in subject: RateLimitSubject,
                             prefixes: RateLimitNetworkPrefixes = .init()) -> String? {
        switch field {
        case .clientIP:
            return subject.clientAddress.flatMap { clientAddress(bytes: $0) }
        case .clientNet:
            return subject.clientAddress.flatMap { clientNetwork(bytes: $0, ipv4Prefix: prefixes.ipv4, ipv6Prefix: prefixes.ipv6) }
        case .sender:
            return subject.sender.map(address)
        case .senderDomain:
            return subject.sender.flatMap(domain)
        case .recipient:
            return subject.recipient.map(address)
        case .recipientDomain:
            return subject.recipient.flatMap(domain)
        case .authUser:
            guard let user = subject.authUser, !user.isEmpty else { return nil }
            return user
        case .country:
            guard let country = subject.country?.trimmed(" \t"), !country.isEmpty else { return nil }
            return country.uppercased()
        }
    }

    // MARK: - Addresses

    /// The mailbox as a key: angle brackets removed, lower-cased (local part included, so
    /// case variants of one mailbox share a limit); the null sender is `<>`.
    public static func address(_ mailbox: String) -> String {
        let bare = stripBrackets(mailbox)
        return bare.isEmpty ? "<>" : bare.lowercased()
    }

    /// The domain of a mailbox (after the last `@`), lower-cased, without a trailing dot.
    /// The null sender's domain is `<>`; nil for an address without a domain
    /// (`postmaster`).
    public static func domain(_ mailbox: String) -> String? {
        let bare = stripBrackets(mailbox)
        if bare.isEmpty { return "<>" }
        guard let at = bare.lastIndex(of: "@") else { return nil }
        var domain = bare[bare.index(after: at)...]
        while domain.last == "." { domain = domain.dropLast() }
        guard !domain.isEmpty else { return nil }
        return domain.lowercased()
    }

    private static func stripBrackets(_ text: String) -> Substring {
        var bare = text.trimmed(" \t")
        if bare.first == "<", bare.last == ">", bare.count >= 2 { bare = bare.dropFirst().dropLast() }
        return bare
    }

    // MARK: - Client addresses

    /// The canonical text of an address given as 4 or 16 network-order bytes (IPv6 as RFC
    /// 5952 text; an IPv4-mapped IPv6 address as its IPv4 address). Nil for other lengths.
    public static func clientAddress(bytes: some Collection<UInt8>) -> String? {
        guard let address = normalised(Array(bytes)) else { return nil }
        return format(address)
    }

    /// The canonical text of an address given as text; nil when it is not an address.
    public static func clientAddress(_ text: String) -> String? {
        parse(text).flatMap { clientAddress(bytes: $0) }
    }

    /// The client's network as CIDR text (`192.0.2.0/24`, `2001:db8:1:2::/64`): the address
    /// with every bit past the prefix cleared. An IPv4-mapped IPv6 address counts as IPv4.
    /// Nil for a byte count other than 4 or 16. Prefixes are clamped to 0…32 / 0…128.
    public static func clientNetwork(bytes: some Collection<UInt8>, ipv4Prefix: Int = 24, ipv6Prefix: Int = 64) -> String? {
        guard var address = normalised(Array(bytes)) else { return nil }
        let prefix = address.count == 4 ? Swift.min(Swift.max(ipv4Prefix, 0), 32) : Swift.min(Swift.max(ipv6Prefix, 0), 128)
        for index in address.indices {
            let bitsKept = Swift.min(Swift.max(prefix - index * 8, 0), 8)
            address[index] &= bitsKept == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - bitsKept))
        }
        return "\(format(address))/\(prefix)"
    }

    /// ``clientNetwork(bytes:ipv4Prefix:ipv6Prefix:)`` for an address given as text.
    public static func clientNetwork(_ text: String, ipv4Prefix: Int = 24, ipv6Prefix: Int = 64) -> String? {
        parse(text).flatMap { clientNetwork(bytes: $0, ipv4Prefix: ipv4Prefix, ipv6Prefix: ipv6Prefix) }
    }

    private static func normalised(_ bytes: [UInt8]) -> [UInt8]? {
        switch bytes.count {
        case 4:
            return bytes
        case 16:
            if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
                return Array(bytes[12..<16])
            }
            return bytes
        default:
            return nil
        }
    }

    /// The 4 or 16 network-order bytes of an address given as text (for
    /// ``RateLimitSubject/clientAddress``); nil when it is not an address.
    public static func addressBytes(_ text: String) -> [UInt8]? { parse(text) }

    private static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }

    /// Dotted quad, or RFC 5952 IPv6 (lower-case hex, longest run of two or more zero
    /// groups compressed, the first on a tie).
    private static func format(_ address: [UInt8]) -> String {
        if address.count == 4 { return address.map(String.init).joined(separator: ".") }
        let groups = (0..<8).map { UInt16(address[2 * $0]) << 8 | UInt16(address[2 * $0 + 1]) }
        var bestStart = -1, bestLength = 0, index = 0
        while index < 8 {
            guard groups[index] == 0 else { index += 1; continue }
            var end = index
            while end < 8, groups[end] == 0 { end += 1 }
            if end - index > bestLength, end - index >= 2 { bestStart = index; bestLength = end - index }
            index = end
        }
        let hex = groups.map { String($0, radix: 16) }
        guard bestStart >= 0 else { return hex.joined(separator: ":") }
        let head = hex[..<bestStart].joined(separator: ":")
        let tail = hex[(bestStart + bestLength)...].joined(separator: ":")
        return "\(head)::\(tail)"
    }
}

extension StringProtocol {
    fileprivate func trimmed(_ set: String) -> Substring {
        var result = self[...]
        while let first = result.first, set.contains(first) { result = result.dropFirst() }
        while let last = result.last, set.contains(last) { result = result.dropLast() }
        return Substring(result)
    }
}

extension String {
    fileprivate func replacingAll(_ target: String, with replacement: String) -> String {
        guard contains(target) else { return self }
        return split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
