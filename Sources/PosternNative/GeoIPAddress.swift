#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address as it is looked up in a GeoIP database: 4 or 16 bytes in
/// network order. Kept free of other Postern targets on purpose.
public struct GeoIPAddress: Sendable, Hashable, CustomStringConvertible {
    /// The address in network byte order: 4 bytes (IPv4) or 16 bytes (IPv6).
    public let bytes: [UInt8]

    /// Parses dotted-quad IPv4 or RFC 4291 text IPv6 (no zone index, no brackets).
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.bytes = withUnsafeBytes(of: &v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self.bytes = withUnsafeBytes(of: &v6) { Array($0) }
            return
        }
        return nil
    }

    /// Takes 4 (IPv4) or 16 (IPv6) bytes in network order; nil for any other count.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = Array(bytes)
    }

    /// Whether this is an IPv4 address (4 bytes).
    public var isIPv4: Bool { bytes.count == 4 }

    /// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291
    /// §2.5.5.2), which is how a dual-stack socket reports IPv4 clients; nil otherwise.
    public var mappedIPv4: GeoIPAddress? {
        guard bytes.count == 16,
              bytes[0..<10].allSatisfy({ $0 == 0 }),
              bytes[10] == 0xff, bytes[11] == 0xff
        else { return nil }
        return GeoIPAddress(bytes: bytes[12..<16])
    }

    public var description: String {
        let family = isIPv4 ? AF_INET : AF_INET6
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let ok = bytes.withUnsafeBytes { raw in
            inet_ntop(family, raw.baseAddress, &text, socklen_t(text.count)) != nil
        }
        guard ok else { return "invalid address" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
