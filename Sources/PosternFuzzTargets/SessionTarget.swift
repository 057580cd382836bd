import Dispatch
import Glibc
import NIOCore
import PosternLog
import PosternPolicy
import PosternSession
import SMTPCore
import Synchronization

/// Plays `input` as one client's byte stream into the real `SessionMachine` (through
/// `SessionSimulator`, as the server's driver runs it), with the results of the machine's
/// actions (policy verdicts, upstream replies, credentials, …) chosen by the input too, then
/// checks what came out.
///
/// Input layout (see `SessionOptions` and `SessionScript`):
/// - byte 0: option flags (limits, STARTTLS, bare line endings, pipelining, policy stages);
/// - byte 1: AUTH offer and trust (bits 6–7), the size of each simulated read (bits 0–5);
/// - bytes 2–9: the script of results: 2–3 policy verdicts, 4–6 upstream replies, 7
///   credentials, 8 admission, spool, quarantine and STARTTLS, 9 header actions;
/// - the rest: what the client sends.
///
/// Invariants:
/// - every reply is 2xx–5xx with an enhanced code of its own class, and one exactly when the
///   session is under EHLO (RFC 2034) or the reply is one made before the greeting;
/// - a 2xx to the end of a message (DATA's dot, BDAT LAST) only when the upstream accepted
///   it, the quarantine kept it, or the policy discarded it (the one 250 that is a lie by
///   design), and that reply is the one the decision record keeps;
/// - no reply before the command that asked for it is complete: after every read, the final
///   replies so far are at most the greeting, one per line the client completed (CRLF; a BDAT
///   line only once its chunk is in) and one unsolicited reply that ends the session;
/// - nothing is written, and nothing is asked, after the close, by any later input;
/// - the upstream sees MAIL before RCPT, RCPT before the message, a message only with an
///   accepted recipient, never more accepted recipients than the limit, and only messages
///   without a bare CR or LF or NUL (CRLF only when normalising); ETRN only from trusted
///   clients;
/// - every transaction leaves exactly one decision record, with an id of its own.
public func fuzzSession(_ input: [UInt8]) {
    guard input.count >= 2 + SessionScript.size, input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let options = SessionOptions(flags: input[0], more: input[1])
    let script = SessionScript(Array(input[2..<(2 + SessionScript.size)]))
    // The simulator is async; its responders never suspend. Run it to the end on a task, and
    // go on only once the task has let go of the run: what the task still held would be freed
    // on its thread after this function returns, and libFuzzer's leak check (which runs when
    // an input's mallocs and frees differ) would find it half destroyed and report a leak.
    var run = SessionRun(stream: Array(input[(2 + SessionScript.size)...]), options: options, script: script)
    Task { [run] in
        run.finish(await simulate(run.stream, options: run.options, script: run.script))
    }
    run.done.wait()
    while !isKnownUniquelyReferenced(&run) { sched_yield() }
    guard let simulation = run.simulation else { return }
    checkSession(simulation, options: options, script: script)
}

/// What bytes 0 and 1 of a `session` input select.
struct SessionOptions: Sendable {
    /// Bytes per simulated read; 0: the whole stream in one read.
    var pieceSize: Int
    /// The client is in `trusted_networks` (ETRN, relaying anywhere).
    var trusted: Bool
    var configuration: SessionConfiguration

    init(flags: UInt8, more: UInt8) {
        pieceSize = Int(more & 0x3F)
        trusted = more & 0xC0 == 0xC0
        let authentication: AuthenticationOffer = switch more >> 6 {
        case 0: .off
        case 1: .afterTLS
        default: .always
        }
        let server = SMTPServerConfiguration(
            hostname: "mx.fuzz.test",
            maximumMessageSize: flags & 0x80 != 0 ? 64 : 25 * 1024 * 1024,
            maximumRecipients: flags & 0x40 != 0 ? 2 : 100,
            maximumErrors: flags & 0x20 != 0 ? 3 : 10,
            maximumCommandLineLength: 512,
            maximumTextLineLength: flags & 0x80 != 0 ? 40 : 1000,
            tlsAvailable: flags & 0x01 != 0,
            requireTLS: flags & 0x02 != 0,
            authentication: authentication,
            maximumJunkCommands: flags & 0x20 != 0 ? 5 : 100)
        // Bits 3 and 4: with either, every stage asks for a verdict (the script's); with both,
        // improper pipelining is refused too.
        configuration = SessionConfiguration(
            server: server, bareLineEndings: flags & 0x04 != 0 ? .normalise : .reject,
            relayControl: RelayControl(relayDomains: ["fuzz.test", ".fuzz.test"], trustedNetworks: [IPNetwork("127.0.0.0/8")!]),
            authFailureDelay: .zero, forbidImproperPipelining: flags & 0x18 == 0x18,
            checkedStages: flags & 0x18 != 0 ? Set(PolicyStage.allCases) : [])
    }
}

/// The results of the machine's actions, from bytes 2–9 of a `session` input. Each kind of
/// result cycles through its own nibbles, so the n-th upstream request gets the same answer
/// whatever else happened before it; all zero: everything passes and succeeds.
///
/// - bytes 0–1 (4 nibbles), each stage verdict: 0–5 pass, 6–7 accept, 8–9 reject (550 5.7.1),
///   10–11 tempfail (451 4.7.1), 12–13 discard at data (else pass), 14–15 quarantine at
///   data (else tempfail);
/// - bytes 2–4 (6 nibbles), each upstream request (MAIL, RCPT, message, ETRN): 0–7 its 2xx,
///   8–9 a 4xx, 10–11 a 5xx, 12 connection lost, 13 timed out, 14 unavailable, 15 a feature
///   missing (SMTPUTF8, 8BITMIME, or a queue for ETRN);
/// - byte 5 (2 nibbles), each credentials check, nibble mod 5: success, failure, failure that
///   locks out, locked out, unavailable;
/// - byte 6: bits 0–1 quarantine (3: it fails), bit 2 the spool fails, bit 3 the STARTTLS
///   handshake fails, bits 4–6 admission (5: too many connections, 6: too many from the
///   address, 7: shutting down);
/// - byte 7: bit 0 data verdicts add a header, bit 1 they tag the subject.
struct SessionScript: Sendable {
    static let size = 8
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Nibble `index` of the `count` nibbles from byte `first`, cycling.
    func nibble(_ first: Int, count: Int, _ index: Int) -> UInt8 {
        let n = index % count
        return (bytes[first + n / 2] >> (n % 2 == 0 ? 0 : 4)) & 0x0F
    }

    func verdict(_ index: Int, stage: PolicyStage) -> PolicyVerdict {
        var verdict = PolicyVerdict()
        let choice = nibble(0, count: 4, index)
        let action: RuleAction? = switch choice {
        case 0...5: nil
        case 6...7: .accept
        case 8...9: .reject
        case 10...11: .tempfail
        case 12...13: stage == .data ? .discard : nil
        default: stage == .data ? .quarantine : .tempfail
        }
        if let action {
            switch action {
            case .accept:
                verdict.outcome = .accept
            case .reject:
                verdict.outcome = .decided(.reject, SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Refused by fuzz rule"))
            case .tempfail:
                verdict.outcome = .decided(.tempfail, SMTPReply(451, EnhancedStatusCode(4, 7, 1), "Try again later"))
            default:
                verdict.outcome = .decided(action, SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok"))
            }
            verdict.rule = "fuzz-\(index)"
            verdict.reason = "fuzz verdict \(choice)"
        }
        if stage == .data {
            if bytes[7] & 0x01 != 0 { verdict.headerActions.append(.addHeader(name: "X-Fuzz", value: "\(index)")) }
            if bytes[7] & 0x02 != 0 { verdict.headerActions.append(.tagSubject("[FUZZ]")) }
        }
        return verdict
    }

    func upstream(_ index: Int, _ request: UpstreamRequest) -> Result<UpstreamReply, UpstreamError> {
        let choice = nibble(2, count: 6, index)
        let positive: SMTPReply = switch request {
        case .begin: SMTPReply(250, EnhancedStatusCode(2, 1, 0), "Ok")
        case .addRecipient: SMTPReply(250, EnhancedStatusCode(2, 1, 5), "Ok")
        case .commit: SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok: queued as FUZZ\(index)")
        case .etrn: SMTPReply(250, nil, "Queuing started")
        case .abort: SMTPReply(250, nil, "Ok")
        }
        let failure: UpstreamError.Kind
        switch choice {
        case 0...7: return .success(UpstreamReply(positive, upstream: "fuzz:25"))
        case 8...9: return .success(UpstreamReply(SMTPReply(451, EnhancedStatusCode(4, 3, 0), "Try again later"), upstream: "fuzz:25"))
        case 10...11: return .success(UpstreamReply(SMTPReply(550, EnhancedStatusCode(5, 1, 1), "Refused upstream"), upstream: "fuzz:25"))
        case 12: failure = .connectionLost
        case 13: failure = .timedOut
        case 14: failure = .unavailable
        default:
            if case .etrn = request { failure = .unsupported(.etrn) } else { failure = .unsupported(index % 2 == 0 ? .smtpUTF8 : .eightBitMIME) }
        }
        return .failure(UpstreamError(failure, "fuzz failure"))
    }

    func credentials(_ index: Int) -> CredentialsOutcome {
        switch nibble(5, count: 2, index) % 5 {
        case 0: .success
        case 1: .failure(nowLockedOut: false)
        case 2: .failure(nowLockedOut: true)
        case 3: .lockedOut
        default: .unavailable
        }
    }

    var quarantineFails: Bool { bytes[6] & 0x03 == 0x03 }
    var spoolFails: Bool { bytes[6] & 0x04 != 0 }
    var handshakeFails: Bool { bytes[6] & 0x08 != 0 }
    var admission: Admission {
        switch (bytes[6] >> 4) & 0x07 {
        case 5: .tooManyConnections(limit: 1)
        case 6: .tooManyFromAddress(limit: 1)
        case 7: .shuttingDown
        default: .admitted
        }
    }
}

/// Counts each kind of request, so the script's n-th answer goes to the n-th request.
private final class ScriptCursor: Sendable {
    private let counts = Mutex((verdicts: 0, upstream: 0, credentials: 0))

    func nextVerdict() -> Int { counts.withLock { counts in Self.take(&counts.verdicts) } }
    func nextUpstream() -> Int { counts.withLock { counts in Self.take(&counts.upstream) } }
    func nextCredentials() -> Int { counts.withLock { counts in Self.take(&counts.credentials) } }

    /// The count before this request, counted.
    private static func take(_ count: inout Int) -> Int {
        defer { count += 1 }
        return count
    }
}

/// The simulator at the end, every reply the client read, and the reads after which it had
/// read a reply to a command not yet complete.
private struct Simulation: Sendable {
    var simulator: SessionSimulator
    var replies: [SMTPReply]
    var violations: [String]
}

private func simulate(_ stream: [UInt8], options: SessionOptions, script: SessionScript) async -> Simulation {
    var responders = SessionSimulator.Responders()
    let cursor = ScriptCursor()
    responders.admit = { _ in script.admission }
    responders.evaluate = { request in
        StageVerdict(stage: request.stage, verdict: script.verdict(cursor.nextVerdict(), stage: request.stage))
    }
    responders.upstream = { request in
        if case .abort = request { return .success(UpstreamReply(SMTPReply(250, nil, "Ok"), upstream: "fuzz:25")) }
        return script.upstream(cursor.nextUpstream(), request)
    }
    responders.credentials = { _ in script.credentials(cursor.nextCredentials()) }
    responders.store = { content, _, _ in script.spoolFails ? .failure(StorageError("fuzz spool failure")) : .success(StoredMessage(size: content.count)) }
    responders.quarantine = { _ in
        script.quarantineFails ? .failure(UpstreamError(.localError, "fuzz quarantine failure")) : .success(SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok: quarantined"))
    }
    responders.startTLS = { script.handshakeFails ? nil : "TLSv1.3" }
    let peer = ClientEndpoint(address: options.trusted ? IPAddress("127.0.0.1")! : IPAddress("192.0.2.1")!, port: 1)
    var simulator = SessionSimulator(configuration: options.configuration, peer: peer, responders: responders)
    var replies: [SMTPReply] = []
    var finals = 0
    var violations: [String] = []
    var credit = ReplyCredit()

    func account(_ simulator: inout SessionSimulator, fed: Int) {
        let new = simulator.replies()
        if replies.isEmpty, let first = new.first { credit.sessionRefused = first.code != 220 }
        replies += new
        for reply in new where !reply.isIntermediate { finals += 1 }
        // The greeting (or the reply that refuses the session), one reply per completed line,
        // and one unsolicited reply that ends the session (a defence, 421).
        if finals > 1 + credit.completed + 1 {
            violations.append("\(finals) final replies after \(fed) octets, \(credit.completed) lines complete: \(replies.last!)")
        }
    }

    await simulator.connect()
    account(&simulator, fed: 0)
    let size = options.pieceSize == 0 ? max(1, stream.count) : options.pieceSize
    var offset = 0
    while offset < stream.count, simulator.closed == nil {
        let end = min(stream.count, offset + size)
        credit.feed(stream[offset..<end])
        await simulator.send(Array(stream[offset..<end]))
        offset = end
        account(&simulator, fed: offset)
    }
    await simulator.advance(by: .seconds(1))
    await simulator.disconnect()
    account(&simulator, fed: offset)
    return Simulation(simulator: simulator, replies: replies, violations: violations)
}

/// How many of the client's commands are complete, counted generously: a line is complete at
/// its CRLF (only CRLF ends one, as `SMTPInputFramer` frames), a BDAT command line once its
/// chunk is in. Lines inside DATA content and SASL responses count too, though they get no
/// reply of their own, and CRLFs inside a BDAT chunk as well (in case the session did not
/// take the line as BDAT): the count can only be too high, so a reply past it is certainly
/// early.
struct ReplyCredit {
    private(set) var completed = 0
    /// The session was refused at connect: no line is BDAT, each gets its 503 at once.
    var sessionRefused = false
    /// The start of the line in progress (enough for any BDAT command worth reading as one).
    private var line: [UInt8] = []
    private var lineLength = 0
    private var previousCR = false
    private var chunkRemaining = 0
    private static let parser = SMTPCommandParser()

    mutating func feed(_ bytes: ArraySlice<UInt8>) {
        for byte in bytes {
            let crlf = previousCR && byte == 10
            previousCR = byte == 13
            if chunkRemaining > 0 {
                if crlf { completed += 1 }
                chunkRemaining -= 1
                if chunkRemaining == 0 {
                    completed += 1
                    previousCR = false
                }
                continue
            }
            guard crlf else {
                if line.count < 64 { line.append(byte) }
                lineLength += 1
                continue
            }
            // A line cut short here might read as BDAT with another size: only whole lines.
            if !sessionRefused, lineLength == line.count, line.count >= 6, line[0] | 0x20 == UInt8(ascii: "b"),
               line[1] | 0x20 == UInt8(ascii: "d"), case .bdat(let size, _)? = try? Self.parser.parse(line.dropLast()), size > 0 {
                chunkRemaining = size
            } else {
                completed += 1
            }
            line.removeAll(keepingCapacity: true)
            lineLength = 0
        }
    }
}

private func checkSession(_ simulation: Simulation, options: SessionOptions, script: SessionScript) {
    let simulator = simulation.simulator
    let server = options.configuration.server
    for violation in simulation.violations { expect(false, "a reply before its command was complete: \(violation)") }
    var extended = false
    var greeted = false
    for reply in simulation.replies {
        expect((200...599).contains(reply.code), "reply code \(reply.code)")
        if let enhanced = reply.enhanced {
            expect(enhanced.codeClass == (reply.code >= 500 ? 5 : reply.code >= 400 ? 4 : 2), "\(reply) has an enhanced code of another class")
        }
        if reply.code == 220 {
            // The greeting; or STARTTLS's 220, after which the session starts over (RFC 3207 §4.2).
            if greeted { extended = false }
            greeted = true
            continue
        }
        if reply.code == 250, reply.lines.first == server.hostname {
            extended = reply.lines.count > 1  // the EHLO reply lists extensions; the HELO reply does not
            continue
        }
        if greeted && !reply.isIntermediate && reply.code != 220 {
            expect((reply.enhanced != nil) == extended, "\(reply) after \(extended ? "EHLO" : "no EHLO")")
        }
    }
    checkActions(simulator, script: script)
    checkUpstream(simulator, options: options, script: script)
    checkAfterClose(simulator)
    expect(simulator.closed != nil, "the session did not end when the client left")
    let transactionRecords = simulator.records.filter { $0.mailFrom != nil }.count
    expect(transactionRecords == simulator.machine.transactionsStarted, "\(simulator.machine.transactionsStarted) transactions, \(transactionRecords) records")
    expect(Set(simulator.records.map(\.id)).count == simulator.records.count, "two records with one id")
}

/// The actions in order: a 2xx to the end of a message only when something took the message
/// (the upstream, the quarantine) or the policy discarded it, and the record keeps the reply
/// the client got; nothing after the close.
private func checkActions(_ simulator: SessionSimulator, script: SessionScript) {
    var replyParser = SMTPReplyParser()
    var lastReply: SMTPReply?
    var verdicts = 0
    var upstreamRequests = 0
    var messageTaken = false
    var closed = false
    for action in simulator.actions {
        if closed {
            switch action {
            case .record, .count, .log, .upstream(.abort), .spool(.discard):
                break
            default:
                expect(false, "\(action) after the close")
            }
        }
        switch action {
        case .write(var bytes):
            while let reply = try? replyParser.parse(&bytes) { lastReply = reply }
        case .evaluate(let request):
            let verdict = script.verdict(verdicts, stage: request.stage)
            verdicts += 1
            if request.stage == .data, case .decided(.discard, _) = verdict.outcome { messageTaken = true }
        case .upstream(let request):
            if case .abort = request { break }
            let result = script.upstream(upstreamRequests, request)
            upstreamRequests += 1
            if case .commit = request, case .success(let answer) = result { messageTaken = answer.reply.isPositive }
        case .quarantine:
            messageTaken = !script.quarantineFails
        case .spool(.begin):
            messageTaken = false
        case .record(let record) where record.stage == .data:
            if let reply = record.reply {
                expect(lastReply?.code == reply.code, "the record of \(record.id) keeps \(reply.code), the client got \(lastReply.map { "\($0)" } ?? "nothing")")
                expect(!(200..<300).contains(reply.code) || messageTaken, "\(reply.code) to the end of a message nobody took (\(record.decision))")
            }
            messageTaken = false
        case .close:
            closed = true
        default:
            break
        }
    }
}

/// What reached the upstream, with the answers the script gave.
private func checkUpstream(_ simulator: SessionSimulator, options: SessionOptions, script: SessionScript) {
    var transactionOpen = false
    var recipients = 0
    var index = 0
    for request in simulator.upstreamRequests {
        var positive = false
        if case .abort = request {} else {
            if case .success(let answer) = script.upstream(index, request) { positive = answer.reply.isPositive }
            index += 1
        }
        switch request {
        case .begin:
            expect(!transactionOpen, "MAIL upstream in an open transaction")
            transactionOpen = positive
            recipients = 0
        case .addRecipient:
            expect(transactionOpen, "RCPT upstream without a transaction")
            if positive { recipients += 1 }
            // A connection failure ends the upstream transaction; a refusal does not.
            if case .failure = script.upstream(index - 1, request) { transactionOpen = false }
            expect(recipients <= options.configuration.server.maximumRecipients, "more recipients accepted upstream than the limit")
        case .commit:
            expect(transactionOpen && recipients > 0, "a message upstream without an open transaction and an accepted recipient")
            transactionOpen = false
        case .abort:
            transactionOpen = false
        case .etrn:
            expect(options.trusted, "ETRN upstream from an untrusted client")
        }
    }
    for message in simulator.relayed {
        expect(!message.bytes.contains(0), "a message with NUL was relayed")
        var previous: UInt8 = 0
        for byte in message.bytes {
            if byte == 10 { expect(previous == 13, "a relayed message has a bare LF") }
            if previous == 13 { expect(byte == 10, "a relayed message has a bare CR") }
            previous = byte
        }
    }
}

/// Every input a driver could still deliver after the close yields no action.
private func checkAfterClose(_ simulator: SessionSimulator) {
    guard simulator.closed != nil else { return }
    var machine = simulator.machine
    let now = simulator.now
    let later = SessionTime(uptime: now.uptime + .hours(2), wallMilliseconds: now.wallMilliseconds + 7_200_000)
    var actions: [SessionAction] = []
    actions += machine.received(ByteBuffer(string: "NOOP\r\nQUIT\r\n"), now: now)
    actions += machine.deadlineReached(now: later)
    actions += machine.drainRequested(now: later)
    actions += machine.upstreamReplied(UpstreamReply(SMTPReply(250, nil, "Ok"), upstream: "fuzz:25"), now: later)
    actions += machine.stageEvaluated(StageVerdict(stage: .data, verdict: PolicyVerdict()), now: later)
    actions += machine.credentialsChecked(.success, now: later)
    actions += machine.tlsEstablished(version: "TLSv1.3", now: later)
    actions += machine.clientClosed(now: later)
    expect(actions.isEmpty, "after the close the machine still acted: \(actions.prefix(3))")
}

/// What the simulation's task reads and what it carries out: the task's only capture, so that
/// once the task has released it, nothing of the run is left to the task's thread to free.
private final class SessionRun: @unchecked Sendable {
    let stream: [UInt8]
    let options: SessionOptions
    let script: SessionScript
    let done = DispatchSemaphore(value: 0)
    // Written once by the task before it signals, read after the wait: the semaphore orders them.
    private(set) var simulation: Simulation?

    init(stream: [UInt8], options: SessionOptions, script: SessionScript) {
        self.stream = stream
        self.options = options
        self.script = script
    }

    func finish(_ simulation: Simulation) {
        self.simulation = simulation
        done.signal()
    }
}
