import PosternPolicy
import Yams

/// `score: { over: N }`: the running score — the scores of the rules that matched so far
/// (at earlier stages, and earlier in this one) plus the DNS lists' weights — is over N.
///     - { id: tag-spam, stage: data, if: { score: { over: 6 } }, then: tag_subject, tag: "[SPAM]" }
///     - { id: reject-spam, stage: data, if: { score: { over: 15 } }, then: reject }
struct ScoreCondition: PolicyCondition {
    let over: Double

    var earliestStage: PolicyStage { .connect }
    var filterName: String { "score" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        facts.score > over ? ConditionMatch("score \(facts.score.scoreText) over \(over.scoreText)") : nil
    }

    static let make: ConditionFactory = { value, context in
        let entries = context.reader.mapping(value, "score", keys: ["over"])
        guard let node = entries["over"], let text = node.scalar?.string, let over = Double(text) else {
            context.reader.fail(value, "score needs { over: NUMBER }")
            return nil
        }
        return ScoreCondition(over: over)
    }
}
