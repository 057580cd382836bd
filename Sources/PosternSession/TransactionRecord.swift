import NIOCore
import PosternLog
import PosternMIME
import PosternPolicy
import SMTPCore

/// The decision record of one transaction under construction, from MAIL to its end.
struct TransactionRecord {
    let id: String
    let started: NIODeadline
    let mailFrom: String
    var recipients: [(address: String, reply: SMTPReply)] = []
    var upstreamNanoseconds: Int64 = 0
    var filterNanoseconds: UInt64 = 0
    /// The upstream that answered MAIL.
    var upstream: String?
    /// The rule that decided (or accepted) and why.
    var rule: String?
    var reason: String?
    var shadow: [ShadowHit]
    var checks: [CheckOutcome] = []
    /// The last refusal of a RCPT (by a rule or by relay control): names the rule when every
    /// recipient is refused.
    var recipientRefusal: (rule: String?, reason: String?, reply: SMTPReply)?
    /// The message's header section, scanned once as the content streams past.
    var headers = MessageHeaderCollector()
    /// Headers checks added at stages before `data` (a policy server's PREPEND at RCPT).
    var addedHeaders: [RuleAction] = []
    /// A discard or quarantine asked for before the message arrived.
    var disposition: DeferredDisposition?
    /// The scores of the rules that matched in this transaction (MAIL, HELO, DATA; RCPT's
    /// count for their recipient only), and of shadow rules.
    var scores: [ScoreContribution] = []
    var shadowScores: [ScoreContribution] = []
    /// The session's part of the score (connect rules, DNS lists), when the record is written.
    var sessionScore: (rules: [ScoreContribution], shadow: [ScoreContribution], dnsLists: Double) = ([], [], 0)

    init(id: String, started: NIODeadline, mailFrom: ReversePath, walk: PolicyWalk) {
        self.id = id
        self.started = started
        self.mailFrom = mailFrom.mailbox?.description ?? ""
        self.shadow = walk.sessionShadow
        if let accept = walk.sessionAccept {
            rule = accept.rule
            reason = accept.reason
        }
    }

    /// A stage's verdict during this transaction: its time, its shadow hits and the deciding rule.
    mutating func note(_ result: StageVerdict) {
        let verdict = result.verdict
        filterNanoseconds += verdict.filterNanoseconds.values.reduce(0, +)
        // HELO rules run at MAIL, after this record was started: it gets their hits too.
        if result.stage >= .helo { shadow += verdict.shadowHits }
        checks += result.checks
        if result.stage != .rcpt {
            scores += verdict.scores
            shadowScores += verdict.shadowScores
        }
        if result.stage < .data {
            switch verdict.outcome {
            case .pass, .accept:
                addedHeaders += verdict.headerActions.filter { if case .addHeader = $0 { true } else { false } }
                if disposition == nil { disposition = verdict.messageDisposition }
            case .decided:
                break
            }
        }
        if let rule = verdict.rule {
            self.rule = rule
            reason = verdict.reason
        }
    }

    /// A recipient refused by a rule or by relay control: not the transaction's decision, the
    /// other recipients go on.
    mutating func refuseRecipient(_ decision: PolicyDecision, reply: SMTPReply) {
        recipientRefusal = (decision.byRelayControl ? nil : rule, decision.reason, reply)
        if !decision.byRelayControl {
            rule = nil
            reason = nil
        }
    }

    mutating func addRecipient(_ path: ForwardPath, reply: SMTPReply) {
        recipients.append((path.mailbox?.description ?? "postmaster", reply))
    }
}

/// What the records of one session share.
struct RecordContext {
    let sessionID: String
    let client: DecisionRecord.Client
    let policyVersion: String?
    let wallMilliseconds: Int64
    let now: NIODeadline
}

extension TransactionRecord {
    /// The transaction ended with `reply`: a refused MAIL, or the message's final reply.
    /// `relayed`: the reply is the upstream's answer to the message.
    func finished(
        reply: SMTPReply, stage: DecisionRecord.Stage, size: Int?, relayed: Bool, reason: String?, outcome: MessageDisposition,
        context: RecordContext
    ) -> DecisionRecord {
        let decision: DecisionRecord.Decision = switch outcome {
        case .quarantined: .quarantined
        case .discarded: .discarded
        case .answered: reply.isPositive ? .accepted : reply.isTransientFailure ? .tempfailed : .rejected
        }
        return record(decision: decision, stage: stage, reply: reply, size: size, reason: reason, context: context,
                      upstream: upstream.map { host in
                          DecisionRecord.Upstream(host: host, reply: relayed ? reply.description : nil,
                                                  queueID: relayed && reply.isPositive ? DecisionRecord.queueID(fromReply: reply.text) : nil)
                      })
    }

    /// A transaction that ended without a message: RSET, QUIT, a new EHLO, a disconnect.
    /// Every recipient refused: the transaction was refused, at RCPT; otherwise abandoned.
    func abandoned(endReason: String, context: RecordContext) -> DecisionRecord {
        let upstream = self.upstream.map { DecisionRecord.Upstream(host: $0, reply: nil, queueID: nil) }
        if let last = recipients.last, !recipients.contains(where: { $0.reply.isPositive }) {
            var named = self
            if let refusal = recipientRefusal, refusal.reply == last.reply {
                named.rule = refusal.rule
                named.reason = refusal.reason.map { "every recipient refused; last: \($0)" }
            }
            return named.record(decision: last.reply.isTransientFailure ? .tempfailed : .rejected, stage: .rcpt, reply: nil, size: nil,
                                reason: "every recipient refused", context: context, upstream: upstream)
        }
        return record(decision: .aborted, stage: recipients.isEmpty ? .mail : .rcpt, reply: nil, size: nil, reason: endReason,
                      context: context, upstream: upstream)
    }

    private func record(
        decision: DecisionRecord.Decision, stage: DecisionRecord.Stage, reply: SMTPReply?, size: Int?, reason: String?,
        context: RecordContext, upstream: DecisionRecord.Upstream?
    ) -> DecisionRecord {
        let section = headers.section
        let total = max(0, (context.now - started).nanoseconds / 1_000_000)
        var record = DecisionRecord(
            timestamp: context.wallMilliseconds, id: id, session: context.sessionID, policyVersion: context.policyVersion,
            client: context.client, mailFrom: mailFrom, recipients: recipients.map { .init(address: $0.address, reply: $0.reply.description) },
            size: size, messageID: section.value(of: "Message-ID"), subject: section.decodedValue(of: "Subject"),
            decision: decision, stage: stage, rule: rule, reason: self.reason ?? reason,
            reply: reply.map(DecisionRecord.Reply.init), upstream: upstream,
            shadow: shadow.map { DecisionRecord.Shadow(rule: $0.rule, action: $0.action) },
            checks: checks.map(DecisionRecord.Check.init),
            timings: .init(total: Int(total), filters: Int(filterNanoseconds / 1_000_000), upstream: Int(upstreamNanoseconds / 1_000_000)))
        let parts = sessionScore.rules + scores + CheckOutcome.scores(checks)
        if !parts.isEmpty || sessionScore.dnsLists != 0 {
            record.score = parts.reduce(sessionScore.dnsLists) { $0 + $1.score }
            record.scores = parts.map { DecisionRecord.Score(rule: $0.rule, score: $0.score) }
        }
        record.shadowScores = (sessionScore.shadow + shadowScores).map { DecisionRecord.Score(rule: $0.rule, score: $0.score) }
        return record
    }
}

/// How a message that reached its end was disposed of.
enum MessageDisposition {
    /// Relayed, or refused: the reply says which.
    case answered
    /// A policy `discard`: 250 to the client, nothing relayed.
    case discarded
    /// A policy `quarantine`: kept in the quarantine Maildir, not relayed.
    case quarantined
}

extension DecisionRecord.Reply {
    init(_ reply: SMTPReply) {
        self.init(code: reply.code, enhanced: reply.enhanced?.description, text: reply.text)
    }
}

extension DecisionRecord.Check {
    init(_ outcome: CheckOutcome) {
        self.init(check: outcome.check, stage: outcome.stage.rawValue, result: outcome.result.rawValue, detail: outcome.detail,
                  milliseconds: outcome.milliseconds)
    }
}
