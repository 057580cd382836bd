import Prometheus
import Synchronization
import XCTest

@testable import PosternServer

/// The metrics as `/metrics` renders them: names, help texts, labels, buckets and values
/// after some events (the README, Deploy/prometheus and the integration tests read these).
final class PosternMetricsTests: XCTestCase {
    private func rendered(_ metrics: PosternMetrics) -> Set<String> {
        Set(String(decoding: metrics.render(), as: UTF8.self).split(separator: "\n").map(String.init))
    }

    private func assertLines(_ expected: [String], in lines: Set<String>, file: StaticString = #filePath, line: UInt = #line) {
        for wanted in expected where !lines.contains(wanted) {
            XCTFail("missing: \(wanted)\nrendered:\n\(lines.sorted().joined(separator: "\n"))", file: file, line: line)
        }
    }


    func testAnUpstreamNoLongerConfiguredIsNoLongerReported() {
        let metrics = PosternMetrics(version: "test")
        metrics.upstreamHealth([(name: "old.test:25", alive: true, secondsSinceSuccess: 1), (name: "kept.test:25", alive: true, secondsSinceSuccess: 1)])
        XCTAssertTrue(rendered(metrics).contains("postern_upstream_up{upstream=\"old.test:25\"} 1.0"))
        // A reload's new pool: old.test is gone.
        metrics.upstreamHealth([(name: "kept.test:25", alive: false, secondsSinceSuccess: 3), (name: "new.test:25", alive: true, secondsSinceSuccess: 0)])
        let lines = rendered(metrics)
        XCTAssertFalse(lines.contains { $0.contains("old.test") }, "\(lines)")
        XCTAssertTrue(lines.contains("postern_upstream_up{upstream=\"kept.test:25\"} 0.0"))
        XCTAssertTrue(lines.contains("postern_upstream_up{upstream=\"new.test:25\"} 1.0"))
        XCTAssertTrue(lines.contains("postern_upstream_seconds_since_success{upstream=\"kept.test:25\"} 3.0"), "\(lines.filter { $0.contains("since") })")
    }
    func testEveryMetricAfterSomeEvents() {
        let metrics = PosternMetrics(version: "9.9.9")
        let before = rendered(metrics)
        // Unlabelled ones exist from the start; labelled ones appear with their first event.
        assertLines([
            "postern_relay_denied_total 0", "postern_decision_log_write_errors_total 0", "postern_sessions_total 0",
            "postern_sessions_current 0.0", "postern_build_info{version=\"9.9.9\"} 1.0",
        ], in: before)
        XCTAssertFalse(before.contains { $0.hasPrefix("postern_transactions_total") })
        XCTAssertFalse(before.contains { $0.contains("limits_store") }, "no Redis failure, no Redis metric")

        for decision in ["relayed", "relayed", "rejected"] { metrics.transaction(decision: decision) }
        metrics.connectionRefused(reason: "max_connections")
        metrics.connectionRefused(reason: "max_connections")
        metrics.upstreamReply(upstream: "127.0.0.1:10025", code: 250, nanoseconds: 3_000_000)
        metrics.upstreamReply(upstream: "127.0.0.1:10025", code: 354, nanoseconds: 30_000_000)
        metrics.upstreamReply(upstream: "127.0.0.1:10025", code: 250, nanoseconds: 70_000_000_000)
        metrics.upstreamFailure(upstream: "127.0.0.1:10025", kind: "timeout")
        metrics.tlsSession(version: "TLSv1.3")
        metrics.policyLoaded(version: "v1", result: "success")
        metrics.policyLoaded(version: "v2", result: "success")
        metrics.policyLoaded(version: nil, result: "failure")
        metrics.ruleHit(rule: "blocked", mode: "enforce", stage: "mail")
        metrics.ruleHit(rule: "blocked", mode: "enforce", stage: "mail")
        metrics.ruleHit(rule: "blocked", mode: "shadow", stage: "mail")
        metrics.filterDuration(filter: "sender", nanoseconds: 50_000)
        metrics.filterDuration(filter: "sender", nanoseconds: 5_000_000)
        metrics.filterDuration(filter: "limit", nanoseconds: 2_000_000_000)
        metrics.rateLimitRefusal(limit: "per_ip")
        metrics.authAttempt(mechanism: "PLAIN", result: "failure")
        metrics.authAttempt(mechanism: "PLAIN", result: "success")
        for _ in 0..<3 { metrics.relayDenied() }
        metrics.defence("pregreet")
        metrics.decisionLogWriteError()
        metrics.upstreamHealth([(name: "127.0.0.1:10025", alive: true, secondsSinceSuccess: 1), (name: "maildir:/var/mail", alive: true, secondsSinceSuccess: 2)])
        metrics.upstreamHealth([(name: "127.0.0.1:10025", alive: false, secondsSinceSuccess: 12.3456), (name: "maildir:/var/mail", alive: true, secondsSinceSuccess: 0.25)])
        metrics.limitsStoreFailure(reason: "timeout", mode: .failOpen)
        metrics.limitsStoreFailure(reason: "timeout", mode: .failOpen)
        metrics.limitsStoreFailure(reason: "unavailable", mode: .failClosed)
        metrics.sessionsTotal.increment()
        metrics.sessionsCurrent.increment()

        let lines = rendered(metrics)
        assertLines([
            "# HELP postern_transactions_total Transactions by decision.",
            "# TYPE postern_transactions_total counter",
            "postern_transactions_total{decision=\"relayed\"} 2",
            "postern_transactions_total{decision=\"rejected\"} 1",
            "# HELP postern_connections_refused_total Connections refused before any transaction.",
            "postern_connections_refused_total{reason=\"max_connections\"} 2",
            "# HELP postern_upstream_replies_total Upstream replies by upstream and reply class.",
            "postern_upstream_replies_total{upstream=\"127.0.0.1:10025\",class=\"2xx\"} 2",
            "postern_upstream_replies_total{upstream=\"127.0.0.1:10025\",class=\"3xx\"} 1",
            "# HELP postern_upstream_latency_seconds Time from sending a command or message to the upstream until its reply.",
            "# TYPE postern_upstream_latency_seconds histogram",
            "postern_upstream_latency_seconds_bucket{le=\"0.001\"} 0",
            "postern_upstream_latency_seconds_bucket{le=\"0.005\"} 1",
            "postern_upstream_latency_seconds_bucket{le=\"0.025\"} 1",
            "postern_upstream_latency_seconds_bucket{le=\"0.1\"} 2",
            "postern_upstream_latency_seconds_bucket{le=\"0.5\"} 2",
            "postern_upstream_latency_seconds_bucket{le=\"2.0\"} 2",
            "postern_upstream_latency_seconds_bucket{le=\"10.0\"} 2",
            "postern_upstream_latency_seconds_bucket{le=\"60.0\"} 2",
            "postern_upstream_latency_seconds_bucket{le=\"+Inf\"} 3",
            "postern_upstream_latency_seconds_count 3",
            "# HELP postern_upstream_failures_total Upstream connections, probes and exchanges that failed without a reply, by kind.",
            "postern_upstream_failures_total{upstream=\"127.0.0.1:10025\",kind=\"timeout\"} 1",
            "# HELP postern_tls_sessions_total STARTTLS handshakes completed, by TLS version.",
            "postern_tls_sessions_total{version=\"TLSv1.3\"} 1",
            "# HELP postern_policy_reloads_total Policy loads and reloads by result.",
            "postern_policy_reloads_total{result=\"success\"} 2",
            "postern_policy_reloads_total{result=\"failure\"} 1",
            "# HELP postern_policy_info The policy in force.",
            "# TYPE postern_policy_info gauge",
            "postern_policy_info{version=\"v1\"} 0.0",
            "postern_policy_info{version=\"v2\"} 1.0",
            "# HELP postern_rule_hits_total Rules that matched, by rule id, mode and stage.",
            "postern_rule_hits_total{rule=\"blocked\",mode=\"enforce\",stage=\"mail\"} 2",
            "postern_rule_hits_total{rule=\"blocked\",mode=\"shadow\",stage=\"mail\"} 1",
            "# HELP postern_filter_duration_seconds Time spent evaluating each filter, per stage evaluation.",
            "# TYPE postern_filter_duration_seconds histogram",
            "postern_filter_duration_seconds_bucket{filter=\"sender\",le=\"0.00001\"} 0",
            "postern_filter_duration_seconds_bucket{filter=\"sender\",le=\"0.0001\"} 1",
            "postern_filter_duration_seconds_bucket{filter=\"sender\",le=\"0.001\"} 1",
            "postern_filter_duration_seconds_bucket{filter=\"sender\",le=\"0.01\"} 2",
            "postern_filter_duration_seconds_bucket{filter=\"sender\",le=\"0.1\"} 2",
            "postern_filter_duration_seconds_bucket{filter=\"sender\",le=\"1.0\"} 2",
            "postern_filter_duration_seconds_bucket{filter=\"sender\",le=\"+Inf\"} 2",
            "postern_filter_duration_seconds_count{filter=\"sender\"} 2",
            "postern_filter_duration_seconds_bucket{filter=\"limit\",le=\"1.0\"} 0",
            "postern_filter_duration_seconds_bucket{filter=\"limit\",le=\"+Inf\"} 1",
            "# HELP postern_rate_limit_refusals_total Refusals by rate-limit rules, by limit.",
            "postern_rate_limit_refusals_total{limit=\"per_ip\"} 1",
            "# HELP postern_auth_attempts_total AUTH exchanges by mechanism and result.",
            "postern_auth_attempts_total{mechanism=\"PLAIN\",result=\"failure\"} 1",
            "postern_auth_attempts_total{mechanism=\"PLAIN\",result=\"success\"} 1",
            "# HELP postern_relay_denied_total Recipients refused by relay control.",
            "postern_relay_denied_total 3",
            "# HELP postern_defences_total Sessions ended by a connection defence, by defence.",
            "postern_defences_total{defence=\"pregreet\"} 1",
            "# HELP postern_decision_log_write_errors_total Decision records that could not be written.",
            "postern_decision_log_write_errors_total 1",
            "# HELP postern_upstream_up 1 when the upstream is believed reachable, 0 while it is marked down.",
            "postern_upstream_up{upstream=\"127.0.0.1:10025\"} 0.0",
            "postern_upstream_up{upstream=\"maildir:/var/mail\"} 1.0",
            "# HELP postern_upstream_seconds_since_success Seconds since the upstream last took a connection or answered (since the start when never).",
            "postern_upstream_seconds_since_success{upstream=\"127.0.0.1:10025\"} 12.346",
            "postern_upstream_seconds_since_success{upstream=\"maildir:/var/mail\"} 0.25",
            "# HELP postern_limits_store_errors_total Rate-limit checks the shared store could not answer, by reason.",
            "postern_limits_store_errors_total{reason=\"timeout\"} 2",
            "postern_limits_store_errors_total{reason=\"unavailable\"} 1",
            "# HELP postern_limits_store_fail_open_total Rate-limit checks let through because the store was unavailable (fail_open).",
            "postern_limits_store_fail_open_total 2",
            "# HELP postern_limits_store_fail_closed_total Rate-limit checks answered 451 because the store was unavailable (fail_closed).",
            "postern_limits_store_fail_closed_total 1",
            "# HELP postern_sessions_total SMTP sessions accepted since start.",
            "postern_sessions_total 1",
            "# HELP postern_sessions_current SMTP sessions open now.",
            "postern_sessions_current 1.0",
            "# HELP postern_build_info The running version.",
            "postern_build_info{version=\"9.9.9\"} 1.0",
        ], in: lines)
        // One series per label set: repeated events add up in one line, never duplicate it.
        XCTAssertEqual(lines.filter { $0.hasPrefix("postern_transactions_total{") }.count, 2)
        XCTAssertEqual(lines.filter { $0.hasPrefix("postern_upstream_up{") }.count, 2)
    }

    /// A labelled metric makes each handle once, on first use of its label values.
    func testLabelledHandlesAreMadeOnceAndReused() {
        let registry = PrometheusCollectorRegistry()
        let made = Mutex<[[String]]>([])
        let metric = LabelledMetric<Counter>(labels: ["upstream", "class"]) { labels in
            made.withLock { $0.append(labels.map { "\($0.0)=\($0.1)" }) }
            return registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "t", metricName: "c", unitName: "", helpText: "h"), labels: labels)
        }
        let first = metric("a", "2xx")
        XCTAssertTrue(metric("a", "2xx") === first)
        let other = metric("a", "4xx")
        XCTAssertFalse(other === first)
        for _ in 0..<100 { metric("a", "2xx").increment() }
        XCTAssertEqual(made.withLock { $0 }, [["upstream=a", "class=2xx"], ["upstream=a", "class=4xx"]])
        XCTAssertTrue(registry.emitToString().contains("t_c{upstream=\"a\",class=\"2xx\"} 100"), registry.emitToString())
    }
}
