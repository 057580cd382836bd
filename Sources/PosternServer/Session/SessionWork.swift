import Dispatch
import Logging
import NIOCore
import NIOPosix
import PosternFilters
import PosternLog
import PosternMIME
import PosternPolicy
import PosternSession
import PosternUpstream
import SMTPCore

/// One session's resources behind the machine's actions: the upstream (one `Delivery` per
/// transaction), the message spool, the quarantine. Blocking file work (the spool past its
/// memory threshold, parsing a large message) runs on NIO's thread pool, never on an event loop.
/// Used on the session's event loop only (its handler, and the task that prefers that loop).
final class SessionWork {
    private let context: ListenerContext
    private let logger: Logger
    private let target: RelayTarget
    private var delivery: (any Delivery)?
    private var spool: MessageSpool?
    /// The first append that failed; the message is then refused at its end.
    private var spoolFailure: String?

    /// Messages up to this size are parsed on the calling thread: a hop costs more.
    static let inlineParseLimit = 256 * 1024

    init(context: ListenerContext, logger: Logger, eventLoop: EventLoop) {
        self.context = context
        self.logger = logger
        self.target = context.pool.makeTarget(logger: logger, eventLoop: eventLoop)
    }

    /// The client session is over: the upstream connection goes back to the pool.
    func finish() async {
        delivery = nil
        spool = nil
        await target.finish()
    }

    // MARK: The upstream

    struct Failure: Error {
        var error: UpstreamError
        var upstream: String?
    }

    /// Nil for `abort`, which has no answer.
    func upstream(_ request: UpstreamRequest) async -> Result<UpstreamReply, Failure>? {
        let started = DispatchTime.now().uptimeNanoseconds
        let result: Result<UpstreamReply, Failure>
        switch request {
        case .begin(let envelope):
            do {
                let start = try await target.begin(DeliveryEnvelope(
                    client: Self.identity(envelope.client), reversePath: envelope.reversePath, parameters: envelope.parameters))
                delivery = start.delivery
                result = .success(UpstreamReply(start.reply, upstream: start.upstream))
            } catch {
                delivery = nil
                result = .failure(Failure(error: error, upstream: nil))
            }
        case .addRecipient(let path, let parameters):
            guard let delivery else { return .failure(Failure(error: UpstreamError(.connectionLost, "no upstream transaction"))) }
            do {
                result = .success(UpstreamReply(try await delivery.addRecipient(path, parameters), upstream: delivery.upstreamName))
            } catch {
                self.delivery = nil
                result = .failure(Failure(error: error, upstream: delivery.upstreamName))
            }
        case .commit(let content):
            guard let delivery, let spool else { return .failure(Failure(error: UpstreamError(.connectionLost, "no upstream transaction"))) }
            self.delivery = nil
            do {
                let reply = try await delivery.commit(OutgoingMessage(
                    prefix: content.prefix, content: spool, skipping: content.skipping, chunked: content.chunked))
                result = .success(UpstreamReply(reply, upstream: delivery.upstreamName))
            } catch {
                result = .failure(Failure(error: error, upstream: delivery.upstreamName))
            }
        case .abort:
            await delivery?.abort()
            delivery = nil
            return nil
        case .etrn(let node, let client):
            do {
                return .success(UpstreamReply(try await target.etrn(node, client: Self.identity(client)), upstream: ""))
            } catch {
                return .failure(Failure(error: error, upstream: nil))
            }
        }
        if case .success(let answer) = result {
            context.metrics.upstreamReply(upstream: answer.upstream, code: answer.reply.code,
                                          nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
        }
        return result
    }

    /// Test-only and unsafe (`ListenerContext.unsafeEarlyAck`): takes the transaction's
    /// delivery and message for a commit the caller runs later, after the client has been
    /// told 250. Whatever the upstream then says is only logged.
    func detachCommit(_ content: OutgoingContent) -> (() async -> Void)? {
        guard let delivery, let spool else { return nil }
        self.delivery = nil
        let message = OutgoingMessage(prefix: content.prefix, content: spool, skipping: content.skipping, chunked: content.chunked)
        return { [logger] in
            do {
                let reply = try await delivery.commit(message)
                logger.notice("unsafe early ack: the upstream answered", metadata: ["upstream.reply": "\(reply)"])
            } catch {
                logger.warning("unsafe early ack: the upstream failed after the client was told 250", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Keeps the message in the quarantine Maildir.
    func quarantine(_ request: QuarantineRequest) async -> Result<SMTPReply, UpstreamError> {
        guard let path = context.quarantine, let spool else { return .failure(UpstreamError(.localError, "no quarantine configured")) }
        do {
            let maildir = try MaildirTarget(path: path, hostname: context.hostname)
            let start = try await maildir.begin(DeliveryEnvelope(
                client: Self.identity(request.envelope.client), reversePath: request.envelope.reversePath,
                parameters: request.envelope.parameters))
            guard let delivery = start.delivery else { return .success(start.reply) }
            for recipient in request.recipients { _ = try await delivery.addRecipient(recipient, RecipientParameters()) }
            return .success(try await delivery.commit(OutgoingMessage(prefix: request.content.prefix, content: spool, skipping: request.content.skipping, chunked: false)))
        } catch {
            return .failure(error)
        }
    }

    static func identity(_ client: UpstreamClient) -> ClientIdentity {
        ClientIdentity(address: client.address, port: client.port, helo: client.helo, protocolName: client.protocolName, login: client.login,
                       name: client.name)
    }

    // MARK: The spool

    /// After a decision record: the sample store may keep the transaction's message (still
    /// in the spool: the machine discards it after the record).
    func offerSample(_ record: DecisionRecord, to samples: SampleStore) {
        guard let spool, spoolFailure == nil else { return }
        samples.offer(record, spool: spool)
    }

    /// What an action gives at once, or that it must wait (for the thread pool).
    enum Immediate<Value> {
        case done(Value)
        case mustWait
    }

    /// The spool's work that needs no waiting: beginning and discarding, appending in memory,
    /// finishing without a parse or with a parse small enough for the calling thread.
    /// `.done(nil)` except for `finish`.
    func spoolNow(_ request: SpoolRequest) -> Immediate<Result<StoredMessage, StorageError>?> {
        switch request {
        case .begin:
            spool = MessageSpool(memoryThreshold: context.spool.memoryThreshold, directory: context.spool.directory)
            spoolFailure = nil
        case .append(let bytes):
            guard let spool, spoolFailure == nil else { return .done(nil) }
            if spool.isOnDisk || spool.size + bytes.readableBytes > spool.memoryThreshold { return .mustWait }
            do {
                try spool.append(bytes)
            } catch {
                spoolFailure = "\(error)"
            }
        case .finish(let parse, let headers):
            guard let spool else { return .done(.failure(StorageError("no message spooled"))) }
            if let spoolFailure { return .done(.failure(StorageError(spoolFailure))) }
            guard parse else { return .done(.success(StoredMessage(size: spool.size))) }
            guard spool.size <= Self.inlineParseLimit else { return .mustWait }
            do {
                return .done(.success(StoredMessage(size: spool.size, parsed: try Self.parse(spool, headers: headers))))
            } catch {
                return .done(.failure(StorageError("\(error)")))
            }
        case .discard:
            spool = nil
        }
        return .done(nil)
    }

    /// The spool's work, waiting on NIO's thread pool where `spoolNow` cannot do it at once.
    /// Nil except for `finish`.
    func spool(_ request: SpoolRequest) async -> Result<StoredMessage, StorageError>? {
        if case .done(let result) = spoolNow(request) { return result }
        guard let spool else { return nil }
        let owned = Owned(spool)
        switch request {
        case .append(let bytes):
            do {
                try await NIOThreadPool.singleton.runIfActive { try owned.value.append(bytes) }
            } catch {
                spoolFailure = "\(error)"
            }
            return nil
        case .finish(_, let headers):
            do {
                let message = try await NIOThreadPool.singleton.runIfActive { try Self.parse(owned.value, headers: headers) }
                return .success(StoredMessage(size: spool.size, parsed: message))
            } catch {
                return .failure(StorageError("\(error)"))
            }
        case .begin, .discard:
            return nil
        }
    }

    /// The message as the policy's content rules read it (up to the scan limit).
    private static func parse(_ spool: MessageSpool, headers: MessageHeaderSection) throws -> MIMEMessage {
        MIMEMessage.parse(try spool.prefix(Policy.contentScanLimit), headerSection: headers)
    }

    // MARK: The message for the milters

    /// The stored message as the checks that edit it see it: its header fields (after the
    /// headers earlier stages added), its body in the spool, the envelope. Nil without one.
    func draft(facts: TransactionFacts, addedHeaders: [AddedHeader]) async -> MessageDraft? {
        guard let spool, spoolFailure == nil else { return nil }
        var head: [UInt8] = []
        var parsed: (fields: [MessageDraft.Field], length: Int)?
        do {
            try await spool.forEachChunk { chunk in
                guard parsed == nil else { return }
                let searchFrom = max(0, head.count - 3)
                head.append(contentsOf: chunk.readableBytesView)
                if Self.findEmptyLine(head, from: searchFrom) { parsed = MessageDraft.parseHeaderSection(head) }
            }
        } catch {
            logger.error("the message could not be read for the milters", metadata: ["error": "\(error)"])
            return nil
        }
        if parsed == nil {
            // No empty line: the message is all header (or ends in a line without CRLF).
            let ending: [UInt8] = head.suffix(2) == [0x0D, 0x0A] ? [0x0D, 0x0A] : [0x0D, 0x0A, 0x0D, 0x0A]
            parsed = MessageDraft.parseHeaderSection(head + ending).map { ($0.fields, min($0.length, head.count)) }
        }
        guard let (parsedFields, length) = parsed else { return nil }
        var fields = parsedFields
        if let id = context.session.authservID {
            // Neither the milters nor the upstream see a forged verdict under Postern's authserv-id.
            fields.removeAll { AuthenticationResults.claims(name: $0.name, value: String(decoding: $0.value, as: UTF8.self), id: id) }
        }
        let added = addedHeaders.map { MessageDraft.Field(name: $0.name, text: $0.value, leadingSpace: false) }
        return MessageDraft(fields: added + fields, body: .original(SpoolBody(spool: spool), offset: length),
                            sender: facts.sender ?? .null, senderParameters: facts.senderParameters ?? MailParameters(),
                            recipients: facts.recipients)
    }

    private static func findEmptyLine(_ bytes: [UInt8], from start: Int) -> Bool {
        guard bytes.count >= 4 else { return bytes.starts(with: [0x0D, 0x0A]) }
        if bytes.starts(with: [0x0D, 0x0A]) { return true }
        var index = start
        while index + 3 < bytes.count {
            if bytes[index] == 0x0D, bytes[index + 1] == 0x0A, bytes[index + 2] == 0x0D, bytes[index + 3] == 0x0A { return true }
            index += 1
        }
        return false
    }

    /// The spool as the milters read the body: only while the session's task waits for them.
    private struct SpoolBody: MessageBodySource, @unchecked Sendable {
        let spool: MessageSpool
        func forEachChunk(from offset: Int, maximum: Int, _ body: (ByteBuffer) async throws -> Void) async throws {
            try await spool.forEachChunk(from: offset, chunkSize: maximum, body)
        }
    }

    /// The spool handed to the thread pool while the session's task waits for it: one owner at a time.
    private struct Owned: @unchecked Sendable {
        let value: MessageSpool
        init(_ value: MessageSpool) { self.value = value }
    }
}
