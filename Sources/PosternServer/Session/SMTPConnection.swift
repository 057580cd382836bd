import Dispatch
import Foundation
import Logging
import NIOCore
import NIOSSL
import PosternEngines
import PosternLog
import PosternPolicy
import PosternSession
import SMTPCore
import SMTPNIO

/// One client connection: the driver of its `SessionMachine`, as a channel handler (the
/// model of swift-nio-imap's server). What arrives — bytes, TLS established, the deadline,
/// drain, the close — goes to the machine on the event loop, and the actions it returns are
/// carried out there when they can be at once (replies, records, metrics, logs, the spool in
/// memory, STARTTLS, the close). Only an action that must wait (the policy, the upstream, DNS,
/// files, credentials) starts a task, on the connection's event loop; that task
/// carries out the rest of the actions and what arrived meanwhile, then ends. So an idle
/// session is this object and its machine, nothing more: no task, no async frames, no
/// stream, and no buffer (replies go out once per batch, before the next read).
///
/// Input that arrives while actions are being carried out waits in `waiting`, in order. Reads
/// go on while a task waits, until one input is waiting; then they are held back (the outbound
/// `read` is not passed on) until it has gone to the machine. A client that waits for its reply
/// sends nothing meanwhile, so its read interest never changes (each change is a system call);
/// a client that pipelines gets one read ahead, no more.
final class SMTPConnection: ChannelDuplexHandler, @unchecked Sendable {
    // @unchecked: every member is used on the channel's event loop only — in handler
    // callbacks, and in the task, which prefers that loop's executor and so resumes there.
    typealias InboundIn = SMTPInboundEvent
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What the machine is told, in order.
    private enum Input {
        case event(SMTPInboundEvent)
        case closed
    }

    private let channel: Channel
    private let executor: EventLoopTaskExecutor
    private let context: ListenerContext
    private var machine: SessionMachine
    private let pipeline: StagePipeline
    /// This session's milters (each with its own filter connection), in chain order.
    private let milters: [MilterCheck]
    /// The session's policy's DNS lists (`dnsbl:`) and when the client lists are awaited.
    private let dnsLists: [DNSList]
    private let dnsListWait: DNSListWait
    /// With `dnsbl_wait: mail`: the client lists' answers, asked when the client was admitted.
    private var clientListsAsked: Task<[DNSListResult], Never>?
    private var logger: Logger
    private let work: SessionWork
    /// The handler's place in the pipeline, from `handlerAdded` to `handlerRemoved`.
    private var handlerContext: ChannelHandlerContext?
    /// Replies waiting to be written; nil when there are none.
    private var pending: ByteBuffer?
    /// Input read while actions were being carried out, in order.
    private var waiting: [Input] = []
    /// A task is carrying out actions (or ending the session): input waits.
    private var busy = false
    /// A read was asked for while input was waiting, or while the channel was not writable.
    private var readHeldBack = false
    private var started = false
    private var closed = false
    private var ended = false
    /// The connection's key in the registry, until the session has ended.
    private var connectionKey: Int?
    /// The connection slot, once admitted.
    private var slot: Int?
    /// The deadline the inbound handler's timer is set to.
    private var timer = NIODeadline.distantFuture
    /// Test-only (`context.unsafeEarlyAck`): the commit of a message already answered 250,
    /// run once that reply is written, before anything else reaches the upstream.
    private var lateCommit: (() async -> Void)?

    init(channel: Channel, peer: ClientEndpoint, context: ListenerContext, executor: EventLoopTaskExecutor) {
        self.channel = channel
        self.executor = executor
        self.context = context
        let policy = context.policy.policy  // the session keeps this snapshot; a reload serves later sessions
        self.machine = SessionMachine(configuration: context.session, policy: policy, peer: peer, now: Self.now())
        dnsLists = context.dnsLists == nil ? [] : policy.dnsLists
        dnsListWait = policy.dnsListWait
        let milters = context.milters.map { $0.session() }
        self.milters = milters
        self.pipeline = StagePipeline(policy: policy, checks: context.checks + milters.map { $0 as any StageCheck })
        var logger = context.logger
        logger[metadataKey: "smtp.session.id"] = "\(machine.sessionID)"
        self.logger = logger
        self.work = SessionWork(context: context, logger: logger, eventLoop: channel.eventLoop)
    }

    static func now() -> SessionTime {
        SessionTime(uptime: .now(), wallMilliseconds: Int64(Date().timeIntervalSince1970 * 1000))
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        handlerContext = context
        connectionKey = self.context.registry.opened(channel)
        if context.channel.isActive { start() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        handlerContext = nil
        // A connection closed before it was ever active has no session to end.
        if !started, let key = connectionKey {
            connectionKey = nil
            ended = true
            self.context.registry.ended(key)
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        start()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        receive(.event(unwrapInboundIn(data)))
    }

    func channelInactive(context: ChannelHandlerContext) {
        receive(.closed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        if ended || !waiting.isEmpty || !context.channel.isWritable {
            readHeldBack = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        resumeReading()
        context.fireChannelWritabilityChanged()
    }

    // MARK: Driving the machine

    private func start() {
        guard !started else { return }
        started = true
        run(machine.connected(now: Self.now()))
    }

    /// Input from the channel: to the machine now, or after the actions in progress.
    private func receive(_ input: Input) {
        guard started, !ended else { return }
        if busy {
            waiting.append(input)
        } else {
            run(feed(input))
        }
    }

    private func feed(_ input: Input) -> [SessionAction] {
        let now = Self.now()
        switch input {
        case .event(.bytes(let bytes)): return machine.received(bytes, now: now)
        case .event(.tlsEstablished): return machine.tlsEstablished(version: tlsVersion(), now: now)
        case .event(.timedOut):
            timer = .distantFuture  // the handler's timer has fired
            return machine.deadlineReached(now: now)
        case .event(.drain): return machine.drainRequested(now: now)
        case .closed: return machine.clientClosed(now: now)
        }
    }

    /// Carries out actions in order, on the event loop, until one must wait: that one and the
    /// rest go to a task.
    private func run(_ actions: [SessionAction]) {
        var queue = actions[...]
        while let action = queue.popFirst() {
            guard let more = performNow(action) else {
                busy = true
                let rest = Array(queue)
                Task(executorPreference: executor) {
                    let more = await self.perform(action)
                    await self.runToIdle(more + rest)
                    self.busy = false
                    self.settle()
                }
                return
            }
            if !more.isEmpty { queue = (more + queue)[...] }
        }
        settle()
    }

    /// In the task: the actions, then what arrived meanwhile, until nothing is left to do.
    private func runToIdle(_ actions: [SessionAction]) async {
        var queue = actions[...]
        while true {
            while let action = queue.popFirst() {
                let more: [SessionAction]
                if let now = performNow(action) { more = now } else { more = await perform(action) }
                if !more.isEmpty { queue = (more + queue)[...] }
            }
            if closed || machine.isClosed || waiting.isEmpty { return }
            // As before a read: the replies so far go out (and, test-only, the late commit runs
            // after the early 250), then the next input.
            setTimer(machine.deadline)
            flush()
            await runLateCommit()
            queue = feed(waiting.removeFirst())[...]
            resumeReading()
        }
    }

    /// Nothing is in progress: the replies go out, the timer follows the machine, and reading
    /// resumes; or the session ends.
    private func settle() {
        if closed || machine.isClosed {
            end()
            return
        }
        setTimer(machine.deadline)
        flush()
        if lateCommit != nil {
            busy = true
            Task(executorPreference: executor) {
                await self.runLateCommit()
                self.busy = false
                self.settle()
            }
            return
        }
        resumeReading()
    }

    private func resumeReading() {
        guard readHeldBack, waiting.isEmpty, !ended, let handlerContext, handlerContext.channel.isWritable else { return }
        readHeldBack = false
        handlerContext.read()
    }

    /// The session is over: the milters are told, the upstream connection goes back.
    private func end() {
        guard !ended else { return }
        ended = true
        busy = true
        waiting = []
        if !closed { closeConnection() }
        Task(executorPreference: executor) {
            await self.runLateCommit()
            for milter in self.milters { await milter.close() }
            // The client side is done (its slot is free); now the upstream connection goes back.
            await self.work.finish()
            self.logger.debug("session ended")
            if let key = self.connectionKey {
                self.connectionKey = nil
                self.context.registry.ended(key)
            }
        }
    }

    /// The replies so far go out, then the connection closes and its slot is free.
    private func closeConnection() {
        flush()
        closed = true
        channel.close(promise: nil)
        if let slot {
            self.slot = nil
            context.release(slot, client: machine.client)
        }
    }

    /// An action carried out at once, with what the machine answered; nil when it must wait.
    private func performNow(_ action: SessionAction) -> [SessionAction]? {
        switch action {
        case .write(let bytes):
            if pending == nil {
                pending = bytes
            } else {
                pending!.writeImmutableBuffer(bytes)
            }
            return []
        case .record(let record):
            context.record(record)
            if let samples = context.samples { work.offerSample(record, to: samples) }
            return []
        case .count(let event):
            context.count(event)
            return []
        case .log(let line):
            logger.log(line, transactionID: machine.transactionsStarted > 0 ? machine.transactionID : nil)
            return []
        case .close:
            closeConnection()
            return []
        case .spool(let request):
            switch work.spoolNow(request) {
            case .done(let result?): return machine.contentStored(result, now: Self.now())
            case .done(nil): return []
            case .mustWait: return nil
            }
        case .startTLS:
            return startTLS()
        case .admit, .lookUpDNSLists, .evaluate, .upstream, .quarantine, .verifyCredentials:
            return nil
        }
    }

    /// An action that waits, with what the machine answered.
    private func perform(_ action: SessionAction) async -> [SessionAction] {
        switch action {
        case .write, .record, .count, .log, .close, .startTLS:
            return performNow(action) ?? []
        case .admit(let client):
            logger[metadataKey: "smtp.client"] = "\(client)"
            let (admission, key) = context.admit(client, channel: channel)
            slot = key
            var name: ClientName?
            var listings: [DNSListResult] = []
            if case .admitted = admission {
                // The client's name and the client lists, at once, before the greeting (with
                // `dnsbl_wait: mail` the lists are awaited before the mail stage instead).
                var lookup = DNSListLookup(lists: dnsLists.filter { $0.lookup == .client }, client: client.address)
                let (verifier, checker) = (context.clientNames, context.dnsLists)
                var wait: Duration?
                switch dnsListWait {
                case .connect(let duration): wait = duration
                case .mail:
                    if let checker, !lookup.lists.isEmpty {
                        let early = lookup
                        clientListsAsked = Task { await checker.check(early) }
                    }
                    lookup.lists = []
                }
                let asked = lookup
                async let found = verifier?.verify(client.address)
                async let lists = asked.lists.isEmpty ? [] : checker?.check(asked, timeout: wait) ?? []
                name = await found
                listings = await lists
                if let name {
                    context.metrics.clientName(name.status)
                    logger[metadataKey: "smtp.client.name"] = "\(name)"
                }
                for listing in listings { context.metrics.dnsList(listing) }
            }
            return machine.admitted(admission, clientName: name, dnsLists: listings, now: Self.now())
        case .lookUpDNSLists(let lookup):
            return machine.dnsListsAnswered(await lookUp(lookup), now: Self.now())
        case .evaluate(let request):
            var message: MessageDraft?
            if request.stage == .data, pipeline.editsMessages {
                message = await work.draft(facts: request.facts, addedHeaders: request.addedHeaders)
            }
            let verdict = await context.evaluate(request, pipeline: pipeline, message: message, logger: logger)
            return machine.stageEvaluated(verdict, now: Self.now())
        case .upstream(let request):
            await runLateCommit()
            if context.unsafeEarlyAck, case .commit(let content) = request, let commit = work.detachCommit(content) {
                lateCommit = commit
                return machine.upstreamReplied(UpstreamReply(Self.earlyAck, upstream: "unsafe-early-ack"), now: Self.now())
            }
            switch await work.upstream(request) {
            case .success(let reply)?: return machine.upstreamReplied(reply, now: Self.now())
            case .failure(let failure)?: return machine.upstreamFailed(failure.error, upstream: failure.upstream, now: Self.now())
            case nil: return []
            }
        case .spool(let request):
            guard let result = await work.spool(request) else { return [] }
            return machine.contentStored(result, now: Self.now())
        case .quarantine(let request):
            return machine.quarantined(await work.quarantine(request), now: Self.now())
        case .verifyCredentials(let request):
            return machine.credentialsChecked(await context.verify(request), now: Self.now())
        }
    }

    /// The answers for `.lookUpDNSLists`: domain lists asked now, client lists from what was
    /// asked at admission.
    private func lookUp(_ lookup: DNSListLookup) async -> [DNSListResult] {
        guard let checker = context.dnsLists else {
            return lookup.lists.map { DNSListResult(list: $0.name, outcome: .error("no DNS resolver is configured"), weight: 0) }
        }
        var domains = lookup
        domains.lists = lookup.lists.filter { $0.lookup != .client }
        let wanted = Set(lookup.lists.filter { $0.lookup == .client }.map(\.name))
        async let domainResults = domains.lists.isEmpty ? [] : checker.check(domains)
        var results: [DNSListResult] = []
        if !wanted.isEmpty {
            let asked = clientListsAsked
            clientListsAsked = nil
            let clientLookup = DNSListLookup(lists: lookup.lists.filter { $0.lookup == .client }, client: lookup.client)
            let answered: [DNSListResult]
            if let asked { answered = await asked.value } else { answered = await checker.check(clientLookup) }
            results = answered.filter { wanted.contains($0.list) }
        }
        results += await domainResults
        for result in results { context.metrics.dnsList(result) }
        return results
    }

    // MARK: Test-only early acknowledgement

    /// The made-up upstream reply of `context.unsafeEarlyAck`.
    private static let earlyAck = SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok (TEST ONLY: unsafe early ack)")

    private func runLateCommit() async {
        guard let commit = lateCommit else { return }
        lateCommit = nil
        await commit()
    }

    // MARK: I/O

    /// The one timer of the session, kept at the machine's deadline.
    private func setTimer(_ deadline: NIODeadline) {
        guard deadline != timer, let handlerContext else { return }
        timer = deadline
        handlerContext.triggerUserOutboundEvent(SMTPSessionDeadline(deadline), promise: nil)
    }

    /// Writes the replies batched so far, in one write: before waiting for input, which is
    /// what RFC 2920 §3.2 asks of a pipelining server. While the channel is not writable,
    /// reading waits (`read`), so replies cannot pile up.
    private func flush() {
        guard let bytes = pending else { return }
        pending = nil
        handlerContext?.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }

    /// The 220 goes out, then the TLS handler goes in, at once: the write has passed the
    /// pipeline, so the 220 is in the clear, and the client's ClientHello cannot arrive
    /// before it has read the 220.
    private func startTLS() -> [SessionAction] {
        flush()
        guard let tlsContext = context.certificates?.context, let handlerContext else { return machine.clientClosed(now: Self.now()) }
        do {
            try handlerContext.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .first)
            return []
        } catch {
            logger.notice("STARTTLS failed", metadata: ["error": "\(error)"])
            return machine.clientClosed(now: Self.now())
        }
    }

    private func tlsVersion() -> String? {
        guard let version = try? handlerContext?.pipeline.syncOperations.nioSSL_tlsVersion() else { return nil }
        switch version {
        case .tlsv1: return "TLSv1"
        case .tlsv11: return "TLSv1.1"
        case .tlsv12: return "TLSv1.2"
        case .tlsv13: return "TLSv1.3"
        }
    }
}
