import NIOCore
import PosternLog
import PosternMIME
import PosternPolicy
import SMTPCore
import Synchronization

/// Drives a `SessionMachine` offline, the way the server's driver does, with the results of
/// its actions given by `Responders` and a clock that moves only when told to. What the
/// machine wrote, recorded, counted, logged and relayed is kept for inspection. The fuzz
/// target, the transcript tests and offline tools run sessions through it.
public struct SessionSimulator: Sendable {
    /// What each action's result is.
    public struct Responders: Sendable {
        public var admit: @Sendable (ClientEndpoint) async -> Admission = { _ in .admitted }
        /// Default: not listed.
        public var dnsLists: @Sendable (DNSListLookup) async -> [DNSListResult] = { lookup in
            lookup.lists.map { DNSListResult(list: $0.name, outcome: .notListed, weight: 0) }
        }
        /// Default: no rule decides.
        public var evaluate: @Sendable (StageRequest) async -> StageVerdict = { StageVerdict(stage: $0.stage, verdict: PolicyVerdict()) }
        /// Default: an upstream that accepts everything (`250`), named `upstream.test:25`.
        public var upstream: @Sendable (UpstreamRequest) async -> Result<UpstreamReply, UpstreamError> = { request in
            switch request {
            case .begin: .success(UpstreamReply(SMTPReply(250, EnhancedStatusCode(2, 1, 0), "Ok"), upstream: "upstream.test:25"))
            case .addRecipient: .success(UpstreamReply(SMTPReply(250, EnhancedStatusCode(2, 1, 5), "Ok"), upstream: "upstream.test:25"))
            case .commit: .success(UpstreamReply(SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok: queued as SIM1"), upstream: "upstream.test:25"))
            case .etrn: .success(UpstreamReply(SMTPReply(250, nil, "Queuing started"), upstream: "upstream.test:25"))
            case .abort: .success(UpstreamReply(SMTPReply(250, nil, "Ok"), upstream: "upstream.test:25"))
            }
        }
        /// The stored content and the scanned header section; default: stored, not parsed.
        public var store: @Sendable (_ content: [UInt8], _ parse: Bool, _ headers: MessageHeaderSection) async -> Result<StoredMessage, StorageError> = { content, _, _ in
            .success(StoredMessage(size: content.count))
        }
        public var quarantine: @Sendable (QuarantineRequest) async -> Result<SMTPReply, UpstreamError> = { _ in
            .success(SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok: quarantined"))
        }
        public var credentials: @Sendable (CredentialsRequest) async -> CredentialsOutcome = { _ in .failure(nowLockedOut: false) }
        /// The TLS version a handshake gives; nil: the handshake fails.
        public var startTLS: @Sendable () async -> String? = { "TLSv1.3" }

        public init() {}
    }

    /// A message as it went to the upstream (or the quarantine): prefix, then content.
    public struct Relayed: Sendable, Equatable {
        public var bytes: [UInt8]
        public var chunked: Bool
        public var text: String { String(decoding: bytes, as: UTF8.self) }
    }

    public private(set) var machine: SessionMachine
    public var responders: Responders
    public private(set) var now: SessionTime
    /// Everything written to the client.
    public private(set) var written = ByteBuffer()
    public private(set) var records: [DecisionRecord] = []
    public private(set) var events: [SessionEvent] = []
    public private(set) var logs: [SessionLog] = []
    /// Every action, in order (writes included).
    public private(set) var actions: [SessionAction] = []
    public private(set) var upstreamRequests: [UpstreamRequest] = []
    public private(set) var relayed: [Relayed] = []
    public private(set) var quarantined: [Relayed] = []
    public private(set) var closed: CloseReason?
    /// The machine's deadline as the simulated timer saw it after the last input.
    public private(set) var deadline = NIODeadline.distantFuture
    /// The content spooled for the message in progress.
    public private(set) var spool: [UInt8] = []
    private var replyParser = SMTPReplyParser()
    private var unread = ByteBuffer()

    public init(
        configuration: SessionConfiguration, policy: Policy = .empty,
        peer: ClientEndpoint = ClientEndpoint(address: IPAddress("192.0.2.10")!, port: 40_000),
        start: SessionTime = SessionTime(uptime: .uptimeNanoseconds(1_000_000_000), wallMilliseconds: 1_795_461_098_000),
        responders: Responders = Responders(), makeID: @escaping @Sendable () -> String = SessionSimulator.sequentialIDs()
    ) {
        self.machine = SessionMachine(configuration: configuration, policy: policy, peer: peer, now: start, makeID: makeID)
        self.responders = responders
        self.now = start
    }

    /// Ids `ID000001`, `ID000002`, …: the same for every run.
    public static func sequentialIDs() -> @Sendable () -> String {
        let counter = IDCounter()
        return { counter.next() }
    }

    // MARK: What the client does

    public mutating func connect() async {
        let actions = machine.connected(now: now)
        await run(actions)
    }

    public mutating func send(_ text: String) async {
        await send(Array(text.utf8))
    }

    public mutating func send(_ bytes: [UInt8]) async {
        guard closed == nil else { return }
        let actions = machine.received(ByteBuffer(bytes: bytes), now: now)
        await run(actions)
    }

    /// Sends `bytes` in pieces of `size` octets (1: byte by byte).
    public mutating func trickle(_ bytes: [UInt8], pieceSize size: Int) async {
        var offset = 0
        while offset < bytes.count, closed == nil {
            let end = min(bytes.count, offset + max(1, size))
            await send(Array(bytes[offset..<end]))
            offset = end
        }
    }

    public mutating func disconnect() async {
        guard closed == nil else { return }
        await run(machine.clientClosed(now: now))
    }

    public mutating func drain() async {
        guard closed == nil else { return }
        await run(machine.drainRequested(now: now))
    }

    /// Moves the clock on; when the machine's deadline passes, tells it so (repeatedly, as a
    /// timer would, while deadlines keep passing).
    public mutating func advance(by amount: TimeAmount) async {
        let target = now.advanced(by: amount)
        while closed == nil, deadline <= target.uptime {
            let passed = deadline
            now = SessionTime(uptime: max(deadline, now.uptime),
                              wallMilliseconds: now.wallMilliseconds + max(0, (deadline - now.uptime).nanoseconds / 1_000_000))
            await run(machine.deadlineReached(now: now))
            if deadline == passed { break }  // the machine had nothing to do at it
        }
        now = target
    }

    // MARK: What came back

    /// The replies written since the last call, parsed.
    public mutating func replies() -> [SMTPReply] {
        var bytes = unread
        unread = ByteBuffer()
        var result: [SMTPReply] = []
        while let reply = try? replyParser.parse(&bytes) { result.append(reply) }
        unread = bytes
        return result
    }

    /// The replies written since the last call, as the client reads them (`250 2.1.0 Ok`).
    public mutating func replyLines() -> [String] {
        replies().map(\.description)
    }

    // MARK: Carrying out actions

    private mutating func run(_ initial: [SessionAction]) async {
        var queue = initial[...]
        while let action = queue.popFirst() {
            actions.append(action)
            let more = await perform(action)
            if !more.isEmpty { queue = (more + queue)[...] }
        }
        deadline = machine.deadline
    }

    private mutating func perform(_ action: SessionAction) async -> [SessionAction] {
        switch action {
        case .write(var bytes):
            var copy = bytes
            written.writeBuffer(&bytes)
            unread.writeBuffer(&copy)
        case .admit(let endpoint):
            let admission = await responders.admit(endpoint)
            return machine.admitted(admission, now: now)
        case .lookUpDNSLists(let lookup):
            return machine.dnsListsAnswered(await responders.dnsLists(lookup), now: now)
        case .evaluate(let request):
            let verdict = await responders.evaluate(request)
            return machine.stageEvaluated(verdict, now: now)
        case .upstream(let request):
            upstreamRequests.append(request)
            let result = await responders.upstream(request)
            switch request {
            case .abort:
                return []
            case .commit(let content):
                if case .success = result {
                    var prefix = content.prefix
                    relayed.append(Relayed(bytes: Array(prefix.readBytes(length: prefix.readableBytes) ?? []) + spool.dropFirst(content.skipping),
                                           chunked: content.chunked))
                }
            default:
                break
            }
            switch result {
            case .success(let reply): return machine.upstreamReplied(reply, now: now)
            case .failure(let error): return machine.upstreamFailed(error, upstream: nil, now: now)
            }
        case .spool(let request):
            switch request {
            case .begin, .discard: spool = []
            case .append(let bytes): spool += bytes.readableBytesView
            case .finish(let parse, let headers):
                let result = await responders.store(spool, parse, headers)
                return machine.contentStored(result, now: now)
            }
        case .quarantine(let request):
            let result = await responders.quarantine(request)
            if case .success = result {
                var prefix = request.content.prefix
                quarantined.append(Relayed(bytes: Array(prefix.readBytes(length: prefix.readableBytes) ?? []) + spool, chunked: false))
            }
            return machine.quarantined(result, now: now)
        case .verifyCredentials(let request):
            let outcome = await responders.credentials(request)
            return machine.credentialsChecked(outcome, now: now)
        case .startTLS:
            if let version = await responders.startTLS() {
                return machine.tlsEstablished(version: version, now: now)
            }
            return machine.clientClosed(now: now)
        case .record(let record):
            records.append(record)
        case .count(let event):
            events.append(event)
        case .log(let line):
            logs.append(line)
        case .close(let reason):
            closed = reason
        }
        return []
    }
}

/// A counter shared by the closures of one simulation.
private final class IDCounter: Sendable {
    private let value = Mutex(0)
    func next() -> String {
        let number = value.withLock { value in
            value += 1
            return value
        }
        let digits = String(number)
        return "ID" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
    }
}
