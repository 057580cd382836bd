#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address, as a value (no socket involved).
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(UInt32)
    case v6(UInt128)

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (`::ffff:1.2.3.4` included).
    public init?(_ text: String) {
        // inet_pton stops at a NUL: "192.0.2.1\0junk" must not parse (found by fuzzing).
        guard !text.utf8.contains(0) else { return nil }
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        let value = withUnsafeBytes(of: &v6) { raw in raw.reduce(UInt128(0)) { ($0 << 8) | UInt128($1) } }
        self = .v6(value)
    }

    /// From the 4 or 16 network-order bytes of an address.
    public init?(bytes: some Collection<UInt8>) {
        switch bytes.count {
        case 4: self = .v4(bytes.reduce(UInt32(0)) { ($0 << 8) | UInt32($1) })
        case 16: self = .v6(bytes.reduce(UInt128(0)) { ($0 << 8) | UInt128($1) })
        default: return nil
        }
    }

    public var isIPv6: Bool { if case .v6 = self { return true } else { return false } }

    /// The 4 or 16 network-order bytes.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let value): return (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * (3 - $0))) }
        case .v6(let value): return (0..<16).map { UInt8(truncatingIfNeeded: value >> (8 * (15 - $0))) }
        }
    }

    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it carries.
    public var unmapped: IPAddress {
        if case .v6(let value) = self, value >> 32 == 0xffff { return .v4(UInt32(truncatingIfNeeded: value)) }
        return self
    }

    public var description: String {
        switch self {
        case .v4(let value):
            return "\(value >> 24).\((value >> 16) & 0xff).\((value >> 8) & 0xff).\(value & 0xff)"
        case .v6(let value):
            var raw = in6_addr()
            withUnsafeMutableBytes(of: &raw) { bytes in
                for index in 0..<16 { bytes[index] = UInt8(truncatingIfNeeded: value >> (8 * (15 - index))) }
            }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            guard inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count)) != nil else { return "::" }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}

/// A CIDR block such as `192.0.2.0/24` or `2001:db8::/32`; a bare address is a /32 or /128.
public struct IPNetwork: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return nil }
        let maximum = address.isIPv6 ? 128 : 32
        var length = maximum
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].allSatisfy(\.isASCIIDigit), let parsed = Int(parts[1]), parsed <= maximum else { return nil }
            length = parsed
        }
        self.init(address: address, prefixLength: length)
    }

    public init(address: IPAddress, prefixLength: Int) {
        self.prefixLength = prefixLength
        switch address {
        case .v4(let value):
            self.address = .v4(prefixLength == 0 ? 0 : value & (UInt32.max << (32 - prefixLength)))
        case .v6(let value):
            self.address = .v6(prefixLength == 0 ? 0 : value & (UInt128.max << (128 - prefixLength)))
        }
    }

    /// True when `candidate` lies in this block; IPv4-mapped IPv6 addresses match IPv4 blocks
    /// (and, as IPv6 addresses, IPv6 blocks).
    public func contains(_ candidate: IPAddress) -> Bool {
        switch (address, address.isIPv6 ? candidate : candidate.unmapped) {
        case (.v4(let network), .v4(let value)):
            return prefixLength == 0 || network == value & (UInt32.max << (32 - prefixLength))
        case (.v6(let network), .v6(let value)):
            return prefixLength == 0 || network == value & (UInt128.max << (128 - prefixLength))
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(prefixLength)" }
}
