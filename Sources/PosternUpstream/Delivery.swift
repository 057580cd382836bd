import NIOCore
import SMTPCore

/// Where accepted mail goes: the configured upstreams (`RelayTarget`), a Maildir
/// (`MaildirTarget`). A target hands out one `Delivery` per transaction (maddy's
/// `DeliveryTarget`); failures are thrown as typed `UpstreamError`s, never made up as replies.
public protocol DeliveryTarget: AnyObject {
    /// Opens (or reuses) the way to the destination and gives it the sender (MAIL).
    func begin(_ envelope: DeliveryEnvelope) async throws(UpstreamError) -> DeliveryStart
    /// ETRN (RFC 1985) outside a transaction; the destination's reply.
    func etrn(_ node: String, client: ClientIdentity) async throws(UpstreamError) -> SMTPReply
    /// The client session is over: an open transaction is abandoned, a clean kept connection
    /// goes back to the pool, the rest is closed.
    func finish() async
}

/// One transaction at one destination, after its MAIL was accepted.
public protocol Delivery: AnyObject {
    /// The destination's name for logs and decision records.
    var upstreamName: String { get }
    func addRecipient(_ path: ForwardPath, _ parameters: RecipientParameters) async throws(UpstreamError) -> SMTPReply
    /// Sends `message` and returns the destination's final reply. After it (or a throw) the
    /// delivery is over.
    func commit(_ message: OutgoingMessage) async throws(UpstreamError) -> SMTPReply
    /// Abandons the transaction (RSET); the connection stays for the next transaction.
    func abort() async
}

/// A transaction's sender, and the client it is for (XCLIENT/XFORWARD).
public struct DeliveryEnvelope: Sendable {
    public var client: ClientIdentity
    public var reversePath: ReversePath
    public var parameters: MailParameters

    public init(client: ClientIdentity, reversePath: ReversePath, parameters: MailParameters) {
        self.client = client
        self.reversePath = reversePath
        self.parameters = parameters
    }
}

/// The destination's answer to MAIL.
public struct DeliveryStart {
    public var reply: SMTPReply
    /// The transaction, exactly when `reply` is positive.
    public var delivery: (any Delivery)?
    /// The destination that answered.
    public var upstream: String
}

/// What is sent: `prefix` (the Received header, added headers, possibly a rewritten header
/// section), then the spooled content from octet `skipping` on.
public struct OutgoingMessage {
    public var prefix: ByteBuffer
    public var content: MessageSpool
    public var skipping: Int
    /// The client used BDAT: relayed with BDAT when the upstream offers CHUNKING (RFC 3030).
    public var chunked: Bool

    public init(prefix: ByteBuffer, content: MessageSpool, skipping: Int = 0, chunked: Bool) {
        self.prefix = prefix
        self.content = content
        self.skipping = skipping
        self.chunked = chunked
    }

    /// Octets on the wire before any dot-stuffing.
    public var size: Int { prefix.readableBytes + content.size - skipping }
}

/// A transaction on one connection of a target.
final class ConnectionDelivery: Delivery {
    /// How the transaction ended.
    enum Ending {
        /// The upstream gave its final reply.
        case answered
        case aborted
        /// The connection failed; it is no longer usable, so its target does not use it again.
        case failed(UpstreamError)
    }

    private let connection: any UpstreamConnection
    /// Called when the transaction is over: committed, aborted, or failed.
    private let ended: (Ending) -> Void

    init(_ connection: any UpstreamConnection, ended: @escaping (Ending) -> Void) {
        self.connection = connection
        self.ended = ended
    }

    var upstreamName: String { connection.upstreamName }

    func addRecipient(_ path: ForwardPath, _ parameters: RecipientParameters) async throws(UpstreamError) -> SMTPReply {
        do {
            return try await connection.recipient(path, parameters)
        } catch {
            ended(.failed(error))
            throw error
        }
    }

    func commit(_ message: OutgoingMessage) async throws(UpstreamError) -> SMTPReply {
        do {
            let reply = try await connection.message(message)
            ended(.answered)
            return reply
        } catch {
            ended(.failed(error))
            throw error
        }
    }

    func abort() async {
        await connection.reset()
        ended(.aborted)
    }
}
