import Foundation
import SMTPCore
import Logging
import NIOCore
import Synchronization

/// The configured upstreams, in order, with failover: an upstream that cannot take a
/// session is marked dead for `retryAfter` and skipped while another is alive.
public final class UpstreamPool: Sendable {
    public let upstreams: [UpstreamConfiguration]
    public let retryAfter: TimeAmount
    private let group: EventLoopGroup
    private let defaultHeloName: String
    /// When each upstream may be tried again (uptime nanoseconds), by index.
    private let deadUntil: Mutex<[Int: UInt64]>
    /// Connections kept between client sessions, by upstream index, oldest first.
    private let idle: Mutex<[Int: [IdleSession]]>

    /// A kept connection. Only one task owns a session at a time: the pool while it is
    /// idle, then the client session that takes it.
    private struct IdleSession: @unchecked Sendable {
        let session: SMTPUpstreamSession
        let since: UInt64

        /// How long it has been kept, at `now`. Another thread may have kept it after `now`
        /// was read: that is zero, not an underflow.
        func age(at now: UInt64) -> UInt64 { now > since ? now - since : 0 }
    }

    public init(upstreams: [UpstreamConfiguration], retryAfter: TimeAmount, heloName: String, group: EventLoopGroup) {
        self.upstreams = upstreams
        self.retryAfter = retryAfter
        self.defaultHeloName = heloName
        self.group = group
        self.deadUntil = Mutex([:])
        self.idle = Mutex([:])
    }

    /// Connections kept open now, for all upstreams.
    public var idleCount: Int { idle.withLock { $0.values.reduce(0) { $0 + $1.count } } }

    /// Upstreams currently believed reachable (by name), for health reporting.
    public var liveUpstreams: [String] {
        health.filter(\.alive).map(\.name)
    }

    /// Every configured upstream and whether it is believed reachable (not marked dead).
    public var health: [(name: String, alive: Bool)] {
        let now = DispatchTime.now().uptimeNanoseconds
        let dead = deadUntil.withLock { $0 }
        return upstreams.indices.map { (upstreams[$0].target.name, (dead[$0] ?? 0) <= now) }
    }

    /// The configured upstreams for one client session.
    public func makeTarget(logger: Logger, eventLoop: EventLoop? = nil) -> RelayTarget {
        RelayTarget(pool: self, logger: logger, eventLoop: eventLoop)
    }

    /// Opens a session to the first upstream that takes one. Dead upstreams are tried last.
    /// `eventLoop`: where the new connection should live (the client's loop, so that a
    /// session's I/O stays on one thread); any loop of the group when nil.
    func openSession(logger: Logger, client: ClientIdentity? = nil, eventLoop: EventLoop? = nil) async throws(UpstreamError) -> any UpstreamConnection {
        let now = DispatchTime.now().uptimeNanoseconds
        let dead = deadUntil.withLock { $0 }
        let order = upstreams.indices.filter { (dead[$0] ?? 0) <= now } + upstreams.indices.filter { (dead[$0] ?? 0) > now }
        var failures: [String] = []
        for index in order {
            let configuration = upstreams[index]
            if let kept = takeIdle(index, for: client, preferring: eventLoop) { return kept }
            do {
                let session = try await open(configuration, logger: logger, client: client, eventLoop: eventLoop)
                deadUntil.withLock { $0[index] = nil }
                return session
            } catch {
                failures.append(error.detail)
                let until = DispatchTime.now().uptimeNanoseconds + UInt64(max(retryAfter.nanoseconds, 0))
                deadUntil.withLock { $0[index] = until }
                logger.warning("upstream unavailable, marked dead", metadata: [
                    "upstream": "\(configuration.target)", "retry_after_s": "\(retryAfter.nanoseconds / 1_000_000_000)",
                    "error": "\(error.detail)",
                ])
            }
        }
        throw UpstreamError(.unavailable, failures.joined(separator: "; "))
    }

    /// Gives a client session's upstream connection back when the client session ends:
    /// kept for the next session when it is clean (no transaction open), reusable, and
    /// there is room; otherwise closed (QUIT).
    func release(_ session: any UpstreamConnection) async {
        guard let smtp = session.keepable,
              let index = upstreams.firstIndex(where: { $0.target == smtp.configuration.target }) else {
            return await session.close()
        }
        let configuration = upstreams[index]
        let now = DispatchTime.now().uptimeNanoseconds
        let kept = idle.withLock { idle -> Bool in
            var list = idle[index] ?? []
            guard list.count < configuration.idleConnections else { return false }
            list.append(IdleSession(session: smtp, since: now))
            idle[index] = list
            return true
        }
        guard kept else { return await session.close() }
        // Close it if nobody takes it in time.
        group.any().scheduleTask(in: configuration.idleTimeout) { [self] in
            let expired = removeExpired(index, timeout: configuration.idleTimeout)
            for entry in expired { Task { await entry.session.close() } }
        }
    }

    /// Closes every kept connection (shutdown).
    public func closeIdle() async {
        let all = idle.withLock { idle in
            defer { idle = [:] }
            return idle.values.flatMap { $0 }
        }
        for entry in all { await entry.session.close() }
    }

    /// The most recently kept live connection to upstream `index` that can serve `client`.
    private func takeIdle(_ index: Int, for client: ClientIdentity?, preferring eventLoop: EventLoop?) -> (any UpstreamConnection)? {
        let limit = UInt64(max(upstreams[index].idleTimeout.nanoseconds, 0))
        let now = DispatchTime.now().uptimeNanoseconds
        // The newest connection on the preferred loop, else the newest of all.
        func next() -> IdleSession? {
            idle.withLock { idle in
                guard var list = idle[index], !list.isEmpty else { return nil }
                defer { idle[index] = list }
                if let eventLoop, let position = list.lastIndex(where: { $0.session.eventLoop === eventLoop }) {
                    return list.remove(at: position)
                }
                return list.removeLast()
            }
        }
        while let entry = next() {
            if entry.age(at: now) < limit, entry.session.adopt(for: client) { return entry.session }
            Task { await entry.session.close() }
        }
        return nil
    }

    private func removeExpired(_ index: Int, timeout: TimeAmount) -> [IdleSession] {
        let limit = UInt64(max(timeout.nanoseconds, 0))
        let now = DispatchTime.now().uptimeNanoseconds
        return idle.withLock { idle in
            guard let list = idle[index] else { return [] }
            let (expired, fresh) = (list.filter { $0.age(at: now) >= limit }, list.filter { $0.age(at: now) < limit })
            idle[index] = fresh
            return expired
        }
    }

    private func open(_ configuration: UpstreamConfiguration, logger: Logger, client: ClientIdentity?, eventLoop: EventLoop?) async throws(UpstreamError) -> any UpstreamConnection {
        switch configuration.target {
        case .maildir(let path):
            return try MaildirRelaySession(path: path, hostname: defaultHeloName)
        case .smtp(let host, let port):
            return try await SMTPUpstreamSession.open(
                configuration, host: host, port: port, heloName: configuration.heloName ?? defaultHeloName,
                group: eventLoop ?? group, logger: logger, client: client)
        }
    }
}
