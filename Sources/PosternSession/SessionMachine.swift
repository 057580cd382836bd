import NIOCore
import PosternLog
import PosternMIME
import PosternPolicy
import SMTPCore

/// One client session of the gateway, with no I/O: bytes, deadlines, verdicts and upstream
/// replies come in as inputs; what to write, evaluate, relay, record and close comes out as
/// actions (the shape of NIO's state machines). The driver carries the actions out and feeds
/// their results back; the machine never reads a clock, never sees a socket.
///
/// It drives `SMTPServerStateMachine` (command order) with what `SMTPInputFramer` frames,
/// walks the policy with `PolicyWalk`, keeps the upstream transaction in step with the
/// client's, builds each transaction's decision record, and runs the connection defences.
public struct SessionMachine: Sendable {
    /// What the machine waits for.
    enum State: Sendable {
        /// Before `connected`.
        case starting
        /// A PROXY header (v1 or v2), until the deadline.
        case awaitingProxyHeader(ByteBuffer, deadline: NIODeadline)
        /// The driver's answer to `.admit`.
        case admitting
        /// `greet_delay`: a client that talks now is refused.
        case greetDelay(until: NIODeadline)
        /// Connect-stage refusal: only QUIT is served (RFC 5321 §3.1).
        case refused
        /// Reading commands.
        case commands
        /// A stage's verdict, for `point`.
        case policy(PendingPoint)
        /// The upstream's answer.
        case upstream(PendingUpstream, since: NIODeadline)
        /// Message content (DATA or a BDAT chunk).
        case content(ContentReceiver)
        /// `contentStored`.
        case storing(size: Int)
        /// `quarantined`.
        case quarantining(PolicyDecision, size: Int)
        /// SASL responses (RFC 4954 §4).
        case sasl(SASLExchange)
        /// `credentialsChecked`.
        case credentials(SASLMechanism, user: String)
        /// A failed AUTH is answered at this time (`auth.failure_delay`).
        case authDelay(until: NIODeadline)
        /// STARTTLS: the handshake; plaintext that arrives meanwhile is counted and dropped.
        case negotiatingTLS(discarded: Int, deadline: NIODeadline)
        case closed
        /// Placeholder while a payload is mutated in place (no copy-on-write).
        case modifying
    }

    /// A point of the policy walk under evaluation.
    enum PendingPoint: Sendable {
        case connect
        case mail(ReversePath, MailParameters)
        case rcpt(ForwardPath, RecipientParameters)
        case data(StoredMessage, verdict: PolicyVerdict?)
    }

    enum PendingUpstream: Sendable {
        case mail(ReversePath, MailParameters)
        case rcpt(ForwardPath, RecipientParameters)
        case commit(size: Int)
        case etrn(String)
        /// A filter changed the envelope: MAIL and the RCPTs again, then the message.
        case reenvelope(Reenvelope)
    }

    /// The envelope a filter set, sent to the upstream step by step.
    struct Reenvelope: Sendable {
        /// Still to send.
        var recipients: [(ForwardPath, RecipientParameters)]
        var accepted: Int
        var lastRefusal: SMTPReply?
        var content: OutgoingContent
        var size: Int
    }

    let configuration: SessionConfiguration
    let policy: Policy
    let makeID: @Sendable () -> String
    /// The session's id (in every log line and record of the session).
    public let sessionID: String
    /// The id of the transaction in progress, or of the last one (Received header, replies).
    public internal(set) var transactionID: String
    /// MAIL commands seen: from the first on, log lines carry `transactionID`.
    public internal(set) var transactionsStarted = 0
    /// The client, from the PROXY header when there is one.
    public internal(set) var client: ClientEndpoint

    var state: State = .starting
    var smtp: SMTPServerStateMachine
    let parser: SMTPCommandParser
    var framer = SMTPInputFramer()
    var walk: PolicyWalk
    /// Where the client is (looked up once per session), when the policy has GeoIP databases.
    var location: ClientLocation?
    /// What the policy's DNS lists said: about the client (asked when it was admitted, or
    /// before the mail stage), its HELO name and its sender's domain (before those stages).
    var dnsLists: [DNSListResult] = []
    /// For each list answered, what it was asked about (`DNSList.subjectKey`): a list is asked
    /// again when that changes (a new EHLO name, another sender).
    var dnsListSubjects: [String: String] = [:]
    /// The stage waiting for `dnsListsAnswered` (in `.policy`).
    var awaitingDNSLists: PolicyStage?
    /// The scores of the connect rules that matched (the session's part of every transaction's score).
    var sessionScores: [ScoreContribution] = []
    var sessionShadowScores: [ScoreContribution] = []
    var transaction: TransactionRecord?
    /// The message content of the transaction in progress, from the 354 or the first BDAT.
    var message: MessageProgress?
    /// MAIL was accepted upstream and the upstream transaction is not finished.
    var upstreamOpen = false
    var tlsVersion: String?
    /// The SASL mechanism of the successful AUTH.
    var authMechanism: String?
    /// The 220 greeting was sent: from then on replies follow the enhanced-code rule.
    var greeted = false
    var draining = false
    var sessionDeadline = NIODeadline.distantFuture
    /// Why a defence ended the session, for the record of a transaction it cut short.
    var endReason: String?
    /// The time of the input being handled.
    var now: SessionTime
    /// Replies not yet handed out as a `.write`.
    var output = ByteBuffer()
    var actions: [SessionAction] = []
    /// When the last input other than a deadline came: the command and data timeouts run from it.
    var lastActivity: NIODeadline

    /// `peer`: the connection's remote address (the client, unless a PROXY header says otherwise).
    /// `makeID`: session and transaction ids (`Identifier.make` in production).
    public init(
        configuration: SessionConfiguration, policy: Policy, peer: ClientEndpoint, now: SessionTime,
        makeID: @escaping @Sendable () -> String = Identifier.make
    ) {
        self.configuration = configuration
        self.policy = policy
        self.makeID = makeID
        self.sessionID = makeID()
        self.transactionID = makeID()
        self.client = peer
        self.now = now
        self.lastActivity = now.uptime
        self.smtp = SMTPServerStateMachine(configuration: configuration.server)
        self.parser = smtp.parser
        self.walk = PolicyWalk(policy: policy, relayControl: configuration.relayControl, clientTrusted: false)
    }

    /// True once the session is over (after a `.close` action). Like `deadline`, a stored
    /// property set as each input's actions are returned: a driver that keeps the machine in
    /// a class reads it in place, where calling a getter would copy the whole machine (and
    /// retain and release everything it holds) on every read.
    public private(set) var isClosed = false

    /// `isClosed` as it is now, in the middle of an input.
    var closedNow: Bool { if case .closed = state { return true } else { return false } }

    // MARK: Inputs

    /// The connection is open.
    public mutating func connected(now: SessionTime) -> [SessionAction] {
        begin(now)
        if configuration.proxyProtocol {
            guard configuration.proxyTrustedNetworks.contains(where: { $0.contains(client.address) }) else {
                log(.warning, "PROXY protocol listener refused an untrusted peer", ["peer": "\(client.address)"])
                send(SessionReplies.badProxyHeader)
                close(.ended)
                return finish()
            }
            state = .awaitingProxyHeader(ByteBuffer(), deadline: now.uptime + configuration.timeouts.proxyHeader)
        } else {
            clientKnown()
        }
        return finish()
    }

    /// Bytes from the client.
    public mutating func received(_ bytes: ByteBuffer, now: SessionTime) -> [SessionAction] {
        begin(now)
        switch state {
        case .awaitingProxyHeader(var buffer, let deadline):
            var bytes = bytes
            buffer.writeBuffer(&bytes)
            state = .awaitingProxyHeader(buffer, deadline: deadline)
            readProxyHeader()
        case .negotiatingTLS(let discarded, let deadline):
            // RFC 3207 §4.2: nothing sent before the handshake is ever executed.
            state = .negotiatingTLS(discarded: discarded + bytes.readableBytes, deadline: deadline)
        case .closed:
            break
        case .greetDelay:
            framer.append(bytes)
            pregreet()
        default:
            framer.append(bytes)
            advance()
        }
        return finish()
    }

    /// The STARTTLS handshake completed (`version`: `TLSv1.3`, …).
    public mutating func tlsEstablished(version: String?, now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .negotiatingTLS(let discarded, _) = state else { return finish() }
        if discarded > 0 { log(.notice, "discarded plaintext pipelined after STARTTLS", ["bytes": "\(discarded)"]) }
        tlsVersion = version
        if let version { count(.tlsEstablished(version: version)) }
        smtp.tlsEstablished()
        state = .commands
        advance()
        return finish()
    }

    /// `deadline` has passed (a deadline that moved since is not: then nothing happens).
    public mutating func deadlineReached(now: SessionTime) -> [SessionAction] {
        begin(now, activity: false)
        if now.uptime >= currentDeadline { deadlinePassed() }
        return finish()
    }

    /// The server is shutting down: finish the transaction in progress, then 421.
    public mutating func drainRequested(now: SessionTime) -> [SessionAction] {
        begin(now)
        draining = true
        switch state {
        case .starting, .awaitingProxyHeader, .admitting:
            close(.ended)
        case .greetDelay:
            send(SessionReplies.shuttingDown)
            close(.ended)
        case .refused:
            close(.ended)
        case .commands:
            drainIfIdle()
        default:
            break  // at the end of what is in progress
        }
        return finish()
    }

    /// The client closed the connection (or it broke, or TLS failed).
    public mutating func clientClosed(now: SessionTime) -> [SessionAction] {
        begin(now)
        switch state {
        case .closed:
            return finish()
        case .content:
            log(.notice, "client disconnected while sending message content; nothing relayed")
        case .negotiatingTLS:
            log(.notice, "TLS handshake did not complete")
        default:
            break
        }
        close(.clientClosed)
        return finish()
    }

    /// The driver's answer to `.admit`, with the client's name when the driver looked it up
    /// (forward-confirmed reverse DNS, before the greeting, as Postfix's smtpd does).
    public mutating func admitted(_ admission: Admission, clientName: ClientName? = nil, dnsLists: [DNSListResult] = [],
                                  now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .admitting = state else { return finish() }
        if let clientName { client.name = clientName }
        self.dnsLists = dnsLists
        if case .connect = policy.dnsListWait {
            for list in policy.dnsLists where list.lookup == .client { dnsListSubjects[list.name] = DNSList.clientSubject }
        }
        admit(admission)
        return finish()
    }

    /// The answers to `.lookUpDNSLists`; the stage's rules run next.
    public mutating func dnsListsAnswered(_ results: [DNSListResult], now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .policy(let point) = state, let stage = awaitingDNSLists else { return finish() }
        awaitingDNSLists = nil
        for result in results {
            if let index = dnsLists.firstIndex(where: { $0.list == result.list }) { dnsLists[index] = result } else { dnsLists.append(result) }
        }
        walkStep(.evaluate(stage), for: point)
        advance()
        return finish()
    }

    /// The verdict of the stage that `.evaluate` asked for.
    public mutating func stageEvaluated(_ result: StageVerdict, now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .policy(let point) = state, awaitingDNSLists == nil else { return finish() }
        evaluated(result, for: point)
        advance()
        return finish()
    }

    /// The upstream's reply to `.upstream(.begin/.addRecipient/.commit/.etrn)`.
    public mutating func upstreamReplied(_ reply: UpstreamReply, now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .upstream(let pending, let since) = state else { return finish() }
        upstreamAnswered(pending, since: since, .success(reply))
        advance()
        return finish()
    }

    /// The upstream request failed without a reply. `upstream`: the connection it failed on, if any.
    public mutating func upstreamFailed(_ error: UpstreamError, upstream: String?, now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .upstream(let pending, let since) = state else { return finish() }
        upstreamAnswered(pending, since: since, .failure(UpstreamFailure(error: error, upstream: upstream)))
        advance()
        return finish()
    }

    /// The answer to `.spool(.finish)`.
    public mutating func contentStored(_ result: Result<StoredMessage, StorageError>, now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .storing(let size) = state else { return finish() }
        stored(result, size: size)
        advance()
        return finish()
    }

    /// The answer to `.quarantine`: the Maildir's reply, or why it failed.
    public mutating func quarantined(_ result: Result<SMTPReply, UpstreamError>, now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .quarantining(let decision, let size) = state else { return finish() }
        quarantineFinished(result, decision: decision, size: size)
        advance()
        return finish()
    }

    /// The answer to `.verifyCredentials`.
    public mutating func credentialsChecked(_ outcome: CredentialsOutcome, now: SessionTime) -> [SessionAction] {
        begin(now)
        guard case .credentials(let mechanism, let user) = state else { return finish() }
        checked(outcome, mechanism: mechanism, user: user)
        advance()
        return finish()
    }

    // MARK: The loop

    /// Handles what is buffered until the machine has to wait: for bytes, or for an action's result.
    mutating func advance() {
        while true {
            switch state {
            case .commands:
                guard let event = framer.nextCommandLine(maximumLength: smtp.configuration.maximumCommandLineLength) else {
                    framer.releaseStorageIfEmpty()
                    // Idle while the server drains: told to go now.
                    return drainIfIdle()
                }
                command(event)
            case .refused:
                guard let event = framer.nextCommandLine(maximumLength: smtp.configuration.maximumCommandLineLength) else { return }
                refusedSessionCommand(event)
            case .sasl(let exchange):
                // RFC 4954 §4: a response line may be up to 12288 octets.
                guard let event = framer.nextCommandLine(maximumLength: 12_288) else { return }
                saslLine(event, exchange)
            case .content(var receiver):
                state = .modifying
                guard receive(&receiver) else { return }
            default:
                return
            }
        }
    }

    /// Starts handling an input at `now`; `activity`: it is something the client or an
    /// action did (not the deadline), from which the timeouts run anew.
    mutating func begin(_ now: SessionTime, activity: Bool = true) {
        self.now = now
        if activity { lastActivity = now.uptime }
    }

    /// Ends handling an input: pending writes out.
    mutating func finish() -> [SessionAction] {
        flushOutput()
        isClosed = closedNow
        deadline = currentDeadline
        let result = actions
        actions = []
        return result
    }

    // MARK: Output

    /// The one place a reply is written. The enhanced-code rule (RFC 2034: after EHLO every
    /// reply carries one, after HELO none) is applied here, once. Intermediate replies
    /// (334, 354) and replies before the greeting (connect refusals, pre-greet) keep their
    /// form: those are what postscreen-aware tools read.
    mutating func send(_ reply: SMTPReply) {
        let prepared = greeted && !reply.isIntermediate ? smtp.prepare(reply) : reply
        prepared.encode(into: &output)
    }

    /// The reply as `send` would write it (for records, which keep what the client got).
    func prepared(_ reply: SMTPReply) -> SMTPReply {
        greeted && !reply.isIntermediate ? smtp.prepare(reply) : reply
    }

    mutating func emit(_ action: SessionAction) {
        flushOutput()
        actions.append(action)
    }

    private mutating func flushOutput() {
        guard output.readableBytes > 0 else { return }
        actions.append(.write(output))
        output = ByteBuffer()
    }

    mutating func log(_ level: SessionLog.Level, _ message: String, _ metadata: KeyValuePairs<String, String> = [:]) {
        emit(.log(SessionLog(level: level, message: message, metadata: metadata.map { ($0.key, $0.value) })))
    }

    mutating func count(_ event: SessionEvent) {
        emit(.count(event))
    }

    /// Ends the session: any transaction in progress is recorded as abandoned.
    mutating func close(_ reason: CloseReason) {
        if case .closed = state { return }
        state = .closed
        smtp.close()
        if let transaction {
            emitRecord(transaction.abandoned(endReason: endReason ?? "session ended mid-transaction", context: recordContext))
            self.transaction = nil
        }
        // The driver resets an upstream transaction still open when it releases the connection.
        upstreamOpen = false
        emit(.close(reason))
    }

    mutating func emitRecord(_ record: DecisionRecord) {
        emit(.record(record))
    }

    var recordContext: RecordContext {
        RecordContext(
            sessionID: sessionID,
            client: DecisionRecord.Client(
                ip: "\(client.address)", port: client.port, helo: smtp.helloName, tls: tlsVersion, auth: smtp.authenticatedUser,
                country: location?.country, asn: location?.asn.map(Int.init), name: client.name?.name,
                nameStatus: client.name?.status.rawValue, dnsLists: dnsLists.compactMap(\.recordEntry)),
            policyVersion: policy.rules.isEmpty ? nil : policy.version, wallMilliseconds: now.wallMilliseconds, now: now.uptime)
    }

    // MARK: Deadlines

    /// The session's one deadline, as of the last input's actions (`.distantFuture`: none).
    /// The driver keeps one timer for it, set once the actions of an input are carried out,
    /// and calls `deadlineReached` when it passes.
    public private(set) var deadline = NIODeadline.distantFuture

    /// The deadline in the state the session is in now.
    var currentDeadline: NIODeadline {
        switch state {
        case .awaitingProxyHeader(_, let deadline), .negotiatingTLS(_, let deadline):
            return deadline
        case .greetDelay(let until), .authDelay(let until):
            return until
        case .commands, .sasl, .refused:
            return min(lastActivity + configuration.timeouts.command, sessionDeadline)
        case .content(let receiver):
            return receiver.deadline(lastActivity: lastActivity, configuration: configuration, session: sessionDeadline)
        case .starting, .admitting, .policy, .upstream, .storing, .quarantining, .credentials, .closed, .modifying:
            // Waiting for an action's result: the session time is judged when it comes back.
            return .distantFuture
        }
    }

    private mutating func deadlinePassed() {
        switch state {
        case .awaitingProxyHeader:
            log(.notice, "no PROXY protocol header in time")
            close(.ended)
        case .greetDelay:
            greet()
        case .authDelay:
            state = .commands
            perform(smtp.authenticationFailed(SessionReplies.authInvalid))
            advance()
        case .negotiatingTLS:
            log(.notice, "TLS handshake did not complete")
            close(.ended)
        case .refused:
            close(.ended)
        case .content(let receiver):
            if let (defence, reply) = receiver.defenceDue(at: now.uptime, configuration: configuration, session: sessionDeadline) {
                log(.notice, "message content abandoned; nothing relayed", ["defence": defence])
                endSession(defence: defence, reply)
            } else {
                log(.notice, "timeout while receiving message content; nothing relayed")
                send(SessionReplies.timeout)
                close(.ended)
            }
        case .commands, .sasl:
            if now.uptime >= sessionDeadline {
                endSession(defence: "session_time", SessionReplies.sessionTimeExceeded)
            } else {
                send(SessionReplies.timeout)
                close(.ended)
            }
        case .starting, .admitting, .policy, .upstream, .storing, .quarantining, .credentials, .closed, .modifying:
            break  // no deadline in these states
        }
    }
}

/// An upstream request that failed, and on which connection.
struct UpstreamFailure: Error {
    var error: UpstreamError
    var upstream: String?
}

extension DNSListResult {
    /// The decision record's entry: listed and failed lists only.
    var recordEntry: DecisionRecord.DNSListEntry? {
        switch outcome {
        case .listed(let codes):
            return DecisionRecord.DNSListEntry(name: list, result: "listed",
                                               detail: codes.map { DNSList.Returns(low: $0, high: $0).description }.joined(separator: ","),
                                               weight: weight)
        case .error(let detail): return DecisionRecord.DNSListEntry(name: list, result: "error", detail: detail, weight: 0)
        case .notListed, .skipped: return nil
        }
    }
}
