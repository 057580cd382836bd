import PosternNative
import PosternPolicy
import Prometheus
import SMTPCore
import Synchronization

/// Postern's Prometheus metrics, on one registry that `/metrics` renders. Names follow the
/// Prometheus conventions: `postern_` prefix, `_total` counters, `_seconds` durations.
///
/// Every handle is made once: the unlabelled ones here in `init`, the labelled ones by a
/// ``LabelledMetric`` the first time a set of label values is used, so an event costs a
/// dictionary lookup, not a trip through the registry's lock and name checks.
public final class PosternMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let sessionsCurrent: Gauge
    let sessionsTotal: Counter
    private let upstreamLatency: DurationHistogram
    private let decisionLogWriteErrors: Counter
    private let samples: LabelledMetric<Counter>
    private let certificateReloads: LabelledMetric<Counter>
    private let configurationReloads: LabelledMetric<Counter>
    private let configurationInfo: LabelledMetric<Gauge>
    private let configurationVersion = Mutex<String?>(nil)
    private let relayDeniedTotal: Counter
    private let transactions: LabelledMetric<Counter>
    private let connectionsRefused: LabelledMetric<Counter>
    private let upstreamReplies: LabelledMetric<Counter>
    private let upstreamFailures: LabelledMetric<Counter>
    private let tlsSessions: LabelledMetric<Counter>
    private let policyReloads: LabelledMetric<Counter>
    private let policyInfo: LabelledMetric<Gauge>
    private let ruleHits: LabelledMetric<Counter>
    private let filterDurations: LabelledMetric<DurationHistogram>
    private let rateLimitRefusals: LabelledMetric<Counter>
    private let authAttempts: LabelledMetric<Counter>
    private let defences: LabelledMetric<Counter>
    private let upstreamUp: LabelledMetric<Gauge>
    private let upstreamSinceSuccess: LabelledMetric<Gauge>
    private let checkResults: LabelledMetric<Counter>
    private let checkErrors: LabelledMetric<Counter>
    private let dnsQueries: LabelledMetric<Counter>
    private let dnsDurations: LabelledMetric<DurationHistogram>
    private let dnsCacheHits: LabelledMetric<Counter>
    private let clientNames: LabelledMetric<Counter>
    private let dnsListResults: LabelledMetric<Counter>
    private let checkDurations: LabelledMetric<DurationHistogram>
    /// The shared rate-limit store's failures (see `limitsStoreFailure`): made on the first
    /// failure, so a server without Redis exports none of them.
    let limitsStoreErrors: LabelledMetric<Counter>
    let limitsStoreFailOpen: LabelledMetric<Counter>
    let limitsStoreFailClosed: LabelledMetric<Counter>
    private let policyVersion = Mutex<String?>(nil)

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), version: String) {
        self.registry = registry
        sessionsCurrent = registry.makeGauge(descriptor: Self.name("sessions_current", "SMTP sessions open now."))
        sessionsTotal = registry.makeCounter(descriptor: Self.name("sessions_total", "SMTP sessions accepted since start."))
        upstreamLatency = registry.makeDurationHistogram(
            descriptor: Self.name("upstream_latency_seconds", "Time from sending a command or message to the upstream until its reply."),
            buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(500), .seconds(2), .seconds(10), .seconds(60)])
        decisionLogWriteErrors = registry.makeCounter(descriptor: Self.name("decision_log_write_errors_total", "Decision records that could not be written."))
        relayDeniedTotal = registry.makeCounter(descriptor: Self.name("relay_denied_total", "Recipients refused by relay control."))
        registry.makeGauge(descriptor: Self.name("build_info", "The running version."), labels: [("version", version)]).set(Int64(1))

        func counter(_ name: String, _ help: String, labels: [String]) -> LabelledMetric<Counter> {
            LabelledMetric(labels: labels) { registry.makeCounter(descriptor: PosternMetrics.name(name, help), labels: $0) }
        }
        func gauge(_ name: String, _ help: String, labels: [String]) -> LabelledMetric<Gauge> {
            LabelledMetric(labels: labels) { registry.makeGauge(descriptor: PosternMetrics.name(name, help), labels: $0) }
        }
        transactions = counter("transactions_total", "Transactions by decision.", labels: ["decision"])
        connectionsRefused = counter("connections_refused_total", "Connections refused before any transaction.", labels: ["reason"])
        upstreamReplies = counter("upstream_replies_total", "Upstream replies by upstream and reply class.", labels: ["upstream", "class"])
        upstreamFailures = counter(
            "upstream_failures_total", "Upstream connections, probes and exchanges that failed without a reply, by kind.",
            labels: ["upstream", "kind"])
        samples = counter(
            "samples_total", "Message samples (samples:) by result: written, too_large, dropped (the writer was behind), failed.",
            labels: ["result"])
        configurationReloads = counter(
            "config_reloads_total",
            "Reloads of the configuration file (SIGHUP), by result: success, unchanged, restart_needed (only keys that need a restart changed), failure.",
            labels: ["result"])
        configurationInfo = gauge("config_info", "The configuration in force: 1 for its version (the file's SHA-256 prefix).", labels: ["version"])
        certificateReloads = counter(
            "tls_certificate_reloads_total", "Reloads of the STARTTLS certificate and key (SIGHUP, file changes), by result: success, failure.",
            labels: ["result"])
        tlsSessions = counter("tls_sessions_total", "STARTTLS handshakes completed, by TLS version.", labels: ["version"])
        policyReloads = counter("policy_reloads_total", "Policy loads and reloads by result.", labels: ["result"])
        policyInfo = gauge("policy_info", "The policy in force.", labels: ["version"])
        ruleHits = counter("rule_hits_total", "Rules that matched, by rule id, mode and stage.", labels: ["rule", "mode", "stage"])
        filterDurations = LabelledMetric(labels: ["filter"]) {
            registry.makeDurationHistogram(
                descriptor: PosternMetrics.name("filter_duration_seconds", "Time spent evaluating each filter, per stage evaluation."),
                labels: $0,
                buckets: [.microseconds(10), .microseconds(100), .milliseconds(1), .milliseconds(10), .milliseconds(100), .seconds(1)])
        }
        checkResults = counter(
            "check_results_total", "Evaluations of the pipeline's checks (policy servers, milters), by check and result.", labels: ["check", "result"])
        checkErrors = counter(
            "check_errors_total", "Checks that failed (their default action applied), by check and kind of failure.", labels: ["check", "kind"])
        checkDurations = LabelledMetric(labels: ["check"]) {
            registry.makeDurationHistogram(
                descriptor: PosternMetrics.name("check_duration_seconds", "Time each check took, per stage evaluation."),
                labels: $0,
                buckets: [.milliseconds(1), .milliseconds(10), .milliseconds(100), .seconds(1), .seconds(10), .seconds(60)])
        }
        dnsQueries = counter("dns_queries_total", "DNS lookups by record type and result (records, nodata, nxdomain, timeout, servfail, refused, bogus, failure), cache hits included.",
                             labels: ["type", "result"])
        dnsCacheHits = counter("dns_cache_hits_total", "DNS lookups answered from Postern's cache, by record type.", labels: ["type"])
        dnsDurations = LabelledMetric(labels: ["type"]) {
            registry.makeDurationHistogram(
                descriptor: PosternMetrics.name("dns_query_duration_seconds", "Time DNS lookups took (not cache hits), by record type."),
                labels: $0,
                buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(500), .seconds(2), .seconds(10)])
        }
        clientNames = counter("client_names_total", "Clients by what forward-confirmed reverse DNS found (verified, unverified, none, tempfail).",
                              labels: ["status"])
        dnsListResults = counter("dnsbl_results_total", "DNS list answers (for client addresses, HELO names and sender domains), by list and result (listed, not_listed, error, skipped).",
                                 labels: ["dnsbl", "result"])
        rateLimitRefusals = counter("rate_limit_refusals_total", "Refusals by rate-limit rules, by limit.", labels: ["limit"])
        authAttempts = counter("auth_attempts_total", "AUTH exchanges by mechanism and result.", labels: ["mechanism", "result"])
        defences = counter("defences_total", "Sessions ended by a connection defence, by defence.", labels: ["defence"])
        upstreamUp = gauge("upstream_up", "1 when the upstream is believed reachable, 0 while it is marked down.", labels: ["upstream"])
        upstreamSinceSuccess = gauge(
            "upstream_seconds_since_success", "Seconds since the upstream last took a connection or answered (since the start when never).",
            labels: ["upstream"])
        limitsStoreErrors = counter("limits_store_errors_total", "Rate-limit checks the shared store could not answer, by reason.", labels: ["reason"])
        limitsStoreFailOpen = counter(
            "limits_store_fail_open_total", "Rate-limit checks let through because the store was unavailable (fail_open).", labels: [])
        limitsStoreFailClosed = counter(
            "limits_store_fail_closed_total", "Rate-limit checks answered 451 because the store was unavailable (fail_closed).", labels: [])
    }

    /// One finished transaction (or connection refused before any), by decision.
    func transaction(decision: String) {
        transactions(decision).increment()
    }

    /// A connection refused before the greeting, by reason.
    func connectionRefused(reason: String) {
        connectionsRefused(reason).increment()
    }

    /// A reply from an upstream, by upstream and class (2xx, 3xx, 4xx, 5xx), with its latency.
    func upstreamReply(upstream: String, code: Int, nanoseconds: UInt64) {
        upstreamReplies(upstream, "\(code / 100)xx").increment()
        upstreamLatency.recordNanoseconds(Int64(min(nanoseconds, UInt64(Int64.max))))
    }

    /// An upstream exchange that failed without a reply, by upstream and kind.
    func upstreamFailure(upstream: String, kind: String) {
        upstreamFailures(upstream, kind).increment()
    }

    /// A completed STARTTLS, by TLS version.
    func tlsSession(version: String) {
        tlsSessions(version).increment()
    }

    /// A policy load or reload, by result; the loaded version as an info metric.
    func policyLoaded(version: String?, result: String) {
        policyReloads(result).increment()
        guard let version else { return }
        policyVersion.withLock { previous in
            if let previous { policyInfo(previous).set(Int64(0)) }
            policyInfo(version).set(Int64(1))
            previous = version
        }
    }

    /// A rule that matched, by rule, mode (enforce or shadow) and stage.
    func ruleHit(rule: String, mode: String, stage: String) {
        ruleHits(rule, mode, stage).increment()
    }

    /// Time spent in one filter during one stage.
    func filterDuration(filter: String, nanoseconds: UInt64) {
        filterDurations(filter).recordNanoseconds(Int64(min(nanoseconds, UInt64(Int64.max))))
    }

    /// A refusal by a rule whose condition is a rate limit, by limit.
    func rateLimitRefusal(limit: String) {
        rateLimitRefusals(limit).increment()
    }

    /// An AUTH exchange, by mechanism and result (success, failure, locked_out, error, cancelled).
    func authAttempt(mechanism: String, result: String) {
        authAttempts(mechanism, result).increment()
    }

    /// A recipient refused by relay control (554 5.7.1 Relay access denied).
    func relayDenied() {
        relayDeniedTotal.increment()
    }

    /// A connection defence that ended a session, by defence
    /// (pregreet, junk_commands, session_time, min_data_rate, errors).
    func defence(_ name: String) {
        defences(name).increment()
    }

    func decisionLogWriteError() {
        decisionLogWriteErrors.increment()
    }

    /// A reload of the configuration file: success, unchanged, restart_needed, failure.
    func configurationReload(_ result: String, version: String? = nil) {
        configurationReloads(result).increment()
        if let version { configurationLoaded(version: version) }
    }

    /// The configuration version in force (`postern_config_info{version}` 1; the previous 0).
    func configurationLoaded(version: String?) {
        guard let version else { return }
        configurationVersion.withLock { previous in
            if let previous, previous != version { configurationInfo(previous).set(Int64(0)) }
            configurationInfo(version).set(Int64(1))
            previous = version
        }
    }

    /// A reload of the STARTTLS certificate: success, failure (the old one stays).
    func certificateReload(_ result: String) {
        certificateReloads(result).increment()
    }

    /// A message sample's result (written, too_large, dropped, failed).
    func sample(_ result: String) {
        samples(result).increment()
    }

    /// One evaluation of a pipeline check, by its result (pass, accept, reject, tempfail, timeout, error…).
    func checkResult(check: String, result: String, milliseconds: Int) {
        checkResults(check, result).increment()
        checkDurations(check).recordNanoseconds(Int64(milliseconds) * 1_000_000)
    }

    /// One DNS lookup (the resolver's observer).
    func dnsQuery(_ event: DNSQueryEvent) {
        dnsQueries(event.type.description, event.result).increment()
        if event.cached {
            dnsCacheHits(event.type.description).increment()
        } else {
            dnsDurations(event.type.description).recordNanoseconds(Int64(event.seconds * 1e9))
        }
    }

    func dnsList(_ result: DNSListResult) {
        let label = switch result.outcome {
        case .listed: "listed"
        case .notListed: "not_listed"
        case .error: "error"
        case .skipped: "skipped"
        }
        dnsListResults(result.list, label).increment()
    }

    func clientName(_ status: ClientName.Status) {
        clientNames(status.rawValue).increment()
    }

    /// A check that failed, by kind (connect, timeout, closed, protocol…).
    func checkError(check: String, kind: String) {
        checkErrors(check, kind).increment()
    }

    /// Sets `postern_upstream_up` (1 alive, 0 marked down) and
    /// `postern_upstream_seconds_since_success` for every configured upstream.
    func upstreamHealth(_ health: [(name: String, alive: Bool, secondsSinceSuccess: Double)]) {
        for (name, alive, since) in health {
            upstreamUp(name).set(Int64(alive ? 1 : 0))
            upstreamSinceSuccess(name).set((since * 1000).rounded() / 1000)
        }
        // An upstream a reload removed is no longer reported.
        let configured = Set(health.map { [$0.name] })
        for gauge in upstreamUp.remove(except: configured) + upstreamSinceSuccess.remove(except: configured) {
            registry.unregisterGauge(gauge)
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

/// The handles of one labelled metric, one per set of label values: made through the
/// registry the first time those values are seen, then reused.
final class LabelledMetric<Handle: AnyObject & Sendable>: Sendable {
    private let labelNames: [String]
    private let make: @Sendable ([(String, String)]) -> Handle
    private let handles = Mutex<[[String]: Handle]>([:])

    /// `make` builds the handle for `(name, value)` pairs in `labels` order.
    init(labels: [String], make: @escaping @Sendable ([(String, String)]) -> Handle) {
        labelNames = labels
        self.make = make
    }

    /// Forgets the handles whose label values are not in `kept`, and returns them (for the
    /// registry to unregister).
    func remove(except kept: Set<[String]>) -> [Handle] {
        handles.withLock { handles in
            let gone = handles.filter { !kept.contains($0.key) }
            for key in gone.keys { handles[key] = nil }
            return Array(gone.values)
        }
    }

    /// The handle for these label values, in the order of the names given to `init`.
    func callAsFunction(_ values: String...) -> Handle {
        precondition(values.count == labelNames.count, "\(labelNames.count) label values expected")
        return handles.withLock { handles in
            if let handle = handles[values] { return handle }
            let handle = make(Array(zip(labelNames, values)))
            handles[values] = handle
            return handle
        }
    }
}
