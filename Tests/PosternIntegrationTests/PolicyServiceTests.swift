import Foundation
import XCTest

/// Policy servers as an operator moves them from Postfix's check_policy_service: the real
/// postfwd over TCP, the real policyd-spf spawned on pipes, and a service that is down.
final class PolicyServiceTests: IntegrationTestCase, @unchecked Sendable {
    /// postfwd 1.35 on a free port with `rules`. It serves the network only as a daemon
    /// (without -d it reads standard input), so it is stopped by the PID in its pidfile.
    private func startPostfwd(_ rules: String) throws -> Int {
        let postfwd = try requireTool("postfwd1")
        let rulesFile = workDir.appendingPathComponent("postfwd.cf")
        try rules.write(to: rulesFile, atomically: true, encoding: .utf8)
        let pidFile = workDir.appendingPathComponent("postfwd.pid")
        let port = try Net.freePort()
        let user = getuid() == 0 ? ["-u", "nobody", "-g", "nogroup"] : []
        // The pidfile's directory must be writable by the user postfwd becomes.
        chmod(workDir.path, 0o777)
        // system(3): postfwd's first process exits as soon as the daemon is forked, and waitpid
        // sees that at once (Foundation's Process, waiting on its own, left it a zombie here).
        let command = ([postfwd.path, "-d", "-f", rulesFile.path, "-i", "127.0.0.1", "-p", "\(port)", "--nodns",
                        "--pidfile", pidFile.path] + user).map { "'\($0)'" }.joined(separator: " ")
        let status = system(command + " >'\(workDir.path)/postfwd.out' 2>&1 </dev/null")
        XCTAssertEqual(status, 0, (try? String(contentsOf: workDir.appendingPathComponent("postfwd.out"), encoding: .utf8)) ?? "")
        onTeardown {
            if let text = try? String(contentsOf: pidFile, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(pid, SIGTERM)
            }
        }
        guard waitUntil(timeout: 15, { Net.canConnect(port: port) }) else { throw HarnessError.timeout("postfwd not listening on \(port)") }
        return port
    }

    func testPostfwdRejectsPrependsAndRateLimitsThroughPostern() throws {
        let port = try startPostfwd("""
            id=BLOCK; sender==blocked@spam.example; action=REJECT blocked by postfwd
            id=PREP; recipient==prepend@example.org; action=PREPEND X-Postfwd: seen
            id=RATE; sender==rate@example.net; action=rate(sender/2/3600/450 4.7.1 rate limit exceeded)
            """)
        let decisions = workDir.appendingPathComponent("decisions.log")
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                decision_log: \(decisions.path)
                policy_services:
                  - { name: postfwd, address: "inet:127.0.0.1:\(port)", timeout: 10s }
                """
        }
        // REJECT: the client gets postfwd's text with Postfix's 554 and 5.7.1.
        let blocked = try runSwaks(port: postern.port, ["--from", "blocked@spam.example", "--to", "r@example.org"])
        XCTAssertNotEqual(blocked.status, 0, blocked.description)
        XCTAssertTrue(blocked.swaksReplies.contains("554 5.7.1 blocked by postfwd"), blocked.description)
        let record = DecisionLog.waitForRecord(decisions) { ($0["mail_from"] as? String) == "blocked@spam.example" }
        XCTAssertEqual(record?["decision"] as? String, "rejected", "\(record ?? [:])")
        XCTAssertTrue((record?["reason"] as? String)?.contains("blocked by postfwd") == true, "\(record ?? [:])")

        // PREPEND: the header is in the message the upstream gets.
        let prepended = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "prepend@example.org"])
        XCTAssertEqual(prepended.status, 0, prepended.description)
        let message = try XCTUnwrap(sink.waitForMessages(1).first)
        XCTAssertTrue(message.text.contains("\r\nX-Postfwd: seen\r\n"), message.text)

        // rate(): two messages an hour from this sender, the third is deferred with postfwd's reply.
        for _ in 0..<2 {
            let result = try runSwaks(port: postern.port, ["--from", "rate@example.net", "--to", "r@example.org"])
            XCTAssertEqual(result.status, 0, result.description)
        }
        let third = try runSwaks(port: postern.port, ["--from", "rate@example.net", "--to", "r@example.org"])
        XCTAssertTrue(third.swaksReplies.contains("450 4.7.1 rate limit exceeded"), third.description)
        XCTAssertEqual(sink.waitForMessages(3).count, 3)
    }

    func testPolicydSPFSpawnedOnPipesPrependsItsHeaderOnce() throws {
        let policyd = try requireTool("policyd-spf")
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                policy_services:
                  - { name: spf, spawn: [\(policyd.path)], timeout: 30s }
                """
        }
        let result = try runSwaks(port: postern.port, ["--from", "a@client.example", "--to", "r1@example.org,r2@example.org"])
        XCTAssertEqual(result.status, 0, result.description)
        let message = try XCTUnwrap(sink.waitForMessages(1).first)
        // A loopback client is exempt; policyd-spf still says so, once per instance (transaction).
        let comments = message.text.components(separatedBy: "X-Comment: SPF check N/A for local connections").count - 1
        XCTAssertEqual(comments, 1, message.text)
        XCTAssertTrue(message.text.contains("envelope-from=a@client.example"), message.text)
    }

    /// policyd-spf evaluating real SPF records: it runs (spawned by Postern) in a private mount
    /// namespace whose resolver is a stub DNS serving the zone, and checks loopback clients too.
    func testPolicydSPFAgainstALocalZoneRejectsAFailAndStampsAPass() throws {
        let policyd = try requireTool("policyd-spf")
        let dns = try startStubDNS([("pass.test", "v=spf1 ip4:127.0.0.1 -all"), ("fail.test", "v=spf1 ip4:192.0.2.1 -all")],
                                   name: "spf-dns")
        let conf = workDir.appendingPathComponent("policyd-spf.conf")
        try """
            debugLevel = 1
            TestOnly = 1
            HELO_reject = Fail
            Mail_From_reject = Fail
            PermError_reject = False
            TempError_Defer = False
            skip_addresses = 192.0.2.255/32

            """.write(to: conf, atomically: true, encoding: .utf8)
        let (exe, args) = try dns.namespaced(policyd, [conf.path])
        let spawn = String(decoding: try JSONSerialization.data(withJSONObject: [exe.path] + args, options: [.withoutEscapingSlashes]),
                           as: UTF8.self)
        let decisions = workDir.appendingPathComponent("decisions.log")
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                decision_log: \(decisions.path)
                policy_services:
                  - { name: spf, spawn: \(spawn), timeout: 30s }
                """
        }
        let failed = try runSwaks(port: postern.port, ["--from", "a@fail.test", "--to", "r@example.org"])
        XCTAssertNotEqual(failed.status, 0, failed.description)
        XCTAssertTrue(failed.swaksReplies.contains { $0.hasPrefix("550 5.7.23 Message rejected due to: SPF fail") }, failed.description)
        let record = DecisionLog.waitForRecord(decisions) { ($0["decision"] as? String) == "rejected" }
        XCTAssertEqual(record?["rule"] as? String, "policy_service:spf", "\(record ?? [:])")

        let passed = try runSwaks(port: postern.port, ["--from", "a@pass.test", "--to", "r@example.org"])
        XCTAssertEqual(passed.status, 0, passed.description)
        let message = try XCTUnwrap(sink.waitForMessages(1).first)
        XCTAssertTrue(message.text.contains("Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=127.0.0.1"), message.text)
        XCTAssertTrue(message.text.contains("envelope-from=a@pass.test"), message.text)
        XCTAssertEqual(sink.messageCount, 1)
    }

    func testAServiceThatIsDownGetsItsDefaultAction() throws {
        let closed = try Net.freePort()
        let metricsPort = try Net.freePort()
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                metrics: 127.0.0.1:\(metricsPort)
                policy_services:
                  - { name: critical, address: "inet:127.0.0.1:\(closed)", timeout: 5s }
                  - { name: optional, address: "inet:127.0.0.1:\(closed)", timeout: 5s, default_action: DUNNO, stages: [mail] }
                """
        }
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<a@client.example>").code, 250, "the optional service says DUNNO by default")
        let rcpt = try client.command("RCPT TO:<r@example.org>", timeout: 20)
        XCTAssertEqual(rcpt.code, 451, rcpt.text)
        XCTAssertEqual(rcpt.enhancedCode, "4.3.5", rcpt.text)
        XCTAssertTrue(rcpt.text.contains("Server configuration problem"), rcpt.text)
        _ = try? client.command("QUIT")
        XCTAssertEqual(sink.messageCount, 0)
        let metrics = try Metrics.scrape(port: metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_check_results_total", ["check": "critical", "result": "error"]), 1, metrics)
        XCTAssertEqual(Metrics.value(metrics, "postern_check_results_total", ["check": "optional", "result": "error"]), 1, metrics)
        // One "failing" line per service and streak, not one per request.
        XCTAssertEqual(postern.log.components(separatedBy: "policy service failing").count - 1, 2, postern.log)
    }
}
