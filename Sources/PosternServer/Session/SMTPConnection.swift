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

/// One client connection: the driver of its `SessionMachine`. One read loop feeds the
/// machine what arrives (bytes, TLS established, the deadline, drain, the close) and carries
/// out the actions it returns; replies go out through the channel's outbound writer, once per
/// batch, before the next read.
struct SMTPConnection {
    typealias Inbound = NIOAsyncChannelInboundStream<SMTPInboundEvent>.AsyncIterator
    typealias Outbound = NIOAsyncChannelOutboundWriter<ByteBuffer>

    private let channel: Channel
    private var inbound: Inbound
    private let outbound: Outbound
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
    /// Replies waiting to be written.
    private var pending = ByteBuffer()
    private var closed = false
    /// The connection slot, once admitted.
    private var slot: Int?
    /// The deadline the inbound handler's timer is set to.
    private var timer = NIODeadline.distantFuture
    /// Test-only (`context.unsafeEarlyAck`): the commit of a message already answered 250,
    /// run once that reply is written, before anything else reaches the upstream.
    private var lateCommit: (() async -> Void)?

    init(channel: Channel, inbound: Inbound, outbound: Outbound, peer: ClientEndpoint, context: ListenerContext) {
        self.channel = channel
        self.inbound = inbound
        self.outbound = outbound
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

    mutating func run() async {
        var actions = machine.connected(now: Self.now())
        while true {
            await perform(actions)
            if closed || machine.isClosed { break }
            setTimer(machine.deadline)
            guard await flush() else {
                actions = machine.clientClosed(now: Self.now())
                continue
            }
            await runLateCommit()
            let now = Self.now()
            switch await next() {
            case .bytes(let bytes)?: actions = machine.received(bytes, now: now)
            case .tlsEstablished?: actions = machine.tlsEstablished(version: await tlsVersion(), now: now)
            case .timedOut?:
                timer = .distantFuture  // the handler's timer has fired
                actions = machine.deadlineReached(now: now)
            case .drain?: actions = machine.drainRequested(now: now)
            case nil: actions = machine.clientClosed(now: now)
            }
        }
        await runLateCommit()
        for milter in milters { await milter.close() }
        // The client side is done (its slot is free); now the upstream connection goes back.
        await work.finish()
        logger.debug("session ended")
    }

    /// Carries out actions in order; an action's result goes back to the machine, whose
    /// actions come next.
    private mutating func perform(_ initial: [SessionAction]) async {
        var queue = initial[...]
        while let action = queue.popFirst() {
            let more = await perform(action)
            if !more.isEmpty { queue = (more + queue)[...] }
        }
    }

    private mutating func perform(_ action: SessionAction) async -> [SessionAction] {
        switch action {
        case .write(let bytes):
            pending.writeImmutableBuffer(bytes)
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
        case .startTLS:
            return await startTLS()
        case .record(let record):
            context.record(record)
        case .count(let event):
            context.count(event)
        case .log(let line):
            logger.log(line, transactionID: machine.transactionsStarted > 0 ? machine.transactionID : nil)
        case .close:
            await flush()
            closed = true
            try? await channel.close().get()
            if let slot {
                self.slot = nil
                context.release(slot, client: machine.client)
            }
        }
        return []
    }

    /// The answers for `.lookUpDNSLists`: domain lists asked now, client lists from what was
    /// asked at admission.
    private mutating func lookUp(_ lookup: DNSListLookup) async -> [DNSListResult] {
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

    private mutating func runLateCommit() async {
        guard let commit = lateCommit else { return }
        lateCommit = nil
        await commit()
    }

    // MARK: I/O

    /// The one timer of the session, kept at the machine's deadline.
    private mutating func setTimer(_ deadline: NIODeadline) {
        guard deadline != timer else { return }
        timer = deadline
        channel.triggerUserOutboundEvent(SMTPSessionDeadline(deadline), promise: nil)
    }

    private mutating func next() async -> SMTPInboundEvent? {
        do {
            return try await inbound.next()
        } catch {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// Writes the replies batched so far: before waiting for input, which is what RFC 2920
    /// §3.2 asks of a pipelining server. Suspends only when the channel is not writable.
    /// False when the connection is gone.
    @discardableResult
    private mutating func flush() async -> Bool {
        guard pending.readableBytes > 0 else { return true }
        let bytes = pending
        pending = ByteBuffer()
        do {
            try await outbound.write(bytes)
            return true
        } catch {
            return false
        }
    }

    /// The TLS handler goes in as soon as the 220 is written, in the same event-loop task:
    /// the client's ClientHello cannot arrive before it has read the 220.
    private mutating func startTLS() async -> [SessionAction] {
        let bytes = pending
        pending = ByteBuffer()
        guard let tlsContext = context.tlsContext else { return machine.clientClosed(now: Self.now()) }
        let channel = self.channel
        do {
            try await channel.eventLoop.flatSubmit {
                channel.writeAndFlush(bytes).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .first)
                }
            }.get()
            return []
        } catch {
            logger.notice("STARTTLS failed", metadata: ["error": "\(error)"])
            return machine.clientClosed(now: Self.now())
        }
    }

    private func tlsVersion() async -> String? {
        guard let version = try? await channel.nioSSL_tlsVersion().get() else { return nil }
        switch version {
        case .tlsv1: return "TLSv1"
        case .tlsv11: return "TLSv1.1"
        case .tlsv12: return "TLSv1.2"
        case .tlsv13: return "TLSv1.3"
        }
    }
}
