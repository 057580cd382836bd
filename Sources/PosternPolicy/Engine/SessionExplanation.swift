import SMTPCore

/// One made-up session through the policy, stage by stage (`postern explain`): the same
/// `PolicyWalk` a real session drives, relay control included, with every rule's outcome.
public struct SessionExplanation: Sendable {
    /// The session to explain.
    public struct Input: Sendable {
        public var client: IPAddress
        public var helo: String?
        public var sender: ReversePath?
        public var recipients: [ForwardPath]
        public var authUser: String?
        public var tls: Bool
        /// The message for data-stage rules: its size and its parsed form.
        public var message: (size: Int, parsed: any PolicyMessage)?
        /// What DNS found before the greeting, when the caller has a resolver.
        public var clientName: ClientName?
        public var dnsLists: [DNSListResult] = []

        public init(client: IPAddress, helo: String? = nil, sender: ReversePath? = nil, recipients: [ForwardPath] = [],
                    authUser: String? = nil, tls: Bool = false, message: (size: Int, parsed: any PolicyMessage)? = nil) {
            self.client = client
            self.helo = helo
            self.sender = sender
            self.recipients = recipients
            self.authUser = authUser
            self.tls = tls
            self.message = message
        }
    }

    /// One printed line: a rule at a stage (or relay control at a recipient).
    public struct Line: Sendable {
        public var label: String
        public var rule: String
        public var text: String
    }

    /// What a point came to.
    public struct Refusal: Sendable {
        public var stage: PolicyStage
        /// The deciding rule; nil for relay control.
        public var rule: String?
        public var action: RuleAction
        public var reply: SMTPReply
        public var recipient: ForwardPath?

        var by: String { rule.map { "rule \($0)" } ?? "relay control" }
    }

    public private(set) var lines: [Line] = []
    /// A refusal at connect, helo or mail (the session or the transaction), or at data.
    public private(set) var refusal: Refusal?
    /// Each refused recipient, in order.
    public private(set) var recipientRefusals: [Refusal] = []
    /// The recipients that went on to the upstream.
    public private(set) var accepted: [ForwardPath] = []
    /// `add_header` and `tag_subject` actions applied when the message is relayed.
    public private(set) var headerActions: [RuleAction] = []
    /// Rules' scores, as a session keeps them: connect for the session, HELO/MAIL/DATA for
    /// the transaction, RCPT for that recipient only.
    /// The checks' outcomes at the transaction's earlier stages, as a session keeps them.
    private var earlierChecks: [String: CheckOutcome] = [:]
    private var sessionScore: Double = 0
    private var transactionScore: Double = 0
    private var sessionShadowScore: Double = 0
    private var transactionShadowScore: Double = 0
    /// Shadow rules that matched, with the recipient they matched for.
    public private(set) var shadow: [(RuleExplanation, ForwardPath?)] = []
    /// The first `accept` that ended evaluation.
    public private(set) var acceptedBy: (stage: PolicyStage, rule: String)?
    public let input: Input

    /// Every recipient was refused (nothing to relay).
    public var allRecipientsRefused: Bool { !input.recipients.isEmpty && accepted.isEmpty }

    /// The session was refused somewhere (exit status 1 of `explain`).
    public var refused: Bool { refusal != nil || allRecipientsRefused }

    /// Walks `input` through `policy` with `relayControl` (trusted networks, relay domains).
    /// With `checks` (`explain --engines`), each stage asks them first, as a session does, and
    /// their answers are listed and given to the rules; `message` is what the ones that read
    /// the message get at data.
    public static func explain(_ policy: Policy, relayControl: RelayControl, input: Input, checks: [any StageCheck] = [],
                               message: MessageDraft? = nil) async -> SessionExplanation {
        var explanation = SessionExplanation(input: input, checks: checks, draft: message)
        await explanation.run(policy, relayControl: relayControl)
        return explanation
    }

    private let checks: [any StageCheck]
    private let draft: MessageDraft?

    private init(input: Input, checks: [any StageCheck], draft: MessageDraft?) {
        self.input = input
        self.checks = checks
        self.draft = draft
    }

    private mutating func run(_ policy: Policy, relayControl: RelayControl) async {
        var walk = PolicyWalk(policy: policy, relayControl: relayControl, clientTrusted: relayControl.isTrusted(input.client),
                              checkedStages: checks.reduce(into: Set<PolicyStage>()) { $0.formUnion($1.stages) })
        var facts = TransactionFacts(transactionID: "EXPLAIN", clientAddress: input.client, clientPort: 0, helo: nil, tls: input.tls,
                                     authUser: input.authUser)
        facts.clientName = input.clientName
        facts.dnsLists = input.dnsLists
        let noSender = input.sender == nil ? "no sender given (--from)" : nil

        // connect
        await walkPoint(.connect, expecting: [.connect], label: { _ in "[connect]" }, facts: facts, walk: &walk, policy: policy)

        // helo (a session runs these at MAIL, before the mail rules), then mail
        facts.helo = input.helo
        facts.sender = input.sender
        if refusal == nil {
            await walkPoint(.mail(helo: input.helo), expecting: [.helo, .mail], label: { "[\($0.rawValue)]" }, facts: facts, walk: &walk,
                            policy: policy, stopAt: noSender.map { (.mail, $0) }, missing: input.helo == nil ? (.helo, "no HELO given (--helo)") : nil)
        } else {
            skip(.helo, walk.skipReason(.helo) ?? "", label: "[helo]", policy: policy)
            skip(.mail, walk.skipReason(.mail) ?? "", label: "[mail]", policy: policy)
        }

        // rcpt, once per recipient
        if input.recipients.isEmpty {
            skip(.rcpt, walk.skipReason(.rcpt) ?? noSender ?? "no recipient given (--to)", label: "[rcpt]", policy: policy)
        }
        for recipient in input.recipients {
            let label = "[rcpt \(Self.display(recipient))]"
            if let why = refusal.map({ _ in walk.skipReason(.rcpt) ?? "" }) ?? noSender {
                skip(.rcpt, why, label: label, policy: policy)
                continue
            }
            var rcptFacts = facts
            rcptFacts.recipient = recipient
            rcptFacts.recipients = accepted
            let decided = await walkPoint(.rcpt(recipient, authenticated: input.authUser != nil), expecting: [.rcpt], label: { _ in label },
                                          facts: rcptFacts, walk: &walk, policy: policy, recipient: recipient)
            if !decided { accepted.append(recipient) }
        }

        // data
        let transactionStopOnly = walk.transactionAccept != nil && walk.sessionAccept == nil && walk.refusal == nil
        let stop = walk.skipReason(.data)
        if let why = (transactionStopOnly ? nil : stop) ?? noSender
            ?? (input.recipients.isEmpty ? "no recipient given (--to)" : nil)
            ?? (allRecipientsRefused ? "no recipient was accepted" : nil) ?? (transactionStopOnly ? stop : nil)
            ?? (input.message == nil ? "no message given" : nil) {
            skip(.data, why, label: "[data]", policy: policy)
        } else if let message = input.message {
            var dataFacts = facts
            dataFacts.recipients = accepted
            dataFacts.size = message.size
            dataFacts.message = message.parsed
            await walkPoint(.data, expecting: [.data], label: { _ in "[data]" }, facts: dataFacts, walk: &walk, policy: policy)
        }
    }

    /// Drives the walk through one point, explaining each stage it evaluates and listing the
    /// rules of each expected stage it skips. True when the point was decided.
    @discardableResult
    private mutating func walkPoint(
        _ point: PolicyWalk.Point, expecting stages: [PolicyStage], label: (PolicyStage) -> String, facts: TransactionFacts,
        walk: inout PolicyWalk, policy: Policy, stopAt: (PolicyStage, String)? = nil, missing: (PolicyStage, String)? = nil,
        recipient: ForwardPath? = nil
    ) async -> Bool {
        var remaining = stages[...]
        var step = walk.begin(point)
        while true {
            switch step {
            case .evaluate(let stage):
                while let next = remaining.first, next != stage {
                    remaining.removeFirst()
                    skip(next, reason(next, walk, missing, stopAt), label: label(next), policy: policy)
                }
                remaining = remaining.dropFirst()
                if let (stopStage, why) = stopAt, stopStage == stage {
                    skip(stage, why, label: label(stage), policy: policy)
                    return false
                }
                var stageFacts = facts
                stageFacts.ruleScore = sessionScore + transactionScore
                stageFacts.earlierChecks = earlierChecks
                stageFacts.shadowScore = sessionShadowScore + transactionShadowScore
                var engineVerdict: PolicyVerdict?
                if checks.contains(where: { $0.stages.contains(stage) }) {
                    let asked = await StagePipeline(policy: policy, checks: checks)
                        .evaluate(stage, facts: stageFacts, message: stage == .data ? draft : nil)
                    for outcome in asked.checks {
                        let rule = checks.first { $0.name == outcome.check }?.ruleName ?? outcome.check
                        let shadow = outcome.shadow ? " (shadow)" : ""
                        // A check with its own verdict word (SPF's softfail) shows that word.
                        let answer = outcome.effects.result ?? outcome.result.rawValue
                        lines.append(Line(label: label(stage), rule: rule, text: "engine answered\(shadow): \(answer) (\(outcome.detail))"))
                        stageFacts.checks[outcome.check] = outcome
                        if stage != .rcpt { earlierChecks[outcome.check] = outcome }
                    }
                    let scored = CheckOutcome.scores(asked.checks)
                    if !scored.isEmpty {
                        lines.append(Line(label: label(stage), rule: "score", text: "running score \(Self.number(stageFacts.score)) ("
                                          + scored.map { "\(Self.signed($0.score)) \($0.rule)" }.joined(separator: ", ") + ")"))
                    }
                    engineVerdict = asked.verdict
                }
                var result = await PolicyExplainer.explainStage(policy, stage: stage, facts: stageFacts)
                if let engineVerdict { result.verdict = engineVerdict }
                lines += result.rules.map { Line(label: label(stage), rule: $0.rule, text: Self.describe($0)) }
                let added = result.verdict.scores.reduce(0) { $0 + $1.score }
                let shadowAdded = result.verdict.shadowScores.reduce(0) { $0 + $1.score }
                if !result.verdict.scores.isEmpty || !result.verdict.shadowScores.isEmpty {
                    let parts = result.verdict.scores.map { "\(Self.signed($0.score)) \($0.rule)" }
                        + result.verdict.shadowScores.map { "\(Self.signed($0.score)) \($0.rule) (shadow)" }
                    let total = stageFacts.score + added
                    lines.append(Line(label: label(stage), rule: "score", text: "running score \(Self.number(total)) (\(parts.joined(separator: ", ")))"
                                      + (shadowAdded != 0 || stageFacts.shadowScore != 0 ? "; shadow score \(Self.number(stageFacts.shadowScore + shadowAdded))" : "")))
                }
                switch stage {
                case .connect:
                    sessionScore += added
                    sessionShadowScore += shadowAdded
                case .rcpt: break
                default:
                    transactionScore += added
                    transactionShadowScore += shadowAdded
                }
                for rule in result.rules where rule.mode == .shadow && rule.matched { shadow.append((rule, recipient)) }
                if result.verdict.outcome == .accept, let rule = result.verdict.rule { acceptedBy = acceptedBy ?? (stage, rule) }
                if stage == .data {
                    switch result.verdict.outcome {
                    case .decided: break
                    case .accept, .pass: headerActions = result.verdict.headerActions  // applied when relayed
                    }
                }
                step = walk.evaluated(result.verdict)
            case .proceed:
                for next in remaining { skip(next, reason(next, walk, missing, stopAt), label: label(next), policy: policy) }
                return false
            case .decided(let decision):
                let refusal = Refusal(stage: decision.stage, rule: decision.rule, action: decision.action, reply: decision.reply,
                                      recipient: recipient)
                if decision.byRelayControl {
                    lines.append(Line(label: label(.rcpt), rule: "relay_domains", text: "refused: \(decision.reason ?? "relay access denied")"))
                }
                for next in remaining {
                    skip(next, decision.byRelayControl ? "relay control refused the recipient" : PolicyExplainer.earlierRuleDecided(decision.rule ?? "?"),
                         label: label(next), policy: policy)
                }
                if decision.stage == .rcpt { recipientRefusals.append(refusal) } else { self.refusal = refusal }
                return true
            }
        }
    }

    /// Why an expected stage did not run: an earlier decision, else what the input lacks.
    private func reason(_ stage: PolicyStage, _ walk: PolicyWalk, _ missing: (PolicyStage, String)?, _ stopAt: (PolicyStage, String)?) -> String {
        if let why = walk.skipReason(stage) { return why }
        if let (missingStage, why) = missing, missingStage == stage { return why }
        if let (stopStage, why) = stopAt, stopStage == stage { return why }
        return "no rule to run"
    }

    private mutating func skip(_ stage: PolicyStage, _ why: String, label: String, policy: Policy) {
        lines += PolicyExplainer.skipped(policy, stage: stage, why: why).map { Line(label: label, rule: $0.rule, text: Self.describe($0)) }
    }

    // MARK: The report

    /// The printed report: every rule's line, the verdict, the reply, header actions, shadow hits.
    public func report(policyPath: String, policy: Policy) -> [String] {
        var output = ["Policy: \(policyPath) (\(policy.rules.count) rule\(policy.rules.count == 1 ? "" : "s"), version \(policy.version))"]
        let labelWidth = lines.map(\.label.count).max() ?? 0
        let idWidth = lines.map(\.rule.count).max() ?? 0
        for line in lines {
            output.append("  " + Self.pad(line.label, labelWidth) + " " + Self.pad(line.rule, idWidth) + "  " + line.text)
        }
        if lines.isEmpty { output.append("  (the policy has no rules)") }
        if let refusal {
            output.append("Verdict: \(Self.pastTense(refusal.action)) at \(refusal.stage.rawValue) by \(refusal.by)")
            output.append("Reply: \(refusal.reply)")
        } else if allRecipientsRefused, let first = recipientRefusals.first {
            output.append("Verdict: \(Self.pastTense(first.action)) at rcpt by \(first.by)")
            if recipientRefusals.count == 1 {
                output.append("Reply: \(first.reply)")
            } else {
                for each in recipientRefusals {
                    output.append("Reply to \(Self.display(each.recipient)): \(each.reply) (\(each.by))")
                }
            }
        } else {
            let by = acceptedBy.map { " at \($0.stage.rawValue) by rule \($0.rule)" } ?? ""
            if input.sender != nil && !accepted.isEmpty {
                output.append("Verdict: accepted\(by) (relayed)")
            } else {
                output.append("Verdict: accepted\(by) (nothing to relay without --from and --to)")
            }
            for each in recipientRefusals {
                output.append("Recipient \(Self.display(each.recipient)) \(Self.pastTense(each.action)) by \(each.by): \(each.reply)")
            }
            for case .addHeader(let name, let value) in headerActions {
                output.append("Add header: \(name): \(value)")
            }
        }
        for (hit, recipient) in shadow {
            output.append("Shadow: \(hit.rule) would have \(Self.pastTense(hit.action)) at \(hit.stage.rawValue)"
                          + (recipient.map { " (\(Self.display($0)))" } ?? ""))
        }
        return output
    }

    static func describe(_ explanation: RuleExplanation) -> String {
        switch explanation.outcome {
        case .notMatched:
            return "not matched"
        case .skipped(let why):
            return "skipped: \(why)"
        case .matched(let reason):
            if explanation.mode == .shadow {
                return "MATCHED (shadow) -> would have \(pastTense(explanation.action)): \(reason)"
            }
            var action = explanation.actionName
            if case .addHeader(let name, let value) = explanation.action { action += " \"\(name): \(value)\"" }
            return "MATCHED (enforce) -> \(action): \(reason)"
        }
    }

    static func number(_ value: Double) -> String { value.scoreText }

    static func signed(_ value: Double) -> String { (value >= 0 ? "+" : "") + number(value) }

    static func pastTense(_ action: RuleAction) -> String {
        switch action {
        case .accept: return "accepted"
        case .reject: return "rejected"
        case .tempfail: return "tempfailed"
        case .discard: return "discarded"
        case .quarantine: return "quarantined"
        case .addHeader: return "added a header"
        case .tagSubject: return "tagged the subject"
        case .continue: return "continued"
        }
    }

    static func display(_ path: ForwardPath?) -> String {
        guard let path else { return "" }
        return path.mailbox?.description ?? "postmaster"
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}
