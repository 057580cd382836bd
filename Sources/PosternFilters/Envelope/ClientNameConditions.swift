import PosternNative
import PosternPolicy
import SMTPCore
import Yams

/// `client_name`: the client's host name as forward-confirmed reverse DNS verified it before
/// the greeting (needs `dns:` in the configuration). A client without a verified name (no
/// PTR, a PTR that does not lead back, a DNS error) matches nothing; see `client_name_status`.
///     client_name: mail.example.org          # equals (case-insensitive)
///     client_name: { domain: example.org }   # that name or any name under it
///     client_name: { regex: '(^|[.-])(dsl|dyn|dhcp|pool)[0-9.-]' }
struct ClientNameCondition: PolicyCondition {
    enum Check: Sendable {
        case equals(String)
        case domain(String)
        case regex(PCRERegex, String)
    }

    let check: Check

    var earliestStage: PolicyStage { .connect }
    var filterName: String { "client_name" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let name = facts.clientName?.verifiedName?.lowercased() else { return nil }
        switch check {
        case .equals(let wanted):
            return name == wanted ? ConditionMatch("client name \(name)") : nil
        case .domain(let domain):
            return name == domain || name.hasSuffix("." + domain) ? ConditionMatch("client name \(name) is in \(domain)") : nil
        case .regex(let regex, let pattern):
            return regex.matchesSafely(name) ? ConditionMatch("client name \(name) matches \(pattern)") : nil
        }
    }

    static let make: ConditionFactory = { value, context in
        if case .scalar = value {
            guard let text = context.reader.string(value, "client_name") else { return nil }
            return ClientNameCondition(check: .equals(text.lowercased().trimmingTrailingDot()))
        }
        let entries = context.reader.mapping(value, "client_name", keys: ["equals", "domain", "regex"])
        guard entries.count == 1, let (key, node) = entries.first else {
            context.reader.fail(value, "client_name takes exactly one of equals:, domain:, regex:")
            return nil
        }
        switch key {
        case "equals":
            return context.reader.string(node, "equals").map { ClientNameCondition(check: .equals($0.lowercased().trimmingTrailingDot())) }
        case "domain":
            return context.reader.string(node, "domain").map {
                ClientNameCondition(check: .domain($0.lowercased().trimmingTrailingDot().drop { $0 == "." }.description))
            }
        default:
            return context.envelopePattern(node, "client_name.regex").map { ClientNameCondition(check: .regex($0, node.scalar?.string ?? "")) }
        }
    }
}

/// `client_name_status`: what forward-confirmed reverse DNS found for the client.
///     client_name_status: [none, unverified]   # like Postfix's reject_unknown_client_hostname
///     client_name_status: tempfail
/// Statuses: verified, unverified (a PTR that does not lead back), none (no PTR), tempfail
/// (a lookup failed or timed out). Without `dns:` nothing is looked up and nothing matches.
struct ClientNameStatusCondition: PolicyCondition {
    let statuses: Set<ClientName.Status>

    var earliestStage: PolicyStage { .connect }
    var filterName: String { "client_name_status" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let name = facts.clientName, statuses.contains(name.status) else { return nil }
        return ConditionMatch("client name \(name)")
    }

    static let make: ConditionFactory = { value, context in
        let words: [Node] = if case .sequence(let list) = value { Array(list) } else { [value] }
        var statuses = Set<ClientName.Status>()
        for word in words {
            guard let text = context.reader.string(word, "a client name status") else { continue }
            if let status = ClientName.Status(rawValue: text) { statuses.insert(status) } else {
                context.reader.fail(word, "unknown client_name_status '\(text)' (known: verified, unverified, none, tempfail)")
            }
        }
        return statuses.isEmpty ? nil : ClientNameStatusCondition(statuses: statuses)
    }
}
