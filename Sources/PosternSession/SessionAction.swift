import NIOCore
import PosternLog
import PosternMIME
import PosternPolicy
import SMTPCore

/// What the session machine asks its driver to do. The driver carries actions out in order;
/// those that produce a result answer with the matching input (`admitted`, `stageEvaluated`,
/// `upstreamReplied`, `contentStored`, `quarantined`, `credentialsChecked`). The session's
/// deadline is not an action but state (`SessionMachine.deadline`): an action's result can
/// move it, so the driver reads it when all actions are done.
public enum SessionAction: Sendable {
    /// Bytes for the client (replies, enhanced-code rule already applied). Writes may be
    /// batched: the driver must send them before it waits for input, and before `startTLS`
    /// and `close`.
    case write(ByteBuffer)
    /// Take a connection slot for the client (connection limits, shutdown); answer `admitted`.
    case admit(ClientEndpoint)
    /// Ask DNS lists before a stage's rules run (domain lists at helo and mail, client lists
    /// at mail with `dnsbl_wait: mail`); answer `dnsListsAnswered` with one result per list.
    case lookUpDNSLists(DNSListLookup)
    /// Run a stage's checks and rules; answer `stageEvaluated`.
    case evaluate(StageRequest)
    case upstream(UpstreamRequest)
    case spool(SpoolRequest)
    /// Keep the message in the quarantine Maildir; answer `quarantined`.
    case quarantine(QuarantineRequest)
    /// Check AUTH credentials (and the address's lockout); answer `credentialsChecked`.
    case verifyCredentials(CredentialsRequest)
    /// Start TLS on the connection (the 220 is in the writes before this action): the
    /// handler goes in as soon as the 220 is written. Answer `tlsEstablished`, or
    /// `clientClosed` when the handshake fails.
    case startTLS
    /// A decision record, complete but for the log's privacy options.
    case record(DecisionRecord)
    /// Something for the metrics.
    case count(SessionEvent)
    case log(SessionLog)
    /// Close the connection (after the writes before this action).
    case close(CloseReason)
}

/// One stage to evaluate, with what the session knows.
public struct StageRequest: Sendable {
    public var stage: PolicyStage
    public var facts: TransactionFacts
    /// At `data`: headers the earlier stages' checks add (PREPEND), in the message before the
    /// checks that read it (milters) see it.
    public var addedHeaders: [AddedHeader] = []
}

/// Who the client is, for the upstream (XCLIENT/XFORWARD attributes).
public struct UpstreamClient: Hashable, Sendable {
    public var address: IPAddress
    public var port: Int
    public var helo: String?
    /// `ESMTP` after EHLO, `SMTP` after HELO.
    public var protocolName: String
    /// The user of a successful AUTH.
    public var login: String?
    /// What forward-confirmed reverse DNS found (XCLIENT/XFORWARD `NAME=`).
    public var name: ClientName?

    public init(address: IPAddress, port: Int, helo: String?, protocolName: String, login: String?, name: ClientName? = nil) {
        self.address = address
        self.port = port
        self.helo = helo
        self.protocolName = protocolName
        self.login = login
        self.name = name
    }
}

/// MAIL for the upstream.
public struct UpstreamEnvelope: Sendable {
    public var client: UpstreamClient
    public var reversePath: ReversePath
    public var parameters: MailParameters
}

/// The message as it goes out: `prefix` (the Received header, added headers, possibly the
/// rewritten header section), then the spooled content from octet `skipping` on.
public struct OutgoingContent: Sendable {
    public var prefix: ByteBuffer
    public var skipping: Int
    /// The client used BDAT (relayed with BDAT when the upstream offers CHUNKING).
    public var chunked: Bool
}

/// Work on the upstream transaction; each but `abort` answers `upstreamReplied`.
public enum UpstreamRequest: Sendable {
    /// Open (or reuse) the upstream and send MAIL.
    case begin(UpstreamEnvelope)
    /// RCPT in the open upstream transaction.
    case addRecipient(ForwardPath, RecipientParameters)
    /// The message; the reply is the upstream's final reply.
    case commit(OutgoingContent)
    /// Abandon the upstream transaction (RSET); no answer.
    case abort
    /// ETRN (RFC 1985) outside a transaction.
    case etrn(String, UpstreamClient)
}

/// A reply from the upstream, and which upstream gave it.
public struct UpstreamReply: Sendable, Equatable {
    public var reply: SMTPReply
    public var upstream: String

    public init(_ reply: SMTPReply, upstream: String) {
        self.reply = reply
        self.upstream = upstream
    }
}

/// The message content store (memory, then an unlinked file past a threshold).
public enum SpoolRequest: Sendable {
    /// A new message starts; drop any earlier content.
    case begin
    /// Content bytes, in order.
    case append(ByteBuffer)
    /// The content is complete; answer `contentStored`. `parse`: the rules read the content,
    /// so hand back the parsed message (the scanned header section is reused).
    case finish(parse: Bool, headers: MessageHeaderSection)
    /// The message is abandoned.
    case discard
}

/// The message once stored.
public struct StoredMessage: Sendable {
    public var size: Int
    /// When the rules read the content.
    public var parsed: (any PolicyMessage)?

    public init(size: Int, parsed: (any PolicyMessage)? = nil) {
        self.size = size
        self.parsed = parsed
    }
}

/// Why the content could not be stored.
public struct StorageError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A message for the quarantine Maildir.
public struct QuarantineRequest: Sendable {
    public var envelope: UpstreamEnvelope
    public var recipients: [ForwardPath]
    public var content: OutgoingContent
}

/// AUTH credentials to verify. The password never appears in a description.
public struct CredentialsRequest: Sendable, CustomStringConvertible {
    public var mechanism: SASLMechanism
    public var user: String
    public var password: String
    /// Lockout is judged per client address.
    public var client: IPAddress

    public var description: String { "\(mechanism.rawValue) credentials for \(user) from \(client)" }
}

public enum CredentialsOutcome: Sendable, Equatable {
    case success
    /// Wrong user or password; `nowLockedOut`: this failure locked the address out.
    case failure(nowLockedOut: Bool)
    /// Too many failures from this address: nothing was checked.
    case lockedOut
    /// No credentials could be loaded.
    case unavailable
}

/// Whether a connection got a slot.
public enum Admission: Sendable, Equatable {
    case admitted
    /// `max_connections` reached.
    case tooManyConnections(limit: Int)
    /// `max_connections_per_ip` reached.
    case tooManyFromAddress(limit: Int)
    /// The server is shutting down.
    case shuttingDown
}

/// Counted in the metrics.
public enum SessionEvent: Sendable, Equatable {
    case connectionRefused(reason: String)
    case relayDenied
    /// A connection defence ended the session: pregreet, pipelining, junk_commands,
    /// session_time, min_data_rate, errors.
    case defence(String)
    case tlsEstablished(version: String)
    case authAttempt(mechanism: String, result: String)
}

/// A line for the diagnostic log; the driver adds the session's metadata.
public struct SessionLog: Sendable {
    public enum Level: Sendable { case debug, info, notice, warning, error }
    public var level: Level
    public var message: String
    public var metadata: [(String, String)]
}

/// Why a session ended.
public enum CloseReason: Sendable, Equatable {
    case quit
    /// The client went away.
    case clientClosed
    /// A reply that ends the session (timeout, shutdown, refused connection, bad PROXY header).
    case ended
    /// A connection defence.
    case defence(String)
}
