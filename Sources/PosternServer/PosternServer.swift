import Dispatch
import Foundation
import Glibc
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PosternEngines
import PosternLog
import PosternNative
import PosternPolicy
import PosternSession
import PosternUpstream
import SMTPCore
import SMTPNIO
import ServiceLifecycle
import Synchronization

/// The SMTP front: binds the listeners, runs one session per connection, and on graceful
/// shutdown stops accepting, lets transactions in flight finish, says 421 to idle sessions,
/// and closes what is left after the grace period.
public final class PosternServer: Service, Sendable {
    /// The configuration the server started with (see `live` for what a reload changed).
    public let configuration: PosternConfiguration
    private let group: EventLoopGroup
    private let logger: Logger
    /// What a configuration reload replaces in one swap: new sessions take their listener's
    /// context from here; sessions in flight keep the one they started with.
    private struct Live: Sendable {
        var configuration: PosternConfiguration
        var pool: UpstreamPool
        /// One per listener, in `configuration.listeners` order (filled when listening).
        var contexts: [ListenerContext] = []
    }
    private let live: Mutex<Live>
    /// Reads the configuration again for a reload (SIGHUP); nil: nothing to reread.
    private let configurationSource: (@Sendable () throws -> PosternConfiguration)?
    /// The configuration file, watched: a change reloads it as SIGHUP does.
    private let configurationFile: String?
    private let reloading = Mutex<Void>(())
    /// The level of every logger, when the process's logging was bootstrapped with it (a
    /// reload changes it: `log_level`).
    private let logLevel: LogLevelSetting?
    private let registry = SessionRegistry()
    private let limiter: ConnectionLimiter
    /// The STARTTLS certificate, reloaded in place (SIGHUP, file changes).
    private let certificates: CertificateStore?
    private let decisionLog: DecisionLogWriter?
    /// Message samples for `postern replay` (`samples:`).
    private let samples: SampleStore?
    /// The resolver (`dns:`); nil: no DNS.
    private let resolver: DNSResolver?
    /// AUTH credentials and lockout, when `auth` is configured.
    private let authenticator: Authenticator?
    /// The policy servers, asked at their stages by every session.
    private let policyServices: [PolicyServiceClient]
    /// The milter filters; each session has its own connection to each.
    private let milters: [MilterFilter]
    /// The policy in force; `reload()` it on SIGHUP.
    public let policy: PolicyStore
    /// The server's Prometheus metrics (rendered at `/metrics` when `metrics` is configured).
    public let metrics: PosternMetrics
    /// The dashboard's view of the decisions, when the status endpoint is configured.
    private let feed: DecisionFeed?
    private let statusAddress = Mutex<SocketAddress?>(nil)
    private let bound = Mutex<[SocketAddress]>([])
    private let onListening: (@Sendable ([SocketAddress]) -> Void)?
    /// `POSTERN_TEST_UNSAFE_EARLY_ACK=1`, read once here: see `ListenerContext.unsafeEarlyAck`.
    private let unsafeEarlyAck: Bool

    public struct StartupError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Builds the server; fails on what can be checked before binding (see `ServerPreparation`).
    public init(
        configuration: PosternConfiguration, logger: Logger,
        group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        version: String = "dev",
        onListening: (@Sendable ([SocketAddress]) -> Void)? = nil,
        configurationSource: (@Sendable () throws -> PosternConfiguration)? = nil,
        configurationFile: String? = nil,
        logLevel: LogLevelSetting? = nil
    ) throws {
        self.configuration = configuration
        self.logLevel = logLevel
        self.configurationSource = configurationSource
        self.configurationFile = configurationSource == nil ? nil : configurationFile
        let metrics = PosternMetrics(version: version)
        self.metrics = metrics
        feed = configuration.metrics == nil ? nil : DecisionFeed(privacy: configuration.decisionLogPrivacy)
        self.group = group
        self.logger = logger
        self.onListening = onListening
        unsafeEarlyAck = getenv("POSTERN_TEST_UNSAFE_EARLY_ACK").map { String(cString: $0) } == "1"
        if unsafeEarlyAck {
            logger.critical("POSTERN_TEST_UNSAFE_EARLY_ACK=1: TEST ONLY, UNSAFE: messages are answered 250 before the upstream has them")
        }
        self.authenticator = configuration.authentication.map { Authenticator(settings: $0, logger: logger) }
        self.limiter = ConnectionLimiter(
            maximumTotal: configuration.limits.maxConnections, maximumPerAddress: configuration.limits.maxConnectionsPerIP)
        self.policyServices = configuration.policyServices.map { PolicyServiceClient(configuration: $0, group: group, logger: logger) }
        self.milters = configuration.milters.map { MilterFilter(configuration: $0, hostname: configuration.hostname, group: group, logger: logger) }
        live = Mutex(Live(configuration: configuration, pool: Self.makePool(configuration, group: group, logger: logger, metrics: metrics)))
        metrics.configurationLoaded(version: configuration.version)
        // SIGHUP would end the process until its handler is installed in run(): ignore it from
        // the start (a reload that early has nothing to reload).
        signal(SIGHUP, SIG_IGN)
        signal(SIGUSR1, SIG_IGN)
        // What `postern check` checks too (TLS files, maildirs, the policy, the decision log).
        let prepared = try ServerPreparation.validate(configuration, createDirectories: true, logger: logger, metrics: metrics)
        if let files = configuration.tls, let context = prepared.tlsContext {
            certificates = CertificateStore(files: files, context: context, logger: logger, counted: { metrics.certificateReload($0) })
        } else {
            certificates = nil
        }
        policy = prepared.policy
        decisionLog = prepared.decisionLog
        samples = prepared.samples
        resolver = prepared.resolver
    }

    /// The addresses actually bound (port 0 resolved), once listening.
    public var boundAddresses: [SocketAddress] { bound.withLock { $0 } }

    /// Where `/metrics` is served, once listening.
    public var statusServerAddress: SocketAddress? { statusAddress.withLock { $0 } }

    public func run() async throws {
        // One task executor per event loop, shared by the sessions on it: a session's task
        // (only while its actions wait) runs on its connection's loop.
        let executors = Dictionary(uniqueKeysWithValues: group.makeIterator().map { (ObjectIdentifier($0), EventLoopTaskExecutor($0)) })
        var servers: [(PosternConfiguration.Listener, Channel)] = []
        // Sockets systemd holds for us (socket activation): a listener bound to the same
        // address and port takes its socket instead of binding, so a restart refuses nothing.
        let inherited = Systemd.takeListeningSockets()
        var taken: Set<Int32> = []
        let contexts = live.withLock { live in
            live.contexts = live.configuration.listeners.map { makeContext(for: $0, in: live.configuration, pool: live.pool) }
            return live.contexts
        }
        for (index, listener) in configuration.listeners.enumerated() {
            let initial = contexts[index]
            do {
                let bootstrap = ServerBootstrap(group: group)
                    .serverChannelOption(.backlog, value: 512)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    // The channel keeps its receive buffer between reads: start it at the size of
                    // a few command lines (idle sessions hold it), not NIO's 2 KB; it grows at
                    // once when reads fill it (DATA).
                    .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536))
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            let remote = channel.remoteAddress
                            let peer = ClientEndpoint(address: remote?.ipAddress.flatMap(IPAddress.init) ?? .v4(0), port: remote?.port ?? 0)
                            // The context in force when the connection arrives (a reload may have swapped it).
                            let context = self.live.withLock { $0.contexts.indices.contains(index) ? $0.contexts[index] : initial }
                            let loop = channel.eventLoop
                            let executor = executors[ObjectIdentifier(loop)] ?? EventLoopTaskExecutor(loop)
                            try channel.pipeline.syncOperations.addHandlers(
                                SMTPInboundEventHandler(), SMTPConnection(channel: channel, peer: peer, context: context, executor: executor))
                        }
                    }
                let server: Channel
                if let socket = Systemd.socket(for: listener.host, port: listener.port, in: inherited) {
                    server = try await bootstrap.withBoundSocket(socket.descriptor).get()
                    taken.insert(socket.descriptor)
                    logger.info("listener on a socket from systemd", metadata: [
                        "address": "\(listener.host):\(listener.port)", "fd": "\(socket.descriptor)", "name": "\(socket.name)",
                    ])
                } else {
                    server = try await bootstrap.bind(host: listener.host, port: listener.port).get()
                }
                servers.append((listener, server))
            } catch {
                for (_, server) in servers { try? await server.close() }
                throw StartupError(description: "cannot listen on \(listener.description): \(error)")
            }
        }
        for socket in inherited where !taken.contains(socket.descriptor) {
            logger.warning("systemd passed a socket that no listener is configured for; it is closed", metadata: [
                "fd": "\(socket.descriptor)", "name": "\(socket.name)",
                "address": "\(socket.address.map { "\($0)" } ?? "?"):\(socket.port.map(String.init) ?? "?")",
            ])
            close(socket.descriptor)
        }
        let addresses = servers.compactMap { $0.1.localAddress }
        bound.withLock { $0 = addresses }
        for (listener, server) in servers {
            let port = server.localAddress?.port ?? listener.port
            logger.notice("listening on \(listener.host.contains(":") ? "[\(listener.host)]" : listener.host):\(port)", metadata: [
                "proxy_protocol": "\(listener.proxyProtocol)", "starttls": "\(certificates != nil)",
            ])
        }
        var statusServer: StatusServer?
        if let address = configuration.metrics {
            let server = StatusServer(host: address.host, port: address.port, metrics: metrics, pool: { self.live.withLock { $0.pool } }, policy: policy,
                                      feed: feed ?? DecisionFeed(), pendingReload: { self.pendingReloadJSON() }, group: group, logger: logger)
            do {
                let bound = try await server.bind()
                statusAddress.withLock { $0 = bound }
            } catch {
                for (_, listener) in servers { try? await listener.close() }
                throw StartupError(description: "cannot serve metrics on \(address.description): \(error)")
            }
            statusServer = server
        }
        onListening?(addresses)
        // Type=notify: ready once every listener (and the status endpoint) is up, the policy
        // compiled, and each upstream probed once (within the probe timeouts; one that does not
        // answer is marked down, and probed until it does, as after any failure).
        if Systemd.isNotifying {
            let pool = live.withLock { $0.pool }
            let answering = await pool.probeEach()
            Systemd.notify("READY=1\nSTATUS=listening on \(configuration.listeners.map(\.description).joined(separator: ", ")); "
                + "\(answering) of \(configuration.upstreams.count) upstream(s) answering")
        }

        // SIGHUP (systemctl reload) rereads the policy, the AUTH credentials and the TLS certificate.
        let sighup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        sighup.setEventHandler { [policy, authenticator, certificates, logger] in
            let what = (self.configurationSource == nil ? [] : ["the configuration"]) + ["the policy"] + (authenticator == nil ? [] : ["the credentials"]) + (certificates == nil ? [] : ["the TLS certificate"])
            logger.notice("SIGHUP: reloading \(what.joined(separator: ", "))")
            Systemd.notify("RELOADING=1\nMONOTONIC_USEC=\(Systemd.monotonicMicroseconds())")
            self.reloadConfiguration()
            policy.reload()
            authenticator?.reload()
            certificates?.reload()
            Systemd.notify("READY=1\nSTATUS=reloaded; policy \(policy.policy.version)")
        }
        sighup.resume()
        let credentialWatch = authenticator?.watchFile()
        let certificateWatch = certificates?.watchFiles()
        let configurationWatch = configurationFile.map { file in
            FileWatch.watch({ [file] }) { [logger] in
                logger.notice("configuration file changed: reloading it")
                self.reloadConfiguration()
            }
        }
        let fileWatch = configuration.policy != nil ? policy.watchFiles() : nil
        // SIGUSR1: reopen the decision log (logrotate's postrotate).
        let sigusr1 = DispatchSource.makeSignalSource(signal: SIGUSR1, queue: .global())
        sigusr1.setEventHandler { [decisionLog, logger] in
            logger.notice("SIGUSR1: reopening the decision log")
            decisionLog?.reopen()
        }
        sigusr1.resume()
        defer {
            sighup.cancel()
            fileWatch?.cancel()
            credentialWatch?.cancel()
            certificateWatch?.cancel()
            configurationWatch?.cancel()
            sigusr1.cancel()
        }
        let serverChannels = servers.map { $0.1 }
        let status = statusServer
        try await withGracefulShutdownHandler {
            try await withTaskCancellationHandler {
                try await withThrowingDiscardingTaskGroup { tasks in
                    if let status {
                        tasks.addTask { try await status.run() }
                    }
                    for server in serverChannels {
                        tasks.addTask { try await server.closeFuture.get() }
                    }
                }
                // The listeners are closed: the sessions in progress finish (drained, or closed
                // at the end of the grace period).
                await registry.waitUntilAllEnded()
            } onCancel: { [registry] in
                for channel in serverChannels { channel.close(promise: nil) }
                status?.close()
                registry.closeAll()
            }
        } onGracefulShutdown: { [registry, logger, configuration, group] in
            Systemd.notify("STOPPING=1\nSTATUS=shutting down: sessions finish their transactions")
            logger.notice("shutting down: no new connections; sessions finish their transactions", metadata: [
                "sessions": "\(registry.count)", "grace_period_s": "\(configuration.shutdownGracePeriod.nanoseconds / 1_000_000_000)",
            ])
            for channel in serverChannels { channel.close(promise: nil) }
            registry.drainAll()
            group.any().scheduleTask(in: configuration.shutdownGracePeriod) {
                if registry.count > 0 { logger.warning("grace period over, closing remaining sessions", metadata: ["sessions": "\(registry.count)"]) }
                registry.closeAll()
            }
        }
        let pool = live.withLock { $0.pool }
        pool.stopProbing()
        await pool.closeIdle()
        for service in policyServices { service.close() }
        decisionLog?.close()
        samples?.flush()
        logger.notice("stopped")
    }

    /// What `listener`'s sessions share.
    private static func makePool(_ configuration: PosternConfiguration, group: EventLoopGroup, logger: Logger, metrics: PosternMetrics) -> UpstreamPool {
        UpstreamPool(
            upstreams: configuration.upstreams, retryAfter: configuration.upstreamRetryAfter, probe: configuration.upstreamProbe,
            heloName: configuration.hostname, group: group, logger: logger,
            events: UpstreamEvents(failed: { metrics.upstreamFailure(upstream: $0, kind: $1.rawValue) }))
    }

    /// SIGHUP: reads the configuration again and applies, in one swap, what can change without
    /// a new listener (`ConfigurationChanges`); what needs a restart is logged and left as it
    /// is. A configuration with errors changes nothing. Returns what changed.
    @discardableResult
    func reloadConfiguration() -> ConfigurationChanges? {
        // One reload at a time (SIGHUP and the file watch may both ask).
        reloading.withLock { _ in reloadConfigurationNow() }
    }

    /// What a reload would do now, as `postern check` shows it (through the status endpoint):
    /// the configuration file read again and compared with the one in force, nothing applied.
    struct PendingReload: Sendable {
        /// The version in force, and the file's.
        var inForce: String?
        var file: String?
        var changes: ConfigurationChanges
    }

    /// The configuration file as a reload would read it, against the one in force; an error
    /// (the file's, or what the reload would refuse) as its message.
    func pendingReload() -> Result<PendingReload, ReloadRefused> {
        guard let configurationSource else { return .failure(ReloadRefused(description: "this server has no configuration file to reload")) }
        let new: PosternConfiguration
        do {
            new = try configurationSource()
        } catch {
            return .failure(ReloadRefused(description: "\(error)"))
        }
        let old = live.withLock { $0.configuration }
        let changes = ConfigurationChanges(from: old, to: new)
        if let problem = Self.refusal(of: ConfigurationChanges.applying(new, to: old), changes: changes, from: old) {
            return .failure(problem)
        }
        return .success(PendingReload(inForce: old.version, file: new.version, changes: changes))
    }

    /// `/api/configuration`: `in_force` and `file` (the versions), `apply` and `restart` (the
    /// changed keys), or `error`.
    func pendingReloadJSON() -> [UInt8] {
        let object: [String: Any]
        switch pendingReload() {
        case .success(let pending):
            object = ["in_force": pending.inForce ?? NSNull(), "file": pending.file ?? NSNull(), "config_file": configurationFile ?? NSNull(),
                      "apply": pending.changes.applied, "restart": pending.changes.needRestart]
        case .failure(let refused):
            object = ["error": refused.description, "config_file": configurationFile ?? NSNull()]
        }
        return Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8))
    }

    struct ReloadRefused: Error, CustomStringConvertible {
        var description: String
    }

    /// What the reload checks beyond the loader (which reads the credentials file) before it
    /// swaps: the maildirs and the decision log the applied keys name can be used.
    private static func refusal(of applied: PosternConfiguration, changes: ConfigurationChanges, from old: PosternConfiguration) -> ReloadRefused? {
        for upstream in applied.upstreams {
            guard case .maildir(let path) = upstream.target, let problem = ServerPreparation.maildirProblem(path, create: true) else { continue }
            return ReloadRefused(description: "upstream maildir:\(path): \(problem)")
        }
        if changes.applied.contains("decision_log"), let path = applied.decisionLog, path != old.decisionLog {
            do {
                try DecisionLogWriter.check(path: path)
            } catch {
                return ReloadRefused(description: "decision_log.path: \(error)")
            }
        }
        return nil
    }

    private func reloadConfigurationNow() -> ConfigurationChanges? {
        guard let configurationSource else { return nil }
        let new: PosternConfiguration
        do {
            new = try configurationSource()
        } catch {
            metrics.configurationReload("failure")
            logger.error("configuration not reloaded; the one in force stays", metadata: ["error": "\(error)"])
            return nil
        }
        let old = live.withLock { $0.configuration }
        let changes = ConfigurationChanges(from: old, to: new)
        if !changes.needRestart.isEmpty {
            logger.warning("configuration changes that need a restart were not applied", metadata: ["keys": "\(changes.needRestart.joined(separator: ", "))"])
        }
        guard !changes.applied.isEmpty else {
            metrics.configurationReload(changes.needRestart.isEmpty ? "unchanged" : "restart_needed")
            return changes
        }
        let applied = ConfigurationChanges.applying(new, to: old)
        if let problem = Self.refusal(of: applied, changes: changes, from: old) {
            metrics.configurationReload("failure")
            logger.error("configuration not reloaded; the one in force stays", metadata: ["error": "\(problem)"])
            return nil
        }
        let replaced: UpstreamPool? = live.withLock { live in
            let previous = live.pool
            if changes.upstreamsChanged { live.pool = Self.makePool(applied, group: group, logger: logger, metrics: metrics) }
            live.configuration = applied
            live.contexts = applied.listeners.map { makeContext(for: $0, in: applied, pool: live.pool) }
            return live.pool === previous ? nil : previous
        }
        limiter.setLimits(maximumTotal: applied.limits.maxConnections, maximumPerAddress: applied.limits.maxConnectionsPerIP)
        if changes.applied.contains("auth"), let settings = applied.authentication { authenticator?.update(settings: settings) }
        if changes.applied.contains("decision_log") {
            if let path = applied.decisionLog {
                decisionLog?.reconfigure(path: path, rotation: applied.decisionLogRotation, privacy: applied.decisionLogPrivacy)
            }
            feed?.setPrivacy(applied.decisionLogPrivacy)
            samples?.setPrivacy(applied.decisionLogPrivacy)
        }
        if changes.applied.contains("log_level") {
            if let logLevel {
                logLevel.level = applied.logLevel
            } else {
                logger.warning("log_level not applied: this process's logging was not set up by postern serve")
            }
        }
        if let replaced {
            // Its kept connections go to upstreams no longer configured, or under old settings;
            // those still serving a session close when it ends (they are not kept again).
            replaced.stopProbing()
            Task { await replaced.closeIdle() }
        }
        metrics.configurationReload("success", version: applied.version)
        logger.notice("configuration reloaded", metadata: ["changed": "\(changes.applied.joined(separator: ", "))"])
        return changes
    }

    private func makeContext(for listener: PosternConfiguration.Listener, in configuration: PosternConfiguration, pool: UpstreamPool) -> ListenerContext {
        let relayControl = RelayControl(relayDomains: configuration.relayDomains, trustedNetworks: configuration.trustedNetworks)
        var timeouts = SessionTimeouts()
        timeouts.command = configuration.timeouts.command
        timeouts.data = configuration.timeouts.data
        timeouts.proxyHeader = configuration.timeouts.proxyHeader
        timeouts.session = configuration.timeouts.session
        timeouts.greetDelay = configuration.timeouts.greetDelay
        timeouts.tlsHandshake = configuration.timeouts.command
        let session = SessionConfiguration(
            server: configuration.serverConfiguration(for: listener), timeouts: timeouts, bareLineEndings: configuration.bareLineEndings,
            minimumDataRate: configuration.limits.minDataRate, dataRateGrace: configuration.limits.dataRateGrace,
            proxyProtocol: listener.proxyProtocol, proxyTrustedNetworks: configuration.proxyTrustedNetworks, relayControl: relayControl,
            authFailureDelay: configuration.authentication?.failureDelay ?? .zero,
            forbidImproperPipelining: configuration.forbidImproperPipelining,
            checkedStages: checks.reduce(into: Set<PolicyStage>()) { $0.formUnion($1.stages) }
                .union(milters.reduce(into: Set<PolicyStage>()) { $0.formUnion($1.configuration.stages) }),
            authservID: resolver != nil && configuration.dns?.spf == true ? configuration.dns?.authservID ?? configuration.hostname : nil)
        return ListenerContext(
            session: session, pool: pool, limiter: limiter, registry: registry, certificates: certificates, decisionLog: decisionLog,
            metrics: metrics, policy: policy, authenticator: authenticator, quarantine: configuration.quarantine,
            hostname: configuration.hostname, spool: configuration.spool, checks: checks, milters: milters,
            clientNames: resolver.flatMap { resolver in
                configuration.dns?.verifyClientNames == true ? ClientNameVerifier(resolver: resolver, timeout: resolver.configuration.timeout) : nil
            },
            dnsLists: resolver.map { DNSListChecker(resolver: $0, logger: logger) },
            feed: feed, samples: samples, configurationVersion: configuration.version, logger: logger, unsafeEarlyAck: unsafeEarlyAck)
    }

    /// The stage checks of every session: SPF (with `dns:`), then the policy servers, in configured order.
    private var checks: [any StageCheck] {
        var checks: [any StageCheck] = []
        if let resolver, let dns = configuration.dns, dns.spf {
            checks.append(SPFCheck(evaluator: SPFEvaluator(resolver: resolver), authservID: dns.authservID ?? configuration.hostname,
                                   lookupTimeout: resolver.configuration.timeout))
        }
        return checks + policyServices.map { PolicyServiceCheck(client: $0) }
    }
}
