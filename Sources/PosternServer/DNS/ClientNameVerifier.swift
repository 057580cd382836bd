import PosternNative
import SMTPCore

/// Forward-confirmed reverse DNS, as Postfix's smtpd does it before the greeting: the PTR
/// names of the client's address, then the A (or AAAA) records of each, until one includes
/// the address. At most `maximumNames` PTR names are tried; all lookups share one deadline.
public struct ClientNameVerifier: Sendable {
    static let maximumNames = 10

    let resolver: DNSResolver
    let timeout: Duration

    public init(resolver: DNSResolver, timeout: Duration) {
        self.resolver = resolver
        self.timeout = timeout
    }

    public func verify(_ address: IPAddress) async -> ClientName {
        let address = address.unmapped
        let deadline = ContinuousClock.now + timeout
        func left() -> Duration { max(.zero, deadline - ContinuousClock.now) }
        let reverse = await resolver.lookup(ReverseDNS.pointer(address.bytes), .ptr, timeout: left())
        let names: [String]
        switch reverse {
        case .failure: return ClientName(.tempfail)
        case .success(let answer):
            names = answer.records.compactMap { if case .name(let name) = $0 { name } else { nil } }
        }
        guard !names.isEmpty else { return ClientName(.none) }
        var temporary = false
        for name in names.prefix(Self.maximumNames) {
            switch await resolver.lookup(name, address.isIPv6 ? .aaaa : .a, timeout: left()) {
            case .failure: temporary = true
            case .success(let answer):
                let found = answer.records.contains { record in
                    switch record {
                    case .a(let octets), .aaaa(let octets): IPAddress(bytes: octets) == address
                    default: false
                    }
                }
                if found { return ClientName(.verified, name: name) }
            }
        }
        return temporary ? ClientName(.tempfail, name: names[0]) : ClientName(.unverified, name: names[0])
    }
}
