import Foundation
import SMTPCore
import Logging
import NIOCore
import Synchronization

/// What the pool reports besides its log lines: each failure, for the metrics.
public struct UpstreamEvents: Sendable {
    public var failed: @Sendable (_ upstream: String, _ failure: UpstreamFailureKind) -> Void

    public init(failed: @escaping @Sendable (_ upstream: String, _ failure: UpstreamFailureKind) -> Void = { _, _ in }) {
        self.failed = failed
    }
}

/// The configured upstreams, in order, with failover: an upstream that cannot take a
/// session is marked down and tried after those that are up, and probed until it answers
/// again (`UpstreamHealth` decides; the pool connects, probes and logs).
public final class UpstreamPool: Sendable {
    public let upstreams: [UpstreamConfiguration]
    public let retryAfter: TimeAmount
    public let probe: UpstreamProbeSettings
    private let group: EventLoopGroup
    private let defaultHeloName: String
    private let logger: Logger
    private let events: UpstreamEvents
    private let state: Mutex<UpstreamHealth>
    /// Probes waiting for their time, by upstream index; cancelled at shutdown.
    private let probes: Mutex<(stopped: Bool, scheduled: [Int: Scheduled<Void>])>
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

    public init(
        upstreams: [UpstreamConfiguration], retryAfter: TimeAmount, probe: UpstreamProbeSettings = UpstreamProbeSettings(),
        heloName: String, group: EventLoopGroup, logger: Logger = Logger(label: "postern.upstream", factory: { _ in SwiftLogNoOpLogHandler() }), events: UpstreamEvents = UpstreamEvents()
    ) {
        self.upstreams = upstreams
        self.retryAfter = retryAfter
        self.probe = probe
        self.defaultHeloName = heloName
        self.group = group
        self.logger = logger
        self.events = events
        self.state = Mutex(UpstreamHealth(
            names: upstreams.map(\.target.name), retryAfter: retryAfter, probing: probe.isEnabled,
            now: DispatchTime.now().uptimeNanoseconds))
        self.probes = Mutex((false, [:]))
        self.idle = Mutex([:])
    }

    /// Connections kept open now, for all upstreams.
    public var idleCount: Int { idle.withLock { $0.values.reduce(0) { $0 + $1.count } } }

    /// Upstreams currently believed reachable (by name), for health reporting.
    public var liveUpstreams: [String] {
        health.filter(\.alive).map(\.name)
    }

    /// Every configured upstream, whether it is believed reachable (not marked down), and
    /// the seconds since it last took a connection or answered.
    public var health: [(name: String, alive: Bool, secondsSinceSuccess: Double)] {
        let now = DispatchTime.now().uptimeNanoseconds
        return state.withLock { state in
            upstreams.indices.map { (upstreams[$0].target.name, state.isUp($0, now: now), state.secondsSinceSuccess($0, now: now)) }
        }
    }

    /// The configured upstreams for one client session.
    public func makeTarget(logger: Logger, eventLoop: EventLoop? = nil) -> RelayTarget {
        RelayTarget(pool: self, logger: logger, eventLoop: eventLoop)
    }

    /// Opens a session to the first upstream that takes one. Dead upstreams are tried last.
    /// `eventLoop`: where the connection must live, kept or new (the client's loop, so that a
    /// session's I/O stays on one thread); any loop of the group when nil.
    func openSession(logger: Logger, client: ClientIdentity? = nil, eventLoop: EventLoop? = nil) async throws(UpstreamError) -> any UpstreamConnection {
        let order = state.withLock { $0.order(now: DispatchTime.now().uptimeNanoseconds) }
        var failures: [UpstreamError] = []
        for index in order {
            let configuration = upstreams[index]
            if let kept = takeIdle(index, for: client, on: eventLoop) { return kept }
            do {
                let session = try await open(configuration, logger: logger, client: client, eventLoop: eventLoop)
                succeeded(index)
                return session
            } catch {
                failures.append(error)
                failed(index, error)
            }
        }
        let last = failures.last
        throw UpstreamError(.unavailable, failures.map(\.detail).joined(separator: "; "), failure: last?.failure)
    }

    // MARK: Health

    /// Upstream `index` took a connection or answered a command.
    func succeeded(_ index: Int) {
        carryOut(state.withLock { $0.succeeded(index, now: DispatchTime.now().uptimeNanoseconds) })
    }

    /// A connection to upstream `index` could not be set up: counted, and the upstream marked down.
    private func failed(_ index: Int, _ error: UpstreamError) {
        events.failed(upstreams[index].target.name, error.failure)
        carryOut(state.withLock { $0.failed(index, error.failure, detail: error.detail, now: DispatchTime.now().uptimeNanoseconds) })
    }

    /// A connection that was set up failed later (mid-transaction, or a kept one at its
    /// first command): counted; the next connection attempt says whether the upstream is down.
    func lost(_ upstream: String, _ error: UpstreamError) {
        if case .unsupported = error.kind { return }
        events.failed(upstream, error.failure)
    }

    /// An upstream that answered: the session's connection has shown it is alive.
    func answered(_ upstream: String) {
        guard let index = upstreams.firstIndex(where: { $0.target.name == upstream }) else { return }
        succeeded(index)
    }

    private func carryOut(_ actions: [UpstreamHealth.Action]) {
        for action in actions {
            switch action {
            case .wentDown(let upstream, let failure, let detail):
                logger.warning("upstream down", metadata: [
                    "upstream": "\(upstream)", "kind": "\(failure.rawValue)", "error": "\(detail)",
                    "probe_interval_s": "\(probe.isEnabled ? "\(Double(probe.interval.nanoseconds) / 1e9)" : "off")",
                ])
            case .stillDown(let upstream, let failures, let down, let failure, let detail):
                logger.warning("upstream still down", metadata: [
                    "upstream": "\(upstream)", "failures": "\(failures)", "down_s": "\(down / 1_000_000_000)",
                    "kind": "\(failure.rawValue)", "error": "\(detail)",
                ])
            case .cameBack(let upstream, let outage, let failures):
                logger.notice("upstream up again", metadata: [
                    "upstream": "\(upstream)", "outage_s": "\(Self.seconds(outage))", "failures": "\(failures)",
                ])
            case .probe(let index, let outage):
                scheduleProbe(index, outage: outage)
            }
        }
    }

    private static func seconds(_ nanoseconds: UInt64) -> String {
        let tenths = (nanoseconds + 50_000_000) / 100_000_000
        return "\(tenths / 10).\(tenths % 10)"
    }

    private func scheduleProbe(_ index: Int, outage: Int) {
        let delay = probe.delay(unit: Double.random(in: 0..<1))
        probes.withLock { probes in
            guard !probes.stopped else { return }
            probes.scheduled[index]?.cancel()
            probes.scheduled[index] = group.any().scheduleTask(in: delay) { [self] in
                Task { await runProbe(index, outage: outage) }
            }
        }
    }

    /// Connect, greeting, EHLO (STARTTLS and AUTH as configured), QUIT; each step within the probe timeout.
    private func probeConnection(_ index: Int) async throws(UpstreamError) {
        var configuration = upstreams[index]
        configuration.timeouts.connect = probe.timeout
        configuration.timeouts.greeting = probe.timeout
        configuration.timeouts.ehlo = probe.timeout
        var quiet = logger
        quiet.logLevel = .error  // a failed probe is reported once, by the health lines
        let session = try await open(configuration, logger: quiet, client: nil, eventLoop: nil)
        await session.close()
    }

    /// Probes every upstream once, at the same time (at start, before telling systemd it is
    /// ready): one that answers is up, one that does not is marked down (and probed until it
    /// answers, as after any failure). Returns how many answered.
    public func probeEach() async -> Int {
        await withTaskGroup(of: Bool.self) { group in
            for index in upstreams.indices {
                group.addTask { [self] in
                    do throws(UpstreamError) {
                        try await probeConnection(index)
                        succeeded(index)
                        return true
                    } catch {
                        failed(index, error)
                        return false
                    }
                }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
    }

    private func runProbe(_ index: Int, outage: Int) async {
        guard state.withLock({ $0.shouldProbe(index, outage: outage) }),
              !probes.withLock({ $0.stopped }) else { return }
        do {
            try await probeConnection(index)
            succeeded(index)
        } catch {
            events.failed(upstreams[index].target.name, error.failure)
            carryOut(state.withLock {
                $0.probeFailed(index, outage: outage, error.failure, detail: error.detail, now: DispatchTime.now().uptimeNanoseconds)
            })
        }
    }

    /// Stops probing (shutdown).
    public func stopProbing() {
        let scheduled = probes.withLock { probes in
            defer { probes = (true, [:]) }
            return Array(probes.scheduled.values)
        }
        for task in scheduled { task.cancel() }
    }

    /// Gives a client session's upstream connection back when the client session ends:
    /// kept for the next session when it is clean (no transaction open) and reusable, in
    /// place of the longest-kept one when `idle_connections` are already kept; otherwise
    /// closed (QUIT).
    func release(_ session: any UpstreamConnection) async {
        guard let smtp = session.keepable,
              let index = upstreams.firstIndex(where: { $0.target == smtp.configuration.target }),
              upstreams[index].idleConnections > 0 else {
            return await session.close()
        }
        let configuration = upstreams[index]
        let now = DispatchTime.now().uptimeNanoseconds
        let evicted = idle.withLock { idle -> IdleSession? in
            var list = idle[index] ?? []
            let oldest = list.count >= configuration.idleConnections ? list.removeFirst() : nil
            list.append(IdleSession(session: smtp, since: now))
            idle[index] = list
            return oldest
        }
        if let evicted { await evicted.session.close() }
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

    /// The most recently kept live connection to upstream `index` that can serve `client`, on
    /// `eventLoop` when one is given: a connection on another loop would cost two thread
    /// wake-ups per command for the rest of its life, more than a new connection costs once.
    private func takeIdle(_ index: Int, for client: ClientIdentity?, on eventLoop: EventLoop?) -> (any UpstreamConnection)? {
        let limit = UInt64(max(upstreams[index].idleTimeout.nanoseconds, 0))
        let now = DispatchTime.now().uptimeNanoseconds
        func next() -> IdleSession? {
            idle.withLock { idle in
                guard var list = idle[index], !list.isEmpty else { return nil }
                defer { idle[index] = list }
                guard let eventLoop else { return list.removeLast() }
                return list.lastIndex(where: { $0.session.eventLoop === eventLoop }).map { list.remove(at: $0) }
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
