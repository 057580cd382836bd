import Dispatch
import SMTPCore
import Synchronization

/// A detector in the filter pipeline besides the policy's own conditions: a DNS list, an
/// external engine over a socket. It runs at the stages it names, concurrently with the other
/// checks of the stage and within its own timeout. What it finds is handed to the rules
/// (`TransactionFacts.checks`); it decides by itself only when it says so (`reject`,
/// `tempfail`) and no rule decided.
public protocol StageCheck: Sendable {
    /// The check's name in decision records, metrics and rules.
    var name: String { get }
    var stages: Set<PolicyStage> { get }
    /// How long one evaluation may take; past it the check has failed (`failureMode`).
    var timeout: Duration { get }
    var failureMode: CheckFailureMode { get }
    /// The reply when a failure tempfails; nil for the generic `ReplyTemplate.checkFailed`.
    var failureReply: SMTPReply? { get }
    /// The `rule` of a decision this check makes: `check:NAME` unless it says otherwise.
    var ruleName: String { get }
    /// `mode: shadow`: the check is asked and what it would have done is recorded, but it
    /// decides nothing and changes nothing.
    var isShadow: Bool { get }
    /// Evaluates `facts` at `stage`; a thrown error is a failure (`failureMode`). A
    /// ``CheckError`` names its kind for the metrics.
    func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding
}

extension StageCheck {
    public var failureReply: SMTPReply? { nil }
    public var ruleName: String { "check:\(name)" }
    public var isShadow: Bool { false }
}

/// A check that reads the whole message at `data` and may edit it (a milter). Such checks
/// run after the others of the stage, one after another in configured order, each seeing
/// the message as the ones before it left it; the first that refuses ends the chain.
public protocol MessageEditingCheck: StageCheck {
    /// The finding, and the message as this check leaves it.
    func check(facts: TransactionFacts, message: MessageDraft) async throws -> (CheckFinding, MessageDraft)
}

/// A failure that names its kind (`timeout`, `connect`, `protocol`…) for the metrics.
public protocol CheckError: Error {
    var kind: String { get }
}

/// What a check that failed (timed out, threw) means for the transaction.
public enum CheckFailureMode: String, Hashable, Sendable {
    /// Go on as if the check had found nothing.
    case ignore
    /// Answer 451 4.7.1: the mail is tried again later.
    case tempfail
    /// Refuse (with the check's `failureReply`).
    case reject
    /// Keep the message in the quarantine once it has arrived.
    case quarantine
}

/// What one check found.
public struct CheckFinding: Hashable, Sendable {
    public enum Verdict: Hashable, Sendable {
        case pass
        /// The check accepts (a policy server's OK): recorded; the rules still decide.
        case accept
        case reject(SMTPReply)
        case tempfail(SMTPReply)
        /// Say 250 and relay nothing.
        case discard
        /// Keep the message in the quarantine.
        case quarantine
        /// Tempfail with this reply if the stage would otherwise accept (Postfix's DEFER_IF_PERMIT).
        case deferIfPermit(SMTPReply)
        /// Tempfail with this reply instead of a rejection (Postfix's DEFER_IF_REJECT).
        case deferIfReject(SMTPReply)
    }

    public var verdict: Verdict
    /// For the decision record and the rules: what was found, in words (never message text).
    public var detail: String
    /// Headers the check adds to the message when the transaction goes on (PREPEND).
    public var headers: [AddedHeader]
    /// What an engine did, for the rules (`milter.NAME: { action: … }`).
    public var effects: CheckEffects

    public init(_ verdict: Verdict, detail: String, headers: [AddedHeader] = [], effects: CheckEffects = CheckEffects()) {
        self.verdict = verdict
        self.detail = detail
        self.headers = headers
        self.effects = effects
    }
}

/// What an engine did to the message, in words a rule can name: `add header`, `change
/// header`, `delete header`, `rewrite subject`, `replace body`, `change sender`, `add
/// recipient`, `delete recipient`; the headers it added or changed; and its score, when
/// one of those headers carries one (rspamd's X-Spamd-Result, X-Spam-Score, X-Spam-Status).
public struct CheckEffects: Hashable, Sendable {
    public var actions: [String]
    /// Lowercased names of the headers added or changed.
    public var headers: [String]
    public var score: Double?
    /// The check's own verdict word, when it has one (SPF's `softfail`), for its conditions.
    public var result: String?

    public init(actions: [String] = [], headers: [String] = [], score: Double? = nil, result: String? = nil) {
        self.actions = actions
        self.headers = headers
        self.score = score
        self.result = result
    }

    /// The score in a spam header's value: `default: False [3.40 / 15.00]`, `Yes, score=7.1`, `5.3`.
    public static func score(inHeader name: String, value: String) -> Double? {
        let text: Substring
        switch name.lowercased() {
        case "x-spamd-result":
            guard let open = value.firstIndex(of: "[") else { return nil }
            text = value[value.index(after: open)...]
        case "x-spam-status":
            guard let range = value.range(of: "score=") else { return nil }
            text = value[range.upperBound...]
        case "x-spam-score", "x-rspamd-score":
            text = Substring(value)
        default:
            return nil
        }
        let number = text.drop { $0 == " " || $0 == "\t" }.prefix { $0.isNumber || $0 == "." || $0 == "-" }
        return Double(number)
    }
}

/// A header a check adds to the message: `name: value`.
public struct AddedHeader: Hashable, Sendable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// One check's evaluation at one stage, as the decision record keeps it.
public struct CheckOutcome: Hashable, Sendable {
    public enum Result: String, Hashable, Sendable {
        case pass, accept, reject, tempfail, discard, quarantine, timeout, error
        case deferIfPermit = "defer_if_permit"
        case deferIfReject = "defer_if_reject"
    }

    public var check: String
    public var stage: PolicyStage
    public var result: Result
    public var detail: String
    public var milliseconds: Int
    /// The check's own reply, when it rejected or tempfailed with one.
    public var reply: SMTPReply?
    /// Headers it adds when the transaction goes on.
    public var headers: [AddedHeader] = []
    /// For `error`: what kind of failure (`CheckError.kind`, `timeout`, or `error`).
    public var errorKind: String?
    public var effects = CheckEffects()
    /// The check is in shadow mode: recorded, not enforced.
    public var shadow = false
    /// What names the check as a rule (`milter:rspamd`): in decisions and in the running score.
    public var rule: String?

    public init(check: String, stage: PolicyStage, result: Result, detail: String, milliseconds: Int) {
        self.check = check
        self.stage = stage
        self.result = result
        self.detail = detail
        self.milliseconds = milliseconds
    }
}

extension CheckOutcome {
    /// The part of the running score of `outcomes`: the last score of each check that has one
    /// and is not in shadow mode, named as a rule (`milter:rspamd`), in name order.
    public static func scores(_ outcomes: some Sequence<CheckOutcome>) -> [ScoreContribution] {
        var last: [String: Double] = [:]
        for outcome in outcomes where !outcome.shadow {
            if let score = outcome.effects.score { last[outcome.rule ?? outcome.check] = score }
        }
        return last.sorted { $0.key < $1.key }.map { ScoreContribution(rule: $0.key, score: $0.value) }
    }
}


/// A stage's result: the verdict the session acts on and what each check found.
public struct StageVerdict: Sendable {
    public var stage: PolicyStage
    /// The rules' verdict, or a check's own decision when no rule decided.
    public var verdict: PolicyVerdict
    /// Every check that ran, in configured order.
    public var checks: [CheckOutcome]

    public init(stage: PolicyStage, verdict: PolicyVerdict, checks: [CheckOutcome] = []) {
        self.stage = stage
        self.verdict = verdict
        self.checks = checks
    }
}

/// The checks and rules of each stage. `evaluate` runs a stage's checks concurrently, each
/// within its timeout, gives what they found to the rules, then runs the rules.
///
/// Precedence: a decisive rule (accept, reject, tempfail, discard, quarantine) wins; when no
/// rule decided, the first check in configured order that rejects, tempfails, discards or
/// quarantines decides (its rule is `check:NAME`); a failed check with `failureMode: tempfail`
/// tempfails. Then a check's DEFER_IF_PERMIT turns a stage that would go on into a tempfail,
/// and its DEFER_IF_REJECT turns a rejection into one. Headers the checks add go with a
/// stage that goes on (`headerActions`).
public struct StagePipeline: Sendable {
    public let policy: Policy
    public let checks: [any StageCheck]
    private let clock: any Clock<Duration>

    public init(policy: Policy, checks: [any StageCheck] = [], clock: any Clock<Duration> = ContinuousClock()) {
        self.policy = policy
        self.checks = checks
        self.clock = clock
    }

    /// Stages where a check runs (the walk evaluates these even without rules).
    public var checkedStages: Set<PolicyStage> {
        checks.reduce(into: Set<PolicyStage>()) { $0.formUnion($1.stages) }
    }

    /// The checks that edit the message at `data` (they need a `MessageDraft`).
    public var editsMessages: Bool {
        checks.contains { $0 is any MessageEditingCheck && $0.stages.contains(.data) }
    }

    /// Evaluates `stage`. At `data`, `message` is the message for the checks that edit it
    /// (without one they are not asked); the verdict carries it as they left it.
    public func evaluate(_ stage: PolicyStage, facts: TransactionFacts, message: MessageDraft? = nil) async -> StageVerdict {
        var due = checks.filter { $0.stages.contains(stage) }
        var editing: [any MessageEditingCheck] = []
        if stage == .data {
            editing = due.compactMap { $0 as? any MessageEditingCheck }
            due.removeAll { $0 is any MessageEditingCheck }
            if message == nil { editing = [] }
        }
        var outcomes = due.isEmpty ? [] : await run(due, stage: stage, facts: facts)
        var edited = message
        if let draft = message, !editing.isEmpty {
            let (chained, last) = await runChain(editing, facts: facts, message: draft)
            outcomes += chained
            edited = last
            due += editing.map { $0 as any StageCheck }
        }
        var facts = facts
        for (index, outcome) in outcomes.enumerated() { facts.checks[due[index].name] = outcome }
        var verdict = await PolicyEngine.evaluate(policy, stage: stage, facts: facts)
        guard !outcomes.isEmpty else { return StageVerdict(stage: stage, verdict: verdict, checks: outcomes) }
        if verdict.outcome == .pass {
            for (index, outcome) in outcomes.enumerated() where !outcome.shadow {
                guard let decision = Self.decision(outcome, check: due[index], facts: facts) else { continue }
                if stage < .data, case .decided(let action, let reply) = decision, action == .discard || action == .quarantine {
                    // The whole message, once it is there.
                    if verdict.messageDisposition == nil {
                        verdict.messageDisposition = DeferredDisposition(action: action, reply: reply, rule: due[index].ruleName, reason: outcome.detail)
                    }
                    continue
                }
                verdict.outcome = decision
                verdict.rule = due[index].ruleName
                verdict.reason = outcome.detail
                break
            }
        }
        for (index, outcome) in outcomes.enumerated() where outcome.shadow {
            guard let decision = Self.decision(outcome, check: due[index], facts: facts), case .decided(let action, _) = decision else { continue }
            verdict.shadowHits.append(ShadowHit(rule: due[index].ruleName, action: action.name, reason: outcome.detail))
        }
        Self.applyConditionalDeferrals(outcomes.map { $0.shadow ? CheckOutcome(check: $0.check, stage: $0.stage, result: .pass, detail: "", milliseconds: 0) : $0 },
                                       checks: due, to: &verdict)
        switch verdict.outcome {
        case .pass, .accept:
            for outcome in outcomes where !outcome.shadow {
                verdict.headerActions += outcome.headers.map { RuleAction.addHeader(name: $0.name, value: $0.value) }
            }
        case .decided:
            verdict.messageDisposition = nil
        }
        if let edited, edited.contentChanged || edited.envelopeChanged { verdict.editedMessage = edited }
        return StageVerdict(stage: stage, verdict: verdict, checks: outcomes)
    }

    /// DEFER_IF_PERMIT when the stage would go on, DEFER_IF_REJECT when it would reject.
    private static func applyConditionalDeferrals(_ outcomes: [CheckOutcome], checks: [any StageCheck], to verdict: inout PolicyVerdict) {
        let goesOn: Bool
        switch verdict.outcome {
        case .pass, .accept: goesOn = true
        case .decided(let action, _): goesOn = false; guard action == .reject else { return }
        }
        let wanted: CheckOutcome.Result = goesOn ? .deferIfPermit : .deferIfReject
        guard let index = outcomes.firstIndex(where: { $0.result == wanted }), let reply = outcomes[index].reply else { return }
        let outcome = outcomes[index]
        verdict.outcome = .decided(.tempfail, reply)
        verdict.rule = checks[index].ruleName
        verdict.reason = outcome.detail
    }

    private static func decision(_ outcome: CheckOutcome, check: any StageCheck, facts: TransactionFacts) -> PolicyVerdict.Outcome? {
        switch outcome.result {
        case .pass, .accept, .deferIfPermit, .deferIfReject: return nil
        case .discard:
            return .decided(.discard, ReplyTemplate.default(for: .discard, stage: outcome.stage, isLimit: false)!.render(rule: outcome.check, facts: facts))
        case .quarantine:
            return .decided(.quarantine, ReplyTemplate.default(for: .quarantine, stage: outcome.stage, isLimit: false)!
                .render(rule: outcome.check, facts: facts))
        case .reject: return .decided(.reject, outcome.reply ?? ReplyTemplate.default(for: .reject, stage: outcome.stage, isLimit: false)!
            .render(rule: outcome.check, facts: facts))
        case .tempfail: return .decided(.tempfail, outcome.reply ?? ReplyTemplate.checkFailed.render(rule: outcome.check, facts: facts))
        case .timeout, .error:
            switch check.failureMode {
            case .ignore: return nil
            case .tempfail: return .decided(.tempfail, check.failureReply ?? ReplyTemplate.checkFailed.render(rule: outcome.check, facts: facts))
            case .reject: return .decided(.reject, check.failureReply ?? ReplyTemplate.checkUnavailable.render(rule: outcome.check, facts: facts))
            case .quarantine:
                return .decided(.quarantine, ReplyTemplate.default(for: .quarantine, stage: outcome.stage, isLimit: false)!
                    .render(rule: outcome.check, facts: facts))
            }
        }
    }

    /// Every due check at once; each result in the order of `due`.
    private func run(_ due: [any StageCheck], stage: PolicyStage, facts: TransactionFacts) async -> [CheckOutcome] {
        await withTaskGroup(of: (Int, CheckOutcome).self) { group in
            for (index, check) in due.enumerated() {
                group.addTask { (index, await self.run(check, stage: stage, facts: facts)) }
            }
            var outcomes = [CheckOutcome?](repeating: nil, count: due.count)
            for await (index, outcome) in group { outcomes[index] = outcome }
            return outcomes.map { $0! }
        }
    }

    /// The message-editing checks in order, each with the message as the one before left it;
    /// the first that refuses (or fails with a refusing failure mode) ends the chain.
    private func runChain(_ chain: [any MessageEditingCheck], facts: TransactionFacts,
                          message: MessageDraft) async -> ([CheckOutcome], MessageDraft) {
        var draft = message
        var outcomes: [CheckOutcome] = []
        for check in chain {
            let current = draft
            let box = DraftBox()
            let outcome = await run(check, stage: .data) {
                let (finding, edited) = try await check.check(facts: facts, message: current)
                box.set(edited)
                return finding
            }
            outcomes.append(outcome)
            // A shadow check is asked with the message as it is, and changes nothing.
            if check.isShadow { continue }
            if outcome.result != .timeout, outcome.result != .error, let edited = box.take() { draft = edited }
            switch outcome.result {
            case .reject, .tempfail, .discard: return (outcomes, draft)
            case .timeout, .error:
                if check.failureMode == .tempfail || check.failureMode == .reject { return (outcomes, draft) }
            default: continue
            }
        }
        return (outcomes, draft)
    }

    /// What a chained check left, handed out of its task.
    private final class DraftBox: Sendable {
        private let draft = Mutex<MessageDraft?>(nil)
        func set(_ value: MessageDraft) { draft.withLock { $0 = value } }
        func take() -> MessageDraft? { draft.withLock { $0 } }
    }

    private func run(_ check: any StageCheck, stage: PolicyStage, facts: TransactionFacts) async -> CheckOutcome {
        await run(check, stage: stage) { try await check.check(stage, facts: facts) }
    }

    /// One check against its timeout: whichever finishes first wins, the other is cancelled.
    private func run(_ check: any StageCheck, stage: PolicyStage,
                     _ evaluate: @escaping @Sendable () async throws -> CheckFinding) async -> CheckOutcome {
        let started = DispatchTime.now().uptimeNanoseconds
        let result: Result<CheckFinding, CheckFailure> = await withTaskGroup(of: Result<CheckFinding, CheckFailure>?.self) { group in
            group.addTask {
                do { return .success(try await evaluate()) } catch {
                    return .failure(.error("\(error)", kind: (error as? any CheckError)?.kind ?? "error"))
                }
            }
            group.addTask { [clock] in
                do { try await clock.sleep(for: check.timeout) } catch { return nil }  // cancelled: the check finished
                return .failure(.timeout)
            }
            var first: Result<CheckFinding, CheckFailure>?
            while first == nil, let next = await group.next() { first = next }
            group.cancelAll()
            return first ?? .failure(.error("cancelled", kind: "error"))
        }
        let milliseconds = Int((DispatchTime.now().uptimeNanoseconds - started) / 1_000_000)
        switch result {
        case .success(let finding):
            var outcome = CheckOutcome(check: check.name, stage: stage, result: .pass, detail: finding.detail, milliseconds: milliseconds)
            outcome.rule = check.ruleName
            outcome.headers = finding.headers
            outcome.effects = finding.effects
            outcome.shadow = check.isShadow
            switch finding.verdict {
            case .pass: break
            case .accept: outcome.result = .accept
            case .reject(let reply): outcome.result = .reject; outcome.reply = reply
            case .tempfail(let reply): outcome.result = .tempfail; outcome.reply = reply
            case .discard: outcome.result = .discard
            case .quarantine: outcome.result = .quarantine
            case .deferIfPermit(let reply): outcome.result = .deferIfPermit; outcome.reply = reply
            case .deferIfReject(let reply): outcome.result = .deferIfReject; outcome.reply = reply
            }
            return outcome
        case .failure(.timeout):
            var outcome = CheckOutcome(check: check.name, stage: stage, result: .timeout,
                                       detail: "no answer within \(check.timeout)", milliseconds: milliseconds)
            outcome.errorKind = "timeout"
            outcome.shadow = check.isShadow
            return outcome
        case .failure(.error(let detail, let kind)):
            var outcome = CheckOutcome(check: check.name, stage: stage, result: .error, detail: detail, milliseconds: milliseconds)
            outcome.errorKind = kind
            outcome.shadow = check.isShadow
            return outcome
        }
    }

    private enum CheckFailure: Error {
        case timeout
        case error(String, kind: String)
    }
}

extension ReplyTemplate {
    /// The reply when a check that must not be skipped failed (timed out, unreachable).
    public static let checkFailed = ReplyTemplate(code: 451, enhanced: EnhancedStatusCode(4, 7, 1),
                                                  text: "Temporary failure in a content or sender check, try again later (ref {id})")
    /// The reply when a check whose failure refuses could not be asked (Postfix's milter reject default).
    public static let checkUnavailable = ReplyTemplate(code: 550, enhanced: EnhancedStatusCode(5, 5, 0), text: "Service unavailable")
}
