import SMTPCore

/// `relay_domains`: the domains Postern accepts mail for from anyone.
///
/// Entries: `example.org` (that domain exactly), `.example.org` (any subdomain of it, not
/// itself), or an address literal `[192.0.2.1]` (only ever matched when listed). Matching is
/// case-insensitive, and internationalised names match in either form: `bücher.example` and
/// `xn--bcher-kva.example` are the same domain (labels are lower-cased and turned into
/// Punycode A-labels, RFC 3492; the full IDNA2008 mapping is not applied).
public struct RelayDomains: Sendable {
    private let exact: Set<String>
    private let parents: [String]

    public init(_ entries: [String]) {
        var exact = Set<String>()
        var parents: [String] = []
        for entry in entries {
            if entry.hasPrefix(".") {
                if let canonical = DomainName.canonical(String(entry.dropFirst())) { parents.append("." + canonical) }
            } else if let canonical = DomainName.canonical(entry) {
                exact.insert(canonical)
            }
        }
        self.exact = exact
        self.parents = parents
    }

    public var isEmpty: Bool { exact.isEmpty && parents.isEmpty }

    /// Whether a `relay_domains` entry is well formed (for the configuration loader).
    public static func isValidEntry(_ entry: String) -> Bool {
        if entry.hasPrefix("[") { return entry.hasSuffix("]") && entry.count > 2 && !entry.contains(" ") }
        let name = entry.hasPrefix(".") ? String(entry.dropFirst()) : entry
        return DomainName.canonical(name) != nil
    }

    /// Whether mail for `domain` (a recipient's domain as parsed) is accepted from anyone.
    public func contains(_ domain: String) -> Bool {
        guard let canonical = DomainName.canonical(domain) else { return false }
        if exact.contains(canonical) { return true }
        guard !canonical.hasPrefix("[") else { return false }
        return parents.contains { canonical.hasSuffix($0) }
    }
}

/// Who may relay where: the RCPT check that runs before any policy rule.
///
/// A client in `trusted_networks`, or one that authenticated, may send to any domain.
/// Anyone else only to `relay_domains`, and only with a plain local part: `%` (the percent
/// hack), `!` (bang paths) and `@` (a quoted local part hiding another address) would let
/// the upstream route the mail elsewhere, so they are refused. A source route
/// (`<@a,@b:user@c>`) is dropped by the parser: the domain judged, and the one relayed to,
/// is `c`. `<postmaster>` is always accepted (RFC 5321 §4.5.1).
public struct RelayControl: Sendable {
    public let domains: RelayDomains
    public let trustedNetworks: [IPNetwork]

    public init(relayDomains: [String], trustedNetworks: [IPNetwork]) {
        self.domains = RelayDomains(relayDomains)
        self.trustedNetworks = trustedNetworks
    }

    public func isTrusted(_ address: IPAddress) -> Bool {
        trustedNetworks.contains { $0.contains(address) }
    }

    /// Nil when the recipient may be relayed to; otherwise why not.
    public func refusal(for path: ForwardPath, trusted: Bool, authenticated: Bool) -> String? {
        guard !trusted && !authenticated else { return nil }
        guard let mailbox = path.mailbox else { return nil }
        if mailbox.localPart.contains(where: { $0 == "%" || $0 == "!" || $0 == "@" }) {
            return "relay access denied: routing characters in the local part"
        }
        guard domains.contains(mailbox.domain) else {
            return "relay access denied: \(mailbox.domain) is not a relay domain"
        }
        return nil
    }

    /// RFC 5321 §3.6.2 / Postfix's wording: 554 5.7.1 `<address>: Relay access denied`.
    public static func reply(for path: ForwardPath) -> SMTPReply {
        SMTPReply(554, EnhancedStatusCode(5, 7, 1), "\(path): Relay access denied")
    }
}

