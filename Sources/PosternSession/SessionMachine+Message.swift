import NIOCore
import PosternLog
import PosternMIME
import PosternPolicy
import SMTPCore

/// Message content: received, checked, stored, decided at data, relayed or quarantined.
extension SessionMachine {
    // MARK: Receiving

    /// Pulls content from the framer. False when more bytes are needed (the receiver is put
    /// back); true when the content is complete and the state has moved on.
    mutating func receive(_ receiver: inout ContentReceiver) -> Bool {
        switch receiver.kind {
        case .data:
            let limit = smtp.configuration.maximumMessageSize
            while let event = framer.nextDataEvent(maximumLineLength: smtp.configuration.maximumTextLineLength,
                                                   bareLineEndings: configuration.bareLineEndings) {
                switch event {
                case .content(let bytes):
                    receiver.octets += bytes.readableBytes
                    message?.size += bytes.readableBytes
                    transaction?.headers.feed(bytes)
                    // Past the limit the rest is read and dropped (RFC 1870 §6.3: 552 after the dot).
                    if (message?.size ?? 0) <= limit { emit(.spool(.append(bytes))) }
                case .end(let findings):
                    state = .commands
                    contentComplete(findings: findings)
                    return true
                }
            }
        case .chunk(var remaining, let last, let accepted, let refusal):
            while remaining > 0, let bytes = framer.nextChunkBytes(maximum: remaining) {
                remaining -= bytes.readableBytes
                receiver.octets += bytes.readableBytes
                if accepted, message != nil {
                    // With bare_line_endings: normalise, the content as normalised.
                    let content = message!.inspector.inspect(bytes)
                    message!.size += content.readableBytes
                    transaction?.headers.feed(content)
                    emit(.spool(.append(content)))
                }
            }
            guard remaining == 0 else {
                receiver.kind = .chunk(remaining: remaining, last: last, accepted: accepted, refusal: refusal)
                break
            }
            state = .commands
            chunkComplete(last: last, accepted: accepted, refusal: refusal, octets: receiver.octets)
            return true
        }
        state = .content(receiver)
        return false
    }

    private mutating func chunkComplete(last: Bool, accepted: Bool, refusal: SMTPReply?, octets: Int) {
        guard accepted else {
            // RFC 3030 §2: a refused chunk is read in full, then refused.
            send(refusal ?? SessionReplies.localError)
            if refusal?.code == 421 {
                close(.ended)
            } else {
                settleAbandonedTransaction()
            }
            return
        }
        guard last else { return send(smtp.chunkAccepted(size: octets)) }
        guard message != nil else { return }
        let (findings, tail) = message!.inspector.finish()
        if let tail {
            message!.size += tail.readableBytes
            transaction?.headers.feed(tail)
            emit(.spool(.append(tail)))
        }
        contentComplete(findings: findings)
    }

    /// The whole message is in: refused for what the content scan found, or stored for the
    /// data stage.
    mutating func contentComplete(findings: SMTPInputFramer.DataFindings) {
        let size = message?.size ?? 0
        let limits = smtp.configuration
        let refusal: (SMTPReply, String)? =
            if findings.hasBareLineEnding && configuration.bareLineEndings == .reject {
                (SessionReplies.bareLineEnding, findings.bareLineFeed ? "bare LF in message content" : "bare CR in message content")
            } else if findings.nul {
                (SessionReplies.nulInContent, "NUL octet in message content")
            } else if findings.overlongLine {
                (SessionReplies.overlongLine(limits.maximumTextLineLength), "line longer than \(limits.maximumTextLineLength) octets")
            } else if size > limits.maximumMessageSize {
                (SessionReplies.messageTooBig(limits.maximumMessageSize), "message larger than \(limits.maximumMessageSize) octets")
            } else {
                nil
            }
        if let (reply, reason) = refusal {
            log(.notice, "message refused", ["reply": "\(prepared(reply))", "size": "\(size)", "reason": reason])
            if upstreamOpen {
                upstreamOpen = false
                emit(.upstream(.abort))
            }
            return finishMessage(reply, size: size, relayed: false, reason: reason, disposition: .answered)
        }
        state = .storing(size: size)
        emit(.spool(.finish(parse: policy.needsMessage, headers: transaction?.headers.section ?? MessageHeaderCollector().section)))
    }

    mutating func stored(_ result: Result<StoredMessage, StorageError>, size: Int) {
        state = .commands
        switch result {
        case .success(var stored):
            stored.size = size
            walkStep(walk.begin(.data), for: .data(stored, verdict: nil))
        case .failure(let error):
            log(.error, "spool failed", ["error": "\(error)"])
            if upstreamOpen {
                upstreamOpen = false
                emit(.upstream(.abort))
            }
            finishMessage(SessionReplies.localError, size: size, relayed: false, reason: "spool error", disposition: .answered)
        }
    }

    // MARK: Relaying

    /// Relays the message; the reply the client gets will be the upstream's own.
    mutating func relay(_ stored: StoredMessage, headerActions: [RuleAction]) {
        guard upstreamOpen, let envelope = smtp.transaction else {
            return finishMessage(SessionReplies.reply(for: UpstreamError(.connectionLost, "no upstream transaction")),
                                 size: stored.size, relayed: false, reason: "upstream connection lost", disposition: .answered)
        }
        var prefix = receivedHeader(for: envelope)
        for case .addHeader(let name, let value) in headerActions {
            prefix.writeString("\(name): \(value)\r\n")
        }
        var skipping = 0
        let tags = headerActions.compactMap { action -> String? in
            if case .tagSubject(let tag) = action { return tag } else { return nil }
        }
        // Forged Authentication-Results under Postern's authserv-id go first, then the tags.
        var section = transaction?.headers.section
        var rewritten: [UInt8]?
        if let id = configuration.authservID, let original = section, let stripped = AuthenticationResults.strip(original, id: id) {
            log(.notice, "removed Authentication-Results claiming this host's authserv-id", ["authserv_id": id])
            rewritten = stripped
            skipping = original.length
            section = MessageHeaderSection(parsing: stripped)
        }
        if !tags.isEmpty, let current = section {
            if let tagged = SubjectTagger.tag(current, tags: tags) {
                rewritten = tagged
                skipping = transaction?.headers.section.length ?? current.length
            } else {
                log(.notice, "subject not tagged: the header section is longer than the scan limit", ["limit": "\(MessageHeaderCollector.maximumHeaderBytes)"])
            }
        }
        if let rewritten { prefix.writeBytes(rewritten) }
        state = .upstream(.commit(size: stored.size), since: now.uptime)
        emit(.upstream(.commit(OutgoingContent(prefix: prefix, skipping: skipping, chunked: envelope.usesChunking))))
    }

    /// Relays the message as the checks that edit it (milters) left it: Postern's Received,
    /// the rules' headers, then the edited header section and the replaced or stored body.
    /// When they changed the envelope, the upstream transaction starts again with it.
    mutating func relay(_ stored: StoredMessage, edited: MessageDraft, headerActions: [RuleAction]) {
        guard upstreamOpen, let envelope = smtp.transaction else {
            return finishMessage(SessionReplies.reply(for: UpstreamError(.connectionLost, "no upstream transaction")),
                                 size: stored.size, relayed: false, reason: "upstream connection lost", disposition: .answered)
        }
        var prefix = receivedHeader(for: envelope, recipients: edited.recipients)
        for case .addHeader(let name, let value) in headerActions {
            prefix.writeString("\(name): \(value)\r\n")
        }
        let tags = headerActions.compactMap { action -> String? in
            if case .tagSubject(let tag) = action { return tag } else { return nil }
        }
        let skipping = Self.append(edited, to: &prefix, storedSize: stored.size, tags: tags)
        let content = OutgoingContent(prefix: prefix, skipping: skipping, chunked: envelope.usesChunking)
        guard edited.envelopeChanged else {
            state = .upstream(.commit(size: stored.size), since: now.uptime)
            return emit(.upstream(.commit(content)))
        }
        log(.info, "a filter changed the envelope: the upstream transaction starts again", [
            "from": "\(edited.sender)", "rcpts": "\(edited.recipients.count)",
        ])
        upstreamOpen = false
        emit(.upstream(.abort))
        let original = Dictionary(envelope.recipients.map { ($0.path, $0.parameters) }, uniquingKeysWith: { first, _ in first })
        let plan = Reenvelope(recipients: edited.recipients.map { ($0, original[$0] ?? RecipientParameters()) }, accepted: 0,
                              lastRefusal: nil, content: content, size: stored.size)
        state = .upstream(.reenvelope(plan), since: now.uptime)
        emit(.upstream(.begin(UpstreamEnvelope(client: upstreamClient, reversePath: edited.sender, parameters: edited.senderParameters))))
    }

    /// Writes the edited header section (and a replaced body) after `prefix`; returns how many
    /// octets of the stored message the content then skips.
    static func append(_ edited: MessageDraft, to prefix: inout ByteBuffer, storedSize: Int, tags: [String] = []) -> Int {
        var section = edited.encodedHeaderSection()
        if !tags.isEmpty, let tagged = SubjectTagger.tag(MessageHeaderSection(parsing: section.readableBytesView), tags: tags) {
            section = ByteBuffer(bytes: tagged)
        }
        prefix.writeBuffer(&section)
        switch edited.body {
        case .original(_, let offset):
            return offset
        case .replaced(var body):
            prefix.writeBuffer(&body)
            return storedSize  // nothing of the stored message
        }
    }

    /// The upstream answered a step of a transaction started again with a filter's envelope.
    mutating func reenvelopeAnswered(_ plan: Reenvelope, _ result: Result<UpstreamReply, UpstreamFailure>) {
        var plan = plan
        switch result {
        case .failure(let failure):
            log(.warning, "upstream failed while the envelope was sent again", ["error": "\(failure.error)"])
            upstreamOpen = false
            return finishMessage(SessionReplies.reply(for: failure.error), size: plan.size, relayed: false,
                                 reason: "upstream \(failure.error.kind.name)", disposition: .answered)
        case .success(let answer):
            if !upstreamOpen {  // the answer to MAIL
                guard answer.reply.isPositive else {
                    return finishMessage(answer.reply, size: plan.size, relayed: false, reason: "the upstream refused the filter's sender",
                                         disposition: .answered)
                }
                upstreamOpen = true
            } else if answer.reply.isPositive {
                plan.accepted += 1
            } else {
                log(.notice, "the upstream refused a recipient a filter set", ["upstream.reply": "\(answer.reply)"])
                plan.lastRefusal = answer.reply
            }
        }
        if !plan.recipients.isEmpty {
            let (path, parameters) = plan.recipients.removeFirst()
            state = .upstream(.reenvelope(plan), since: now.uptime)
            return emit(.upstream(.addRecipient(path, parameters)))
        }
        guard plan.accepted > 0 else {
            upstreamOpen = false
            emit(.upstream(.abort))
            return finishMessage(plan.lastRefusal ?? SessionReplies.noValidRecipients, size: plan.size, relayed: false,
                                 reason: "the upstream took none of the filters' recipients", disposition: .answered)
        }
        state = .upstream(.commit(size: plan.size), since: now.uptime)
        emit(.upstream(.commit(plan.content)))
    }

    /// The trace header (RFC 5321 §4.4).
    func receivedHeader(for envelope: SMTPServerStateMachine.Transaction, recipients: [ForwardPath]? = nil) -> ByteBuffer {
        ReceivedHeader(
            heloName: smtp.helloName, clientAddress: client.address, clientName: client.name?.verifiedName, hostname: configuration.hostname, extended: smtp.isExtended,
            tlsVersion: tlsVersion, utf8: envelope.parameters.smtpUTF8, transactionID: transactionID,
            recipients: recipients ?? envelope.recipients.map(\.path), date: now.wallMilliseconds / 1000
        ).encoded()
    }

    /// Keeps the message in the quarantine Maildir with who sent it to whom and why; the
    /// client gets the rule's reply once it is stored (451 when it cannot be: nothing
    /// acknowledged is lost).
    /// With `edited` (the milters' edits), the message is kept as they left it: a virus
    /// scanner's `X-Virus-Status` shows in the quarantine.
    mutating func quarantine(_ stored: StoredMessage, _ decision: PolicyDecision, edited: MessageDraft? = nil) {
        guard let envelope = smtp.transaction else { return }
        let recipients = edited?.recipients ?? envelope.recipients.map(\.path)
        var prefix = receivedHeader(for: envelope, recipients: recipients)
        prefix.writeString("X-Postern-Quarantine: rule=\(decision.rule ?? "?"); id=\(transactionID)\r\n")
        let skipping = edited.map { Self.append($0, to: &prefix, storedSize: stored.size) } ?? 0
        state = .quarantining(decision, size: stored.size)
        emit(.quarantine(QuarantineRequest(
            envelope: UpstreamEnvelope(client: upstreamClient, reversePath: edited?.sender ?? envelope.reversePath,
                                       parameters: envelope.parameters),
            recipients: recipients, content: OutgoingContent(prefix: prefix, skipping: skipping, chunked: false))))
    }

    mutating func quarantineFinished(_ result: Result<SMTPReply, UpstreamError>, decision: PolicyDecision, size: Int) {
        state = .commands
        switch result {
        case .success:
            log(.notice, "message quarantined", ["rule": decision.rule ?? ""])
            finishMessage(decision.reply, size: size, relayed: false, reason: decision.reason, disposition: .quarantined)
        case .failure(let error):
            log(.error, "quarantine failed", ["error": "\(error)"])
            finishMessage(SessionReplies.reply(for: error), size: size, relayed: false, reason: "quarantine failed", disposition: .answered)
        }
    }

    /// The transaction is over with the message's final reply (RFC 5321 §4.1.1.4).
    mutating func finishMessage(_ reply: SMTPReply, size: Int, relayed: Bool, reason: String?, disposition: MessageDisposition) {
        let answer = prepared(reply)
        send(answer)
        if let transaction {
            emitRecord(transaction.finished(reply: answer, stage: .data, size: size, relayed: relayed, reason: reason,
                                            outcome: disposition, context: recordContext))
            self.transaction = nil
        }
        message = nil
        emit(.spool(.discard))
        smtp.messageFinished()
    }
}
