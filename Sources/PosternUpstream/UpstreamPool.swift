import Foundation
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

    public init(upstreams: [UpstreamConfiguration], retryAfter: TimeAmount, heloName: String, group: EventLoopGroup) {
        self.upstreams = upstreams
        self.retryAfter = retryAfter
        self.defaultHeloName = heloName
        self.group = group
        self.deadUntil = Mutex([:])
    }

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

    /// Opens a session to the first upstream that takes one. Dead upstreams are tried last.
    public func openSession(logger: Logger, client: ClientIdentity? = nil) async throws(UpstreamError) -> RelaySession {
        let now = DispatchTime.now().uptimeNanoseconds
        let dead = deadUntil.withLock { $0 }
        let order = upstreams.indices.filter { (dead[$0] ?? 0) <= now } + upstreams.indices.filter { (dead[$0] ?? 0) > now }
        var failures: [String] = []
        for index in order {
            let configuration = upstreams[index]
            do {
                let session = try await open(configuration, logger: logger, client: client)
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

    private func open(_ configuration: UpstreamConfiguration, logger: Logger, client: ClientIdentity?) async throws(UpstreamError) -> RelaySession {
        switch configuration.target {
        case .maildir(let path):
            return try MaildirRelaySession(path: path, hostname: defaultHeloName)
        case .smtp(let host, let port):
            return try await SMTPUpstreamSession.open(
                configuration, host: host, port: port, heloName: configuration.heloName ?? defaultHeloName,
                group: group, logger: logger, client: client)
        }
    }
}
