import Foundation
import XCTest

/// SIGHUP rereads the configuration file: what can change without a new listener applies to
/// new sessions at once, under load, with nothing dropped; a file with errors changes nothing;
/// a change that needs a new listener is reported and the rest still applies.
final class ConfigurationReloadTests: IntegrationTestCase, @unchecked Sendable {
    private func config(port: Int, metricsPort: Int, upstream: Int, domains: [String], messageSize: String, listenPort: Int? = nil,
                        commandTimeout: String = "5m", decisionLog: String = "decision_log: decisions.log", logLevel: String = "info",
                        trusted: String = "[]", extra: String = "") -> String {
        """
        listen: [{ address: 127.0.0.1:\(listenPort ?? port) }]
        metrics: 127.0.0.1:\(metricsPort)
        upstreams: [{ url: "smtp://127.0.0.1:\(upstream)", idle_connections: 4 }]
        relay_domains: [\(domains.joined(separator: ", "))]
        # The test's client is 127.0.0.1: not trusted, so relay control applies to it.
        trusted_networks: \(trusted)
        limits: { message_size: \(messageSize) }
        timeouts: { command: \(commandTimeout) }
        \(decisionLog.replacingOccurrences(of: "decisions", with: workDir.appendingPathComponent("decisions").path))
        log_level: \(logLevel)
        \(extra)

        """
    }

    func testAReloadUnderLoadAppliesToNewSessionsAndDropsNothing() throws {
        let first = try startRecordingSink(name: "first")
        let second = try startRecordingSink(name: "second")
        let port = try Net.freePort(), metricsPort = try Net.freePort()
        let (certificate, key) = try makeSelfSignedCertificate()
        let credentials = try copyCredentialsFixture()
        let auth = { (failures: Int) in
            "tls: { certificate: \(certificate.path), private_key: \(key.path) }\n"
                + "auth: { credentials: \(credentials.path), failure_delay: 100ms, lockout_failures: \(failures) }"
        }
        let firstText = config(port: port, metricsPort: metricsPort, upstream: first.port, domains: ["example.test"], messageSize: "25MiB",
                               extra: auth(5))
        let file = try writeConfig(firstText, name: "postern.yaml")
        let postern = try startPostern(arguments: ["serve", "--config", file.path], port: port, configURL: file)
        let refused = try runSwaks(port: port, ["--from", "a@client.test", "--to", "r@new.test"])
        XCTAssertTrue(refused.output.contains("554 5.7.1"), refused.description)

        // 20 sessions sending; the reload comes while they are at it.
        let python = try requirePython()
        let out = try makeDirectory("sent")
        let bulk = try launch("bulk", python, [Paths.fixture("send_bulk.py").path, "--port", "\(port)", "--count", "600",
                                               "--connections", "20", "--out", out.path, "--to", "r@example.test"])
        XCTAssertTrue(waitUntil(timeout: 60) { first.messageCount >= 50 }, first.transcript)
        // Every key a reload applies, changed at once: among them, the log moves to another file
        // and hashes subjects, the log level goes to debug, and one failed AUTH locks out.
        try config(port: port, metricsPort: metricsPort, upstream: second.port, domains: ["example.test", "new.test"], messageSize: "1MB",
                   commandTimeout: "4m", decisionLog: "decision_log: { path: decisions-new.log, subject: hashed }", logLevel: "debug",
                   trusted: "[192.0.2.0/24]", extra: auth(1) + """

                   proxy_trusted_networks: [192.0.2.0/24]
                   upstream_retry_after: 30s
                   upstream_probe: { interval: 2s, timeout: 3s }
                   bare_line_endings: normalise
                   forbid_improper_pipelining: false
                   """).write(to: file, atomically: true, encoding: .utf8)
        XCTAssertFalse(postern.process.output.contains("level=debug"))
        postern.process.signal(SIGHUP)
        XCTAssertTrue(waitUntil(timeout: 10) { postern.process.output.contains("msg=\"configuration reloaded\"") }, postern.process.tail())
        XCTAssertTrue(postern.process.output.contains("changed=\"proxy_trusted_networks, relay_domains, trusted_networks, auth, upstreams, "
                                                      + "upstream_retry_after, upstream_probe, limits, timeouts, bare_line_endings, "
                                                      + "forbid_improper_pipelining, log_level, decision_log\""), postern.process.tail())
        XCTAssertFalse(postern.process.output.contains("need a restart"), postern.process.tail())

        // New sessions see it: the new domain is relayed, to the new upstream; the new size limit holds.
        let accepted = try runSwaks(port: port, ["--from", "a@client.test", "--to", "r@new.test", "--header", "Subject: after the reload"])
        XCTAssertEqual(accepted.status, 0, accepted.description)
        XCTAssertTrue(waitUntil(timeout: 10) { second.messages().contains { $0.rcpts == ["r@new.test"] } }, second.transcript)
        let large = try runSwaks(port: port, ["--from", "a@client.test", "--to", "r@new.test", "--body", String(repeating: "x", count: 900) + "\n",
                                              "--add-header", "X-Pad: " + String(repeating: "y", count: 900),
                                              "--attach", "@" + (try writeConfig(String(repeating: "z\n", count: 600_000), name: "big.txt")).path])
        XCTAssertTrue(large.output.contains("552"), "a message over the new 1 MB limit: \(large.output.suffix(400))")
        XCTAssertTrue(postern.process.output.contains("level=debug"), "debug lines after the reload: \(postern.process.tail())")
        let wrong = try runSwaks(port: port, ["--from", "a@client.test", "--to", "r@new.test", "--tls", "--auth", "PLAIN",
                                              "--auth-user", "alice", "--auth-password", "wrong", "--quit-after", "AUTH"])
        XCTAssertTrue(wrong.output.contains("535"), wrong.output)
        let locked = try runSwaks(port: port, ["--from", "a@client.test", "--to", "r@new.test", "--tls", "--auth", "PLAIN",
                                               "--auth-user", "alice", "--auth-password", "alice-Secret-7q", "--quit-after", "AUTH"])
        XCTAssertTrue(locked.output.contains("454 4.7.0"), "one failure locks out after the reload: \(locked.output.suffix(600))")

        // Nothing dropped: every message of the 20 sessions got 250 and reached an upstream (the
        // sessions already open keep the upstream they started with).
        XCTAssertEqual(bulk.waitForExit(timeout: 120), 0, bulk.output)
        let summary = (try? JSONSerialization.jsonObject(with: Data(bulk.stdout.utf8)) as? [String: Any]) ?? [:]
        XCTAssertEqual(summary["sent"] as? Int, 600, bulk.output)
        let relayed = { (sink: RecordingSink) in sink.messages().filter { $0.rcpts == ["r@example.test"] }.count }
        XCTAssertTrue(waitUntil(timeout: 20) { relayed(first) + relayed(second) == 600 }, "\(relayed(first)) + \(relayed(second))")

        let metrics = try Metrics.scrape(port: metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_config_reloads_total", ["result": "success"]), 1, metrics)

        // The version is the file's SHA-256 prefix: in /metrics, and in each record as the
        // session that wrote it ran under (the 20 sessions, the old one; swaks after, the new).
        let versions = try [firstText, try String(contentsOf: file, encoding: .utf8)].map {
            try XCTUnwrap(Command.run(try requireTool("sha256sum"), [], stdin: Data($0.utf8), timeout: 10).stdout.split(separator: " ").first)
                .prefix(16)
        }.map(String.init)
        XCTAssertEqual(Metrics.value(metrics, "postern_config_info", ["version": versions[1]]), 1, metrics)
        XCTAssertEqual(Metrics.value(metrics, "postern_config_info", ["version": versions[0]]), 0, metrics)
        let read = { (name: String) in
            ((try? String(contentsOf: self.workDir.appendingPathComponent(name), encoding: .utf8)) ?? "")
                .split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
        let before = read("decisions.log"), after = read("decisions-new.log")
        let records = before + after
        XCTAssertEqual(records.count, 600 + 3, "every transaction recorded once, in one of the two files")
        XCTAssertEqual(records.first?["config_version"] as? String, versions[0])
        // After the move, in the new file, the subject hashed; before the reload, as it was.
        let subjects = after.compactMap { $0["subject"] as? String }
        XCTAssertFalse(subjects.isEmpty)
        XCTAssertTrue(subjects.allSatisfy { $0.hasPrefix("h:") }, "\(subjects.prefix(5))")
        // (Records made after the reload but before the writer moved are hashed in the old file.)
        XCTAssertTrue(before.compactMap { $0["subject"] as? String }.contains { $0.hasPrefix("bulk message") })
        let afterReload = records.filter { ($0["rcpts"] as? [[String: Any]])?.first?["address"] as? String == "r@new.test" }
        XCTAssertEqual(afterReload.compactMap { $0["config_version"] as? String }, [versions[0], versions[1], versions[1]],
                       "refused before the reload; relayed and over the size after it")
    }

    func testABrokenFileChangesNothingAndAListenerChangeIsReportedAsNeedingARestart() throws {
        let sink = try startRecordingSink()
        let port = try Net.freePort(), metricsPort = try Net.freePort()
        let good = config(port: port, metricsPort: metricsPort, upstream: sink.port, domains: ["example.test"], messageSize: "25MiB")
        let file = try writeConfig(good, name: "postern.yaml")
        let postern = try startPostern(arguments: ["serve", "--config", file.path], port: port, configURL: file)

        try (good + "relay_domains: [oops\n").write(to: file, atomically: true, encoding: .utf8)
        postern.process.signal(SIGHUP)
        XCTAssertTrue(waitUntil(timeout: 10) { postern.process.output.contains("configuration not reloaded; the one in force stays") },
                      postern.process.tail())
        XCTAssertTrue(postern.process.output.contains("postern.yaml:"), "the error names the file and line: \(postern.process.tail())")
        XCTAssertEqual(try runSwaks(port: port, ["--from", "a@client.test", "--to", "r@example.test"]).status, 0)

        // Another listener address and a new domain: the domain applies, the address waits for a restart.
        let other = try Net.freePort()
        try config(port: port, metricsPort: metricsPort, upstream: sink.port, domains: ["example.test", "new.test"], messageSize: "25MiB",
                   listenPort: other).write(to: file, atomically: true, encoding: .utf8)
        postern.process.signal(SIGHUP)
        XCTAssertTrue(waitUntil(timeout: 10) { postern.process.output.contains("configuration changes that need a restart were not applied") },
                      postern.process.tail())
        XCTAssertTrue(postern.process.output.contains("keys=listen"), postern.process.tail())
        XCTAssertTrue(postern.process.output.contains("changed=relay_domains"), postern.process.tail())
        XCTAssertEqual(try runSwaks(port: port, ["--from", "a@client.test", "--to", "r@new.test"]).status, 0, "still on the old port, with the new domain")
        XCTAssertFalse(Net.canConnect(port: other))

        // Edited without a signal: the file watch reloads it (checked every 2 s, once stable).
        try config(port: port, metricsPort: metricsPort, upstream: sink.port, domains: ["example.test", "new.test", "third.test"],
                   messageSize: "25MiB", listenPort: other).write(to: file, atomically: true, encoding: .utf8)
        XCTAssertTrue(waitUntil(timeout: 20) { postern.process.output.contains("configuration file changed: reloading it") }, postern.process.tail())
        XCTAssertTrue(waitUntil(timeout: 10) { (try? runSwaks(port: port, ["--from", "a@client.test", "--to", "r@third.test"]).status) == 0 },
                      postern.process.tail())

        // The same file again: unchanged but for what needs a restart.
        postern.process.signal(SIGHUP)
        let metrics = try Metrics.scrape(port: metricsPort)
        XCTAssertTrue(waitUntil(timeout: 10) {
            (Metrics.value((try? Metrics.scrape(port: metricsPort)) ?? "", "postern_config_reloads_total", ["result": "restart_needed"]) ?? 0) >= 1
        }, metrics)
        let final = try Metrics.scrape(port: metricsPort)
        XCTAssertEqual(Metrics.value(final, "postern_config_reloads_total", ["result": "failure"]), 1, final)
        XCTAssertEqual(Metrics.value(final, "postern_config_reloads_total", ["result": "success"]), 2, final)
    }

    func testCheckShowsWhatAReloadOfTheRunningPosternWouldChange() throws {
        let sink = try startRecordingSink()
        let port = try Net.freePort(), metricsPort = try Net.freePort()
        let good = config(port: port, metricsPort: metricsPort, upstream: sink.port, domains: ["example.test"], messageSize: "25MiB")
        let file = try writeConfig(good, name: "postern.yaml")
        let check = { try self.runPostern(["check", "--config", file.path]) }
        let alone = try check()
        XCTAssertEqual(alone.status, 0, alone.description)
        XCTAssertTrue(alone.stdout.contains("no running Postern answers at 127.0.0.1:\(metricsPort)"), alone.description)

        let postern = try startPostern(arguments: ["serve", "--config", file.path], port: port, configURL: file)
        let same = try check()
        XCTAssertEqual(same.status, 0, same.description)
        XCTAssertTrue(same.stdout.contains("runs this configuration already"), same.description)

        // Edited (the file watch would reload it within seconds; check runs first): a new domain,
        // the log level, and a listener moved.
        let edited = config(port: port, metricsPort: metricsPort, upstream: sink.port, domains: ["example.test", "new.test"], messageSize: "25MiB",
                            listenPort: try Net.freePort(), logLevel: "warning")
        try edited.write(to: file, atomically: true, encoding: .utf8)
        let changed = try check()
        XCTAssertEqual(changed.status, 0, changed.description)
        XCTAssertTrue(changed.stdout.contains("would apply relay_domains, log_level"), changed.description)
        XCTAssertTrue(changed.stdout.contains("these changes need a restart: listen"), changed.description)

        // Another file with the same status endpoint is not compared.
        let other = try writeConfig(edited, name: "other.yaml")
        let elsewhere = try runPostern(["check", "--config", other.path])
        XCTAssertTrue(elsewhere.stdout.contains("reads \(file.resolvingSymlinksInPath().path), not this file: not compared"), elsewhere.description)

        // What the endpoint says of a file with errors: the error, with file and line.
        try (good + "relay_domains: [oops\n").write(to: file, atomically: true, encoding: .utf8)
        let answer = try Metrics.get(port: metricsPort, path: "/api/configuration")
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any], answer)
        XCTAssertTrue((object["error"] as? String ?? "").contains("postern.yaml:"), answer)
        XCTAssertTrue(postern.process.isRunning)
    }
}
