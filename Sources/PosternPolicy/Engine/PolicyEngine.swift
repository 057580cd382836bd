import SMTPCore

/// What the policy decided at one stage.
public struct PolicyVerdict: Sendable {
    public enum Outcome: Sendable, Equatable {
        /// No decisive rule matched: go on.
        case pass
        /// An `accept` rule matched: relay, and skip the remaining rules of this and later stages.
        case accept
        /// `reject`, `tempfail`, `discard` or `quarantine`, with the reply the client gets.
        case decided(RuleAction, SMTPReply)
    }

    public var outcome: Outcome = .pass
    /// The rule that decided.
    public var rule: String?
    public var reason: String?
    /// `add_header` and `tag_subject` actions of enforced rules that matched, in order.
    public var headerActions: [RuleAction] = []
    /// Shadow rules that matched: what they would have done.
    public var shadowHits: [ShadowHit] = []

    public init() {}
}

/// A shadow rule that matched ("would have rejected").
public struct ShadowHit: Hashable, Sendable {
    public var rule: String
    public var action: String
    public var reason: String
}

/// Runs a stage's rules in order: the first decisive enforced rule decides; shadow rules are
/// recorded and never change the outcome; header actions accumulate.
public enum PolicyEngine {
    public static func evaluate(_ policy: Policy, stage: PolicyStage, facts: TransactionFacts) async -> PolicyVerdict {
        var verdict = PolicyVerdict()
        for rule in policy.rules(for: stage) {
            guard let match = await rule.condition.evaluate(facts) else { continue }
            if rule.mode == .shadow {
                verdict.shadowHits.append(ShadowHit(rule: rule.id, action: rule.action.name, reason: match.reason))
                continue
            }
            switch rule.action {
            case .continue:
                continue
            case .addHeader, .tagSubject:
                verdict.headerActions.append(rule.action)
            case .accept:
                verdict.outcome = .accept
                verdict.rule = rule.id
                verdict.reason = match.reason
                return verdict
            case .reject, .tempfail, .discard, .quarantine:
                let template = rule.reply ?? ReplyTemplate.default(for: rule.action, stage: stage, isLimit: false)!
                verdict.outcome = .decided(rule.action, template.render(rule: rule.id, facts: facts))
                verdict.rule = rule.id
                verdict.reason = match.reason
                return verdict
            }
        }
        return verdict
    }
}
