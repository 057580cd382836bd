import NIOCore
import PosternUpstream
import SMTPCore

/// AUTH, ETRN and the connection defences (pre-greet, session time, data rate, junk
/// commands, errors): what a session does to be trusted, and to not be abused.
extension SMTPSession {
    // MARK: Connection defences

    /// Pre-greet: waits `greet_delay` before the banner. A client that talks first is a
    /// bot that does not wait for the server (RFC 5321 §4.3.1 has the client wait for the
    /// 220): 554 5.5.1 and close. False when the session must end here.
    func waitBeforeGreeting() async -> Bool {
        var talked = framer.discardBufferedInput() > 0
        if !talked {
            setReadTimeout(configuration.timeouts.greetDelay)
            switch await nextEvent() {
            case .bytes, .tlsEstablished:
                talked = true
            case .timedOut:
                break
            case .drain:
                queue(ReplyMapping.shuttingDown)
                await flush()
                return false
            case nil:
                return false
            }
        }
        guard talked else { return true }
        // Before EHLO, but the enhanced code is what postscreen-aware tools look for.
        queue(ReplyMapping.pregreet)
        close()
        noteDefence("pregreet", ReplyMapping.pregreet)
        await flush()
        try? await channel.close().get()
        return false
    }

    /// Sets the read timeout for the next command: the command timeout, or less when the
    /// session's time runs out first. False (and the session ended) when it has run out.
    func armCommandTimeout() -> Bool {
        let left = sessionDeadline - .now()
        guard left > .zero else {
            endSession(defence: "session_time", ReplyMapping.sessionTimeExceeded)
            return false
        }
        setReadTimeout(min(configuration.timeouts.command, left))
        return true
    }

    /// Sets the read timeout for message content: the data timeout, or less when the
    /// session time or the minimum data rate would run out first. Returns the defence that
    /// is due already, if any.
    func armContentTimeout() -> (String, SMTPReply)? {
        switch contentBudget() {
        case .left(let timeout):
            setReadTimeout(timeout)
            return nil
        case .due(let defence, let reply):
            return (defence, reply)
        }
    }

    /// After a read timeout during content: the defence that caused it, if one did.
    func contentDefenceDue() -> (String, SMTPReply)? {
        if case .due(let defence, let reply) = contentBudget() { return (defence, reply) }
        return nil
    }

    private enum ContentBudget {
        case left(TimeAmount)
        case due(String, SMTPReply)
    }

    /// `min_data_rate`: once `data_rate_grace` has passed since the content started, the
    /// client must have sent `min_data_rate` octets per second of the time beyond the grace.
    /// The deadline follows from what has arrived: grace + octets ÷ rate after the start.
    private func contentBudget() -> ContentBudget {
        let now = NIODeadline.now()
        let sessionLeft = sessionDeadline - now
        guard sessionLeft > .zero else { return .due("session_time", ReplyMapping.sessionTimeExceeded) }
        var timeout = min(configuration.timeouts.data, sessionLeft)
        let rate = configuration.limits.minDataRate
        if rate > 0, let progress = contentProgress {
            let earned = TimeAmount.nanoseconds(Int64(Double(progress.octets) / Double(rate) * 1e9))
            let left = progress.started + configuration.limits.dataRateGrace + earned - now
            guard left > .zero else { return .due("min_data_rate", ReplyMapping.dataRateTooLow) }
            timeout = min(timeout, left)
        }
        return .left(timeout)
    }

    /// Ends the session with a defence's reply.
    func endSession(defence: String, _ reply: SMTPReply) {
        queue(machine.prepare(reply))
        close()
        noteDefence(defence, reply)
    }

    /// Counts and logs a defence; the transaction in progress (if any) is recorded as
    /// aborted with the defence as its reason, otherwise the session gets a record of its own.
    func noteDefence(_ defence: String, _ reply: SMTPReply) {
        environment.metrics.defence(defence)
        logger.notice("connection defence", metadata: ["defence": "\(defence)", "reply": "\(reply)"])
        let reason = "\(defence): \(reply.text)"
        if trace != nil {
            endReason = reason
        } else {
            recordRefusedConnection(reply, reason: reason)
        }
    }

    // MARK: AUTH (RFC 4954)

    func authenticate(_ mechanism: SASLMechanism, initialResponse: String?) async {
        let name = mechanism.rawValue
        guard let authenticator = environment.authenticator else {
            queue(machine.prepare(ReplyMapping.authUnavailable))
            return
        }
        if authenticator.isLockedOut(client.address) {
            environment.metrics.authAttempt(mechanism: name, result: "locked_out")
            logger.notice("AUTH refused: too many failures from this address", metadata: ["mechanism": "\(name)"])
            await perform(machine.authenticationFailed(ReplyMapping.authLockedOut))
            return
        }
        var credentials: (user: String, password: String)?
        switch mechanism {
        case .plain:
            guard let response = await saslResponse(initialResponse, prompt: "") else { return }
            guard case .data(let bytes) = response else { return await refuseExchange(response, mechanism: name) }
            credentials = SASL.plain(bytes)
        case .login:
            guard let userResponse = await saslResponse(initialResponse, prompt: SASL.usernamePrompt) else { return }
            guard case .data(let userBytes) = userResponse else { return await refuseExchange(userResponse, mechanism: name) }
            guard let passwordResponse = await saslResponse(nil, prompt: SASL.passwordPrompt) else { return }
            guard case .data(let passwordBytes) = passwordResponse else { return await refuseExchange(passwordResponse, mechanism: name) }
            if let user = String(validating: userBytes, as: UTF8.self), !user.isEmpty,
               let password = String(validating: passwordBytes, as: UTF8.self) {
                credentials = (user, password)
            }
        }
        let outcome = if let credentials { await authenticator.verify(user: credentials.user, password: credentials.password) } else { Authenticator.Outcome.failure }
        switch outcome {
        case .success:
            let user = credentials!.user
            authenticator.recordSuccess(client.address)
            environment.metrics.authAttempt(mechanism: name, result: "success")
            logger.info("authenticated", metadata: ["mechanism": "\(name)", "user": "\(user)"])
            queue(machine.authenticationSucceeded(user: user))
            // The next MAIL opens an upstream session that names the user (XCLIENT LOGIN).
            if !upstreamTransactionOpen { await dropRelay() }
        case .failure:
            let locked = authenticator.recordFailure(client.address)
            environment.metrics.authAttempt(mechanism: name, result: "failure")
            logger.notice("AUTH failed", metadata: ["mechanism": "\(name)", "locked_out": "\(locked)"])
            let delay = authenticator.settings.failureDelay
            if delay > .zero { try? await Task.sleep(for: .nanoseconds(delay.nanoseconds)) }
            await perform(machine.authenticationFailed(ReplyMapping.authInvalid))
        case .unavailable:
            environment.metrics.authAttempt(mechanism: name, result: "error")
            logger.error("AUTH unavailable: no credentials loaded")
            queue(machine.prepare(ReplyMapping.authUnavailable))
        }
    }

    /// A cancelled or undecodable response ends the exchange (counted as a client error).
    private func refuseExchange(_ response: SASL.Response, mechanism: String) async {
        let cancelled = response == .cancelled
        environment.metrics.authAttempt(mechanism: mechanism, result: cancelled ? "cancelled" : "failure")
        await perform(machine.authenticationFailed(cancelled ? ReplyMapping.authCancelled : ReplyMapping.authUndecodable))
    }

    /// The client's response: the initial response when it sent one, else the line it
    /// sends after `334 prompt`. Nil when the session ended or the line was refused.
    private func saslResponse(_ initial: String?, prompt: String) async -> SASL.Response? {
        if let initial { return SASL.decode(initial) }
        queue(SMTPReply(334, nil, prompt))
        // RFC 4954 §4: a response line may be up to 12288 octets.
        while !closing {
            if let event = framer.nextCommandLine(maximumLength: 12_288) {
                switch event {
                case .line(let line):
                    return SASL.decode(String(decoding: line.readableBytesView, as: UTF8.self))
                case .failure:
                    await perform(machine.authenticationFailed(ReplyMapping.authLineTooLong))
                    return nil
                }
            }
            await flush()
            if closing { break }
            guard armCommandTimeout() else { break }
            switch await readMore() {
            case .bytes, .tlsEstablished:
                continue
            case .timedOut:
                queue(machine.prepare(ReplyMapping.timeout))
                close()
            case .drain:
                draining = true
            case .closed:
                closing = true
            }
        }
        return nil
    }

    // MARK: ETRN (RFC 1985)

    /// From trusted networks, ETRN goes to the upstream and its reply comes back (Postfix
    /// flushes its deferred mail for the domain). Anyone else: 502, as before.
    func etrn(_ node: String) async {
        guard clientTrusted else {
            logger.notice("ETRN refused: client not in trusted_networks")
            await perform(machine.refuse(SMTPReply(502, EnhancedStatusCode(5, 5, 1), "Error: command not implemented")))
            return
        }
        do {
            let session = try await openRelay()
            let reply = try await session.etrn(node)
            logger.info("ETRN passed to the upstream", metadata: ["node": "\(node)", "upstream.reply": "\(reply)"])
            queue(machine.prepare(reply))
        } catch {
            await dropRelay()
            logger.warning("upstream failed at ETRN", metadata: ["error": "\(error)"])
            queue(machine.prepare(ReplyMapping.reply(for: error)))
        }
    }
}
