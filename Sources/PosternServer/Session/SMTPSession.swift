import PosternMIME
import Foundation
import Logging
import NIOCore
import NIOSSL
import PosternFilters
import PosternLog
import PosternPolicy
import PosternUpstream
import SMTPCore
import SMTPNIO

/// Where a session's client is, after any PROXY header.
public struct ClientEndpoint: Hashable, Sendable {
    public var address: IPAddress
    public var port: Int
}

/// Everything a session needs from the server, shared by all sessions.
struct SessionEnvironment: Sendable {
    var configuration: PosternConfiguration
    var listener: PosternConfiguration.Listener
    var pool: UpstreamPool
    var limiter: ConnectionLimiter
    var registry: SessionRegistry
    var tlsContext: NIOSSLContext?
    var decisionLog: DecisionLogWriter?
    var metrics: PosternMetrics
    var policy: PolicyStore
    var relayControl: RelayControl
    var authenticator: Authenticator?
    var logger: Logger
}

/// One client session: drives `SMTPServerStateMachine` with what the client sends, carries out
/// its actions against the upstream, and writes the replies. Lives inside one task.
final class SMTPSession {
    typealias Inbound = NIOAsyncChannelInboundStream<SMTPInboundEvent>.AsyncIterator

    let channel: Channel
    let environment: SessionEnvironment
    var configuration: PosternConfiguration { environment.configuration }
    var logger: Logger
    var machine: SMTPServerStateMachine
    private let parser: SMTPCommandParser
    var framer = SMTPInputFramer()
    private var inbound: Inbound
    private var output = ByteBuffer()
    var client: ClientEndpoint
    var relay: RelaySession?
    /// MAIL was accepted upstream and the transaction there is not finished.
    var upstreamTransactionOpen = false
    private var tlsVersion: String?
    var draining = false
    var closing = false
    private var transactionID = Identifier.make()
    /// BDAT content collected so far in this transaction.
    var chunkSpool: MessageSpool?
    private var chunkInspector: LineEndingInspector
    private let sessionID = Identifier.make()
    /// The policy this session started with; a reload does not change it mid-session.
    private let policy: Policy
    /// An `accept` at connect or helo: no more policy for this session.
    private var sessionAcceptedByPolicy = false
    /// An `accept` at mail or rcpt: no more policy for this transaction.
    private var transactionAcceptedByPolicy = false
    /// The HELO name whose helo-stage rules have run.
    private var heloCheckedFor: String?
    /// Shadow hits from connect and helo, carried into each transaction's record.
    private var sessionShadow: [ShadowHit] = []
    /// The rule whose `accept` at connect or helo ended policy for the session.
    private var sessionAcceptRule: (rule: String, reason: String?)?
    /// Where the client is (looked up once, after any PROXY header), when the policy has GeoIP.
    private var location: ClientLocation?
    /// What the decision record of the transaction in progress needs.
    var trace: TransactionTrace?
    /// The client is in `trusted_networks` (judged after any PROXY header).
    var clientTrusted = false
    /// The session ends with 421 4.4.2 at this time (`timeouts.session`).
    var sessionDeadline = NIODeadline.distantFuture
    /// The read timeout last given to the inbound handler.
    var readTimeout: TimeAmount
    /// Why a connection defence ended the session, for the decision record.
    var endReason: String?
    /// During DATA/BDAT: when the content started and how much of it has arrived.
    var contentProgress: (started: NIODeadline, octets: Int)?

    struct TransactionTrace {
        var started = DispatchTime.now().uptimeNanoseconds
        var mailFrom: String
        var recipients: [DecisionRecord.Recipient] = []
        var upstreamNanoseconds: UInt64 = 0
        var filterNanoseconds: UInt64 = 0
        var upstreamHost: String?
        var headers = MessageHeaderCollector()
        var rule: String?
        var reason: String?
        var shadow: [ShadowHit] = []
        /// The last policy refusal of a RCPT: names the rule when every recipient is refused.
        var recipientRefusal: (rule: String?, reason: String?, reply: SMTPReply)?
    }

    init(channel: Channel, inbound: Inbound, client: ClientEndpoint, environment: SessionEnvironment) {
        self.channel = channel
        self.inbound = inbound
        self.client = client
        self.environment = environment
        self.machine = SMTPServerStateMachine(configuration: environment.configuration.serverConfiguration(for: environment.listener))
        self.parser = machine.parser
        self.policy = environment.policy.policy
        self.chunkInspector = LineEndingInspector(maximumLineLength: environment.configuration.limits.textLineLength)
        self.readTimeout = environment.configuration.timeouts.command
        var logger = environment.logger
        logger[metadataKey: "smtp.session.id"] = "\(sessionID)"
        self.logger = logger
    }

    // MARK: The session

    func run() async {
        if environment.listener.proxyProtocol {
            guard await readProxyHeader() else { return }
        }
        logger[metadataKey: "smtp.client"] = "\(client.address):\(client.port)"
        location = policy.geoip?.locate(client.address)
        clientTrusted = environment.relayControl.isTrusted(client.address)
        sessionDeadline = .now() + configuration.timeouts.session
        if let refusal = environment.limiter.acquire(client.address) {
            logger.notice("connection refused", metadata: ["reason": "\(refusal)"])
            let reply = refusal == .total(configuration.limits.maxConnections)
                ? ReplyMapping.tooManyConnections : ReplyMapping.tooManyConnectionsFromAddress
            queue(reply)
            environment.metrics.connectionRefused(reason: refusal == .total(configuration.limits.maxConnections) ? "max_connections" : "max_connections_per_ip")
            recordRefusedConnection(reply, reason: "\(refusal)")
            await flush()
            return
        }
        let (key, alreadyDraining) = environment.registry.register(channel)
        var slotHeld = true
        environment.metrics.sessionsTotal.increment()
        environment.metrics.sessionsCurrent.increment()
        // The slot is freed as soon as the client side is done, before the upstream is
        // closed: a client that got its 221 may connect again at once.
        func releaseSlot() {
            guard slotHeld else { return }
            slotHeld = false
            environment.metrics.sessionsCurrent.decrement()
            environment.registry.unregister(key)
            environment.limiter.release(client.address)
        }
        defer { releaseSlot() }
        logger.debug("session started")
        if alreadyDraining {
            queue(ReplyMapping.shuttingDown)
            environment.metrics.connectionRefused(reason: "shutting_down")
            recordRefusedConnection(ReplyMapping.shuttingDown, reason: "shutting down")
            await flush()
            return
        }
        // RFC 5321 §3.1: a connect-stage refusal replaces the greeting.
        if let refusal = await connectRefusal() {
            queue(refusal)
            await flush()
            await refusedSessionLoop()
            return
        }
        if configuration.timeouts.greetDelay > .zero {
            guard await waitBeforeGreeting() else { return }
        }
        queue(machine.greeting)
        await flush()
        await commandLoop()
        recordAbandonedTransaction()
        releaseSlot()
        if let relay {
            self.relay = nil
            // A clean connection serves the next client session (the pool decides).
            if upstreamTransactionOpen { await relay.reset() }
            upstreamTransactionOpen = false
            await environment.pool.release(relay)
        }
        logger.debug("session ended")
    }

    private func commandLoop() async {
        while !closing {
            while !closing, let event = framer.nextCommandLine(maximumLength: configuration.limits.commandLineLength) {
                let action: SMTPServerStateMachine.Action
                switch event {
                case .line(let line):
                    do {
                        action = machine.receive(try parser.parse(line.readableBytesView))
                    } catch {
                        action = machine.receive(error)
                    }
                case .failure(let error):
                    action = machine.receive(error)
                }
                await perform(action)
                if machine.transaction == nil && machine.phase != .mailPending { recordAbandonedTransaction() }
                await finishUpstreamTransactionIfAbandoned()
                if draining && machine.transaction == nil && machine.phase != .closed { closeForShutdown() }
            }
            await flush()
            if closing { break }
            guard armCommandTimeout() else { continue }
            switch await readMore() {
            case .bytes, .tlsEstablished:
                continue
            case .timedOut:
                if NIODeadline.now() >= sessionDeadline {
                    endSession(defence: "session_time", ReplyMapping.sessionTimeExceeded)
                    continue
                }
                queue(machine.prepare(ReplyMapping.timeout))
                close()
            case .drain:
                draining = true
                if machine.transaction == nil { closeForShutdown() }
            case .closed:
                closing = true
            }
        }
        await flush()
        machine.close()
        try? await channel.close().get()
    }

    func perform(_ action: SMTPServerStateMachine.Action) async {
        switch action {
        case .reply(let reply):
            queue(reply)
        case .close(let reply):
            queue(reply)
            close()
            if reply.code == 421 {
                let defence = machine.junkCount > configuration.limits.junkCommands ? "junk_commands" : "errors"
                noteDefence(defence, reply)
            }
        case .quit(let reply):
            queue(reply)
            close()
        case .authenticate(let mechanism, let initialResponse):
            await authenticate(mechanism, initialResponse: initialResponse)
        case .etrn(let node):
            await etrn(node)
        case .startTLS(let reply):
            await startTLS(reply)
        case .mail(let path, let parameters):
            transactionID = Identifier.make()
            logger[metadataKey: "smtp.transaction.id"] = "\(transactionID)"
            trace = TransactionTrace(mailFrom: path.mailbox?.description ?? "", shadow: sessionShadow)
            if let accepted = sessionAcceptRule {
                trace?.rule = accepted.rule
                trace?.reason = accepted.reason
            }
            transactionAcceptedByPolicy = false
            let refusal = await policyRefusal(at: .mail, sender: path, size: parameters.size)
            let answer: SMTPReply
            if let refusal { answer = refusal } else { answer = await timedUpstream { await relayMail(path, parameters) } }
            let reply = machine.mailReplied(answer, path: path, parameters: parameters)
            queue(reply)
            if !reply.isPositive { recordDecision(reply: reply, stage: .mail, reason: trace?.reason) }
        case .recipient(let path, let parameters):
            if let denial = environment.relayControl.refusal(for: path, trusted: clientTrusted, authenticated: machine.authenticatedUser != nil) {
                environment.metrics.relayDenied()
                logger.notice("relay access denied", metadata: ["recipient": "\(path)", "reason": "\(denial)"])
                let reply = machine.recipientReplied(RelayControl.reply(for: path), path: path, parameters: parameters)
                trace?.recipientRefusal = (nil, denial, reply)
                trace?.recipients.append(.init(address: path.mailbox?.description ?? "postmaster", reply: reply.description))
                queue(reply)
                return
            }
            let refusal = await policyRefusal(at: .rcpt, sender: machine.transaction?.reversePath, recipient: path)
            let answer: SMTPReply
            if let refusal { answer = refusal } else { answer = await timedUpstream { await relayRecipient(path, parameters) } }
            let reply = machine.recipientReplied(answer, path: path, parameters: parameters)
            trace?.recipients.append(.init(address: path.mailbox?.description ?? "postmaster", reply: reply.description))
            queue(reply)
        case .receiveData(let reply):
            queue(reply)
            await flush()
            await receiveMessage()
        case .receiveChunk(let size, let last, let accept, let refusal):
            await receiveChunk(size: size, last: last, accept: accept, refusal: refusal)
        case .reset(let reply):
            chunkSpool = nil
            queue(reply)
        }
    }

    // MARK: Upstream

    private func relayMail(_ path: ReversePath, _ parameters: MailParameters) async -> SMTPReply {
        // A reused upstream connection may have been closed by the upstream while idle:
        // one retry on a fresh connection.
        for attempt in 0..<2 {
            var reused = relay?.isUsable ?? false
            do {
                let session = try await openRelay()
                reused = reused || session.isReused
                let reply = try await session.mail(path, parameters)
                if reused && attempt == 0 && reply.code == 421 {
                    // The upstream is closing the idle connection we kept: start afresh.
                    await dropRelay()
                    continue
                }
                upstreamTransactionOpen = reply.isPositive
                return reply
            } catch {
                await dropRelay()
                if reused && attempt == 0 && error.kind != .unavailable { continue }
                logger.warning("upstream failed at MAIL", metadata: ["error": "\(error)"])
                return ReplyMapping.reply(for: error)
            }
        }
        return ReplyMapping.unexpected
    }

    private func relayRecipient(_ path: ForwardPath, _ parameters: RecipientParameters) async -> SMTPReply {
        guard let relay, upstreamTransactionOpen else {
            return ReplyMapping.reply(for: UpstreamError(.connectionLost, "no upstream transaction"))
        }
        do {
            return try await relay.recipient(path, parameters)
        } catch {
            logger.warning("upstream failed at RCPT", metadata: ["error": "\(error)"])
            await dropRelay()
            return ReplyMapping.reply(for: error)
        }
    }

    func openRelay() async throws(UpstreamError) -> RelaySession {
        if let relay, relay.isUsable { return relay }
        await dropRelay()
        let identity = ClientIdentity(
            address: client.address, port: client.port, helo: machine.helloName,
            protocolName: machine.isExtended ? "ESMTP" : "SMTP", login: machine.authenticatedUser)
        let session = try await environment.pool.openSession(logger: logger, client: identity, eventLoop: channel.eventLoop)
        relay = session
        return session
    }

    func dropRelay() async {
        upstreamTransactionOpen = false
        if let relay {
            self.relay = nil
            await relay.close()
        }
    }

    /// After RSET, a new EHLO or a refused chunk, the upstream transaction is abandoned too.
    private func finishUpstreamTransactionIfAbandoned() async {
        guard upstreamTransactionOpen, machine.transaction == nil, machine.phase != .mailPending else { return }
        upstreamTransactionOpen = false
        chunkSpool = nil
        await relay?.reset()
    }

    /// Relays the message; the reply the client gets is the upstream's own.
    private func relayMessage(_ spool: MessageSpool, chunked: Bool, extraHeaders: ByteBuffer = ByteBuffer()) async -> MessageOutcome {
        guard let relay, upstreamTransactionOpen, let transaction = machine.transaction else {
            return MessageOutcome(reply: ReplyMapping.reply(for: UpstreamError(.connectionLost, "no upstream transaction")),
                                  relayed: false, reason: "upstream connection lost")
        }
        let header = ReceivedHeader(
            heloName: machine.helloName, clientAddress: client.address, hostname: configuration.hostname,
            extended: machine.isExtended, tlsVersion: tlsVersion, utf8: transaction.parameters.smtpUTF8,
            transactionID: transactionID, recipients: transaction.recipients.map(\.path), date: Date())
        let started = DispatchTime.now().uptimeNanoseconds
        trace?.upstreamHost = relay.upstreamName
        defer { trace?.upstreamNanoseconds += DispatchTime.now().uptimeNanoseconds - started }
        do {
            var headers = header.encoded()
            var extra = extraHeaders
            headers.writeBuffer(&extra)
            let reply = try await relay.message(header: headers, content: spool, chunked: chunked)
            upstreamTransactionOpen = false
            environment.metrics.upstreamReply(upstream: relay.upstreamName, code: reply.code,
                                              nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
            logger.info("message relayed", metadata: [
                "from": "\(transaction.reversePath)", "rcpts": "\(transaction.recipients.count)", "size": "\(spool.size)",
                "upstream": "\(relay.upstreamName)", "upstream.reply": "\(reply)",
                "upstream_ms": "\((DispatchTime.now().uptimeNanoseconds - started) / 1_000_000)",
            ])
            return MessageOutcome(reply: reply, relayed: true, reason: nil)
        } catch {
            logger.warning("upstream failed during message transfer", metadata: ["error": "\(error)"])
            environment.metrics.upstreamFailure(upstream: relay.upstreamName, kind: "\(error.kind)")
            await dropRelay()
            return MessageOutcome(reply: ReplyMapping.reply(for: error), relayed: false, reason: "upstream \(error.kind)")
        }
    }

    // MARK: Message content

    private func receiveMessage() async {
        framer.beginData()
        contentProgress = (.now(), 0)
        defer { contentProgress = nil }
        let spool = MessageSpool(memoryThreshold: configuration.spool.memoryThreshold, directory: configuration.spool.directory)
        var size = 0
        var spoolError: MessageSpool.Error?
        let limit = configuration.limits.messageSize
        while true {
            while let event = framer.nextDataEvent(maximumLineLength: configuration.limits.textLineLength, bareLineEndings: configuration.bareLineEndings) {
                switch event {
                case .content(let bytes):
                    size += bytes.readableBytes
                    contentProgress?.octets = size
                    trace?.headers.feed(bytes)
                    // Past the limit the rest is read and dropped (RFC 1870 §6.3: 552 after the dot).
                    if size <= limit && spoolError == nil {
                        do { try spool.append(bytes) } catch { spoolError = error }
                    }
                case .end(let findings):
                    let outcome = await finishMessage(spool, size: size, findings: findings, spoolError: spoolError, chunked: false)
                    let reply = machine.prepare(outcome.reply)
                    queue(reply)
                    recordDecision(reply: reply, stage: .data, size: size, relayed: outcome.relayed, reason: outcome.reason,
                                   discarded: outcome.discarded, quarantined: outcome.quarantined)
                    machine.messageFinished()
                    return
                }
            }
            guard await continueReadingContent() else { return }
        }
    }

    private func receiveChunk(size: Int, last: Bool, accept: Bool, refusal: SMTPReply?) async {
        contentProgress = (.now(), 0)
        defer { contentProgress = nil }
        if accept && chunkSpool == nil {
            chunkSpool = MessageSpool(memoryThreshold: configuration.spool.memoryThreshold, directory: configuration.spool.directory)
            chunkInspector = LineEndingInspector(maximumLineLength: configuration.limits.textLineLength)
        }
        var remaining = size
        var spoolError: MessageSpool.Error?
        while remaining > 0 {
            if let bytes = framer.nextChunkBytes(maximum: remaining) {
                remaining -= bytes.readableBytes
                contentProgress?.octets = size - remaining
                if accept, let chunkSpool {
                    chunkInspector.inspect(bytes)
                    trace?.headers.feed(bytes)
                    do { try chunkSpool.append(bytes) } catch { spoolError = error }
                }
                continue
            }
            guard await continueReadingContent() else { return }
        }
        guard accept, let spool = chunkSpool else {
            queue(refusal ?? ReplyMapping.unexpected)
            if refusal?.code == 421 { close() }
            if machine.transaction == nil { chunkSpool = nil }
            return
        }
        if let spoolError {
            queue(machine.prepare(ReplyMapping.reply(for: spoolError)))
            chunkSpool = nil
            machine.chunkRefused()
            return
        }
        guard last else {
            queue(machine.chunkAccepted(size: size))
            return
        }
        chunkSpool = nil
        let outcome = await finishMessage(spool, size: spool.size, findings: chunkInspector.finish(), spoolError: nil, chunked: true)
        let reply = machine.prepare(outcome.reply)
        queue(reply)
        recordDecision(reply: reply, stage: .data, size: spool.size, relayed: outcome.relayed, reason: outcome.reason,
                       discarded: outcome.discarded, quarantined: outcome.quarantined)
        machine.messageFinished()
    }

    /// Reads more content. False when the session cannot go on (client gone, timeout):
    /// the message is abandoned and nothing is relayed.
    private func continueReadingContent() async -> Bool {
        if let (defence, reply) = armContentTimeout() {
            logger.notice("message content abandoned; nothing relayed", metadata: ["defence": "\(defence)"])
            endSession(defence: defence, reply)
            machine.close()
            chunkSpool = nil
            return false
        }
        switch await readMore() {
        case .bytes, .tlsEstablished:
            return true
        case .drain:
            draining = true
            return true
        case .timedOut:
            if let (defence, reply) = contentDefenceDue() {
                logger.notice("message content abandoned; nothing relayed", metadata: ["defence": "\(defence)"])
                endSession(defence: defence, reply)
                break
            }
            logger.notice("timeout while receiving message content; nothing relayed")
            queue(machine.prepare(ReplyMapping.timeout))
            close()
        case .closed:
            logger.notice("client disconnected while sending message content; nothing relayed")
            closing = true
        }
        machine.close()
        chunkSpool = nil
        return false
    }

    /// How a message ended: the reply, whether it is the upstream's, and why Postern refused it.
    private struct MessageOutcome {
        var reply: SMTPReply
        var relayed: Bool
        var reason: String?
        /// A policy `discard`: 250 to the client, nothing relayed.
        var discarded = false
        /// A policy `quarantine`: kept in the quarantine Maildir, not relayed.
        var quarantined = false
    }

    /// Keeps the message in the quarantine Maildir with who sent it to whom and why, and
    /// answers the rule's reply. A failed write answers 451 (nothing acknowledged is lost).
    private func quarantine(_ spool: MessageSpool, reply: SMTPReply, rule: String?, reason: String?) async -> MessageOutcome {
        guard let path = configuration.quarantine, let transaction = machine.transaction else {
            return MessageOutcome(reply: ReplyMapping.unexpected, relayed: false, reason: "no quarantine configured")
        }
        do {
            let maildir = try MaildirRelaySession(path: path, hostname: configuration.hostname)
            _ = try await maildir.mail(transaction.reversePath, transaction.parameters)
            for recipient in transaction.recipients { _ = try await maildir.recipient(recipient.path, recipient.parameters) }
            var header = ReceivedHeader(
                heloName: machine.helloName, clientAddress: client.address, hostname: configuration.hostname,
                extended: machine.isExtended, tlsVersion: tlsVersion, utf8: transaction.parameters.smtpUTF8,
                transactionID: transactionID, recipients: transaction.recipients.map(\.path), date: Date()).encoded()
            header.writeString("X-Postern-Quarantine: rule=\(rule ?? "?"); id=\(transactionID)\r\n")
            _ = try await maildir.message(header: header, content: spool, chunked: false)
            logger.notice("message quarantined", metadata: ["rule": "\(rule ?? "")", "quarantine": "\(path)"])
            return MessageOutcome(reply: reply, relayed: false, reason: reason, quarantined: true)
        } catch {
            logger.error("quarantine failed", metadata: ["error": "\(error)"])
            return MessageOutcome(reply: ReplyMapping.reply(for: error), relayed: false, reason: "quarantine failed")
        }
    }

    /// A copy of the message whose Subject carries the tags (`Subject: [SUSPECT] …`), or a new
    /// Subject when there is none. Only the header section is rewritten.
    private static func taggingSubject(_ spool: MessageSpool, tags: [String], configuration: PosternConfiguration) async -> MessageSpool? {
        var head: [UInt8] = []
        let limit = 256 * 1024
        try? await spool.forEachChunk { chunk in
            guard head.count < limit else { return }
            head.append(contentsOf: chunk.readableBytesView.prefix(limit - head.count))
        }
        // The header section ends at the first empty line.
        var end: Int?
        var index = 0
        while index + 1 < head.count {
            if head[index] == 13 && head[index + 1] == 10 && (index == 0 || (index >= 2 && head[index - 2] == 13 && head[index - 1] == 10)) {
                end = index
                break
            }
            index += 1
        }
        guard let end else { return nil }
        let section = head[..<end]
        let tag = tags.joined(separator: " ")
        var rewritten: [UInt8] = []
        var tagged = false
        var lineStart = section.startIndex
        while lineStart < section.endIndex {
            let lineEnd = section[lineStart...].firstIndex(of: 10).map { $0 + 1 } ?? section.endIndex
            let line = section[lineStart..<lineEnd]
            if !tagged, line.count >= 8, String(decoding: line.prefix(8), as: UTF8.self).lowercased() == "subject:" {
                rewritten += Array("Subject: \(tag)".utf8)
                var value = line.dropFirst(8)
                if value.first != 32 && value.first != 9 { rewritten.append(32) } else { value = value.dropFirst() }
                rewritten.append(32)
                rewritten += value
                tagged = true
            } else {
                rewritten += line
            }
            lineStart = lineEnd
        }
        if !tagged { rewritten += Array("Subject: \(tag)\r\n".utf8) }
        let copy = MessageSpool(memoryThreshold: configuration.spool.memoryThreshold, directory: configuration.spool.directory)
        do {
            try copy.append(ByteBuffer(bytes: rewritten))
            var skipped = 0
            try await spool.forEachChunk { chunk in
                var chunk = chunk
                if skipped < end {
                    let drop = min(end - skipped, chunk.readableBytes)
                    chunk.moveReaderIndex(forwardBy: drop)
                    skipped += drop
                }
                if chunk.readableBytes > 0 { try copy.append(chunk) }
            }
        } catch {
            return nil
        }
        return copy
    }

    private func finishMessage(
        _ spool: MessageSpool, size: Int, findings: SMTPInputFramer.DataFindings, spoolError: MessageSpool.Error?, chunked: Bool
    ) async -> MessageOutcome {
        let refusal: (SMTPReply, String)?
        if findings.hasBareLineEnding && configuration.bareLineEndings == .reject {
            refusal = (ReplyMapping.bareLineEnding, findings.bareLineFeed ? "bare LF in message content" : "bare CR in message content")
        } else if findings.overlongLine {
            refusal = (ReplyMapping.overlongLine(configuration.limits.textLineLength), "line longer than \(configuration.limits.textLineLength) octets")
        } else if size > configuration.limits.messageSize {
            refusal = (ReplyMapping.messageTooBig(configuration.limits.messageSize), "message larger than \(configuration.limits.messageSize) octets")
        } else if let spoolError {
            logger.error("spool failed", metadata: ["error": "\(spoolError)"])
            refusal = (ReplyMapping.reply(for: spoolError), "spool error")
        } else {
            refusal = nil
        }
        if let (reply, reason) = refusal {
            logger.notice("message refused", metadata: ["reply": "\(reply)", "size": "\(size)", "reason": "\(reason)"])
            upstreamTransactionOpen = false
            await relay?.reset()
            return MessageOutcome(reply: reply, relayed: false, reason: reason)
        }
        var extraHeaders = ByteBuffer()
        let message = policy.needsMessage ? await Self.parseForPolicy(spool) : nil
        if let verdict = await evaluatePolicy(.data, sender: machine.transaction?.reversePath, size: size, message: message) {
            switch verdict.outcome {
            case .decided(.quarantine, let reply):
                upstreamTransactionOpen = false
                await relay?.reset()
                return await quarantine(spool, reply: reply, rule: verdict.rule, reason: verdict.reason)
            case .decided(let action, let reply):
                upstreamTransactionOpen = false
                await relay?.reset()
                logger.notice("message refused by policy", metadata: ["rule": "\(verdict.rule ?? "")", "action": "\(action.name)"])
                return MessageOutcome(reply: reply, relayed: false, reason: verdict.reason, discarded: action == .discard)
            case .accept, .pass:
                for case .addHeader(let name, let value) in verdict.headerActions {
                    extraHeaders.writeString("\(name): \(value)\r\n")
                }
                let tags = verdict.headerActions.compactMap { action -> String? in
                    if case .tagSubject(let tag) = action { return tag } else { return nil }
                }
                if !tags.isEmpty, let tagged = await Self.taggingSubject(spool, tags: tags, configuration: configuration) {
                    return await relayMessage(tagged, chunked: chunked, extraHeaders: extraHeaders)
                }
            }
        }
        return await relayMessage(spool, chunked: chunked, extraHeaders: extraHeaders)
    }

    // MARK: Policy

    private func facts(recipient: ForwardPath? = nil, sender: ReversePath? = nil, size: Int? = nil, message: MIMEMessage? = nil) -> TransactionFacts {
        var facts = TransactionFacts(
            transactionID: transactionID, clientAddress: client.address, clientPort: client.port, helo: machine.helloName,
            tls: machine.isTLSActive, authUser: machine.authenticatedUser, sender: sender, recipient: recipient,
            recipients: machine.transaction?.recipients.map(\.path) ?? [], size: size)
        facts.message = message
        facts.location = location
        return facts
    }

    /// Content rules look at no more than this much of a message (its start: the headers and
    /// first parts). Each decoded part is further capped by MIMELimits (1 MiB).
    static let contentScanLimit = 10 * 1024 * 1024

    /// The message parsed for content rules: headers decoded, parts MIME-decoded.
    private static func parseForPolicy(_ spool: MessageSpool) async -> MIMEMessage {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(min(spool.size, contentScanLimit))
        try? await spool.forEachChunk { chunk in
            guard bytes.count < contentScanLimit else { return }
            bytes.append(contentsOf: chunk.readableBytesView.prefix(contentScanLimit - bytes.count))
        }
        return MIMEMessage.parse(bytes)
    }

    /// Runs one stage's rules, unless an `accept` already ended policy for the session or the
    /// transaction. Records what matched.
    private func evaluatePolicy(
        _ stage: PolicyStage, recipient: ForwardPath? = nil, sender: ReversePath? = nil, size: Int? = nil, message: MIMEMessage? = nil
    ) async -> PolicyVerdict? {
        guard !policy.rules.isEmpty, !sessionAcceptedByPolicy, !(transactionAcceptedByPolicy && stage >= .mail) else { return nil }
        let verdict = await PolicyEngine.evaluate(
            policy, stage: stage, facts: facts(recipient: recipient, sender: sender, size: size, message: message))
        for (filter, nanoseconds) in verdict.filterNanoseconds {
            environment.metrics.filterDuration(filter: filter, nanoseconds: nanoseconds)
            trace?.filterNanoseconds += nanoseconds
        }
        if case .decided = verdict.outcome, let id = verdict.rule,
           let limited = policy.rules.first(where: { $0.id == id })?.condition as? any RateLimitingCondition {
            environment.metrics.rateLimitRefusal(limit: limited.limitName)
        }
        for hit in verdict.shadowHits {
            environment.metrics.ruleHit(rule: hit.rule, mode: "shadow")
            logger.info("shadow rule matched", metadata: ["rule": "\(hit.rule)", "would": "\(hit.action)", "reason": "\(hit.reason)"])
        }
        if stage <= .helo { sessionShadow += verdict.shadowHits }
        // HELO rules run at MAIL, after this transaction's record was started: it gets them too.
        if stage >= .helo { trace?.shadow += verdict.shadowHits }
        if let rule = verdict.rule {
            environment.metrics.ruleHit(rule: rule, mode: "enforce")
            trace?.rule = rule
            trace?.reason = verdict.reason
        }
        if verdict.outcome == .accept {
            if stage <= .helo {
                sessionAcceptedByPolicy = true
                sessionAcceptRule = verdict.rule.map { ($0, verdict.reason) }
            } else {
                transactionAcceptedByPolicy = true
            }
        }
        return verdict
    }

    /// The refusal for MAIL (helo-stage rules first, once per HELO name) or RCPT, if any.
    private func policyRefusal(at stage: PolicyStage, sender: ReversePath?, recipient: ForwardPath? = nil, size: Int? = nil) async -> SMTPReply? {
        var stages: [PolicyStage] = [stage]
        if stage == .mail && heloCheckedFor != machine.helloName {
            heloCheckedFor = machine.helloName
            stages.insert(.helo, at: 0)
        }
        for current in stages {
            guard let verdict = await evaluatePolicy(current, recipient: recipient, sender: sender, size: size),
                  case .decided(_, let reply) = verdict.outcome else { continue }
            if stage == .rcpt {
                // A refused recipient is not the transaction's decision: the others go on.
                let (rule, reason) = (trace?.rule, trace?.reason)
                trace?.recipientRefusal = (rule, reason, reply)
                trace?.rule = nil
                trace?.reason = nil
            }
            logger.notice("refused by policy", metadata: ["rule": "\(verdict.rule ?? "")", "stage": "\(current.rawValue)"])
            return reply
        }
        return nil
    }

    /// Connect-stage rules; a refusal replaces the greeting.
    private func connectRefusal() async -> SMTPReply? {
        guard let verdict = await evaluatePolicy(.connect), case .decided(_, let reply) = verdict.outcome else { return nil }
        environment.metrics.transaction(decision: reply.isTransientFailure ? "tempfailed" : "rejected")
        if let log = environment.decisionLog {
            log.record(DecisionRecord(
                timestamp: Self.nowMilliseconds(), id: transactionID, session: sessionID, policyVersion: policy.version,
                client: recordClient, decision: reply.isTransientFailure ? .tempfailed : .rejected, stage: .connect,
                rule: verdict.rule, reason: verdict.reason, reply: Self.recordReply(reply),
                shadow: sessionShadow.map { DecisionRecord.Shadow(rule: $0.rule, action: $0.action) },
                timings: .init(total: 0, filters: 0, upstream: 0)))
        }
        logger.notice("connection refused by policy", metadata: ["rule": "\(verdict.rule ?? "")"])
        return reply
    }

    /// After a connect-stage refusal only QUIT is served (RFC 5321 §3.1); everything else is 503.
    private func refusedSessionLoop() async {
        while !closing {
            while !closing, let event = framer.nextCommandLine(maximumLength: configuration.limits.commandLineLength) {
                if case .line(let line) = event, case .quit = try? parser.parse(line.readableBytesView) {
                    queue(SMTPReply(221, EnhancedStatusCode(2, 0, 0), "Bye"))
                    closing = true
                } else {
                    queue(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: session refused, send QUIT"))
                }
            }
            await flush()
            if closing { break }
            switch await readMore() {
            case .bytes, .tlsEstablished: continue
            case .timedOut, .drain, .closed: closing = true
            }
        }
        try? await channel.close().get()
    }

    // MARK: Decision records

    /// Measures time spent waiting for the upstream, for the record's timings.
    private func timedUpstream(_ body: () async -> SMTPReply) async -> SMTPReply {
        let started = DispatchTime.now().uptimeNanoseconds
        let reply = await body()
        let elapsed = DispatchTime.now().uptimeNanoseconds - started
        trace?.upstreamNanoseconds += elapsed
        if trace?.upstreamHost == nil { trace?.upstreamHost = relay?.upstreamName }
        if let relay { environment.metrics.upstreamReply(upstream: relay.upstreamName, code: reply.code, nanoseconds: elapsed) }
        return reply
    }

    /// The transaction ended with `reply` (refused MAIL, or the message's final reply).
    /// `relayed`: the reply is the upstream's answer to the message.
    private func recordDecision(
        reply: SMTPReply, stage: DecisionRecord.Stage, size: Int? = nil, relayed: Bool = false, reason: String? = nil,
        discarded: Bool = false, quarantined: Bool = false
    ) {
        guard let trace else { return }
        self.trace = nil
        let decision: DecisionRecord.Decision = quarantined ? .quarantined : discarded ? .discarded : reply.isPositive ? .accepted : reply.isTransientFailure ? .tempfailed : .rejected
        write(trace: trace, decision: decision, stage: stage, reply: reply, size: size, reason: reason,
              upstream: trace.upstreamHost.map { host in
                  DecisionRecord.Upstream(host: host, reply: relayed ? reply.description : nil,
                                          queueID: relayed && reply.isPositive ? DecisionRecord.queueID(fromReply: reply.text) : nil)
              })
    }

    /// A transaction that ended without a message: RSET, QUIT, a new EHLO, a disconnect.
    func recordAbandonedTransaction() {
        guard let trace else { return }
        self.trace = nil
        // Every recipient refused: the transaction was refused, at RCPT; otherwise abandoned.
        if !trace.recipients.isEmpty, let last = trace.recipients.last,
           !trace.recipients.contains(where: { $0.reply.hasPrefix("2") }) {
            let code = Int(last.reply.prefix(3)) ?? 550
            var named = trace
            if let refusal = trace.recipientRefusal, refusal.reply.description == last.reply {
                named.rule = refusal.rule
                named.reason = refusal.reason.map { "every recipient refused; last: \($0)" }
            }
            write(trace: named, decision: code < 500 ? .tempfailed : .rejected, stage: .rcpt, reply: nil, size: nil,
                  reason: "every recipient refused", upstream: trace.upstreamHost.map { .init(host: $0, reply: nil, queueID: nil) })
            return
        }
        write(trace: trace, decision: .aborted, stage: trace.recipients.isEmpty ? .mail : .rcpt, reply: nil, size: nil,
              reason: endReason ?? (closing ? "session ended mid-transaction" : "transaction abandoned by the client"),
              upstream: trace.upstreamHost.map { .init(host: $0, reply: nil, queueID: nil) })
    }

    /// A connection refused before any transaction.
    func recordRefusedConnection(_ reply: SMTPReply, reason: String) {
        environment.metrics.transaction(decision: reply.isTransientFailure ? "tempfailed" : "rejected")
        guard let log = environment.decisionLog else { return }
        log.record(DecisionRecord(
            timestamp: Self.nowMilliseconds(), id: transactionID, session: sessionID, client: recordClient,
            decision: reply.isTransientFailure ? .tempfailed : .rejected, stage: .connect, reason: reason,
            reply: Self.recordReply(reply), timings: .init(total: 0, filters: 0, upstream: 0)))
    }

    private func write(
        trace: TransactionTrace, decision: DecisionRecord.Decision, stage: DecisionRecord.Stage,
        reply: SMTPReply?, size: Int?, reason: String?, upstream: DecisionRecord.Upstream?
    ) {
        environment.metrics.transaction(decision: decision.rawValue)
        guard let log = environment.decisionLog else { return }
        let total = Int((DispatchTime.now().uptimeNanoseconds - trace.started) / 1_000_000)
        log.record(DecisionRecord(
            timestamp: Self.nowMilliseconds(), id: transactionID, session: sessionID,
            policyVersion: policy.rules.isEmpty ? nil : policy.version, client: recordClient,
            mailFrom: trace.mailFrom, recipients: trace.recipients, size: size,
            messageID: trace.headers.value(of: "Message-ID"),
            subject: trace.headers.value(of: "Subject").map(MIMEMessage.decodeHeaderValue),
            decision: decision, stage: stage, rule: trace.rule,
            reason: trace.reason ?? reason,
            reply: reply.map(Self.recordReply), upstream: upstream,
            shadow: trace.shadow.map { DecisionRecord.Shadow(rule: $0.rule, action: $0.action) },
            timings: .init(total: total, filters: Int(trace.filterNanoseconds / 1_000_000), upstream: Int(trace.upstreamNanoseconds / 1_000_000))))
    }

    private var recordClient: DecisionRecord.Client {
        DecisionRecord.Client(ip: "\(client.address)", port: client.port, helo: machine.helloName, tls: tlsVersion,
                              auth: machine.authenticatedUser,
                              country: location?.country, asn: location?.asn.map(Int.init))
    }

    private static func recordReply(_ reply: SMTPReply) -> DecisionRecord.Reply {
        DecisionRecord.Reply(code: reply.code, enhanced: reply.enhanced?.description, text: reply.text)
    }

    private static func nowMilliseconds() -> Int64 {
        Int64(Date().timeIntervalSince1970 * 1000)
    }

    // MARK: TLS

    private func startTLS(_ reply: SMTPReply) async {
        guard let tlsContext = environment.tlsContext else {
            queue(ReplyMapping.unexpected)
            return close()
        }
        queue(reply)
        let bytes = output
        output = ByteBuffer()
        let channel = self.channel
        do {
            // The TLS handler goes in as soon as the 220 is written: the client's ClientHello
            // cannot arrive before it has read the 220.
            try await channel.eventLoop.flatSubmit {
                channel.writeAndFlush(bytes).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .first)
                }
            }.get()
        } catch {
            logger.notice("STARTTLS failed", metadata: ["error": "\(error)"])
            return close()
        }
        // RFC 3207 §4.2: anything pipelined after STARTTLS is discarded, never executed.
        var discarded = framer.discardBufferedInput()
        while true {
            switch await nextEvent() {
            case .bytes(let plaintext):
                discarded += plaintext.readableBytes
            case .tlsEstablished:
                if discarded > 0 {
                    logger.notice("discarded plaintext pipelined after STARTTLS", metadata: ["bytes": "\(discarded)"])
                }
                if let version = try? await channel.nioSSL_tlsVersion().get() {
                    tlsVersion = Self.name(of: version)
                    environment.metrics.tlsSession(version: Self.name(of: version))
                }
                machine.tlsEstablished()
                return
            case .drain:
                draining = true
            case .timedOut, nil:
                logger.notice("TLS handshake did not complete")
                return close()
            }
        }
    }

    private static func name(of version: TLSVersion) -> String {
        switch version {
        case .tlsv1: return "TLSv1"
        case .tlsv11: return "TLSv1.1"
        case .tlsv12: return "TLSv1.2"
        case .tlsv13: return "TLSv1.3"
        }
    }

    // MARK: PROXY protocol

    private func readProxyHeader() async -> Bool {
        guard environment.configuration.proxyTrustedNetworks.contains(where: { $0.contains(client.address) }) else {
            logger.warning("PROXY protocol listener refused an untrusted peer", metadata: ["peer": "\(client.address)"])
            queue(ReplyMapping.badProxyHeader)
            await flush()
            return false
        }
        setReadTimeout(configuration.timeouts.proxyHeader)
        defer { setReadTimeout(configuration.timeouts.command) }
        var buffer = ByteBuffer()
        while true {
            do {
                var candidate = buffer
                if let header = try ProxyProtocolParser.parse(&candidate) {
                    if let source = header.source { client = ClientEndpoint(address: source.address, port: source.port) }
                    framer.append(candidate)
                    return true
                }
            } catch {
                logger.warning("bad PROXY protocol header", metadata: ["error": "\(error)"])
                queue(ReplyMapping.badProxyHeader)
                await flush()
                return false
            }
            switch await nextEvent() {
            case .bytes(var bytes):
                buffer.writeBuffer(&bytes)
            default:
                return false
            }
        }
    }

    // MARK: I/O

    enum ReadOutcome { case bytes, tlsEstablished, timedOut, drain, closed }

    /// Waits for the next event; bytes go to the framer.
    func readMore() async -> ReadOutcome {
        framer.releaseStorageIfEmpty()
        switch await nextEvent() {
        case .bytes(let bytes):
            framer.append(bytes)
            return .bytes
        case .tlsEstablished: return .tlsEstablished
        case .timedOut: return .timedOut
        case .drain: return .drain
        case nil: return .closed
        }
    }

    func nextEvent() async -> SMTPInboundEvent? {
        do {
            return try await inbound.next()
        } catch {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            return nil
        }
    }

    func queue(_ reply: SMTPReply) {
        reply.encode(into: &output)
    }

    /// Sends the replies queued so far: before waiting for input, which is what
    /// RFC 2920 §3.2 asks of a pipelining server.
    func flush() async {
        guard output.readableBytes > 0 else { return }
        let bytes = output
        output = ByteBuffer()
        do {
            try await channel.writeAndFlush(bytes).get()
        } catch {
            closing = true
        }
    }

    func close() {
        closing = true
        machine.close()
    }

    private func closeForShutdown() {
        queue(machine.prepare(ReplyMapping.shuttingDown))
        close()
    }

    func setReadTimeout(_ timeout: TimeAmount) {
        guard timeout != readTimeout else { return }
        readTimeout = timeout
        channel.triggerUserOutboundEvent(SMTPReadTimeout(timeout), promise: nil)
    }
}
