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
                if accepted {
                    message?.size += bytes.readableBytes
                    message?.inspector.inspect(bytes)
                    transaction?.headers.feed(bytes)
                    emit(.spool(.append(bytes)))
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
        let findings = message!.inspector.finish()
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
        if !tags.isEmpty, let section = transaction?.headers.section {
            if let tagged = SubjectTagger.tag(section, tags: tags) {
                prefix.writeBytes(tagged)
                skipping = section.length
            } else {
                log(.notice, "subject not tagged: the header section is longer than the scan limit", ["limit": "\(MessageHeaderCollector.maximumHeaderBytes)"])
            }
        }
        state = .upstream(.commit(size: stored.size), since: now.uptime)
        emit(.upstream(.commit(OutgoingContent(prefix: prefix, skipping: skipping, chunked: envelope.usesChunking))))
    }

    /// The trace header (RFC 5321 §4.4).
    func receivedHeader(for envelope: SMTPServerStateMachine.Transaction) -> ByteBuffer {
        ReceivedHeader(
            heloName: smtp.helloName, clientAddress: client.address, hostname: configuration.hostname, extended: smtp.isExtended,
            tlsVersion: tlsVersion, utf8: envelope.parameters.smtpUTF8, transactionID: transactionID,
            recipients: envelope.recipients.map(\.path), date: now.wallMilliseconds / 1000
        ).encoded()
    }

    /// Keeps the message in the quarantine Maildir with who sent it to whom and why; the
    /// client gets the rule's reply once it is stored (451 when it cannot be: nothing
    /// acknowledged is lost).
    mutating func quarantine(_ stored: StoredMessage, _ decision: PolicyDecision) {
        guard let envelope = smtp.transaction else { return }
        var prefix = receivedHeader(for: envelope)
        prefix.writeString("X-Postern-Quarantine: rule=\(decision.rule ?? "?"); id=\(transactionID)\r\n")
        state = .quarantining(decision, size: stored.size)
        emit(.quarantine(QuarantineRequest(
            envelope: UpstreamEnvelope(client: upstreamClient, reversePath: envelope.reversePath, parameters: envelope.parameters),
            recipients: envelope.recipients.map(\.path), content: OutgoingContent(prefix: prefix, skipping: 0, chunked: false))))
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
