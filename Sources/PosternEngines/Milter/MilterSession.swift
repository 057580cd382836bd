import Logging
import NIOCore
import PosternPolicy
import SMTPCore
import Synchronization

/// One configured milter filter, shared by every client session: its configuration, and
/// the failure streak it logs once (one line when it starts failing, one when it answers
/// again). Each client session gets its own connection through `session()`.
public final class MilterFilter: Sendable {
    public let configuration: MilterConfiguration
    let group: EventLoopGroup
    let logger: Logger
    /// `j` and `{daemon_name}`: the same for every filter, so OpenDKIM and OpenDMARC agree
    /// on the authserv-id.
    let hostname: String
    private let failing = Mutex(false)

    public init(configuration: MilterConfiguration, hostname: String, group: EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.hostname = hostname
        self.group = group
        var logger = logger
        logger[metadataKey: "milter"] = "\(configuration.name)"
        self.logger = logger
    }

    /// The filter for one client session: its stage check, which holds the session's connection.
    public func session() -> MilterCheck {
        MilterCheck(filter: self)
    }

    /// Connects and negotiates, then says goodbye: what the filter offers, for `postern check --engines`.
    public func probe() async throws(MilterError) -> Milter.Negotiation {
        let connection = try await MilterConnection.open(configuration.address, timeout: configuration.timeouts.connect, group: group)
        defer { connection.close() }
        let negotiation = try await MilterExchange.negotiate(connection, timeout: configuration.timeouts.connect)
        try? await connection.send([MilterEncoder.packet(.quit)])
        return negotiation
    }

    /// What a filter asked for at negotiation, in words: `version 6, actions: add headers,
    /// change headers; events: no HELO, no DATA; no replies to: headers; macros at mail: i {auth_type}`.
    public static func describe(_ negotiation: Milter.Negotiation) -> String {
        let actionNames: [(Milter.Actions, String)] = [
            (.addHeaders, "add headers"), (.changeBody, "replace body"), (.addRecipients, "add recipients"),
            (.deleteRecipients, "delete recipients"), (.changeHeaders, "change headers"), (.quarantine, "quarantine"),
            (.changeFrom, "change sender"), (.addRecipientsWithParameters, "add recipients with parameters"), (.setMacroLists, "macro lists"),
        ]
        let omitted: [(Milter.ProtocolFlags, String)] = [
            (.noConnect, "CONNECT"), (.noHelo, "HELO"), (.noMail, "MAIL"), (.noRecipient, "RCPT"), (.noData, "DATA"),
            (.noHeaders, "headers"), (.noEndOfHeaders, "end of headers"), (.noBody, "body"), (.noUnknown, "unknown commands"),
        ]
        let unanswered: [(Milter.ProtocolFlags, String)] = [
            (.noConnectReply, "CONNECT"), (.noHeloReply, "HELO"), (.noMailReply, "MAIL"), (.noRecipientReply, "RCPT"),
            (.noDataReply, "DATA"), (.noHeaderReply, "headers"), (.noEndOfHeadersReply, "end of headers"), (.noBodyReply, "body"),
            (.noUnknownReply, "unknown commands"),
        ]
        var parts = ["version \(negotiation.version)"]
        let actions = actionNames.filter { negotiation.actions.contains($0.0) }.map(\.1)
        parts.append("actions: " + (actions.isEmpty ? "none" : actions.joined(separator: ", ")))
        let skipped = omitted.filter { negotiation.flags.contains($0.0) }.map(\.1)
        if !skipped.isEmpty { parts.append("events left out: " + skipped.joined(separator: ", ")) }
        let silent = unanswered.filter { negotiation.flags.contains($0.0) }.map(\.1)
        if !silent.isEmpty { parts.append("no reply to: " + silent.joined(separator: ", ")) }
        var options: [String] = []
        if negotiation.flags.contains(.skip) { options.append("SKIP") }
        if negotiation.flags.contains(.rejectedRecipients) { options.append("rejected recipients") }
        if negotiation.flags.contains(.headerLeadingSpace) { options.append("header leading space") }
        if !options.isEmpty { parts.append("options: " + options.joined(separator: ", ")) }
        for stage in Milter.MacroStage.allCases {
            if let names = negotiation.macros[stage] { parts.append("macros at \(stage): \(names.joined(separator: " "))") }
        }
        return parts.joined(separator: "; ")
    }

    func streak(ended success: Bool, _ error: MilterError? = nil) {
        let changed = failing.withLock { failing -> Bool in
            defer { failing = !success }
            return failing == success
        }
        guard changed else { return }
        if let error {
            logger.warning("milter failing; its default action applies", metadata: [
                "address": "\(configuration.address)", "kind": "\(error.kind)", "error": "\(error.detail)",
                "default_action": "\(configuration.defaultAction.rawValue)",
            ])
        } else {
            logger.notice("milter answering again", metadata: ["address": "\(configuration.address)"])
        }
    }
}

/// A milter as the stage check of one client session. The session's events go to the
/// filter over one connection, opened when it is first needed, in the order the protocol
/// wants them; the stages the filter is not configured for are sent with the next one that
/// is. At `data` it reads the message, and the edits the filter asks for at end of message
/// are applied to it before the next filter sees it.
public final class MilterCheck: MessageEditingCheck {
    public let filter: MilterFilter
    private let session: MilterSession

    init(filter: MilterFilter) {
        self.filter = filter
        self.session = MilterSession(filter: filter)
    }

    public var name: String { filter.configuration.name }
    public var ruleName: String { "milter:\(filter.configuration.name)" }
    public var isShadow: Bool { filter.configuration.shadow }
    public var stages: Set<PolicyStage> { filter.configuration.stages }
    /// The filter's own timeouts bound each read; this only catches what they cannot.
    public var timeout: Duration { .seconds(3600) }

    public var failureMode: CheckFailureMode {
        switch filter.configuration.defaultAction {
        case .accept: return .ignore
        case .tempfail: return .tempfail
        case .reject: return .reject
        case .quarantine: return .quarantine
        }
    }

    public var failureReply: SMTPReply? {
        switch filter.configuration.defaultAction {
        case .tempfail: return MilterReplies.tempfail
        case .reject: return MilterReplies.unavailable
        case .accept, .quarantine: return nil
        }
    }

    public func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding {
        try await session.event(stage, facts: facts)
    }

    public func check(facts: TransactionFacts, message: MessageDraft) async throws -> (CheckFinding, MessageDraft) {
        try await session.message(facts: facts, draft: message)
    }

    /// The client session is over: QUIT, and the connection closes.
    public func close() async {
        await session.quit()
    }
}

/// The replies Postfix makes for a filter's answers and failures.
enum MilterReplies {
    static let reject = SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Command rejected")
    static let tempfail = SMTPReply(451, EnhancedStatusCode(4, 7, 1), "Service unavailable - try again later")
    static let unavailable = SMTPReply(550, EnhancedStatusCode(5, 5, 0), "Service unavailable")
    static let shutdown = SMTPReply(421, EnhancedStatusCode(4, 7, 0), "Service unavailable - closing connection")
}

/// The session with one filter: what it has been sent, what it said that lasts.
actor MilterSession {
    private enum Phase {
        case new
        case open(MilterConnection, Milter.Negotiation)
        /// It accepted the whole session at CONNECT or HELO: nothing more is sent.
        case acceptedSession
        /// It refused at CONNECT or HELO: every later stage gets that refusal.
        case refusedSession(CheckFinding)
        /// It failed: the rest of the session gets the default action.
        case failed(MilterError)
        case closed
    }

    private let filter: MilterFilter
    private var phase = Phase.new
    private var sentConnect = false
    private var sentHelo: String?
    /// The transaction whose MAIL the filter has, until ABORT.
    private var transaction: String?
    private var sentRecipients: Set<String> = []
    /// It accepted the message in progress: nothing more of it is sent.
    private var messageAccepted = false

    init(filter: MilterFilter) {
        self.filter = filter
    }

    private var configuration: MilterConfiguration { filter.configuration }

    func event(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding {
        try await run(facts) { exchange in
            try await self.sendEnvelope(through: stage, facts: facts, exchange: &exchange)
        }.0
    }

    func message(facts: TransactionFacts, draft: MessageDraft) async throws -> (CheckFinding, MessageDraft) {
        try await run(facts, draft: draft) { exchange in
            if let finding = try await self.sendEnvelope(through: .data, facts: facts, exchange: &exchange) { return finding }
            return try await exchange.content(facts: facts)
        }
    }

    func quit() async {
        switch phase {
        case .open(let connection, _):
            try? await connection.send([MilterEncoder.packet(.quit)])
            connection.close()
            filter.streak(ended: true)
        case .acceptedSession, .refusedSession: filter.streak(ended: true)
        case .new, .failed, .closed: break
        }
        phase = .closed
    }

    // MARK: The exchange

    /// Opens the connection if needed, runs `body`, and turns what happened into a finding;
    /// a failure is the filter's for the rest of the session.
    private func run(_ facts: TransactionFacts, draft: MessageDraft? = nil,
                     _ body: (inout MilterExchange) async throws -> CheckFinding?) async throws -> (CheckFinding, MessageDraft) {
        let untouched = draft ?? MessageDraft(fields: [], body: .replaced(ByteBuffer()), sender: .null, recipients: [])
        switch phase {
        case .acceptedSession, .closed: return (CheckFinding(.pass, detail: "accepted the session"), untouched)
        case .refusedSession(let finding): return (finding, untouched)
        case .failed(let error): throw MilterError(.failedBefore, "failed earlier in this session: \(error.detail)")
        case .new, .open: break
        }
        do {
            var exchange = try await connect(facts: facts, draft: untouched)
            let finding = try await body(&exchange)
            if case .open = phase { phase = .open(exchange.connection, exchange.negotiation) }
            // A filter that answers the envelope and then hangs on every message is one failure
            // streak: only a whole message, or a session that ends well, ends it.
            if draft != nil { filter.streak(ended: true) }
            return (finding ?? exchange.finding(), exchange.draft)
        } catch {
            let failure = error as? MilterError ?? MilterError(.protocolError, "\(error)")
            if case .open(let connection, _) = phase { connection.close() }
            phase = .failed(failure)
            filter.streak(ended: false, failure)
            throw failure
        }
    }

    private func connect(facts: TransactionFacts, draft: MessageDraft) async throws(MilterError) -> MilterExchange {
        if case .open(let connection, let negotiation) = phase {
            return MilterExchange(connection: connection, negotiation: negotiation, configuration: configuration,
                                  hostname: filter.hostname, draft: draft)
        }
        let connection = try await MilterConnection.open(configuration.address, timeout: configuration.timeouts.connect, group: filter.group)
        phase = .open(connection, Milter.Negotiation(version: 6, actions: [], flags: []))
        let negotiation = try await MilterExchange.negotiate(connection, timeout: configuration.timeouts.connect)
        phase = .open(connection, negotiation)
        return MilterExchange(connection: connection, negotiation: negotiation, configuration: configuration,
                              hostname: filter.hostname, draft: draft)
    }

    /// CONNECT, HELO, MAIL and RCPT as far as `stage` needs and the filter has not had them;
    /// a finding when the filter decided.
    private func sendEnvelope(through stage: PolicyStage, facts: TransactionFacts,
                              exchange: inout MilterExchange) async throws(MilterError) -> CheckFinding? {
        if !sentConnect {
            sentConnect = true
            if let answer = try await exchange.connectEvent(facts) { return settle(answer, at: .connect, exchange: exchange) }
        }
        if stage >= .helo, let helo = facts.helo, sentHelo != helo {
            if transaction != nil { try await abort(exchange) }
            sentHelo = helo
            if let answer = try await exchange.heloEvent(helo, facts: facts) { return settle(answer, at: .helo, exchange: exchange) }
        }
        guard stage >= .mail, let sender = facts.sender else { return nil }
        if transaction != facts.transactionID {
            if transaction != nil { try await abort(exchange) }
            transaction = facts.transactionID
            if let answer = try await exchange.mailEvent(sender, facts: facts) { return settle(answer, at: .mail, exchange: exchange) }
        }
        guard !messageAccepted else { return CheckFinding(.accept, detail: "accepted the message") }
        let recipients: [(ForwardPath, RecipientParameters?)] = switch stage {
        case .rcpt: facts.recipient.map { [($0, facts.recipientParameters)] } ?? []
        case .data: facts.recipients.filter { !sentRecipients.contains($0.description) }.map { ($0, nil) }
        default: []
        }
        for (recipient, parameters) in recipients {
            sentRecipients.insert(recipient.description)
            if let answer = try await exchange.recipientEvent(recipient, parameters: parameters, facts: facts) {
                // A refusal at RCPT is for this recipient; during the replay at data, for the message.
                return settle(answer, at: .rcpt, exchange: exchange)
            }
        }
        return nil
    }

    private func abort(_ exchange: MilterExchange) async throws(MilterError) {
        try await exchange.connection.send([MilterEncoder.packet(.abort)])
        transaction = nil
        sentRecipients = []
        messageAccepted = false
    }

    /// What a decisive answer means for the session's state.
    private func settle(_ answer: MilterExchange.Answer, at stage: PolicyStage, exchange: MilterExchange) -> CheckFinding {
        let sessionWide = stage <= .helo
        switch answer {
        case .accepted:
            if sessionWide {
                Task { [connection = exchange.connection] in
                    try? await connection.send([MilterEncoder.packet(.quit)])
                    connection.close()
                }
                phase = .acceptedSession
                return CheckFinding(.pass, detail: "accepted the session")
            }
            messageAccepted = true
            return CheckFinding(.accept, detail: "accepted the message")
        case .decided(let finding):
            if sessionWide, finding.refuses { phase = .refusedSession(finding) }
            return finding
        }
    }
}

extension CheckFinding {
    var refuses: Bool {
        switch verdict {
        case .reject, .tempfail: return true
        default: return false
        }
    }
}
