import Prometheus
import Synchronization

/// Postern's Prometheus metrics, on one registry that `/metrics` renders. Names follow the
/// Prometheus conventions: `postern_` prefix, `_total` counters, `_seconds` durations.
public final class PosternMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let sessionsCurrent: Gauge
    let sessionsTotal: Counter
    private let upstreamLatency: DurationHistogram
    private let decisionLogWriteErrors: Counter
    private let policyVersion = Mutex<String?>(nil)

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), version: String) {
        self.registry = registry
        sessionsCurrent = registry.makeGauge(descriptor: Self.name("sessions_current", "SMTP sessions open now."))
        sessionsTotal = registry.makeCounter(descriptor: Self.name("sessions_total", "SMTP sessions accepted since start."))
        upstreamLatency = registry.makeDurationHistogram(
            descriptor: Self.name("upstream_latency_seconds", "Time from sending a command or message to the upstream until its reply."),
            buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(500), .seconds(2), .seconds(10), .seconds(60)])
        decisionLogWriteErrors = registry.makeCounter(descriptor: Self.name("decision_log_write_errors_total", "Decision records that could not be written."))
        registry.makeGauge(descriptor: Self.name("build_info", "The running version."), labels: [("version", version)]).set(Int64(1))
    }

    /// One finished transaction (or connection refused before any), by decision.
    func transaction(decision: String) {
        registry.makeCounter(descriptor: Self.name("transactions_total", "Transactions by decision."), labels: [("decision", decision)]).increment()
    }

    /// A connection refused before the greeting, by reason.
    func connectionRefused(reason: String) {
        registry.makeCounter(descriptor: Self.name("connections_refused_total", "Connections refused before any transaction."), labels: [("reason", reason)]).increment()
    }

    /// A reply from an upstream, by upstream and class (2xx, 3xx, 4xx, 5xx), with its latency.
    func upstreamReply(upstream: String, code: Int, nanoseconds: UInt64) {
        registry.makeCounter(descriptor: Self.name("upstream_replies_total", "Upstream replies by upstream and reply class."), labels: [("upstream", upstream), ("class", "\(code / 100)xx")]).increment()
        upstreamLatency.recordNanoseconds(Int64(min(nanoseconds, UInt64(Int64.max))))
    }

    /// An upstream exchange that failed without a reply, by upstream and kind.
    func upstreamFailure(upstream: String, kind: String) {
        registry.makeCounter(descriptor: Self.name("upstream_failures_total", "Upstream exchanges that failed without a reply."), labels: [("upstream", upstream), ("kind", kind)]).increment()
    }

    /// A completed STARTTLS, by TLS version.
    func tlsSession(version: String) {
        registry.makeCounter(descriptor: Self.name("tls_sessions_total", "STARTTLS handshakes completed, by TLS version."), labels: [("version", version)]).increment()
    }

    /// A policy load or reload, by result; the loaded version as an info metric.
    func policyLoaded(version: String?, result: String) {
        registry.makeCounter(descriptor: Self.name("policy_reloads_total", "Policy loads and reloads by result."), labels: [("result", result)]).increment()
        guard let version else { return }
        policyVersion.withLock { previous in
            if let previous { registry.makeGauge(descriptor: Self.name("policy_info", "The policy in force."), labels: [("version", previous)]).set(Int64(0)) }
            registry.makeGauge(descriptor: Self.name("policy_info", "The policy in force."), labels: [("version", version)]).set(Int64(1))
            previous = version
        }
    }

    /// A rule that matched, by rule and mode (enforce or shadow).
    func ruleHit(rule: String, mode: String) {
        registry.makeCounter(descriptor: Self.name("rule_hits_total", "Rules that matched, by rule id and mode."),
                             labels: [("rule", rule), ("mode", mode)]).increment()
    }

    /// Time spent in one filter during one stage.
    func filterDuration(filter: String, nanoseconds: UInt64) {
        registry.makeDurationHistogram(
            descriptor: Self.name("filter_duration_seconds", "Time spent evaluating each filter, per stage evaluation."),
            labels: [("filter", filter)],
            buckets: [.microseconds(10), .microseconds(100), .milliseconds(1), .milliseconds(10), .milliseconds(100), .seconds(1)]
        ).recordNanoseconds(Int64(min(nanoseconds, UInt64(Int64.max))))
    }

    /// A refusal by a rule whose condition is a rate limit, by limit.
    func rateLimitRefusal(limit: String) {
        registry.makeCounter(descriptor: Self.name("rate_limit_refusals_total", "Refusals by rate-limit rules, by limit."),
                             labels: [("limit", limit)]).increment()
    }

    /// An AUTH exchange, by mechanism and result (success, failure, locked_out, error, cancelled).
    func authAttempt(mechanism: String, result: String) {
        registry.makeCounter(descriptor: Self.name("auth_attempts_total", "AUTH exchanges by mechanism and result."),
                             labels: [("mechanism", mechanism), ("result", result)]).increment()
    }

    /// A recipient refused by relay control (554 5.7.1 Relay access denied).
    func relayDenied() {
        registry.makeCounter(descriptor: Self.name("relay_denied_total", "Recipients refused by relay control.")).increment()
    }

    /// A connection defence that ended a session, by defence
    /// (pregreet, junk_commands, session_time, min_data_rate, errors).
    func defence(_ name: String) {
        registry.makeCounter(descriptor: Self.name("defences_total", "Sessions ended by a connection defence, by defence."),
                             labels: [("defence", name)]).increment()
    }

    func decisionLogWriteError() {
        decisionLogWriteErrors.increment()
    }

    /// Sets `postern_upstream_up` for every configured upstream (1 alive, 0 marked dead).
    func upstreamHealth(_ health: [(name: String, alive: Bool)]) {
        for (name, alive) in health {
            registry.makeGauge(descriptor: Self.name("upstream_up", "1 when the upstream is believed reachable, 0 while it is marked dead."), labels: [("upstream", name)]).set(Int64(alive ? 1 : 0))
        }
    }

    /// `postern_<name>` with its help text.
    private static func name(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "postern", metricName: name, unitName: "", helpText: help)
    }

    /// The Prometheus text exposition format.
    public func render() -> [UInt8] {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return bytes
    }
}
