import NIOCore
import PosternLog
import PosternPolicy
import SMTPCore

/// Commands, the policy walk at each point, and the upstream transaction kept in step with
/// the client's.
extension SessionMachine {
    // MARK: Commands

    mutating func command(_ event: SMTPInputFramer.CommandLineEvent) {
        var isHello = false
        let action: SMTPServerStateMachine.Action
        switch event {
        case .line(let line):
            do {
                let command = try parser.parse(line.readableBytesView)
                switch command {
                case .ehlo, .helo: isHello = true
                default: break
                }
                action = smtp.receive(command)
            } catch {
                action = smtp.receive(error)
            }
        case .failure(let error):
            action = smtp.receive(error)
        }
        perform(action, hello: isHello)
        settleAbandonedTransaction()
        if isHello, case .commands = state, configuration.forbidImproperPipelining, framer.bufferedBytes > 0 {
            // RFC 2920 §3.1: EHLO ends a group; what follows was sent before its reply arrived.
            return improperPipelining(after: smtp.isExtended ? "EHLO" : "HELO")
        }
        // While draining, pipelined commands after a finished transaction are not served.
        drainIfIdle()
    }

    /// `hello`: the action answers EHLO/HELO, whose 250 lists extensions and carries no
    /// enhanced code (RFC 2034 §3).
    mutating func perform(_ action: SMTPServerStateMachine.Action, hello: Bool = false) {
        switch action {
        case .reply(let reply) where hello && reply.code == 250:
            reply.encode(into: &output)
        case .reply(let reply):
            send(reply)
        case .close(let reply):
            // The protocol machine closes only past a limit: junk commands or client errors.
            endSession(defence: smtp.junkCount > configuration.server.maximumJunkCommands ? "junk_commands" : "errors", reply)
        case .quit(let reply):
            send(reply)
            close(.quit)
        case .authenticate(let mechanism, let initialResponse):
            startSASL(mechanism, initialResponse: initialResponse)
        case .etrn(let node):
            state = .upstream(.etrn(node), since: now.uptime)
            emit(.upstream(.etrn(node, upstreamClient)))
        case .startTLS(let reply):
            send(reply)
            emit(.startTLS)
            state = .negotiatingTLS(discarded: framer.discardBufferedInput(), deadline: now.uptime + configuration.timeouts.tlsHandshake)
        case .mail(let path, let parameters):
            transactionID = makeID()
            transactionsStarted += 1
            transaction = TransactionRecord(id: transactionID, started: now.uptime, mailFrom: path, walk: walk)
            walkStep(walk.begin(.mail(helo: smtp.helloName)), for: .mail(path, parameters))
        case .recipient(let path, let parameters):
            walkStep(walk.begin(.rcpt(path, authenticated: smtp.authenticatedUser != nil)), for: .rcpt(path, parameters))
        case .receiveData(let reply):
            send(reply)
            framer.beginData()
            message = MessageProgress(textLineLength: smtp.configuration.maximumTextLineLength, bareLineEndings: configuration.bareLineEndings)
            emit(.spool(.begin))
            state = .content(ContentReceiver(.data, at: now.uptime))
        case .receiveChunk(let size, let last, let accept, let refusal):
            if accept && !(message?.spooling ?? false) {
                message = MessageProgress(textLineLength: smtp.configuration.maximumTextLineLength, bareLineEndings: configuration.bareLineEndings)
                message?.spooling = true
                emit(.spool(.begin))
            }
            state = .content(ContentReceiver(.chunk(remaining: size, last: last, accepted: accept, refusal: refusal), at: now.uptime))
        case .reset(let reply):
            send(reply)
        }
    }

    /// After RSET, a new EHLO, or a BDAT refusal that ended it, the protocol has no
    /// transaction any more: its record is written and the upstream transaction abandoned.
    mutating func settleAbandonedTransaction() {
        guard smtp.transaction == nil, smtp.phase != .mailPending else { return }
        if let transaction, !closedNow {
            emitRecord(transaction.abandoned(endReason: endReason ?? "transaction abandoned by the client", context: recordContext))
            self.transaction = nil
        }
        message = nil
        if upstreamOpen && !closedNow {
            upstreamOpen = false
            emit(.upstream(.abort))
        }
    }

    /// While draining, a session with no transaction in progress is told to go.
    mutating func drainIfIdle() {
        guard draining, case .commands = state, transaction == nil, smtp.phase != .mailPending, smtp.phase != .closed else { return }
        send(SessionReplies.shuttingDown)
        close(.ended)
    }

    var upstreamClient: UpstreamClient {
        UpstreamClient(address: client.address, port: client.port, helo: smtp.helloName,
                       protocolName: smtp.isExtended ? "ESMTP" : "SMTP", login: smtp.authenticatedUser, name: client.name)
    }

    // MARK: The policy walk

    /// Carries out a step of the walk for `point`.
    mutating func walkStep(_ step: PolicyWalk.Step, for point: PendingPoint) {
        switch step {
        case .evaluate(let stage):
            state = .policy(point)
            let facts = facts(for: point)
            if let lookup = dueDNSLists(at: stage, facts: facts) {
                awaitingDNSLists = stage
                emit(.lookUpDNSLists(lookup))
                return
            }
            var request = StageRequest(stage: stage, facts: facts)
            if stage == .data {
                request.addedHeaders = (transaction?.addedHeaders ?? []).compactMap { action in
                    if case .addHeader(let name, let value) = action { AddedHeader(name: name, value: value) } else { nil }
                }
            }
            emit(.evaluate(request))
        case .proceed:
            passed(point)
        case .decided(let decision):
            decided(point, decision)
        }
    }

    mutating func evaluated(_ result: StageVerdict, for point: PendingPoint) {
        state = .commands
        if result.stage == .connect {
            sessionScores += result.verdict.scores
            sessionShadowScores += result.verdict.shadowScores
        }
        transaction?.note(result)
        transaction?.sessionScore = (sessionScores, sessionShadowScores, dnsLists.reduce(0) { $0 + $1.weight })
        var point = point
        if case .data(let stored, _) = point { point = .data(stored, verdict: result.verdict) }
        walkStep(walk.evaluated(result.verdict), for: point)
    }

    /// The DNS lists the rules at `stage` can know and the session has not asked about what
    /// they look up now (marked asked here), or nil.
    mutating func dueDNSLists(at stage: PolicyStage, facts: TransactionFacts) -> DNSListLookup? {
        guard !policy.dnsLists.isEmpty else { return nil }
        var senderDomain: String?
        if case .mailbox(let mailbox)? = facts.sender { senderDomain = mailbox.domain.description }
        var due: [DNSList] = []
        for list in policy.dnsLists {
            let ready = list.lookup == .client ? policy.dnsListWait.stage : list.lookup.stage
            guard ready <= stage else { continue }
            let subject = list.subjectKey(helo: facts.helo, senderDomain: senderDomain)
            guard dnsListSubjects[list.name] != subject else { continue }
            dnsListSubjects[list.name] = subject
            due.append(list)
        }
        return due.isEmpty ? nil : DNSListLookup(lists: due, client: client.address, helo: facts.helo, senderDomain: senderDomain)
    }

    /// What the rules see at `point`.
    func facts(for point: PendingPoint) -> TransactionFacts {
        var facts = TransactionFacts(
            transactionID: transactionID, clientAddress: client.address, clientPort: client.port, helo: smtp.helloName,
            tls: smtp.isTLSActive, authUser: smtp.authenticatedUser, recipients: smtp.transaction?.recipients.map(\.path) ?? [])
        facts.location = location
        facts.clientName = client.name
        facts.dnsLists = dnsLists
        for outcome in transaction?.checks ?? [] { facts.earlierChecks[outcome.check] = outcome }
        facts.ruleScore = (sessionScores + (transaction?.scores ?? [])).reduce(0) { $0 + $1.score }
        facts.shadowScore = (sessionShadowScores + (transaction?.shadowScores ?? [])).reduce(0) { $0 + $1.score }
        facts.protocolName = smtp.helloName == nil ? nil : smtp.isExtended ? "ESMTP" : "SMTP"
        facts.tlsVersion = tlsVersion
        facts.authMechanism = authMechanism
        facts.senderParameters = smtp.transaction?.parameters
        switch point {
        case .connect:
            break
        case .mail(let path, let parameters):
            facts.sender = path
            facts.senderParameters = parameters
            facts.size = parameters.size
        case .rcpt(let path, let parameters):
            facts.sender = smtp.transaction?.reversePath
            facts.recipient = path
            facts.recipientParameters = parameters
        case .data(let stored, _):
            facts.sender = smtp.transaction?.reversePath
            facts.size = stored.size
            facts.message = stored.parsed
        }
        return facts
    }

    /// Nothing in the policy decided `point`.
    mutating func passed(_ point: PendingPoint) {
        switch point {
        case .connect:
            greet()
        case .mail(let path, let parameters):
            state = .upstream(.mail(path, parameters), since: now.uptime)
            emit(.upstream(.begin(UpstreamEnvelope(client: upstreamClient, reversePath: path, parameters: parameters))))
        case .rcpt(let path, let parameters):
            guard upstreamOpen else {
                state = .commands
                return recipientAnswered(path, parameters, SessionReplies.reply(for: UpstreamError(.connectionLost, "no upstream transaction")))
            }
            state = .upstream(.rcpt(path, parameters), since: now.uptime)
            emit(.upstream(.addRecipient(path, parameters)))
        case .data(let stored, let verdict):
            if let disposition = transaction?.disposition {
                transaction?.rule = disposition.rule
                transaction?.reason = disposition.reason
                return decided(point, PolicyDecision(stage: .data, action: disposition.action, reply: disposition.reply,
                                                     rule: disposition.rule, reason: disposition.reason, byRelayControl: false))
            }
            if let edited = verdict?.editedMessage {
                // The earlier stages' headers are in the edited message already.
                return relay(stored, edited: edited, headerActions: verdict?.headerActions ?? [])
            }
            relay(stored, headerActions: (transaction?.addedHeaders ?? []) + (verdict?.headerActions ?? []))
        }
    }

    mutating func decided(_ point: PendingPoint, _ decision: PolicyDecision) {
        switch point {
        case .connect:
            // RFC 5321 §3.1: a connect-stage refusal replaces the greeting.
            log(.notice, "connection refused by policy", ["rule": decision.rule ?? ""])
            emitRecord(DecisionRecord(
                timestamp: now.wallMilliseconds, id: transactionID, session: sessionID, policyVersion: policy.version,
                client: recordContext.client, decision: decision.reply.isTransientFailure ? .tempfailed : .rejected, stage: .connect,
                rule: decision.rule, reason: decision.reason, reply: DecisionRecord.Reply(decision.reply),
                shadow: walk.sessionShadow.map { DecisionRecord.Shadow(rule: $0.rule, action: $0.action) },
                timings: .init(total: 0, filters: 0, upstream: 0)))
            send(decision.reply)
            state = .refused
        case .mail(let path, let parameters):
            log(.notice, "refused by policy", ["rule": decision.rule ?? "", "stage": decision.stage.rawValue])
            state = .commands
            mailAnswered(path, parameters, decision.reply)
        case .rcpt(let path, let parameters):
            if decision.byRelayControl {
                count(.relayDenied)
                log(.notice, "relay access denied", ["recipient": "\(path)", "reason": decision.reason ?? ""])
            } else {
                log(.notice, "refused by policy", ["rule": decision.rule ?? "", "stage": decision.stage.rawValue])
            }
            state = .commands
            let answer = prepared(decision.reply)
            transaction?.refuseRecipient(decision, reply: answer)
            recipientAnswered(path, parameters, decision.reply)
        case .data(let stored, let verdict):
            if upstreamOpen {
                upstreamOpen = false
                emit(.upstream(.abort))
            }
            if decision.action == .quarantine {
                quarantine(stored, decision, edited: verdict?.editedMessage)
            } else {
                log(.notice, "message refused by policy", ["rule": decision.rule ?? "", "action": decision.action.name])
                finishMessage(decision.reply, size: stored.size, relayed: false, reason: decision.reason,
                              disposition: decision.action == .discard ? .discarded : .answered)
            }
        }
    }

    // MARK: The upstream transaction

    mutating func upstreamAnswered(_ pending: PendingUpstream, since: NIODeadline, _ result: Result<UpstreamReply, UpstreamFailure>) {
        state = .commands
        let elapsed = (now.uptime - since).nanoseconds
        switch pending {
        case .mail(let path, let parameters):
            transaction?.upstreamNanoseconds += elapsed
            switch result {
            case .success(let answer):
                if transaction?.upstream == nil { transaction?.upstream = answer.upstream }
                upstreamOpen = answer.reply.isPositive
                mailAnswered(path, parameters, answer.reply)
            case .failure(let failure):
                if transaction?.upstream == nil { transaction?.upstream = failure.upstream }
                // No upstream would take the session: the pool logs the outage once; each
                // tempfailed MAIL is a decision record and an info line, not a warning each.
                log(failure.error.kind == .unavailable ? .info : .warning, "upstream failed at MAIL", ["error": "\(failure.error)"])
                mailAnswered(path, parameters, SessionReplies.reply(for: failure.error))
            }
        case .rcpt(let path, let parameters):
            transaction?.upstreamNanoseconds += elapsed
            switch result {
            case .success(let answer):
                recipientAnswered(path, parameters, answer.reply)
            case .failure(let failure):
                log(.warning, "upstream failed at RCPT", ["error": "\(failure.error)"])
                upstreamOpen = false
                recipientAnswered(path, parameters, SessionReplies.reply(for: failure.error))
            }
        case .commit(let size):
            transaction?.upstreamNanoseconds += elapsed
            upstreamOpen = false
            switch result {
            case .success(let answer):
                transaction?.upstream = answer.upstream
                let envelope = smtp.transaction
                log(.info, "message relayed", [
                    "from": "\(envelope?.reversePath ?? .null)", "rcpts": "\(envelope?.recipients.count ?? 0)", "size": "\(size)",
                    "upstream": answer.upstream, "upstream.reply": "\(answer.reply)", "upstream_ms": "\(elapsed / 1_000_000)",
                ])
                finishMessage(answer.reply, size: size, relayed: true, reason: nil, disposition: .answered)
            case .failure(let failure):
                log(.warning, "upstream failed during message transfer", ["error": "\(failure.error)"])
                finishMessage(SessionReplies.reply(for: failure.error), size: size, relayed: false,
                              reason: "upstream \(failure.error.kind.name)", disposition: .answered)
            }
        case .reenvelope(let plan):
            transaction?.upstreamNanoseconds += elapsed
            reenvelopeAnswered(plan, result)
        case .etrn(let node):
            switch result {
            case .success(let answer):
                log(.info, "ETRN passed to the upstream", ["node": node, "upstream.reply": "\(answer.reply)"])
                send(answer.reply)
            case .failure(let failure):
                log(.warning, "upstream failed at ETRN", ["error": "\(failure.error)"])
                send(SessionReplies.reply(for: failure.error, etrnNode: node))
            }
        }
    }

    mutating func mailAnswered(_ path: ReversePath, _ parameters: MailParameters, _ reply: SMTPReply) {
        let answer = smtp.mailReplied(reply, path: path, parameters: parameters)
        send(answer)
        guard !answer.isPositive, let transaction else { return }
        emitRecord(transaction.finished(reply: answer, stage: .mail, size: nil, relayed: false, reason: nil, outcome: .answered,
                                        context: recordContext))
        self.transaction = nil
    }

    mutating func recipientAnswered(_ path: ForwardPath, _ parameters: RecipientParameters, _ reply: SMTPReply) {
        let answer = smtp.recipientReplied(reply, path: path, parameters: parameters)
        transaction?.addRecipient(path, reply: answer)
        send(answer)
    }
}
