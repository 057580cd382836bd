import Foundation
import XCTest

/// `Deploy/grafana/postern.json`: every metric and label its queries use is on `/metrics` of a
/// running Postern (with DNS lists, a policy server, two upstreams and traffic, so that the
/// labelled series exist).
final class GrafanaDashboardTests: IntegrationTestCase, @unchecked Sendable {
    /// Every query of the board: panel targets and annotations.
    private func queries() throws -> [String] {
        let url = Paths.packageRoot.appendingPathComponent("Deploy/grafana/postern.json")
        let board = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
        var found: [String] = []
        func walk(_ value: Any) {
            if let object = value as? [String: Any] {
                if let expr = object["expr"] as? String { found.append(expr) }
                object.values.forEach(walk)
            } else if let array = value as? [Any] {
                array.forEach(walk)
            }
        }
        walk(board)
        return found
    }

    /// The metrics an expression names, and the labels it groups or selects by (Prometheus's
    /// own `instance` and `job` aside: they are added by the scrape).
    static func references(_ expr: String) -> (metrics: Set<String>, labels: Set<String>) {
        func matches(_ pattern: String, group: Int = 0) -> [String] {
            let regex = try! NSRegularExpression(pattern: pattern)
            return regex.matches(in: expr, range: NSRange(expr.startIndex..., in: expr)).compactMap {
                Range($0.range(at: group), in: expr).map { String(expr[$0]) }
            }
        }
        let metrics = Set(matches("postern_[a-z_]+"))
        var labels = Set<String>()
        for list in matches("\\bby \\(([a-z_, ]+)\\)", group: 1) {
            labels.formUnion(list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        }
        labels.formUnion(matches("([a-z_]+)\\s*=~?\\s*\"", group: 1))
        return (metrics, labels.subtracting(["instance", "job"]))
    }

    /// Each sample name on the page with the label names it carries.
    static func series(_ page: String) -> [String: Set<String>] {
        var series: [String: Set<String>] = [:]
        for line in page.split(separator: "\n") where line.hasPrefix("postern_") {
            let name = String(line.prefix { $0 != "{" && $0 != " " })
            var labels = series[name, default: []]
            if let open = line.firstIndex(of: "{"), let close = line.firstIndex(of: "}") {
                for pair in line[line.index(after: open)..<close].split(separator: ",") {
                    labels.insert(String(pair.prefix { $0 != "=" }))
                }
            }
            series[name] = labels
        }
        return series
    }

    /// What a query asks for that the page does not have.
    static func missing(_ expr: String, in series: [String: Set<String>]) -> [String] {
        let (metrics, labels) = references(expr)
        var problems: [String] = []
        for metric in metrics.sorted() {
            guard let have = series[metric] else {
                problems.append("\(metric) is not on /metrics")
                continue
            }
            // `le` is on histogram buckets only; each other label must be on the metric.
            let wanted = metric.hasSuffix("_bucket") ? labels : labels.subtracting(["le"])
            for label in wanted.sorted() where !have.contains(label) {
                problems.append("\(metric) has no label \(label)")
            }
        }
        return problems
    }

    func testEveryMetricAndLabelTheDashboardQueriesIsOnMetrics() throws {
        let queries = try queries()
        XCTAssertGreaterThanOrEqual(queries.count, 20, "the board's queries")

        let dnsPort = try startLoopbackDNS(["1.0.0.127.bl.test\tA\t127.0.0.2"])
        let sink = try startRecordingSink()
        let closed = try Net.freePort()
        let policy = try writeConfig("""
            limits:
              per_sender: { key: sender, count: messages, rate: 1/1h, burst: 0 }
            dnsbl:
              - { name: bl, zone: bl.test }
            rules:
              - { id: listed, stage: connect, if: { dnsbl: bl }, then: reject, mode: shadow }
              - { id: no-bad, stage: mail, if: { sender: "@bad.example" }, then: reject }
              - { id: throttle, stage: rcpt, if: { limit: per_sender }, then: tempfail }

            """, name: "policy.yaml")
        // The first upstream refuses connections (failures, up, seconds since success); the
        // policy server is down too (its answers are errors, with their kind and time).
        let server = try startTrustServer(
            listeners: [try .plain()], upstreams: ["smtp://127.0.0.1:\(closed)", "smtp://127.0.0.1:\(sink.port)"],
            extra: """
                policy: \(policy.path)
                dns: { servers: ["127.0.0.1:\(dnsPort)"], verify_client_names: false, timeout: 2s, spf: false }
                policy_services:
                  - { name: down, address: "inet:127.0.0.1:\(closed)", stages: [rcpt], timeout: 2s, default_action: DUNNO }
                """)
        for (sender, expected) in [("a@good.example", "250 2.0.0"), ("a@good.example", "450"), ("b@bad.example", "550")] {
            let result = try runSwaks(port: server.port, ["--from", sender, "--to", "r@example.org"])
            XCTAssertTrue((result.stdout + result.stderr).contains(expected), "\(sender): \(result.description)")
        }
        var page = ""
        var problems: [String] = []
        // Decision records and metrics are counted a moment after the replies.
        waitUntil(timeout: 10) {
            page = (try? Metrics.scrape(port: server.metricsPort)) ?? ""
            let series = Self.series(page)
            problems = queries.flatMap { expr in Self.missing(expr, in: series).map { "\(expr): \($0)" } }
            return problems.isEmpty
        }
        XCTAssertEqual(problems, [], page)

        // The check itself finds a metric or a label that is not there.
        let series = Self.series(page)
        XCTAssertEqual(Self.missing("sum(rate(postern_no_such_total[5m]))", in: series), ["postern_no_such_total is not on /metrics"])
        XCTAssertEqual(Self.missing("sum by (colour) (rate(postern_transactions_total[5m]))", in: series),
                       ["postern_transactions_total has no label colour"])
    }
}
