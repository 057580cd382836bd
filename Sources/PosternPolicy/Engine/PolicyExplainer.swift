import SMTPCore

/// What happened to one rule when a stage was evaluated (`postern explain`).
public struct RuleExplanation: Hashable, Sendable {
    public enum Outcome: Hashable, Sendable {
        /// The condition matched, with the condition's reason.
        case matched(String)
        case notMatched
        /// Not evaluated, and why: "mode off", "an earlier rule decided (RULE)",
        /// "an accept at STAGE ended evaluation", or what the caller gave (`skipped(_:stage:why:)`).
        case skipped(String)
    }

    public var rule: String
    public var stage: PolicyStage
    public var mode: RuleMode
    public var action: RuleAction
    public var outcome: Outcome
    /// True for the one rule that ended the stage (an enforced accept, reject, tempfail,
    /// discard or quarantine that matched).
    public var decided: Bool
    /// The reply the client gets, for a deciding reject, tempfail, discard or quarantine.
    public var reply: SMTPReply?

    public init(rule: String, stage: PolicyStage, mode: RuleMode, action: RuleAction, outcome: Outcome, decided: Bool = false, reply: SMTPReply? = nil) {
        self.rule = rule
        self.stage = stage
        self.mode = mode
        self.action = action
        self.outcome = outcome
        self.decided = decided
        self.reply = reply
    }

    /// `accept`, `reject`, `add_header`, …
    public var actionName: String { action.name }

    public var matched: Bool { if case .matched = outcome { return true } else { return false } }
}

/// A stage's verdict (exactly `PolicyEngine.evaluate`'s) with every rule's explanation.
public struct StageExplanation: Sendable {
    public var stage: PolicyStage
    public var verdict: PolicyVerdict
    public var rules: [RuleExplanation]
}

/// Explains a stage's evaluation rule by rule. It runs the engine's own loop, so it agrees
/// with `PolicyEngine.evaluate` by construction: same order, the first decisive enforced rule
/// wins, shadow rules are recorded but never decide, header actions accumulate.
public enum PolicyExplainer {
    public static func explain(_ policy: Policy, stage: PolicyStage, facts: TransactionFacts) async -> [RuleExplanation] {
        await explainStage(policy, stage: stage, facts: facts).rules
    }

    /// The verdict and the explanation of every rule of `stage`, in policy order.
    public static func explainStage(_ policy: Policy, stage: PolicyStage, facts: TransactionFacts) async -> StageExplanation {
        var explanations: [RuleExplanation] = []
        let verdict = await PolicyEngine.run(policy, stage: stage, facts: facts) { rule, step in
            var explanation = RuleExplanation(rule: rule.id, stage: rule.stage, mode: rule.mode, action: rule.action, outcome: .notMatched)
            switch step {
            case .off:
                explanation.outcome = .skipped(modeOff)
            case .notMatched:
                break
            case .matched(let match, let decided, let reply):
                explanation.outcome = .matched(match.reason)
                explanation.decided = decided
                explanation.reply = reply
            case .skipped(let after, let accept):
                explanation.outcome = .skipped(accept ? acceptEnded(at: stage) : earlierRuleDecided(after))
            }
            explanations.append(explanation)
        }
        return StageExplanation(stage: stage, verdict: verdict, rules: explanations)
    }

    /// Every rule of `stage` as skipped for `why` (the stage did not run); `off` rules say "mode off".
    public static func skipped(_ policy: Policy, stage: PolicyStage, why: String) -> [RuleExplanation] {
        policy.rules(at: stage).map { rule in
            RuleExplanation(rule: rule.id, stage: stage, mode: rule.mode, action: rule.action,
                            outcome: .skipped(rule.mode == .off ? modeOff : why))
        }
    }

    public static let modeOff = "mode off"

    public static func earlierRuleDecided(_ rule: String) -> String { "an earlier rule decided (\(rule))" }

    public static func acceptEnded(at stage: PolicyStage) -> String { "an accept at \(stage.rawValue) ended evaluation" }
}
