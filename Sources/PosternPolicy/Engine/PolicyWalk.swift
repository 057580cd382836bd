import SMTPCore

/// The policy across the stages of one session: which stage's rules run when, and what an
/// `accept` or a refusal at one stage means for the later ones. The session machine and
/// `postern explain` both drive it, so the two cannot disagree.
///
/// - Connect rules run once, when the client connects; a refusal there refuses the session.
/// - HELO rules run at MAIL, once per HELO name (the first MAIL after each EHLO/HELO), before
///   the mail rules; a refusal there or at mail refuses the transaction.
/// - An `accept` at connect or helo ends policy for the session; at mail or rcpt, for the
///   transaction.
/// - Relay control is the fixed first step at RCPT: a recipient it refuses is never shown to
///   the rules. A refusal at rcpt refuses that recipient only; the others go on.
/// - Shadow hits at connect and helo belong to the session (`sessionShadow`): each
///   transaction's record carries them.
///
/// Use: `begin(point)` returns a step; while it is `.evaluate(stage)`, run that stage's checks
/// and rules and hand the verdict to `evaluated(_:)`, which returns the next step.
public struct PolicyWalk: Sendable {
    /// Where in the session a decision is due.
    public enum Point: Sendable, Equatable {
        case connect
        /// MAIL, after the client's HELO/EHLO `helo` (nil: none given, explain only).
        case mail(helo: String?)
        case rcpt(ForwardPath, authenticated: Bool)
        case data
    }

    public enum Step: Sendable, Equatable {
        /// Run this stage's checks and rules, then call `evaluated(_:)`.
        case evaluate(PolicyStage)
        /// Nothing (more) decides this point: go on.
        case proceed
        /// The point is decided: refused (reject, tempfail) or, at data, discarded or quarantined.
        case decided(PolicyDecision)
    }

    public let policy: Policy
    public let relayControl: RelayControl
    /// The client is in `trusted_networks` (judged after any PROXY header).
    public let clientTrusted: Bool
    /// Stages at which something runs (an active rule, or a check of the pipeline).
    private let evaluatedStages: Set<PolicyStage>

    /// The `accept` at connect or helo that ended policy for the session.
    public private(set) var sessionAccept: (stage: PolicyStage, rule: String, reason: String?)?
    /// The `accept` at mail or rcpt that ended policy for the transaction.
    public private(set) var transactionAccept: (stage: PolicyStage, rule: String)?
    /// The refusal at connect, helo or mail that ended the session or the transaction.
    public private(set) var refusal: PolicyDecision?
    /// Shadow hits at connect and helo, for every transaction's record.
    public private(set) var sessionShadow: [ShadowHit] = []
    /// The HELO name whose helo rules have run (`.some(nil)`: none given).
    private var heloChecked: String??
    /// The stages still to evaluate for the point in progress.
    private var pending: [PolicyStage] = []
    private var current: PolicyStage?

    /// `checkedStages`: stages where a check of the pipeline runs besides the rules.
    public init(policy: Policy, relayControl: RelayControl, clientTrusted: Bool, checkedStages: Set<PolicyStage> = []) {
        self.policy = policy
        self.relayControl = relayControl
        self.clientTrusted = clientTrusted
        self.evaluatedStages = checkedStages.union(PolicyStage.allCases.filter { policy.hasActiveRules(at: $0) })
    }

    /// Starts deciding `point`.
    public mutating func begin(_ point: Point) -> Step {
        pending = []
        current = nil
        switch point {
        case .connect:
            pending = [.connect]
        case .mail(let helo):
            // A new transaction: an earlier one's accept or refusal is over.
            transactionAccept = nil
            if let refusal, refusal.stage != .connect { self.refusal = nil }
            if helo != nil && heloChecked != .some(helo) {
                heloChecked = .some(helo)
                pending.append(.helo)
            }
            pending.append(.mail)
        case .rcpt(let path, let authenticated):
            if let denial = relayControl.refusal(for: path, trusted: clientTrusted, authenticated: authenticated) {
                return .decided(PolicyDecision(
                    stage: .rcpt, action: .reject, reply: RelayControl.reply(for: path), rule: nil, reason: denial,
                    byRelayControl: true))
            }
            pending = [.rcpt]
        case .data:
            pending = [.data]
        }
        return next()
    }

    /// The verdict of the stage that `.evaluate` asked for.
    public mutating func evaluated(_ verdict: PolicyVerdict) -> Step {
        guard let stage = current else { preconditionFailure("evaluated(_:) without a stage being evaluated") }
        current = nil
        if stage <= .helo { sessionShadow += verdict.shadowHits }
        switch verdict.outcome {
        case .pass:
            return next()
        case .accept:
            let rule = verdict.rule ?? "?"
            if stage <= .helo {
                sessionAccept = (stage, rule, verdict.reason)
            } else {
                transactionAccept = (stage, rule)
            }
            return next()
        case .decided(let action, let reply):
            pending = []
            let decision = PolicyDecision(stage: stage, action: action, reply: reply, rule: verdict.rule, reason: verdict.reason,
                                          byRelayControl: false)
            if stage <= .mail { refusal = decision }
            return .decided(decision)
        }
    }

    /// Why `stage` is not evaluated now, or nil when it would be: an accept or a refusal
    /// earlier in the session (for `postern explain`).
    public func skipReason(_ stage: PolicyStage) -> String? {
        if let sessionAccept { return PolicyExplainer.acceptEnded(at: sessionAccept.stage) }
        if let refusal { return PolicyExplainer.earlierRuleDecided(refusal.rule ?? "?") }
        if let transactionAccept, stage >= .mail { return PolicyExplainer.acceptEnded(at: transactionAccept.stage) }
        return nil
    }

    private mutating func next() -> Step {
        while !pending.isEmpty {
            let stage = pending.removeFirst()
            guard sessionAccept == nil, !(transactionAccept != nil && stage >= .mail), evaluatedStages.contains(stage) else { continue }
            current = stage
            return .evaluate(stage)
        }
        return .proceed
    }
}

/// A point the policy (or relay control) decided.
public struct PolicyDecision: Sendable, Equatable {
    public var stage: PolicyStage
    /// `reject` or `tempfail`; at data also `discard` or `quarantine`. Relay control: `reject`.
    public var action: RuleAction
    /// What the client gets (for discard and quarantine, a 2xx).
    public var reply: SMTPReply
    /// The deciding rule; nil for relay control.
    public var rule: String?
    public var reason: String?
    /// Relay control refused the recipient, before any rule ran.
    public var byRelayControl: Bool

    public init(stage: PolicyStage, action: RuleAction, reply: SMTPReply, rule: String?, reason: String?, byRelayControl: Bool) {
        self.stage = stage
        self.action = action
        self.reply = reply
        self.rule = rule
        self.reason = reason
        self.byRelayControl = byRelayControl
    }
}
