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
                if let canonical = Self.canonical(String(entry.dropFirst())) { parents.append("." + canonical) }
            } else if let canonical = Self.canonical(entry) {
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
        return canonical(name) != nil
    }

    /// Whether mail for `domain` (a recipient's domain as parsed) is accepted from anyone.
    public func contains(_ domain: String) -> Bool {
        guard let canonical = Self.canonical(domain) else { return false }
        if exact.contains(canonical) { return true }
        guard !canonical.hasPrefix("[") else { return false }
        return parents.contains { canonical.hasSuffix($0) }
    }

    /// The comparable form of a domain: lower case, each non-ASCII label as its A-label.
    /// Nil for what is not a domain name: empty labels (including a trailing dot), labels
    /// over 63 octets, names over 253. Address literals are lower-cased as they are.
    static func canonical(_ domain: String) -> String? {
        if domain.hasPrefix("[") { return domain.lowercased() }
        guard !domain.isEmpty else { return nil }
        var labels: [String] = []
        for label in domain.lowercased().split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty else { return nil }
            if label.utf8.allSatisfy({ $0 < 0x80 }) {
                guard !label.contains(where: { $0 == " " || $0 == "@" }) else { return nil }
                labels.append(String(label))
            } else {
                guard let encoded = Punycode.encode(String(label)) else { return nil }
                labels.append("xn--" + encoded)
            }
            guard labels.last!.utf8.count <= 63 else { return nil }
        }
        let name = labels.joined(separator: ".")
        return name.utf8.count <= 253 ? name : nil
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

/// Punycode (RFC 3492 §6.3): the ASCII form of one Unicode label, without the `xn--` prefix.
enum Punycode {
    private static let base = 36, tMin = 1, tMax = 26, skew = 38, damp = 700
    private static let initialBias = 72, initialN = 128

    static func encode(_ label: String) -> String? {
        let input = label.unicodeScalars.map { Int($0.value) }
        var output = input.filter { $0 < 0x80 }.map { Character(Unicode.Scalar(UInt8($0))) }
        let basicCount = output.count
        var handled = basicCount
        if basicCount > 0 { output.append("-") }
        var n = initialN, delta = 0, bias = initialBias
        while handled < input.count {
            guard let next = input.filter({ $0 >= n }).min() else { return nil }
            let (step, overflow) = (next - n).multipliedReportingOverflow(by: handled + 1)
            guard !overflow, delta <= Int(Int32.max) - step else { return nil }
            delta += step
            n = next
            for scalar in input {
                if scalar < n { delta += 1 }
                guard scalar == n else { continue }
                var q = delta
                var k = base
                while true {
                    let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                    if q < t { break }
                    output.append(digit(t + (q - t) % (base - t)))
                    q = (q - t) / (base - t)
                    k += base
                }
                output.append(digit(q))
                bias = adapt(delta, handled + 1, first: handled == basicCount)
                delta = 0
                handled += 1
            }
            delta += 1
            n += 1
        }
        return String(output)
    }

    private static func digit(_ value: Int) -> Character {
        Character(Unicode.Scalar(UInt8(value < 26 ? 97 + value : 22 + value)))
    }

    private static func adapt(_ delta: Int, _ points: Int, first: Bool) -> Int {
        var delta = first ? delta / damp : delta / 2
        delta += delta / points
        var k = 0
        while delta > ((base - tMin) * tMax) / 2 {
            delta /= base - tMin
            k += base
        }
        return k + (base - tMin + 1) * delta / (delta + skew)
    }
}
