import Dispatch
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
    /// The limit (`limits:` name) of the deciding rule, when its condition is a rate limit.
    public var rateLimit: String?
    public var reason: String?
    /// `add_header` and `tag_subject` actions of enforced rules that matched, in order.
    public var headerActions: [RuleAction] = []
    /// Shadow rules that matched: what they would have done.
    public var shadowHits: [ShadowHit] = []
    /// Time spent in each filter (by `filterName`) during this stage.
    public var filterNanoseconds: [String: UInt64] = [:]
    /// A check before `data` asked to discard or quarantine the whole message: applied when
    /// the message has arrived, unless something refuses it first.
    public var messageDisposition: DeferredDisposition?
    /// At `data`: the message as the checks that edit it left it, when they changed it.
    public var editedMessage: MessageDraft?
    /// The scores of the enforced rules that matched at this stage, in order.
    public var scores: [ScoreContribution] = []
    /// The same for shadow rules.
    public var shadowScores: [ScoreContribution] = []

    public init() {}
}

/// A discard or quarantine asked for before the message arrived (a policy server's DISCARD or
/// HOLD at RCPT).
public struct DeferredDisposition: Hashable, Sendable {
    /// `discard` or `quarantine`.
    public var action: RuleAction
    public var reply: SMTPReply
    public var rule: String
    public var reason: String

    public init(action: RuleAction, reply: SMTPReply, rule: String, reason: String) {
        self.action = action
        self.reply = reply
        self.rule = rule
        self.reason = reason
    }
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
        await run(policy, stage: stage, facts: facts) { _, _ in }
    }

    /// What happened to one rule in `run`, for `PolicyExplainer`.
    enum Step {
        /// `mode: off`: never evaluated.
        case off
        case notMatched
        /// The condition matched; `decided` when this rule ended the stage (accept, reject, …).
        case matched(ConditionMatch, decided: Bool, reply: SMTPReply?)
        /// Not evaluated: `rule` decided earlier in the stage (`accept` tells which kind of decision).
        case skipped(after: String, accept: Bool)
    }

    /// The one evaluation loop: `evaluate` and `PolicyExplainer` both run it, so an
    /// explanation can never disagree with a real session. `observe` hears about every rule
    /// of the stage, in order, including the `off` ones and those after the decision.
    static func run(
        _ policy: Policy, stage: PolicyStage, facts initial: TransactionFacts, observe: (PolicyRule, Step) -> Void
    ) async -> PolicyVerdict {
        var verdict = PolicyVerdict()
        // Each matching rule's score counts for the rules after it (`score: { over: N }`).
        var facts = initial
        let rules = policy.rules(at: stage)
        for (index, rule) in rules.enumerated() {
            guard rule.mode != .off else {
                observe(rule, .off)
                continue
            }
            let started = DispatchTime.now().uptimeNanoseconds
            let result = await rule.condition.evaluate(facts)
            verdict.filterNanoseconds[rule.condition.filterName, default: 0] += DispatchTime.now().uptimeNanoseconds - started
            guard let match = result else {
                observe(rule, .notMatched)
                continue
            }
            if rule.mode == .shadow {
                if let score = rule.score {
                    facts.shadowScore += score
                    verdict.shadowScores.append(ScoreContribution(rule: rule.id, score: score))
                }
                verdict.shadowHits.append(ShadowHit(rule: rule.id, action: rule.action.name, reason: match.reason))
                observe(rule, .matched(match, decided: false, reply: nil))
                continue
            }
            if let score = rule.score, !match.isTemporaryFailure {
                facts.ruleScore += score
                verdict.scores.append(ScoreContribution(rule: rule.id, score: score))
            }
            if match.isTemporaryFailure {
                // Undecidable (a fail-closed limit store is down): 451 whatever the action.
                let reply = ReplyTemplate.undecided.render(rule: rule.id, facts: facts)
                verdict.outcome = .decided(.tempfail, reply)
                verdict.rule = rule.id
                verdict.reason = match.reason
                verdict.rateLimit = (rule.condition as? any RateLimitingCondition)?.limitName
                observe(rule, .matched(match, decided: true, reply: reply))
                for later in rules[(index + 1)...] { observe(later, later.mode == .off ? .off : .skipped(after: rule.id, accept: false)) }
                return verdict
            }
            switch rule.action {
            case .continue:
                observe(rule, .matched(match, decided: false, reply: nil))
                continue
            case .addHeader, .tagSubject:
                verdict.headerActions.append(rule.action)
                observe(rule, .matched(match, decided: false, reply: nil))
            case .accept:
                verdict.outcome = .accept
                verdict.rule = rule.id
                verdict.reason = match.reason
                observe(rule, .matched(match, decided: true, reply: nil))
                for later in rules[(index + 1)...] { observe(later, later.mode == .off ? .off : .skipped(after: rule.id, accept: true)) }
                return verdict
            case .reject, .tempfail, .discard, .quarantine:
                let template = rule.reply ?? ReplyTemplate.default(for: rule.action, stage: stage, isLimit: false)!
                let reply = template.render(rule: rule.id, facts: facts)
                verdict.outcome = .decided(rule.action, reply)
                verdict.rule = rule.id
                verdict.reason = match.reason
                verdict.rateLimit = (rule.condition as? any RateLimitingCondition)?.limitName
                observe(rule, .matched(match, decided: true, reply: reply))
                for later in rules[(index + 1)...] { observe(later, later.mode == .off ? .off : .skipped(after: rule.id, accept: false)) }
                return verdict
            }
        }
        return verdict
    }
}

extension ReplyTemplate {
    /// The reply to a rule whose condition could not be decided (``ConditionMatch/isTemporaryFailure``).
    public static let undecided = ReplyTemplate(code: 451, enhanced: EnhancedStatusCode(4, 7, 1),
                                                text: "Rate limit store unavailable, try again later (ref {id})")
}

/// One rule's part of the running score.
public struct ScoreContribution: Sendable, Hashable {
    public var rule: String
    public var score: Double

    public init(rule: String, score: Double) {
        self.rule = rule
        self.score = score
    }
}

extension Double {
    /// A score as people write it: `3`, `-0.5`, `6.5`.
    public var scoreText: String {
        self == rounded() && Swift.abs(self) < 1e15 ? String(Int64(self)) : String(self)
    }
}
