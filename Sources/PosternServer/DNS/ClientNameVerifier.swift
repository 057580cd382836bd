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
        let found = await resolver.confirmedNames(of: address.unmapped.bytes, maximumNames: Self.maximumNames, firstOnly: true,
                                                  timeout: timeout)
        guard let names = found.names else { return ClientName(.tempfail) }
        guard let first = names.first else { return ClientName(.none) }
        if let name = found.confirmed.first { return ClientName(.verified, name: name) }
        return found.forwardErrors ? ClientName(.tempfail, name: first) : ClientName(.unverified, name: first)
    }
}
