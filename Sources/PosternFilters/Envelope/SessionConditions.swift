import Foundation
import PosternNative
import PosternPolicy
import SMTPCore
import Yams

/// `helo`: the EHLO/HELO argument.
///     helo: mail.example.org                 # equals (case-insensitive)
///     helo: { equals: localhost }
///     helo: { is_ip_literal: true }          # [192.0.2.1] — a host hiding its name
///     helo: { is_fqdn: false }               # "localhost", "PC-123": no dot, or an IP literal
/// HELO rules run when the client says MAIL (like Postfix's smtpd_delay_reject), so the
/// refusal reaches clients that ignore a rejected HELO.
struct HeloCondition: PolicyCondition {
    enum Check: Sendable {
        case equals(String)
        case regex(PCRERegex, String)
        case isIPLiteral(Bool)
        case isFQDN(Bool)
    }

    let check: Check

    var earliestStage: PolicyStage { .helo }
    var filterName: String { "helo" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let helo = facts.helo else { return nil }
        let isLiteral = helo.hasPrefix("[") && helo.hasSuffix("]")
        switch check {
        case .equals(let wanted):
            return helo.lowercased().trimmingTrailingDot() == wanted ? ConditionMatch("helo \(helo)") : nil
        case .regex(let regex, let pattern):
            return regex.matchesSafely(helo) ? ConditionMatch("helo \(helo) matches \(pattern)") : nil
        case .isIPLiteral(let expected):
            return isLiteral == expected ? ConditionMatch(expected ? "helo \(helo) is an IP literal" : "helo \(helo) is not an IP literal") : nil
        case .isFQDN(let expected):
            let name = helo.trimmingTrailingDot()
            let fqdn = !isLiteral && name.contains(".") && !name.hasPrefix(".") && IPAddress(name) == nil
                && name.split(separator: ".").allSatisfy { !$0.isEmpty }
            return fqdn == expected ? ConditionMatch(expected ? "helo \(helo) is a domain name" : "helo \(helo) is not a fully qualified domain name") : nil
        }
    }

    static let make: ConditionFactory = { value, context in
        if case .scalar = value {
            guard let text = context.reader.string(value, "helo") else { return nil }
            return HeloCondition(check: .equals(text.lowercased().trimmingTrailingDot()))
        }
        let entries = context.reader.mapping(value, "helo", keys: ["equals", "regex", "is_ip_literal", "is_fqdn"])
        guard entries.count == 1, let (key, node) = entries.first else {
            context.reader.fail(value, "helo takes exactly one of equals:, regex:, is_ip_literal:, is_fqdn:")
            return nil
        }
        switch key {
        case "equals":
            return context.reader.string(node, "equals").map { HeloCondition(check: .equals($0.lowercased().trimmingTrailingDot())) }
        case "regex":
            return context.envelopePattern(node, "helo.regex").map { HeloCondition(check: .regex($0, node.scalar?.string ?? "")) }
        case "is_ip_literal":
            return context.reader.bool(node, "is_ip_literal").map { HeloCondition(check: .isIPLiteral($0)) }
        default:
            return context.reader.bool(node, "is_fqdn").map { HeloCondition(check: .isFQDN($0)) }
        }
    }
}

/// `auth_user`: the SASL user name of an authenticated client.
///     auth_user: alice                       # exactly
///     auth_user: { in: relay_users }
///     auth_user: true                        # any authenticated client (false: none)
struct AuthUserCondition: PolicyCondition {
    enum Check: Sendable {
        case anyUser(Bool)
        case names(Set<String>, source: String?)
    }

    let check: Check

    var earliestStage: PolicyStage { .mail }
    var filterName: String { "auth_user" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        switch check {
        case .anyUser(let expected):
            return (facts.authUser != nil) == expected ? ConditionMatch(expected ? "authenticated as \(facts.authUser!)" : "not authenticated") : nil
        case .names(let names, let source):
            guard let user = facts.authUser, names.contains(user) else { return nil }
            return ConditionMatch("authenticated as \(user)" + (source.map { " (list \($0))" } ?? ""))
        }
    }

    static let make: ConditionFactory = { value, context in
        if let flag = value.bool, value.tag.rawValue == Tag.Name.bool.rawValue {
            return AuthUserCondition(check: .anyUser(flag))
        }
        switch value {
        case .scalar:
            return context.reader.string(value, "auth_user").map { AuthUserCondition(check: .names([$0], source: nil)) }
        case .sequence(let sequence):
            return AuthUserCondition(check: .names(Set(sequence.compactMap { context.reader.string($0, "a user name") }), source: nil))
        default:
            let entries = context.reader.mapping(value, "auth_user", keys: ["in"])
            guard let node = entries["in"], let list = context.list(node) else {
                if entries["in"] == nil { context.reader.fail(value, "auth_user takes a name, a list of names, true/false or { in: LIST }") }
                return nil
            }
            return AuthUserCondition(check: .names(Set(list.entries), source: list.name))
        }
    }
}

/// `tls: true|false`: whether the session is under STARTTLS.
struct TLSCondition: PolicyCondition {
    let expected: Bool

    var earliestStage: PolicyStage { .helo }
    var filterName: String { "tls" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        facts.tls == expected ? ConditionMatch(expected ? "session uses TLS" : "session without TLS") : nil
    }

    static let make: ConditionFactory = { value, context in
        context.reader.bool(value, "tls").map { TLSCondition(expected: $0) }
    }
}

/// `size: { over: 10MB }`: the declared SIZE at `mail`, the received size at `data`.
struct SizeCondition: PolicyCondition {
    let limit: Int

    var earliestStage: PolicyStage { .mail }
    var filterName: String { "size" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let size = facts.size, size > limit else { return nil }
        return ConditionMatch("size \(size) over \(limit)")
    }

    static let make: ConditionFactory = { value, context in
        let entries = context.reader.mapping(value, "size", keys: ["over"])
        guard let node = entries["over"] else {
            context.reader.fail(value, "size takes { over: SIZE }, e.g. { over: 10MB }")
            return nil
        }
        return context.reader.size(node, "size.over").map { SizeCondition(limit: $0) }
    }
}
