import NIOCore
import PosternPolicy
import SMTPCore

/// The events of one session with one filter as they go over the wire: macros, the
/// event, and the answer read as the negotiated flags say (no read when the filter said it
/// sends no reply, nothing at all for an event it asked not to get). At end of message the
/// filter's edits are applied to `draft`.
struct MilterExchange {
    let connection: MilterConnection
    let negotiation: Milter.Negotiation
    let configuration: MilterConfiguration
    let hostname: String
    var draft: MessageDraft
    /// A QUARANTINE answer: not final; the message is quarantined unless something refuses it.
    private(set) var quarantine: String?
    /// What the filter did to the message, for the record.
    private(set) var edits: [String] = []
    /// The same for the rules.
    private(set) var effects = CheckEffects()

    init(connection: MilterConnection, negotiation: Milter.Negotiation, configuration: MilterConfiguration, hostname: String,
         draft: MessageDraft) {
        self.connection = connection
        self.negotiation = negotiation
        self.configuration = configuration
        self.hostname = hostname
        self.draft = draft
    }

    enum Answer {
        case accepted
        case decided(CheckFinding)
    }

    // MARK: Negotiation

    /// Offers version 6, every action and every protocol flag, and checks the answer.
    static func negotiate(_ connection: MilterConnection, timeout: Duration) async throws(MilterError) -> Milter.Negotiation {
        try await connection.send([MilterEncoder.optionNegotiation(actions: .all, flags: .all)])
        let packet = try await connection.receive(timeout: timeout, waitingFor: "option negotiation (is this a milter port?)")
        let response: MilterResponse
        do {
            response = try MilterResponse(packet)
        } catch {
            throw MilterError(.protocolError, "option negotiation: \(error.detail)")
        }
        guard case .negotiation(let negotiation) = response else {
            throw MilterError(.protocolError, "option negotiation answered with something else (is this a milter port?)")
        }
        guard (2...Milter.version).contains(negotiation.version) else {
            throw MilterError(.negotiation, "the filter speaks milter protocol version \(negotiation.version); Postern speaks 2 to 6")
        }
        // Postfix's rule: a filter may not ask for an action that was not offered.
        let unoffered = negotiation.actions.rawValue & ~Milter.Actions.all.rawValue
        guard unoffered == 0 else {
            throw MilterError(.negotiation, "the filter asks for actions Postern did not offer (0x\(String(unoffered, radix: 16)))")
        }
        return negotiation
    }

    // MARK: Envelope events

    func connectEvent(_ facts: TransactionFacts) async throws(MilterError) -> Answer? {
        let address = "\(facts.clientAddress)"
        let family: Milter.Family = address.contains(":") ? .inet6 : .inet
        // Postfix: the verified client name, else the address in brackets.
        let packet = MilterEncoder.connect(hostname: facts.clientName?.verifiedName ?? "[\(address)]", family: family, port: UInt16(clamping: facts.clientPort), address: address)
        return try await event(.connect, packet, macros: .connect, facts: facts, timeout: configuration.timeouts.command)
    }

    func heloEvent(_ helo: String, facts: TransactionFacts) async throws(MilterError) -> Answer? {
        try await event(.helo, MilterEncoder.helo(helo), macros: .helo, facts: facts, timeout: configuration.timeouts.command)
    }

    func mailEvent(_ sender: ReversePath, facts: TransactionFacts) async throws(MilterError) -> Answer? {
        let packet = MilterEncoder.envelope(.mail, path: sender.description, parameters: Self.arguments(facts.senderParameters))
        return try await event(.mail, packet, macros: .mail, facts: facts, timeout: configuration.timeouts.command)
    }

    func recipientEvent(_ recipient: ForwardPath, parameters: RecipientParameters?, facts: TransactionFacts) async throws(MilterError) -> Answer? {
        var facts = facts
        facts.recipient = recipient
        let packet = MilterEncoder.envelope(.recipient, path: recipient.description, parameters: Self.arguments(parameters))
        return try await event(.recipient, packet, macros: .recipient, facts: facts, timeout: configuration.timeouts.command)
    }

    // MARK: Content

    /// DATA, the headers, end of headers, the body and end of message; the edits go into `draft`.
    mutating func content(facts: TransactionFacts) async throws(MilterError) -> CheckFinding? {
        let flags = negotiation.flags
        let timeout = configuration.timeouts.content
        if let answer = try await event(.data, MilterEncoder.packet(.data), macros: .data, facts: facts, timeout: configuration.timeouts.command) {
            return Self.messageFinding(answer)
        }
        if !flags.contains(.noHeaders) {
            let leadingSpace = flags.contains(.headerLeadingSpace)
            let waits = !flags.contains(.noHeaderReply)
            var batch: [ByteBuffer] = []
            for field in draft.fields {
                batch.append(MilterEncoder.header(name: field.name, value: field.shownValue(leadingSpace: leadingSpace)))
                guard waits else {
                    if batch.count >= 64 { try await connection.send(batch); batch = [] }
                    continue
                }
                try await connection.send(batch)
                batch = []
                switch try await answer(to: .header, timeout: timeout) {
                case .none: continue
                case .skip: break
                case .some(.answer(let answer)): return Self.messageFinding(answer)
                }
                break
            }
            try await connection.send(batch)
        }
        if let answer = try await event(.endOfHeaders, MilterEncoder.packet(.endOfHeaders), macros: .endOfHeaders, facts: facts, timeout: timeout) {
            return Self.messageFinding(answer)
        }
        if !flags.contains(.noBody), let answer = try await sendBody(timeout: timeout) {
            return Self.messageFinding(answer)
        }
        try await connection.send(macroPackets(.endOfMessage, for: .endOfMessage, facts: facts) + [MilterEncoder.packet(.endOfMessage)])
        return try await endOfMessage(timeout: timeout)
    }

    private func sendBody(timeout: Duration) async throws(MilterError) -> Answer? {
        let waits = !negotiation.flags.contains(.noBodyReply)
        let connection = self.connection
        var answer: Answer?
        var skipped = false
        let send: (ByteBuffer) async throws -> Void = { chunk in
            guard answer == nil, !skipped else { return }
            var chunk = chunk
            try await connection.send([MilterEncoder.packet(.body) { $0.writeBuffer(&chunk) }])
            guard waits else { return }
            switch try await self.answer(to: .body, timeout: timeout) {
            case .none: break
            case .skip: skipped = true
            case .some(.answer(let decided)): answer = decided
            }
        }
        do {
            switch draft.body {
            case .original(let source, let offset):
                try await source.forEachChunk(from: offset, maximum: Milter.maximumChunk, send)
            case .replaced(var bytes):
                while bytes.readableBytes > 0, let chunk = bytes.readSlice(length: min(bytes.readableBytes, Milter.maximumChunk)) {
                    try await send(chunk)
                }
            }
        } catch let error as MilterError {
            throw error
        } catch {
            throw MilterError(.protocolError, "the message could not be read: \(error)")
        }
        return answer
    }

    /// The edits, then the final answer.
    private mutating func endOfMessage(timeout: Duration) async throws(MilterError) -> CheckFinding? {
        let leadingSpace = negotiation.flags.contains(.headerLeadingSpace)
        var newBody: ByteBuffer?
        while true {
            let packet = try await connection.receive(timeout: timeout, waitingFor: "end of message")
            let response: MilterResponse
            do { response = try MilterResponse(packet) } catch { throw MilterError(.protocolError, "at end of message: \(error.detail)") }
            switch response {
            case .progress:
                continue
            case .quarantine(let reason):
                quarantine = reason.isEmpty ? "quarantined by the filter" : String(reason.prefix(100))
                continue
            case .addHeader(let name, let value):
                draft.addHeader(MessageDraft.Field(name: name, text: value, leadingSpace: leadingSpace))
                edits.append("add header \(name)")
                noteHeader(name, value: value, action: "add header")
            case .insertHeader(let index, let name, let value):
                draft.insertHeader(MessageDraft.Field(name: name, text: value, leadingSpace: leadingSpace), at: Int(index))
                edits.append("insert header \(name)")
                noteHeader(name, value: value, action: "add header")
            case .changeHeader(let index, let name, let value):
                let existed = draft.fields.contains { $0.name.lowercased() == name.lowercased() }
                draft.changeHeader(name: name, index: Int(index),
                                   to: value.isEmpty ? nil : MessageDraft.Field(name: name, text: value, leadingSpace: leadingSpace))
                edits.append(value.isEmpty ? "delete header \(name)" : "change header \(name)")
                if value.isEmpty {
                    if existed { note("delete header") }
                } else {
                    noteHeader(name, value: value, action: name.lowercased() == "subject" ? "rewrite subject" : existed ? "change header" : "add header")
                }
            case .replaceBody(var chunk):
                if newBody == nil { newBody = ByteBuffer() }
                newBody!.writeBuffer(&chunk)
            case .changeSender(let sender, let parameters):
                guard case .mail(let path, var parsed) = Self.parse("MAIL FROM:", sender, parameters) else {
                    throw MilterError(.protocolError, "CHGFROM with an address Postern cannot read: \(sender)")
                }
                // Postfix keeps only RET and ENVID of a filter's MAIL parameters.
                parsed = MailParameters(size: draft.senderParameters.size, body: draft.senderParameters.body,
                                        smtpUTF8: draft.senderParameters.smtpUTF8, ret: parsed.ret, envelopeID: parsed.envelopeID)
                draft.changeSender(path, parameters: parsed)
                edits.append("change sender")
                note("change sender")
            case .addRecipient(let recipient, let parameters):
                guard case .rcpt(let path, _) = Self.parse("RCPT TO:", recipient, parameters) else {
                    throw MilterError(.protocolError, "ADDRCPT with an address Postern cannot read: \(recipient)")
                }
                draft.addRecipient(path)
                edits.append("add recipient")
                note("add recipient")
            case .deleteRecipient(let recipient):
                guard case .rcpt(let path, _) = Self.parse("RCPT TO:", recipient, nil) else {
                    throw MilterError(.protocolError, "DELRCPT with an address Postern cannot read: \(recipient)")
                }
                draft.deleteRecipient(path)
                edits.append("delete recipient")
                note("delete recipient")
            case .continue, .accept, .skip:
                if let newBody { draft.replaceBody(newBody); edits.append("replace body"); note("replace body") }
                return nil
            case .reject, .tempfail, .reply, .discard, .shutdown:
                var finding = Self.messageFinding(try Self.decision(response, to: .endOfMessage)!)
                finding.effects = effects
                return finding
            case .negotiation:
                throw MilterError(.protocolError, "option negotiation in answer to end of message")
            }
        }
    }

    private mutating func note(_ action: String) {
        if !effects.actions.contains(action) { effects.actions.append(action) }
    }

    private mutating func noteHeader(_ name: String, value: String, action: String) {
        note(action)
        let lowered = name.lowercased()
        if !effects.headers.contains(lowered) { effects.headers.append(lowered) }
        if let score = CheckEffects.score(inHeader: name, value: value) { effects.score = score }
    }

    /// The finding of a filter that did not decide (or accepted): pass, or the quarantine it asked for.
    func finding() -> CheckFinding {
        let detail = edits.isEmpty ? "continue" : edits.joined(separator: "; ")
        if let quarantine {
            return CheckFinding(.quarantine, detail: "quarantine: \(quarantine)" + (edits.isEmpty ? "" : "; " + detail), effects: effects)
        }
        return CheckFinding(.pass, detail: detail, effects: effects)
    }

    private static func messageFinding(_ answer: Answer) -> CheckFinding {
        switch answer {
        case .accepted: return CheckFinding(.accept, detail: "accepted the message")
        case .decided(let finding): return finding
        }
    }

    // MARK: One event

    /// Sends the stage's macros (even for an event the filter asked not to get, as Postfix
    /// does) and the event, and reads the answer unless the filter sends none.
    private func event(_ command: Milter.Command, _ packet: ByteBuffer, macros stage: Milter.MacroStage, facts: TransactionFacts,
                       timeout: Duration) async throws(MilterError) -> Answer? {
        let flags = negotiation.flags
        let omitted = Milter.ProtocolFlags.omit(command).map { flags.contains($0) } ?? false
        var packets = macroPackets(stage, for: command, facts: facts)
        if !omitted { packets.append(packet) }
        try await connection.send(packets)
        if omitted { return nil }
        if let noReply = Milter.ProtocolFlags.noReply(to: command), flags.contains(noReply) { return nil }
        switch try await answer(to: command, timeout: timeout) {
        case .none, .skip: return nil
        case .some(.answer(let answer)): return answer
        }
    }

    private enum Read {
        case skip
        case answer(Answer)
    }

    /// Reads until the filter's answer to `command`: nil for continue.
    private func answer(to command: Milter.Command, timeout: Duration) async throws(MilterError) -> Read? {
        while true {
            let packet = try await connection.receive(timeout: timeout, waitingFor: Self.name(command))
            let response: MilterResponse
            do { response = try MilterResponse(packet) } catch { throw MilterError(.protocolError, "in answer to \(Self.name(command)): \(error.detail)") }
            switch response {
            case .progress: continue
            case .continue: return nil
            case .skip: return command == .body ? .skip : nil
            case .accept: return .answer(.accepted)
            case .discard where command == .connect || command == .helo:
                return nil  // Postfix ignores a discard before there is a message
            case .quarantine:
                throw MilterError(.protocolError, "QUARANTINE in answer to \(Self.name(command)); it belongs to end of message")
            default:
                guard let decision = try Self.decision(response, to: command) else {
                    throw MilterError(.protocolError, "\(response) in answer to \(Self.name(command)); edits belong to end of message")
                }
                return .answer(decision)
            }
        }
    }

    /// A refusal, discard or shutdown as a finding; nil for what is not one.
    private static func decision(_ response: MilterResponse, to command: Milter.Command) throws(MilterError) -> Answer? {
        switch response {
        case .reject: return .decided(CheckFinding(.reject(MilterReplies.reject), detail: "reject"))
        case .tempfail: return .decided(CheckFinding(.tempfail(MilterReplies.tempfail), detail: "tempfail"))
        case .reply(let reply):
            let detail = "reply \(reply.code)" + (reply.enhanced.map { " \($0)" } ?? "") + " " + reply.lines.joined(separator: " ")
            return .decided(CheckFinding(reply.code >= 500 ? .reject(reply) : .tempfail(reply), detail: String(detail.prefix(200))))
        case .discard: return .decided(CheckFinding(.discard, detail: "discard"))
        case .shutdown: return .decided(CheckFinding(.tempfail(MilterReplies.shutdown), detail: "shutdown"))
        default: return nil
        }
    }

    // MARK: Macros

    private func macroPackets(_ stage: Milter.MacroStage, for command: Milter.Command, facts: TransactionFacts) -> [ByteBuffer] {
        let names = negotiation.macros[stage] ?? configuration.macros[stage] ?? MilterConfiguration.defaultMacros[stage] ?? []
        guard !names.isEmpty else { return [] }
        let pairs = names.compactMap { name -> (name: String, value: String)? in
            guard let value = macroValue(name, facts: facts), !value.isEmpty else { return nil }
            return (name, value)
        }
        guard !pairs.isEmpty else { return [] }
        return [MilterEncoder.macros(for: command, pairs)]
    }

    /// A macro's value as Postfix gives it (MILTER_README, "Sendmail macro emulation").
    private func macroValue(_ name: String, facts: TransactionFacts) -> String? {
        let key = name.hasPrefix("{") && name.hasSuffix("}") ? String(name.dropFirst().dropLast()) : name
        let inTransaction = facts.sender != nil
        switch key {
        case "j", "daemon_name": return hostname
        case "v": return "Postern"
        case "_": return "\(facts.clientName?.verifiedName ?? "unknown") [\(facts.clientAddress)]"
        case "client_addr": return "\(facts.clientAddress)"
        case "client_port": return "\(facts.clientPort)"
        case "client_name": return facts.clientName?.verifiedName ?? "unknown"
        case "client_ptr": return facts.clientName?.name ?? "unknown"
        case "i": return inTransaction ? facts.transactionID : nil
        case "tls_version": return facts.tlsVersion
        case "auth_type": return facts.authUser == nil ? nil : facts.authMechanism
        case "auth_authen": return facts.authUser
        case "mail_addr": return facts.sender.map { $0.mailbox?.description ?? "" }
        case "mail_host": return facts.sender?.mailbox.map { $0.domain.description }
        case "mail_mailer": return inTransaction ? "smtp" : nil
        case "rcpt_addr": return facts.recipient.map { $0.mailbox?.description ?? "postmaster" }
        case "rcpt_host": return facts.recipient?.mailbox.map { $0.domain.description }
        case "rcpt_mailer": return facts.recipient == nil ? nil : "smtp"
        default: return nil
        }
    }

    // MARK: Helpers

    static func arguments(_ parameters: MailParameters?) -> [String] {
        guard let parameters else { return [] }
        var arguments: [String] = []
        if let size = parameters.size { arguments.append("SIZE=\(size)") }
        if let body = parameters.body { arguments.append("BODY=\(body.rawValue)") }
        if parameters.smtpUTF8 { arguments.append("SMTPUTF8") }
        if let ret = parameters.ret { arguments.append("RET=\(ret)") }
        if let envelopeID = parameters.envelopeID { arguments.append("ENVID=\(envelopeID)") }
        if let auth = parameters.auth { arguments.append("AUTH=\(auth)") }
        return arguments
    }

    static func arguments(_ parameters: RecipientParameters?) -> [String] {
        guard let parameters else { return [] }
        var arguments: [String] = []
        if let notify = parameters.notify { arguments.append("NOTIFY=\(notify)") }
        if let original = parameters.originalRecipient { arguments.append("ORCPT=\(original)") }
        return arguments
    }

    /// An address (and parameters) a filter gave, read as the SMTP command would be.
    private static func parse(_ verb: String, _ address: String, _ parameters: String?) -> SMTPCommand? {
        let path = address.hasPrefix("<") ? address : "<\(address)>"
        let line = verb + path + (parameters.map { $0.isEmpty ? "" : " " + $0 } ?? "")
        return try? SMTPCommandParser().parse(Array(line.utf8))
    }

    private static func name(_ command: Milter.Command) -> String {
        switch command {
        case .connect: return "CONNECT"
        case .helo: return "HELO"
        case .mail: return "MAIL"
        case .recipient: return "RCPT"
        case .data: return "DATA"
        case .header: return "a header"
        case .endOfHeaders: return "end of headers"
        case .body: return "a body chunk"
        case .endOfMessage: return "end of message"
        default: return "\(command)"
        }
    }
}
