import NIOCore
import PosternLog
import PosternPolicy
import SMTPCore

/// The start of a session (PROXY header, admission, connect rules, greeting), the connection
/// defences, AUTH and the refused session.
extension SessionMachine {
    // MARK: Start

    mutating func readProxyHeader() {
        guard case .awaitingProxyHeader(let buffer, _) = state else { return }
        var candidate = buffer
        do {
            guard let header = try ProxyProtocolParser.parse(&candidate) else { return }
            if let source = header.source { client = ClientEndpoint(address: source.address, port: source.port) }
            // What follows the header was sent before the greeting.
            framer.append(candidate)
            clientKnown()
        } catch {
            log(.warning, "bad PROXY protocol header", ["error": "\(error)"])
            send(SessionReplies.badProxyHeader)
            close(.ended)
        }
    }

    /// The client's address is final (after any PROXY header): judge it, then ask for a slot.
    mutating func clientKnown() {
        location = policy.geoip?.locate(client.address)
        let trusted = configuration.relayControl.isTrusted(client.address)
        walk = PolicyWalk(policy: policy, relayControl: configuration.relayControl, clientTrusted: trusted,
                          checkedStages: configuration.checkedStages)
        smtp.offersETRN = trusted
        sessionDeadline = now.uptime + configuration.timeouts.session
        state = .admitting
        emit(.admit(client))
    }

    mutating func admit(_ admission: Admission) {
        let refusal: (reply: SMTPReply, metric: String, reason: String)? = switch admission {
        case .admitted: nil
        case .tooManyConnections(let limit): (SessionReplies.tooManyConnections, "max_connections", "total(\(limit))")
        case .tooManyFromAddress(let limit): (SessionReplies.tooManyConnectionsFromAddress, "max_connections_per_ip", "perAddress(\(limit))")
        case .shuttingDown: (SessionReplies.shuttingDown, "shutting_down", "shutting down")
        }
        if let refusal {
            if admission != .shuttingDown { log(.notice, "connection refused", ["reason": refusal.reason]) }
            send(refusal.reply)
            count(.connectionRefused(reason: refusal.metric))
            recordRefusedConnection(refusal.reply, reason: refusal.reason)
            return close(.ended)
        }
        log(.debug, "session started")
        walkStep(walk.begin(.connect), for: .connect)
    }

    /// The 220 (RFC 5321 §4.3.1), after `greet_delay` when one is set. A client that has
    /// talked already did not wait for it.
    mutating func greet() {
        let delay = configuration.timeouts.greetDelay
        if delay > .zero, !isInGreetDelay {
            state = .greetDelay(until: now.uptime + delay)
            if framer.bufferedBytes > 0 { pregreet() }
            return
        }
        if configuration.forbidImproperPipelining && framer.bufferedBytes > 0 { return pregreet() }
        send(smtp.greeting)
        greeted = true
        state = .commands
        advance()
    }

    private var isInGreetDelay: Bool { if case .greetDelay = state { return true } else { return false } }

    // MARK: Connection defences

    /// The client talked before the greeting: a bot that does not wait for the server
    /// (RFC 5321 §4.3.1 has the client wait for the 220).
    mutating func pregreet() {
        framer.discardBufferedInput()
        // Before EHLO, but the enhanced code is what postscreen-aware tools look for.
        endSession(defence: "pregreet", SessionReplies.pregreet)
    }

    /// Commands sent after EHLO/HELO before its reply arrived (RFC 2920 §3.1): refused as
    /// Postfix's `smtpd_forbid_unauth_pipelining` does, before anything reaches the upstream.
    mutating func improperPipelining(after command: String) {
        log(.notice, "improper command pipelining after \(command)", ["bytes": "\(framer.discardBufferedInput())"])
        endSession(defence: "pipelining", SessionReplies.improperPipelining)
    }

    /// Ends the session with a defence's reply.
    mutating func endSession(defence: String, _ reply: SMTPReply) {
        send(reply)
        noteDefence(defence, reply)
        close(.defence(defence))
    }

    /// Counts and logs a defence. The transaction in progress (if any) is recorded as aborted
    /// with the defence as its reason; otherwise the session gets a record of its own.
    private mutating func noteDefence(_ defence: String, _ reply: SMTPReply) {
        count(.defence(defence))
        log(.notice, "connection defence", ["defence": defence, "reply": "\(reply)"])
        let reason = "\(defence): \(reply.text)"
        if transaction != nil {
            endReason = reason
        } else {
            recordRefusedConnection(reply, reason: reason)
        }
    }

    /// A connection refused before any transaction (or ended by a defence after the last one,
    /// whose record has that transaction's id: this one gets its own).
    mutating func recordRefusedConnection(_ reply: SMTPReply, reason: String) {
        emitRecord(DecisionRecord(
            timestamp: now.wallMilliseconds, id: transactionsStarted > 0 ? makeID() : transactionID, session: sessionID, client: recordContext.client,
            decision: reply.isTransientFailure ? .tempfailed : .rejected, stage: .connect, reason: reason,
            reply: DecisionRecord.Reply(reply), timings: .init(total: 0, filters: 0, upstream: 0)))
    }

    /// After a connect-stage refusal only QUIT is served (RFC 5321 §3.1); everything else is 503.
    mutating func refusedSessionCommand(_ event: SMTPInputFramer.CommandLineEvent) {
        if case .line(let line) = event, case .quit = try? parser.parse(line.readableBytesView) {
            send(SessionReplies.refusedSessionBye)
            close(.quit)
        } else {
            send(SessionReplies.refusedSessionCommand)
        }
    }

    // MARK: AUTH (RFC 4954)

    mutating func startSASL(_ mechanism: SASLMechanism, initialResponse: String?) {
        let (exchange, next) = SASLExchange.start(mechanism, initialResponse: initialResponse)
        continueSASL(exchange, next)
    }

    mutating func saslLine(_ event: SMTPInputFramer.CommandLineEvent, _ exchange: SASLExchange) {
        switch event {
        case .line(let line):
            var exchange = exchange
            let next = exchange.respond(String(decoding: line.readableBytesView, as: UTF8.self))
            continueSASL(exchange, next)
        case .failure:
            state = .commands
            perform(smtp.authenticationFailed(SessionReplies.authLineTooLong))
        }
    }

    private mutating func continueSASL(_ exchange: SASLExchange, _ next: SASLExchange.Next) {
        let mechanism = exchange.mechanism
        switch next {
        case .prompt(let challenge):
            send(SessionReplies.saslPrompt(challenge))
            state = .sasl(exchange)
        case .refused(let response):
            // A cancelled or undecodable response ends the exchange (counted as a client error).
            let cancelled = response == .cancelled
            count(.authAttempt(mechanism: mechanism.rawValue, result: cancelled ? "cancelled" : "failure"))
            state = .commands
            perform(smtp.authenticationFailed(cancelled ? SessionReplies.authCancelled : SessionReplies.authUndecodable))
        case .credentials(let credentials):
            // Malformed credentials are checked as an unknown user: they cost the same and count as a failure.
            let credentials = credentials ?? SASLExchange.Credentials(user: "", password: "")
            state = .credentials(mechanism, user: credentials.user)
            emit(.verifyCredentials(CredentialsRequest(
                mechanism: mechanism, user: credentials.user, password: credentials.password, client: client.address)))
        }
    }

    mutating func checked(_ outcome: CredentialsOutcome, mechanism: SASLMechanism, user: String) {
        let name = mechanism.rawValue
        state = .commands
        switch outcome {
        case .success:
            count(.authAttempt(mechanism: name, result: "success"))
            log(.info, "authenticated", ["mechanism": name, "user": user])
            authMechanism = name
            send(smtp.authenticationSucceeded(user: user))
        case .failure(let nowLockedOut):
            count(.authAttempt(mechanism: name, result: "failure"))
            log(.notice, "AUTH failed", ["mechanism": name, "locked_out": "\(nowLockedOut)"])
            let delay = configuration.authFailureDelay
            if delay > .zero {
                state = .authDelay(until: now.uptime + delay)
            } else {
                perform(smtp.authenticationFailed(SessionReplies.authInvalid))
            }
        case .lockedOut:
            count(.authAttempt(mechanism: name, result: "locked_out"))
            log(.notice, "AUTH refused: too many failures from this address", ["mechanism": name])
            perform(smtp.authenticationFailed(SessionReplies.authLockedOut))
        case .unavailable:
            count(.authAttempt(mechanism: name, result: "error"))
            log(.error, "AUTH unavailable: no credentials loaded")
            send(SessionReplies.authUnavailable)
        }
    }
}
