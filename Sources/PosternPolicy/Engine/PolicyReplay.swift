import Synchronization
import SMTPCore

/// Replaying logged transactions against a candidate policy (`postern replay`): each one's
/// facts, rebuilt from its decision record, go through the same `PolicyWalk` and engine a
/// session drives, relay control first at RCPT, so the answer is what the candidate would
/// have decided for that transaction.
///
/// What a record does not hold is never guessed. A transaction the logged policy refused
/// before its recipients (or its message) were sent, that the candidate lets through, cannot
/// go on: what the client would have sent next is not in the log. A content rule that reads
/// more of the message than the record keeps (its Subject and Message-ID) cannot be decided,
/// unless the sample store kept the message (`Transaction.sample`), and then only what the
/// sample did not withhold. Both are reported as not evaluable, with the reason.
public struct PolicyReplay: Sendable {
    /// One logged transaction, as the replay needs it.
    public struct Transaction: Sendable {
        public enum Decision: String, Sendable, CaseIterable {
            case accepted, rejected, tempfailed, discarded, quarantined, aborted
        }

        /// Milliseconds since the Unix epoch: rate limits are replayed at this time.
        public var timestamp: Int64
        public var id: String
        /// The session the transaction belongs to: connect and HELO rules run once per session.
        public var session: String
        public var client: IPAddress
        public var clientPort: Int
        public var helo: String?
        /// The TLS version (`TLSv1.3`) when the session used STARTTLS.
        public var tlsVersion: String?
        public var authUser: String?
        /// Country and ASN as logged, for a candidate without GeoIP databases of its own.
        public var country: String?
        public var asn: UInt32?
        public var clientName: ClientName?
        /// The DNS lists that listed the client or failed, as logged (the others did not list it).
        public var dnsLists: [DNSListResult] = []
        /// Nil when the session never reached MAIL (refused at connect).
        public var sender: ReversePath?
        /// Each recipient asked, in order, with the reply the client got.
        public var recipients: [(path: ForwardPath, reply: SMTPReply?)] = []
        public var size: Int?
        public var subject: String?
        public var messageID: String?
        /// The message, when the sample store kept it: content rules then read it.
        public var sample: SampledMessage?
        /// The logged outcome.
        public var decision: Decision
        public var stage: PolicyStage
        /// The logged deciding rule (nil: not a rule).
        public var rule: String?
        /// The logged outcome was decided by the policy (a rule or relay control), not by the
        /// upstream or the client.
        public var decidedByPolicy: Bool

        public init(timestamp: Int64, id: String, session: String, client: IPAddress, clientPort: Int, decision: Decision,
                    stage: PolicyStage, rule: String?, decidedByPolicy: Bool) {
            self.timestamp = timestamp
            self.id = id
            self.session = session
            self.client = client
            self.clientPort = clientPort
            self.decision = decision
            self.stage = stage
            self.rule = rule
            self.decidedByPolicy = decidedByPolicy
        }
    }

    /// What the candidate makes of one transaction.
    public enum Outcome: Sendable, Equatable {
        /// Decided: the new decision, the stage and the deciding rule (nil: relay control, or
        /// the logged outcome that still stands).
        case decided(Transaction.Decision, stage: PolicyStage, rule: String?)
        /// Cannot be decided from the record: why.
        case notEvaluable(String)
    }

    public let policy: Policy
    public let relayControl: RelayControl
    /// The clock the candidate's rate limits read (compile the policy with a store on it): set
    /// to each transaction's time, the Unix epoch as its epoch.
    public let clock: ManualRateLimitClock
    private var sessions: [String: SessionState] = [:]
    /// A session not seen for this long is forgotten (its connect and HELO state).
    static let sessionMemory: Int64 = 3_600_000
    private var lastSweep: Int64?

    public init(policy: Policy, relayControl: RelayControl, clock: ManualRateLimitClock) {
        self.policy = policy
        self.relayControl = relayControl
        self.clock = clock
    }

    /// The connect and HELO state a session keeps across its transactions.
    private struct SessionState {
        var walk: PolicyWalk
        var connectOutcome: Outcome??
        var sessionScore: Double = 0
        var sessionShadowScore: Double = 0
        var lastSeen: Int64
    }

    /// Replays `transaction` (in timestamp order with the others: rate limits count).
    public mutating func replay(_ transaction: Transaction) async -> Outcome {
        clock.set(.milliseconds(transaction.timestamp))
        forgetOldSessions(now: transaction.timestamp)
        var state = sessions[transaction.session] ?? SessionState(
            walk: PolicyWalk(policy: policy, relayControl: relayControl, clientTrusted: relayControl.isTrusted(transaction.client)),
            connectOutcome: nil, lastSeen: transaction.timestamp)
        state.lastSeen = transaction.timestamp
        let outcome = await run(transaction, &state)
        sessions[transaction.session] = state
        return outcome
    }

    private mutating func forgetOldSessions(now: Int64) {
        guard lastSweep.map({ now - $0 > Self.sessionMemory / 4 }) ?? true || sessions.count > 100_000 else { return }
        lastSweep = now
        sessions = sessions.filter { now - $0.value.lastSeen < Self.sessionMemory }
    }

    private func run(_ transaction: Transaction, _ state: inout SessionState) async -> Outcome {
        var facts = TransactionFacts(transactionID: transaction.id, clientAddress: transaction.client, clientPort: transaction.clientPort,
                                     tls: transaction.tlsVersion != nil, authUser: transaction.authUser)
        facts.tlsVersion = transaction.tlsVersion
        facts.protocolName = transaction.helo == nil ? nil : "ESMTP"
        facts.clientName = transaction.clientName
        facts.dnsLists = transaction.dnsLists
        facts.location = policy.geoip?.locate(transaction.client)
            ?? ((transaction.country != nil || transaction.asn != nil) ? ClientLocation(country: transaction.country, asn: transaction.asn) : nil)
        var scores = Scores(session: state.sessionScore, sessionShadow: state.sessionShadowScore)

        // connect: once per session.
        if state.connectOutcome == nil {
            let decided = await point(.connect, facts: facts, walk: &state.walk, scores: &scores)
            state.connectOutcome = .some(decided)
            state.sessionScore = scores.session
            state.sessionShadowScore = scores.sessionShadow
        }
        if case .some(.some(let refused)) = state.connectOutcome { return refused }
        guard let sender = transaction.sender else {
            return passed(transaction, why: "the logged policy refused the connection; what the client would have sent next is not in the log")
        }

        // helo (at the first MAIL after each HELO name), then mail.
        facts.helo = transaction.helo
        facts.sender = sender
        if let refused = await point(.mail(helo: transaction.helo), facts: facts, walk: &state.walk, scores: &scores) {
            return refused
        }
        if transaction.recipients.isEmpty {
            return passed(transaction, why: "the logged policy refused MAIL; the recipients are not in the log")
        }

        // rcpt, once per recipient; relay control first.
        var accepted: [ForwardPath] = []
        var refusals: [Outcome] = []
        for (path, _) in transaction.recipients {
            var rcptFacts = facts
            rcptFacts.recipient = path
            rcptFacts.recipients = accepted
            if let refused = await point(.rcpt(path, authenticated: transaction.authUser != nil), facts: rcptFacts, walk: &state.walk,
                                         scores: &scores) {
                if case .notEvaluable = refused { return refused }
                refusals.append(refused)
            } else {
                accepted.append(path)
            }
        }
        if accepted.isEmpty, let last = refusals.last { return last }

        // data
        let loggedRecipientsAccepted = transaction.recipients.contains { $0.reply?.isPositive ?? false }
        guard transaction.stage == .data else {
            if transaction.decision == .aborted || !transaction.decidedByPolicy || loggedRecipientsAccepted {
                return .decided(transaction.decision, stage: transaction.stage, rule: transaction.rule)
            }
            // Every recipient was refused by the logged policy; the candidate takes some, so
            // the client would have sent the message.
            if policy.hasActiveRules(at: .data) {
                return .notEvaluable("the logged policy refused every recipient; the message is not in the log for the data rules")
            }
            return .decided(.accepted, stage: .data, rule: nil)
        }
        var dataFacts = facts
        dataFacts.recipients = accepted
        dataFacts.size = transaction.size
        let message: any ReplayMessage = transaction.sample ?? RecordedMessage(subject: transaction.subject, messageID: transaction.messageID)
        dataFacts.message = message
        let refused = await point(.data, facts: dataFacts, walk: &state.walk, scores: &scores)
        if message.askedForMissing {
            if let sample = transaction.sample {
                return .notEvaluable("a content rule reads what the message's sample withholds (\(sample.withheld.sorted().joined(separator: ", ")))")
            }
            return .notEvaluable("a content rule reads more of the message than the record keeps (Subject, Message-ID)")
        }
        if let refused { return refused }
        return passed(transaction, why: nil)
    }

    /// The candidate let the transaction through every stage the record reached.
    private func passed(_ transaction: Transaction, why: String?) -> Outcome {
        guard transaction.decidedByPolicy else {
            // The upstream's answer, or the client's going away, stands.
            return .decided(transaction.decision, stage: transaction.stage, rule: nil)
        }
        if let why { return .notEvaluable(why) }
        return .decided(.accepted, stage: .data, rule: nil)
    }

    private struct Scores {
        var session: Double
        var sessionShadow: Double
        var transaction: Double = 0
        var transactionShadow: Double = 0
    }

    /// Walks one point; the refusal (or data disposition) when it was decided.
    private func point(_ point: PolicyWalk.Point, facts: TransactionFacts, walk: inout PolicyWalk, scores: inout Scores) async -> Outcome? {
        var step = walk.begin(point)
        while true {
            switch step {
            case .evaluate(let stage):
                if policy.readsCheckAnswers(at: stage) {
                    return .notEvaluable("a \(stage.rawValue) rule reads a check's answer (milter, policy server, SPF), which replay does not ask")
                }
                var stageFacts = facts
                stageFacts.ruleScore = scores.session + scores.transaction
                stageFacts.shadowScore = scores.sessionShadow + scores.transactionShadow
                let verdict = await PolicyEngine.evaluate(policy, stage: stage, facts: stageFacts)
                let added = verdict.scores.reduce(0) { $0 + $1.score }
                let shadowAdded = verdict.shadowScores.reduce(0) { $0 + $1.score }
                switch stage {
                case .connect:
                    scores.session += added
                    scores.sessionShadow += shadowAdded
                case .rcpt: break
                default:
                    scores.transaction += added
                    scores.transactionShadow += shadowAdded
                }
                step = walk.evaluated(verdict)
            case .proceed:
                return nil
            case .decided(let decision):
                return .decided(Self.decision(for: decision.action), stage: decision.stage, rule: decision.rule)
            }
        }
    }

    static func decision(for action: RuleAction) -> Transaction.Decision {
        switch action {
        case .tempfail: return .tempfailed
        case .discard: return .discarded
        case .quarantine: return .quarantined
        default: return .rejected
        }
    }
}

/// A message as replay has it: a rule's asking for what it lacks is noted.
protocol ReplayMessage: PolicyMessage {
    /// A rule asked for something the message does not have.
    var askedForMissing: Bool { get }
}

/// A message the sample store kept, minus what its privacy treatment withheld (see
/// `Withheld`): a rule that reads a withheld part makes the transaction not evaluable.
public final class SampledMessage: ReplayMessage, @unchecked Sendable {
    /// What a sample withholds, by the names its `X-Postern-Sample` line gives.
    public enum Withheld: String, Sendable, CaseIterable {
        /// The Subject (`decision_log.subject: hashed` or `off`).
        case subject
        /// The address fields' local parts (`decision_log.local_parts: hashed` or `off`):
        /// every field of `addressFields`.
        case addresses
        /// Everything after the header section (`samples.body: false`).
        case body
    }

    /// The header fields whose addresses the local-parts treatment rewrites.
    public static let addressFields: Set<String> = [
        "from", "to", "cc", "bcc", "reply-to", "sender", "return-path", "delivered-to", "x-original-to",
        "resent-from", "resent-to", "resent-cc", "resent-bcc", "resent-sender", "disposition-notification-to",
    ]

    private let message: any PolicyMessage
    public let withheld: Set<String>
    private let missing = Atomic<Bool>(false)

    public init(_ message: any PolicyMessage, withheld: Set<Withheld>) {
        self.message = message
        self.withheld = Set(withheld.map(\.rawValue))
    }

    var askedForMissing: Bool { missing.load(ordering: .relaxed) }

    private func noteMissing() { missing.store(true, ordering: .relaxed) }

    private func has(_ part: Withheld) -> Bool { withheld.contains(part.rawValue) }

    public func headerValues(named name: String) -> [String] {
        let lowercased = name.lowercased()
        if (lowercased == "subject" && has(.subject)) || (has(.addresses) && Self.addressFields.contains(lowercased)) { noteMissing() }
        return message.headerValues(named: name)
    }

    public var subjectText: String? {
        if has(.subject) { noteMissing() }
        return message.subjectText
    }

    public var bodyTexts: [String] {
        if has(.body) { noteMissing() }
        return message.bodyTexts
    }

    public var attachmentList: [(name: String?, type: String)] {
        if has(.body) { noteMissing() }
        return message.attachmentList
    }

    public var rawBytes: [UInt8] {
        if !withheld.isEmpty { noteMissing() }
        return message.rawBytes
    }

    public var derivedValues: (any AnyObject & Sendable)? { message.derivedValues }
    public var scanLength: Int { message.scanLength }
}

/// The message as the record keeps it: its Subject and Message-ID. Anything else a rule asks
/// for (another header, a body, an attachment, the raw message) is missing, and noted, so the
/// replay reports the transaction as not evaluable rather than guess.
final class RecordedMessage: ReplayMessage, @unchecked Sendable {
    private let subject: String?
    private let messageID: String?
    private let missing = Atomic<Bool>(false)

    init(subject: String?, messageID: String?) {
        self.subject = subject
        self.messageID = messageID
    }

    var askedForMissing: Bool { missing.load(ordering: .relaxed) }

    private func noteMissing() { missing.store(true, ordering: .relaxed) }

    func headerValues(named name: String) -> [String] {
        switch name.lowercased() {
        case "subject" where subject != nil: return [subject!]
        case "message-id" where messageID != nil: return [messageID!]
        default:
            noteMissing()
            return []
        }
    }

    var subjectText: String? {
        if subject == nil { noteMissing() }
        return subject
    }

    var bodyTexts: [String] {
        noteMissing()
        return []
    }

    var attachmentList: [(name: String?, type: String)] {
        noteMissing()
        return []
    }

    var rawBytes: [UInt8] {
        noteMissing()
        return []
    }

    /// Nothing to scan: a content rule is matched inline, and what it reads decides.
    var scanLength: Int { 0 }
}
