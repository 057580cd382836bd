import Foundation
import PosternNative
import PosternPolicy
import SMTPCore
import Yams

/// `sender` and `recipient`: exact addresses, domains (with subdomains by `*.`), wildcards,
/// lists, and the null sender. Domains compare in their canonical form, as relay control's
/// `relay_domains` does (`DomainName.canonical`: lower case, non-ASCII labels as Punycode
/// A-labels), so `bücher.example` and `xn--bcher-kva.example` are one domain, in a pattern
/// and in an address alike; local parts compare case-insensitively, as mail administrators
/// expect from access maps.
///     sender: "<>"                               # the null sender (bounces)
///     sender: alice@example.org
///     sender: "*@*.example"                      # wildcard: * matches any run of characters
///     sender: { domain: example.org }            # exactly that domain
///     sender: { domain: "*.example.org" }        # any subdomain
///     sender: { in: blocked_senders }            # a list of any of the above forms
///     recipient: { equals: postmaster@example.org, strip_tag: true }   # bob+news@ → bob@
struct AddressCondition: PolicyCondition {
    enum Role: String, Sendable { case sender, recipient }

    /// One way an address can match.
    enum Pattern: Sendable {
        case nullSender
        case exact(String)
        case domain(String)
        case subdomainsOf(String)
        case wildcard([Substring])
        case regex(PCRERegex)

        init?(_ text: String) {
            let lowered = text.lowercased()
            if lowered == "<>" { self = .nullSender; return }
            // RFC 5321 §4.1.1.3: the bare <Postmaster> recipient.
            if lowered == "postmaster" || lowered == "<postmaster>" { self = .exact("postmaster"); return }
            if lowered.hasPrefix("@") { self.init(domain: String(lowered.dropFirst())); return }
            if lowered.contains("*") {
                self = .wildcard(AddressCondition.comparableWildcard(lowered).split(separator: "*", omittingEmptySubsequences: false))
                return
            }
            guard let at = lowered.lastIndex(of: "@"), !lowered.hasPrefix("<") else { return nil }
            self = .exact(String(lowered[..<at]) + "@" + AddressCondition.comparable(domain: String(lowered[lowered.index(after: at)...])))
        }

        init?(domain text: String) {
            let lowered = text.lowercased().trimmingTrailingDot()
            guard !lowered.isEmpty, !lowered.contains("@") else { return nil }
            if lowered.hasPrefix("*.") {
                self = .subdomainsOf(AddressCondition.comparable(domain: String(lowered.dropFirst(2))))
            } else {
                self = .domain(AddressCondition.comparable(domain: lowered))
            }
        }

        func matches(_ address: String?, domain: String?) -> Bool {
            switch self {
            case .nullSender: return address == nil
            case .exact(let wanted): return address == wanted
            case .domain(let wanted): return domain == wanted
            case .subdomainsOf(let parent): return domain.map { $0.hasSuffix("." + parent) } ?? false
            case .wildcard(let pieces): return address.map { Self.glob(pieces, $0) } ?? false
            case .regex(let regex): return regex.matchesSafely(address ?? "<>")
            }
        }

        /// `*` matches any run of characters.
        static func glob(_ pieces: [Substring], _ text: String) -> Bool {
            var rest = Substring(text)
            for (index, piece) in pieces.enumerated() {
                if index == 0 {
                    guard rest.hasPrefix(piece) else { return false }
                    rest = rest.dropFirst(piece.count)
                } else if index == pieces.count - 1 {
                    return piece.isEmpty || rest.hasSuffix(piece)
                } else if !piece.isEmpty {
                    guard let range = rest.range(of: piece) else { return false }
                    rest = rest[range.upperBound...]
                }
            }
            return rest.isEmpty
        }
    }

    let role: Role
    let patterns: [(pattern: Pattern, text: String)]
    let stripTag: Bool
    let source: String?

    var earliestStage: PolicyStage { role == .sender ? .mail : .rcpt }
    var filterName: String { role.rawValue }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        let mailbox: Mailbox?
        switch role {
        case .sender:
            guard let sender = facts.sender else { return nil }
            mailbox = sender.mailbox
        case .recipient:
            guard let recipient = facts.recipient else { return nil }
            mailbox = recipient.mailbox ?? Mailbox(localPart: "postmaster", domain: "")
        }
        let (address, domain) = Self.normalise(mailbox, stripTag: stripTag)
        guard let hit = patterns.first(where: { $0.pattern.matches(address, domain: domain) }) else { return nil }
        return ConditionMatch("\(role.rawValue) \(address ?? "<>") matches \(hit.text)" + (source.map { " (list \($0))" } ?? ""))
    }

    /// `local@domain` with the local part lower-cased (`+tag` removed when asked) and the
    /// domain in its comparable form, and that domain.
    static func normalise(_ mailbox: Mailbox?, stripTag: Bool) -> (String?, String?) {
        guard let mailbox else { return (nil, nil) }
        var local = mailbox.localPart.lowercased()
        if stripTag, !local.hasPrefix("\""), let plus = local.firstIndex(of: "+"), plus != local.startIndex {
            local = String(local[..<plus])
        }
        let domain = comparable(domain: mailbox.domain)
        return (domain.isEmpty ? local : "\(local)@\(domain)", domain)
    }

    /// A domain as addresses and patterns compare it: without a trailing dot, in
    /// `DomainName.canonical` form (lower case, A-labels). What is not a domain name there
    /// (an over-long label, an empty one) is compared lower-cased as written.
    static func comparable(domain: String) -> String {
        let trimmed = domain.trimmingTrailingDot()
        // ASCII: canonical is exactly the lower-cased text (or nil, and then the same).
        if trimmed.utf8.allSatisfy({ $0 < 0x80 }) { return trimmed.lowercased() }
        return DomainName.canonical(trimmed) ?? trimmed.lowercased()
    }

    /// A wildcard pattern with the labels of its domain part that hold no `*` in comparable
    /// form (`*@*.bücher.example` → `*@*.xn--bcher-kva.example`). A label with both a `*`
    /// and non-ASCII characters stays as written, and so matches no canonical domain.
    static func comparableWildcard(_ pattern: String) -> String {
        guard let at = pattern.lastIndex(of: "@") else { return pattern }
        let labels = pattern[pattern.index(after: at)...].split(separator: ".", omittingEmptySubsequences: false).map { label in
            label.contains("*") || label.isEmpty ? String(label) : comparable(domain: String(label))
        }
        return String(pattern[...at]) + labels.joined(separator: ".")
    }

    static let makeSender: ConditionFactory = { value, context in make(.sender, value, &context) }
    static let makeRecipient: ConditionFactory = { value, context in make(.recipient, value, &context) }

    private static func make(_ role: Role, _ value: Node, _ context: inout ConditionCompileContext) -> (any PolicyCondition)? {
        let what = role.rawValue
        var patterns: [(Pattern, String)] = []
        var stripTag = false
        var source: String?
        func add(_ text: String, at node: Node, domainOnly: Bool = false) {
            guard let pattern = domainOnly ? Pattern(domain: text) : Pattern(text) else {
                context.reader.fail(node, "'\(text)' is not an address, @domain, wildcard or \"<>\"" + (source.map { " (in list \($0))" } ?? ""))
                return
            }
            if case .nullSender = pattern, role == .recipient {
                context.reader.fail(node, "\"<>\" is the null sender; a recipient cannot be null")
                return
            }
            patterns.append((pattern, text))
        }
        switch value {
        case .scalar:
            if let text = context.reader.string(value, what) { add(text, at: value) }
        case .sequence(let sequence):
            for node in sequence { if let text = context.reader.string(node, "an address") { add(text, at: node) } }
        case .mapping:
            let entries = context.reader.mapping(value, what, keys: ["equals", "domain", "wildcard", "regex", "in", "strip_tag"])
            if let node = entries["regex"], let regex = context.envelopePattern(node, "\(what).regex") {
                patterns.append((.regex(regex), "regex \(node.scalar?.string ?? "")"))
            }
            if let node = entries["strip_tag"], let flag = context.reader.bool(node, "strip_tag") { stripTag = flag }
            if let node = entries["equals"], let text = context.reader.string(node, "equals") { add(text, at: node) }
            if let node = entries["wildcard"], let text = context.reader.string(node, "wildcard") { add(text, at: node) }
            if let node = entries["domain"] {
                let nodes: [Node] = { if case .sequence(let list) = node { return Array(list) } else { return [node] } }()
                for entry in nodes { if let text = context.reader.string(entry, "domain") { add(text, at: entry, domainOnly: true) } }
            }
            if let node = entries["in"], let list = context.list(node) {
                source = list.name
                for entry in list.entries { add(entry, at: node) }
            }
            if entries["equals"] == nil && entries["wildcard"] == nil && entries["domain"] == nil && entries["in"] == nil && entries["regex"] == nil {
                context.reader.fail(value, "\(what) needs equals:, domain:, wildcard:, regex: or in:")
                return nil
            }
        default:
            context.reader.fail(value, "\(what) takes an address, a list of addresses, or a mapping")
            return nil
        }
        return AddressCondition(role: role, patterns: patterns, stripTag: stripTag, source: source)
    }
}

extension String {
    func trimmingTrailingDot() -> String {
        hasSuffix(".") ? String(dropLast()) : self
    }
}
