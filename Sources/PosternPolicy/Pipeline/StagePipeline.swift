import Dispatch
import SMTPCore

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
    /// Evaluates `facts` at `stage`; a thrown error is a failure (`failureMode`).
    func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding
}

/// What a check that failed (timed out, threw) means for the transaction.
public enum CheckFailureMode: String, Hashable, Sendable {
    /// Go on as if the check had found nothing.
    case ignore
    /// Answer 451 4.7.1: the mail is tried again later.
    case tempfail
}

/// What one check found.
public struct CheckFinding: Hashable, Sendable {
    public enum Verdict: Hashable, Sendable {
        case pass
        case reject(SMTPReply)
        case tempfail(SMTPReply)
    }

    public var verdict: Verdict
    /// For the decision record and the rules: what was found, in words (never message text).
    public var detail: String

    public init(_ verdict: Verdict, detail: String) {
        self.verdict = verdict
        self.detail = detail
    }
}

/// One check's evaluation at one stage, as the decision record keeps it.
public struct CheckOutcome: Hashable, Sendable {
    public enum Result: String, Hashable, Sendable {
        case pass, reject, tempfail, timeout, error
    }

    public var check: String
    public var stage: PolicyStage
    public var result: Result
    public var detail: String
    public var milliseconds: Int
    /// The check's own reply, when it rejected or tempfailed with one.
    public var reply: SMTPReply?

    public init(check: String, stage: PolicyStage, result: Result, detail: String, milliseconds: Int) {
        self.check = check
        self.stage = stage
        self.result = result
        self.detail = detail
        self.milliseconds = milliseconds
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
/// rule decided, the first check in configured order that rejects or tempfails decides (its
/// rule is `check:NAME`); a failed check with `failureMode: tempfail` tempfails.
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

    public func evaluate(_ stage: PolicyStage, facts: TransactionFacts) async -> StageVerdict {
        let due = checks.filter { $0.stages.contains(stage) }
        let outcomes = due.isEmpty ? [] : await run(due, stage: stage, facts: facts)
        var facts = facts
        for (index, outcome) in outcomes.enumerated() { facts.checks[due[index].name] = outcome }
        var verdict = await PolicyEngine.evaluate(policy, stage: stage, facts: facts)
        if verdict.outcome == .pass {
            for (index, outcome) in outcomes.enumerated() {
                guard let decision = Self.decision(outcome, check: due[index], facts: facts) else { continue }
                verdict.outcome = decision
                verdict.rule = "check:\(outcome.check)"
                verdict.reason = outcome.detail
                break
            }
        }
        return StageVerdict(stage: stage, verdict: verdict, checks: outcomes)
    }

    private static func decision(_ outcome: CheckOutcome, check: any StageCheck, facts: TransactionFacts) -> PolicyVerdict.Outcome? {
        switch outcome.result {
        case .pass: return nil
        case .reject: return .decided(.reject, outcome.reply ?? ReplyTemplate.default(for: .reject, stage: outcome.stage, isLimit: false)!
            .render(rule: outcome.check, facts: facts))
        case .tempfail: return .decided(.tempfail, outcome.reply ?? ReplyTemplate.checkFailed.render(rule: outcome.check, facts: facts))
        case .timeout, .error:
            guard check.failureMode == .tempfail else { return nil }
            return .decided(.tempfail, ReplyTemplate.checkFailed.render(rule: outcome.check, facts: facts))
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

    /// One check against its timeout: whichever finishes first wins, the other is cancelled.
    private func run(_ check: any StageCheck, stage: PolicyStage, facts: TransactionFacts) async -> CheckOutcome {
        let started = DispatchTime.now().uptimeNanoseconds
        let result: Result<CheckFinding, CheckFailure> = await withTaskGroup(of: Result<CheckFinding, CheckFailure>?.self) { group in
            group.addTask {
                do { return .success(try await check.check(stage, facts: facts)) } catch { return .failure(.error("\(error)")) }
            }
            group.addTask { [clock] in
                do { try await clock.sleep(for: check.timeout) } catch { return nil }  // cancelled: the check finished
                return .failure(.timeout)
            }
            var first: Result<CheckFinding, CheckFailure>?
            while first == nil, let next = await group.next() { first = next }
            group.cancelAll()
            return first ?? .failure(.error("cancelled"))
        }
        let milliseconds = Int((DispatchTime.now().uptimeNanoseconds - started) / 1_000_000)
        switch result {
        case .success(let finding):
            var outcome = CheckOutcome(check: check.name, stage: stage, result: .pass, detail: finding.detail, milliseconds: milliseconds)
            switch finding.verdict {
            case .pass: break
            case .reject(let reply): outcome.result = .reject; outcome.reply = reply
            case .tempfail(let reply): outcome.result = .tempfail; outcome.reply = reply
            }
            return outcome
        case .failure(.timeout):
            return CheckOutcome(check: check.name, stage: stage, result: .timeout,
                                detail: "no answer within \(check.timeout)", milliseconds: milliseconds)
        case .failure(.error(let detail)):
            return CheckOutcome(check: check.name, stage: stage, result: .error, detail: detail, milliseconds: milliseconds)
        }
    }

    private enum CheckFailure: Error {
        case timeout
        case error(String)
    }
}

extension ReplyTemplate {
    /// The reply when a check that must not be skipped failed (timed out, unreachable).
    public static let checkFailed = ReplyTemplate(code: 451, enhanced: EnhancedStatusCode(4, 7, 1),
                                                  text: "Temporary failure in a content or sender check, try again later (ref {id})")
}
