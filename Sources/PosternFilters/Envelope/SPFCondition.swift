import PosternPolicy
import Yams

/// `spf`: the result of Postern's SPF check (RFC 7208) at MAIL: the MAIL FROM identity, or
/// the HELO identity for the null sender (needs `dns:`, with `spf` on, its default).
///     spf: fail
///     spf: [fail, softfail, permerror]
/// Results: pass, fail, softfail, neutral, none, temperror, permerror. From `mail` on (the
/// check runs there; `rcpt` and `data` rules see its result too).
struct SPFCondition: PolicyCondition {
    static let results: Set<String> = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]

    let results: Set<String>

    var earliestStage: PolicyStage { .mail }
    var filterName: String { "spf" }
    var readsCheckAnswers: Bool { true }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let outcome = facts.checks["spf"] ?? facts.earlierChecks["spf"], let result = outcome.effects.result,
              results.contains(result) else { return nil }
        return ConditionMatch(outcome.detail)
    }

    static let make: ConditionFactory = { value, context in
        let words: [Node] = if case .sequence(let list) = value { Array(list) } else { [value] }
        var results = Set<String>()
        for word in words {
            guard let text = context.reader.string(word, "an SPF result") else { continue }
            if Self.results.contains(text) { results.insert(text) } else {
                context.reader.fail(word, "unknown SPF result '\(text)' (known: pass, fail, softfail, neutral, none, temperror, permerror)")
            }
        }
        return results.isEmpty ? nil : SPFCondition(results: results)
    }
}
