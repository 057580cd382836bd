import Foundation
import XCTest

/// Upstream health as an operator behind a load balancer sees it: readiness that recovers
/// by itself, one log line per outage edge, failures counted by kind.
final class UpstreamHealthTests: IntegrationTestCase, @unchecked Sendable {
    /// `GET path` on the status endpoint: the status code and the body.
    private func get(_ path: String, port: Int) throws -> (status: Int, body: String) {
        let client = try RawSMTPClient(port: port, timeout: 5)
        defer { client.close() }
        try client.send("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        var lines: [String] = []
        while let line = try client.readLine() { lines.append(line) }
        let status = lines.first?.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return (status, lines.last ?? "")
    }

    func testReadinessRecoversWithinTwoSecondsOfTheUpstreamsReturnWithoutAnyMail() throws {
        let upstreamPort = try Net.freePort()  // nothing listens there yet
        let metricsPort = try Net.freePort()
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(upstreamPort)"])
        config.extra = "metrics: 127.0.0.1:\(metricsPort)\n"  // the default probe: every 1s ± 20%
        let postern = try startPostern(config)
        XCTAssertEqual(try get("/readyz", port: metricsPort).status, 200, "up until something fails")

        // Twenty refused transactions during the outage: 451 each, one "down" line for all.
        for _ in 0..<20 {
            let client = try RawSMTPClient.greeted(port: postern.port)
            let mail = try client.command("MAIL FROM:<sender@client.test>", timeout: 20)
            XCTAssertEqual(mail.code, 451, mail.text)
            _ = try? client.command("QUIT")
        }
        let down = try get("/readyz", port: metricsPort)
        XCTAssertEqual(down.status, 503, down.body)
        XCTAssertEqual(postern.log.components(separatedBy: "msg=\"upstream down\"").count - 1, 1, postern.log)
        XCTAssertFalse(postern.log.contains("marked dead"), postern.log)

        // The upstream comes back; no client sends anything. The probe notices.
        let sink = try startRecordingSink(["--port", "\(upstreamPort)"])
        XCTAssertEqual(sink.port, upstreamPort)
        let back = Date()
        let ready = waitUntil(timeout: 5, interval: 0.05) { (try? self.get("/readyz", port: metricsPort).status) == 200 }
        let recovery = Date().timeIntervalSince(back)
        XCTAssertTrue(ready, "/readyz did not recover\n\(postern.log)")
        XCTAssertLessThan(recovery, 2.0, "/readyz recovered \(recovery) s after the upstream's return")

        let metrics = try Metrics.scrape(port: metricsPort)
        let upstream = "127.0.0.1:\(upstreamPort)"
        XCTAssertEqual(Metrics.value(metrics, "postern_upstream_up", ["upstream": upstream]), 1, metrics)
        XCTAssertGreaterThanOrEqual(Metrics.value(metrics, "postern_upstream_failures_total", ["upstream": upstream, "kind": "refused"]) ?? 0, 20, metrics)
        let since = try XCTUnwrap(Metrics.value(metrics, "postern_upstream_seconds_since_success", ["upstream": upstream]), metrics)
        XCTAssertLessThan(since, 3, metrics)
        let upLines = postern.log.split(separator: "\n").filter { $0.contains("msg=\"upstream up again\"") }
        XCTAssertEqual(upLines.count, 1, postern.log)
        XCTAssertTrue(upLines.first?.contains("outage_s=") == true, "\(upLines)")
        // The probe said EHLO and QUIT, and sent no mail.
        XCTAssertEqual(sink.messageCount, 0)
        // And mail flows again.
        let result = try runSwaks(port: postern.port, ["--from", "s@client.test", "--to", "r@example.test"])
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)
    }

    func testEveryFailedConnectIsCountedByKind() throws {
        let refusing = try startRecordingSink(["--greeting-code", "421"])
        let deadPort = try Net.freePort()
        let metricsPort = try Net.freePort()
        var config = PosternConfig(port: try Net.freePort(), upstreams: [
            "smtp://127.0.0.1:\(deadPort)", "smtp://127.0.0.1:\(refusing.port)",
        ])
        config.extra = "metrics: 127.0.0.1:\(metricsPort)\nupstream_probe: off\n"
        let postern = try startPostern(config)
        let client = try RawSMTPClient.greeted(port: postern.port)
        let mail = try client.command("MAIL FROM:<sender@client.test>", timeout: 20)
        XCTAssertEqual(mail.code, 451, mail.text)
        let metrics = try Metrics.scrape(port: metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_upstream_failures_total", ["upstream": "127.0.0.1:\(deadPort)", "kind": "refused"]), 1, metrics)
        XCTAssertEqual(Metrics.value(metrics, "postern_upstream_failures_total", ["upstream": "127.0.0.1:\(refusing.port)", "kind": "greeting_refused"]), 1, metrics)
        let down = try get("/readyz", port: metricsPort)
        XCTAssertEqual(down.status, 503, down.body)
        XCTAssertTrue(postern.log.contains("kind=greeting_refused"), postern.log)
    }

    func testAConnectionLostMidTransactionIsCountedAsLostWithoutMarkingTheUpstreamDown() throws {
        let metricsPort = try Net.freePort()
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--drop-after-rcpt"]) {
            $0.extra = "metrics: 127.0.0.1:\(metricsPort)\n"
        }
        let result = try runSwaks(port: postern.port, ["--from", "s@client.test", "--to", "r@example.test"])
        XCTAssertNotEqual(result.status, 0, result.description)
        let metrics = try Metrics.scrape(port: metricsPort)
        let upstream = "127.0.0.1:\(sink.port)"
        XCTAssertEqual(Metrics.value(metrics, "postern_upstream_failures_total", ["upstream": upstream, "kind": "lost"]), 1, metrics)
        XCTAssertEqual(Metrics.value(metrics, "postern_upstream_up", ["upstream": upstream]), 1, metrics)
        XCTAssertFalse(postern.log.contains("msg=\"upstream down\""), postern.log)
    }
}
