import Logging
import NIOCore
import NIOSSL
import PosternEngines
import PosternLog
import PosternPolicy
import PosternSession
import PosternUpstream
import SMTPCore

/// What one listener's sessions share: built once when the server starts, held by
/// reference by every connection (no per-session copy of the configuration).
final class ListenerContext: Sendable {
    let session: SessionConfiguration
    let pool: UpstreamPool
    let limiter: ConnectionLimiter
    let registry: SessionRegistry
    /// The STARTTLS certificate in force, when `tls:` is configured.
    let certificates: CertificateStore?
    let decisionLog: DecisionLogWriter?
    /// The dashboard's view of the decisions, when the status endpoint serves one.
    let feed: DecisionFeed?
    /// Where sampled messages are kept after their decision (`samples:`).
    let samples: SampleStore?
    /// The version of the configuration this context was built from, in each record.
    let configurationVersion: String?
    let metrics: PosternMetrics
    let policy: PolicyStore
    let authenticator: Authenticator?
    /// The quarantine Maildir, when one is configured.
    let quarantine: String?
    let hostname: String
    let spool: PosternConfiguration.Spool
    /// The pipeline's checks besides the policy's own conditions (policy servers).
    let checks: [any StageCheck]
    /// The milter filters, in chain order: each session opens its own connection to each.
    let milters: [MilterFilter]
    /// Forward-confirmed reverse DNS of each client before the greeting (`dns:`).
    let clientNames: ClientNameVerifier?
    /// The policy's DNS lists, asked at connect (`dns:`).
    let dnsLists: DNSListChecker?
    let logger: Logger
    /// Test-only and unsafe (`POSTERN_TEST_UNSAFE_EARLY_ACK=1`, for the chaos run's self-check):
    /// the client is told 250 at the end of its message before the upstream has answered.
    let unsafeEarlyAck: Bool

    init(
        session: SessionConfiguration, pool: UpstreamPool, limiter: ConnectionLimiter, registry: SessionRegistry,
        certificates: CertificateStore?, decisionLog: DecisionLogWriter?, metrics: PosternMetrics, policy: PolicyStore,
        authenticator: Authenticator?, quarantine: String?, hostname: String, spool: PosternConfiguration.Spool,
        checks: [any StageCheck] = [], milters: [MilterFilter] = [], clientNames: ClientNameVerifier? = nil,
        dnsLists: DNSListChecker? = nil, feed: DecisionFeed? = nil, samples: SampleStore? = nil, configurationVersion: String? = nil, logger: Logger,
        unsafeEarlyAck: Bool = false
    ) {
        self.configurationVersion = configurationVersion
        self.feed = feed
        self.samples = samples
        self.checks = checks
        self.clientNames = clientNames
        self.dnsLists = dnsLists
        self.milters = milters
        self.session = session
        self.pool = pool
        self.limiter = limiter
        self.registry = registry
        self.certificates = certificates
        self.decisionLog = decisionLog
        self.metrics = metrics
        self.policy = policy
        self.authenticator = authenticator
        self.quarantine = quarantine
        self.hostname = hostname
        self.spool = spool
        self.logger = logger
        self.unsafeEarlyAck = unsafeEarlyAck
    }

    /// Takes a connection slot for `client` (connection limits, shutdown). An admitted
    /// session must call `release` with the key.
    func admit(_ client: ClientEndpoint, channel: Channel) -> (Admission, key: Int?) {
        if let refusal = limiter.acquire(client.address) {
            switch refusal {
            case .total(let limit): return (.tooManyConnections(limit: limit), nil)
            case .perAddress(let limit): return (.tooManyFromAddress(limit: limit), nil)
            }
        }
        let (key, draining) = registry.register(channel)
        if draining {
            registry.unregister(key)
            limiter.release(client.address)
            return (.shuttingDown, nil)
        }
        metrics.sessionsTotal.increment()
        metrics.sessionsCurrent.increment()
        return (.admitted, key)
    }

    func release(_ key: Int, client: ClientEndpoint) {
        metrics.sessionsCurrent.decrement()
        registry.unregister(key)
        limiter.release(client.address)
    }

    /// Runs a stage and counts what it did: time per filter, rules and shadow rules that
    /// matched, refusals by rate limits.
    func evaluate(_ request: StageRequest, pipeline: StagePipeline, message: MessageDraft? = nil, logger: Logger) async -> StageVerdict {
        let result = await pipeline.evaluate(request.stage, facts: request.facts, message: message)
        let verdict = result.verdict
        for (filter, nanoseconds) in verdict.filterNanoseconds { metrics.filterDuration(filter: filter, nanoseconds: nanoseconds) }
        if let limit = verdict.rateLimit { metrics.rateLimitRefusal(limit: limit) }
        for hit in verdict.shadowHits {
            metrics.ruleHit(rule: hit.rule, mode: "shadow", stage: request.stage.rawValue)
            logger.info("shadow rule matched", metadata: ["rule": "\(hit.rule)", "would": "\(hit.action)", "reason": "\(hit.reason)"])
        }
        if let rule = verdict.rule { metrics.ruleHit(rule: rule, mode: "enforce", stage: request.stage.rawValue) }
        for outcome in result.checks {
            metrics.checkResult(check: outcome.check, result: outcome.result.rawValue, milliseconds: outcome.milliseconds)
            if let kind = outcome.errorKind { metrics.checkError(check: outcome.check, kind: kind) }
            if outcome.result == .error || outcome.result == .timeout {
                logger.info("check failed; its default action applies", metadata: [
                    "check": "\(outcome.check)", "stage": "\(outcome.stage.rawValue)", "error": "\(outcome.detail)",
                ])
            }
        }
        return result
    }

    /// Checks AUTH credentials: the address's lockout, then the hash (off the event loops).
    func verify(_ request: CredentialsRequest) async -> CredentialsOutcome {
        guard let authenticator else { return .unavailable }
        if authenticator.isLockedOut(request.client) { return .lockedOut }
        switch await authenticator.verify(user: request.user, password: request.password) {
        case .success:
            authenticator.recordSuccess(request.client)
            return .success
        case .failure:
            return .failure(nowLockedOut: authenticator.recordFailure(request.client))
        case .unavailable:
            return .unavailable
        }
    }

    /// What the machine asks to count.
    func count(_ event: SessionEvent) {
        switch event {
        case .connectionRefused(let reason): metrics.connectionRefused(reason: reason)
        case .relayDenied: metrics.relayDenied()
        case .defence(let name): metrics.defence(name)
        case .tlsEstablished(let version): metrics.tlsSession(version: version)
        case .authAttempt(let mechanism, let result): metrics.authAttempt(mechanism: mechanism, result: result)
        }
    }

    /// A decision record: counted, and written when there is a decision log.
    func record(_ record: DecisionRecord) {
        var record = record
        record.configVersion = configurationVersion
        metrics.transaction(decision: record.decision.rawValue)
        decisionLog?.record(record)
        feed?.publish(record)
    }
}

extension Logger {
    /// A line the session machine asked for.
    func log(_ line: SessionLog, transactionID: String?) {
        var metadata = Logger.Metadata()
        for (key, value) in line.metadata { metadata[key] = "\(value)" }
        if let transactionID { metadata["smtp.transaction.id"] = "\(transactionID)" }
        let level: Logger.Level = switch line.level {
        case .debug: .debug
        case .info: .info
        case .notice: .notice
        case .warning: .warning
        case .error: .error
        }
        log(level: level, "\(line.message)", metadata: metadata)
    }
}
