import Logging
import NIOCore
import SMTPCore

/// The configured upstreams, in failover order, for one client session. It keeps the
/// session's upstream connection between the session's transactions, takes a connection
/// kept from an earlier session when there is one, and retries once on a fresh connection
/// when a reused one turns out to be dead. Lives in the client session's task.
public final class RelayTarget: DeliveryTarget {
    private let pool: UpstreamPool
    private let logger: Logger
    private let eventLoop: EventLoop?
    private var connection: (any UpstreamConnection)?
    /// Who `connection` was opened for (XCLIENT names one client).
    private var identity: ClientIdentity?
    /// MAIL was accepted and the transaction is not over.
    private var transactionOpen = false

    init(pool: UpstreamPool, logger: Logger, eventLoop: EventLoop?) {
        self.pool = pool
        self.logger = logger
        self.eventLoop = eventLoop
    }

    public func begin(_ envelope: DeliveryEnvelope) async throws(UpstreamError) -> DeliveryStart {
        // A reused connection (kept from an earlier transaction or session) may have been
        // closed by the upstream while idle: one retry on a fresh connection.
        for attempt in 0..<2 {
            var reused = connection?.isUsable == true && identity == envelope.client
            let current = try await connection(for: envelope.client)
            reused = reused || current.isReused
            do {
                let reply = try await current.mail(envelope.reversePath, envelope.parameters)
                if reused && attempt == 0 && reply.code == 421 {
                    // The upstream is closing the idle connection we kept: start afresh.
                    await drop()
                    continue
                }
                transactionOpen = reply.isPositive
                if reused { pool.answered(current.upstreamName) }  // a fresh connection was counted as it opened
                let delivery = reply.isPositive ? ConnectionDelivery(current) { [weak self, pool] ending in
                    self?.transactionOpen = false
                    switch ending {
                    case .answered: pool.answered(current.upstreamName)
                    case .failed(let error): pool.lost(current.upstreamName, error)
                    case .aborted: break
                    }
                } : nil
                return DeliveryStart(reply: reply, delivery: delivery, upstream: current.upstreamName)
            } catch {
                if case .unsupported = error.kind { throw error }  // the connection itself is fine
                await drop()
                // A kept connection the upstream closed while idle is no failure: retried at once.
                if reused && attempt == 0 && error.kind != .unavailable { continue }
                pool.lost(current.upstreamName, error)
                throw error
            }
        }
        throw UpstreamError(.connectionLost, "the upstream closed a fresh connection at MAIL")
    }

    public func etrn(_ node: String, client: ClientIdentity) async throws(UpstreamError) -> SMTPReply {
        let current = try await connection(for: client)
        do {
            return try await current.etrn(node)
        } catch {
            if case .unsupported = error.kind { throw error }
            pool.lost(current.upstreamName, error)
            await drop()
            throw error
        }
    }

    public func finish() async {
        guard let connection else { return }
        self.connection = nil
        if transactionOpen { await connection.reset() }
        transactionOpen = false
        // A clean connection serves the next client session (the pool decides).
        await pool.release(connection)
    }

    /// The session's connection, or a new one when there is none, it broke, or it was
    /// opened for another identity (after AUTH the upstream learns the login: XCLIENT LOGIN=).
    private func connection(for client: ClientIdentity) async throws(UpstreamError) -> any UpstreamConnection {
        if let connection, connection.isUsable, identity == client { return connection }
        await drop()
        let opened = try await pool.openSession(logger: logger, client: client, eventLoop: eventLoop)
        connection = opened
        identity = client
        return opened
    }

    private func drop() async {
        transactionOpen = false
        guard let connection else { return }
        self.connection = nil
        await connection.close()
    }
}
