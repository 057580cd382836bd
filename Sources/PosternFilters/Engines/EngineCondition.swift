import PosternPolicy
import Yams

/// `milter.NAME` and `policy_service.NAME`: what an engine answered at the rule's stage.
///     milter.rspamd: reject                                  # its result (or a list)
///     milter.rspamd: { action: [add header, rewrite subject] }
///     milter.rspamd: { score: { over: 6 } }
///     milter.clamav: { header: X-Virus-Status }              # it added or changed that header
///     policy_service.postfwd: { result: [reject, tempfail], detail: "rate" }
/// Results: pass, accept, reject, tempfail, discard, quarantine, defer_if_permit,
/// defer_if_reject, timeout, error. Actions: add header, change header, delete header,
/// rewrite subject, replace body, change sender, add recipient, delete recipient. Every
/// key given must match. An engine that was not asked at the stage matches nothing.
struct EngineCondition: PolicyCondition {
    let check: String
    let results: Set<CheckOutcome.Result>?
    let actions: Set<String>?
    let header: String?
    let scoreOver: Double?
    let detail: String?

    var earliestStage: PolicyStage { .connect }
    var filterName: String { "engine" }
    var readsCheckAnswers: Bool { true }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let outcome = facts.checks[check], !outcome.shadow else { return nil }
        var reasons: [String] = []
        if let results {
            guard results.contains(outcome.result) else { return nil }
            reasons.append("\(check) said \(outcome.result.rawValue)")
        }
        if let actions {
            guard let action = outcome.effects.actions.first(where: actions.contains) else { return nil }
            reasons.append("\(check) did \(action)")
        }
        if let header {
            guard outcome.effects.headers.contains(header) else { return nil }
            reasons.append("\(check) set \(header)")
        }
        if let scoreOver {
            guard let score = outcome.effects.score, score > scoreOver else { return nil }
            reasons.append("\(check) scored \(score)")
        }
        if let detail {
            guard outcome.detail.lowercased().contains(detail) else { return nil }
            reasons.append("\(check): \(outcome.detail)")
        }
        return ConditionMatch(reasons.joined(separator: "; "))
    }

    static let actionNames: Set<String> = [
        "add header", "change header", "delete header", "rewrite subject", "replace body", "change sender", "add recipient", "delete recipient",
    ]

    /// The factory for `PREFIX.NAME`; the key arrives as a one-entry mapping.
    static func factory(prefix: String) -> ConditionFactory {
        { node, context in
            guard case .mapping(let wrapper) = node, let (key, value) = wrapper.first, let fullName = key.string else { return nil }
            let name = String(fullName.dropFirst(prefix.count))
            guard !name.isEmpty else {
                context.reader.fail(key, "\(prefix)NAME needs the engine's name, as configured (\(prefix)rspamd)")
                return nil
            }
            var results: Set<CheckOutcome.Result>?
            var actions: Set<String>?
            var header: String?
            var scoreOver: Double?
            var detail: String?
            func readResults(_ node: Node) -> Set<CheckOutcome.Result>? {
                let words: [Node] = if case .sequence(let list) = node { Array(list) } else { [node] }
                var set = Set<CheckOutcome.Result>()
                for word in words {
                    guard let text = context.reader.string(word, "a result") else { continue }
                    if let result = CheckOutcome.Result(rawValue: text) { set.insert(result) } else {
                        context.reader.fail(word, "unknown result '\(text)' (known: pass, accept, reject, tempfail, discard, quarantine, defer_if_permit, defer_if_reject, timeout, error)")
                    }
                }
                return set
            }
            if case .mapping = value {
                let entries = context.reader.mapping(value, fullName, keys: ["result", "action", "header", "score", "detail"])
                guard !entries.isEmpty else {
                    context.reader.fail(value, "\(fullName) needs result:, action:, header:, score: or detail:")
                    return nil
                }
                if let node = entries["result"] { results = readResults(node) }
                if let node = entries["action"] {
                    let words: [Node] = if case .sequence(let list) = node { Array(list) } else { [node] }
                    var set = Set<String>()
                    for word in words {
                        guard let text = context.reader.string(word, "an action") else { continue }
                        let action = text.lowercased().replacingOccurrences(of: "_", with: " ")
                        if actionNames.contains(action) { set.insert(action) } else {
                            context.reader.fail(word, "unknown action '\(text)' (known: \(actionNames.sorted().joined(separator: ", ")))")
                        }
                    }
                    actions = set
                }
                if let node = entries["header"], let text = context.reader.string(node, "header") { header = text.lowercased() }
                if let node = entries["score"] {
                    let bounds = context.reader.mapping(node, "score", keys: ["over"])
                    if let over = bounds["over"] {
                        if let number = over.float { scoreOver = number } else { context.reader.fail(over, "score.over must be a number") }
                    } else {
                        context.reader.fail(node, "score needs over: (score: { over: 6 })")
                    }
                }
                if let node = entries["detail"], let text = context.reader.string(node, "detail") { detail = text.lowercased() }
            } else {
                results = readResults(value)
            }
            return EngineCondition(check: name, results: results, actions: actions, header: header, scoreOver: scoreOver, detail: detail)
        }
    }
}
