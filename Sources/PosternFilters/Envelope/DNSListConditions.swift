import PosternPolicy
import SMTPCore
import Yams

/// `dnsbl`: what one of the policy's DNS lists (`dnsbl:`) said: about the client (asked when
/// it connected, or by the mail stage with `dnsbl_wait: mail`), its HELO name (from the helo
/// stage) or its sender's domain (from the mail stage). Needs `dns:` in the configuration.
///     dnsbl: spamhaus                                   # listed (with a code the list counts)
///     dnsbl: { name: spamhaus, returns: [127.0.0.4-7] } # listed with one of these codes
///     dnsbl: { name: spamhaus, error: true }            # the lookup failed (timeout, SERVFAIL, a refusal code)
struct DNSListCondition: PolicyCondition {
    let list: String
    let returns: [DNSList.Returns]
    let error: Bool
    let earliestStage: PolicyStage
    var filterName: String { "dnsbl" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let result = facts.dnsLists.first(where: { $0.list == list }) else { return nil }
        if error {
            guard case .error(let detail) = result.outcome else { return nil }
            return ConditionMatch("DNS list \(list) failed: \(detail)")
        }
        let codes = returns.isEmpty ? result.codes : result.codes.filter { code in returns.contains { $0.contains(code) } }
        guard let code = codes.first else { return nil }
        return ConditionMatch("listed in \(list) (\(DNSList.Returns(low: code, high: code)))")
    }

    static let make: ConditionFactory = { value, context in
        func known(_ node: Node, _ name: String) -> PolicyStage? {
            guard let list = context.dnsLists.first(where: { $0.name == name }) else {
                let names = context.dnsLists.map(\.name)
                context.reader.fail(node, "unknown DNS list '\(name)'" + (names.isEmpty ? " (no dnsbl: lists are defined)" : " (defined: \(names.joined(separator: ", ")))"))
                return nil
            }
            return list.lookup == .client ? context.dnsListWait.stage : list.lookup.stage
        }
        if case .scalar = value {
            guard let name = context.reader.string(value, "dnsbl"), let stage = known(value, name) else { return nil }
            return DNSListCondition(list: name, returns: [], error: false, earliestStage: stage)
        }
        let entries = context.reader.mapping(value, "dnsbl", keys: ["name", "returns", "error"])
        guard let nameNode = entries["name"], let name = context.reader.string(nameNode, "name") else {
            context.reader.fail(value, "dnsbl needs the list's name: dnsbl: NAME or { name: NAME, returns: [...] }")
            return nil
        }
        guard let stage = known(nameNode, name) else { return nil }
        var returns: [DNSList.Returns] = []
        if let returnsNode = entries["returns"] {
            for item in context.reader.sequence(returnsNode, "returns") {
                guard let text = context.reader.string(item, "a return code") else { continue }
                if let range = DNSList.Returns.parse(text) { returns.append(range) } else {
                    context.reader.fail(item, "return code '\(text)' is not 127.X.Y.Z, 127.X.Y.Z-N or 127.X.Y.Z/BITS")
                }
            }
        }
        let error = entries["error"].flatMap { context.reader.bool($0, "error") } ?? false
        if error, !returns.isEmpty { context.reader.fail(value, "dnsbl: error: true and returns: cannot be combined") }
        return DNSListCondition(list: name, returns: returns, error: error, earliestStage: stage)
    }
}

/// `dnsbl_score: { over: N }`: the sum of the weights of the DNS lists that list the client,
/// its HELO name or its sender's domain (allow lists count negatively), as postscreen's
/// `postscreen_dnsbl_threshold`; at a stage, the lists answered by then.
struct DNSListScoreCondition: PolicyCondition {
    let over: Double
    let earliestStage: PolicyStage
    var filterName: String { "dnsbl_score" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        let score = facts.dnsListScore
        guard score > over else { return nil }
        let contributions = facts.dnsLists.filter(\.isListed).map { "\($0.list) \($0.weight.scoreText)" }
        return ConditionMatch("DNS list score \(score.scoreText) over \(over.scoreText) (\(contributions.joined(separator: ", ")))")
    }

    static let make: ConditionFactory = { value, context in
        let entries = context.reader.mapping(value, "dnsbl_score", keys: ["over"])
        guard let node = entries["over"], let text = node.scalar?.string, let over = Double(text) else {
            context.reader.fail(value, "dnsbl_score needs { over: NUMBER }")
            return nil
        }
        if context.dnsLists.isEmpty { context.reader.fail(value, "dnsbl_score without dnsbl: lists can never match") }
        // The earliest stage at which some list has answered.
        let stages = context.dnsLists.map { $0.lookup == .client ? context.dnsListWait.stage : $0.lookup.stage }
        return DNSListScoreCondition(over: over, earliestStage: stages.min() ?? .connect)
    }
}
