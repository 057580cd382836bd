import Foundation
import XCTest

/// The files under Deploy/ are checked by the tools that will read them in production:
/// systemd-analyze, systemd-sysusers/-tmpfiles, `postern check`, `haproxy -c`, and a real
/// Postfix configured with the Deploy/postfix/ snippets.
final class DeployFilesTests: IntegrationTestCase, @unchecked Sendable {
    static let deploy = Paths.packageRoot.appendingPathComponent("Deploy")

    func deployFile(_ relative: String) throws -> String {
        try String(contentsOf: Self.deploy.appendingPathComponent(relative), encoding: .utf8)
    }

    // MARK: - systemd

    /// `systemd-analyze verify` prints these when it runs without systemd as PID 1 (a
    /// container, a chroot); they say nothing about the unit. Anything else it prints fails.
    static let environmentOnlyVerifyLines = [
        "System has not been booted with systemd as init system (PID 1).",
        "Failed to connect to bus:",
    ]

    /// The unit with its binary path pointed at the postern under test (the shipped
    /// /usr/local/bin/postern does not exist here, and verify checks that ExecStart exists).
    func unitCopy(_ transform: (String) -> String = { $0 }) throws -> URL {
        let unit = try deployFile("systemd/postern.service")
            .replacingOccurrences(of: "/usr/local/bin/postern", with: try posternBinary().path)
        let dir = try makeDirectory("unit")
        let url = dir.appendingPathComponent("postern.service")
        try transform(unit).write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    func verify(_ unit: URL) throws -> (status: Int32, complaints: [String]) {
        let analyze = try requireTool("systemd-analyze")
        let result = try Command.run(analyze, ["verify", unit.path], timeout: 60)
        XCTAssertFalse(result.timedOut, result.description)
        let lines = result.output.split(separator: "\n").map(String.init).filter { line in
            !line.trimmingCharacters(in: .whitespaces).isEmpty
                && !Self.environmentOnlyVerifyLines.contains { line.contains($0) }
        }
        return (result.status, lines)
    }

    func testSystemdUnitPassesSystemdAnalyzeVerify() throws {
        let (status, complaints) = try verify(try unitCopy())
        XCTAssertEqual(status, 0, complaints.joined(separator: "\n"))
        XCTAssertEqual(complaints, [], "systemd-analyze verify complained about the unit")
    }

    /// The socket unit, verified beside its service; its address is the example configuration's
    /// listener, so Postern takes the socket instead of binding.
    func testSystemdSocketUnitPassesVerifyAndMatchesTheExampleListener() throws {
        let service = try unitCopy()
        let socket = service.deletingLastPathComponent().appendingPathComponent("postern.socket")
        let text = try deployFile("systemd/postern.socket")
        try text.write(to: socket, atomically: true, encoding: .utf8)
        let (status, complaints) = try verify(socket)
        XCTAssertEqual(status, 0, complaints.joined(separator: "\n"))
        XCTAssertEqual(complaints, [], "systemd-analyze verify complained about the socket unit")
        let listens = text.split(separator: "\n").filter { $0.hasPrefix("ListenStream=") }.map { String($0.dropFirst("ListenStream=".count)) }
        XCTAssertEqual(listens, ["0.0.0.0:25"])
        XCTAssertTrue(try deployFile("postern.yaml").contains("  - address: 0.0.0.0:25"))
        XCTAssertTrue(text.contains("Service=postern.service"))
    }

    /// The check above can fail: an unknown directive and a bad value are reported.
    func testSystemdAnalyzeVerifyCatchesAMistakeInTheUnit() throws {
        let broken = try unitCopy {
            $0.replacingOccurrences(of: "ProtectSystem=strict", with: "ProtectSystem=very-strict\nProtectSystm=strict")
        }
        let (_, complaints) = try verify(broken)
        XCTAssertTrue(complaints.contains { $0.contains("ProtectSystm") }, complaints.joined(separator: "\n"))
        XCTAssertTrue(complaints.contains { $0.contains("very-strict") }, complaints.joined(separator: "\n"))
    }

    func testSystemdUnitHasTheHardeningAndLifecycleTheIssueAsksFor() throws {
        let unit = try deployFile("systemd/postern.service")
        let directives = unit.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.hasPrefix("#") && $0.contains("=") }
        func value(_ key: String) -> String? {
            directives.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }
        XCTAssertEqual(value("Type"), "notify")
        XCTAssertEqual(value("NotifyAccess"), "main")
        XCTAssertEqual(value("User"), "postern")
        XCTAssertEqual(value("AmbientCapabilities"), "CAP_NET_BIND_SERVICE")
        XCTAssertEqual(value("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE")
        XCTAssertEqual(value("ProtectSystem"), "strict")
        XCTAssertEqual(value("NoNewPrivileges"), "yes")
        XCTAssertEqual(value("Restart"), "on-failure")
        XCTAssertEqual(value("ExecReload"), "/bin/kill -HUP $MAINPID")
        XCTAssertNil(value("MemoryDenyWriteExecute"), "PCRE2's JIT needs writable executable memory")
        XCTAssertEqual(value("ExecStart"), "/usr/local/bin/postern serve --config /etc/postern/postern.yaml")

        // systemd must wait longer than Postern's drain before SIGKILL.
        let stop = try XCTUnwrap(value("TimeoutStopSec"))
        let stopSeconds = try XCTUnwrap(Int(stop.replacingOccurrences(of: "s", with: "")))
        let grace = try XCTUnwrap(try deployFile("postern.yaml").split(separator: "\n")
            .first { $0.hasPrefix("shutdown_grace_period:") }?.split(separator: " ").dropFirst().first)
        XCTAssertGreaterThan(stopSeconds, try XCTUnwrap(Int(grace.replacingOccurrences(of: "s", with: ""))))

        // The writable paths hold the example configuration's spool, and tmpfiles creates each.
        let writable = try XCTUnwrap(value("ReadWritePaths")).split(separator: " ").map(String.init)
        XCTAssertEqual(writable, ["/var/log/postern", "/var/spool/postern", "/var/lib/postern"])
        XCTAssertTrue(try deployFile("postern.yaml").contains("directory: /var/spool/postern"))
        let tmpfiles = try deployFile("systemd/postern.tmpfiles")
        for path in writable {
            XCTAssertTrue(tmpfiles.contains("d      \(path) "), "postern.tmpfiles does not create \(path)")
        }
    }

    /// sysusers creates the user, tmpfiles the directories it owns (in a scratch root).
    func testSysusersAndTmpfilesCreateTheUserAndItsDirectories() throws {
        let sysusers = try requireTool("systemd-sysusers")
        let tmpfiles = try requireTool("systemd-tmpfiles")
        let root = try makeDirectory("root")
        try FileManager.default.createDirectory(at: root.appendingPathComponent("etc"), withIntermediateDirectories: true)
        let users = try Command.run(sysusers, ["--root=\(root.path)", Self.deploy.appendingPathComponent("systemd/postern.sysusers").path])
        XCTAssertEqual(users.status, 0, users.description)
        let passwd = try String(contentsOf: root.appendingPathComponent("etc/passwd"), encoding: .utf8)
        let entry = try XCTUnwrap(passwd.split(separator: "\n").first { $0.hasPrefix("postern:") }, passwd)
        let fields = entry.split(separator: ":", omittingEmptySubsequences: false)
        XCTAssertEqual(fields.last, "/usr/sbin/nologin")
        let uid = try XCTUnwrap(Int(fields[2]))
        XCTAssertLessThan(uid, 1000, "a system user")

        let dirs = try Command.run(tmpfiles, ["--root=\(root.path)", "--create", Self.deploy.appendingPathComponent("systemd/postern.tmpfiles").path])
        XCTAssertEqual(dirs.status, 0, dirs.description)
        for path in ["var/log/postern", "var/spool/postern", "var/lib/postern", "var/lib/postern/quarantine"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: root.appendingPathComponent(path).path)
            XCTAssertEqual((attributes[.ownerAccountID] as? NSNumber)?.intValue, uid, path)
            XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o750, path)
        }
    }

    // MARK: - Postern configurations

    /// The shipped configurations pass `postern check`; only files that must exist are
    /// pointed into the work directory (the policies, copied from Policies/).
    func testShippedConfigurationsPassPosternCheck() throws {
        let policies = workDir.appendingPathComponent("policies")
        try FileManager.default.copyItem(at: Paths.packageRoot.appendingPathComponent("Policies"), to: policies)
        let cases: [(file: String, rewrites: [(String, String)], hasPolicy: Bool)] = [
            ("postern.yaml", [], false),
            // policy: policies/default.yaml is relative to the configuration file.
            ("docker/postern.yaml", [], true),
            // The optional Redis store, uncommented, is valid too (check does not connect).
            ("docker/postern.yaml", [("\n# limits_store: redis://", "\nlimits_store: redis://")], true),
            ("postfix/before-queue-filter/postern.yaml",
             [("/etc/postern/policy.yaml", policies.appendingPathComponent("default.yaml").path)], true),
        ]
        for (index, (file, rewrites, hasPolicy)) in cases.enumerated() {
            var text = try deployFile(file)
            for (from, to) in rewrites {
                XCTAssertTrue(text.contains(from), "\(file) no longer mentions \(from)")
                text = text.replacingOccurrences(of: from, with: to)
            }
            let copy = try writeConfig(text, name: "\(index)-" + file.replacingOccurrences(of: "/", with: "-"))
            let result = try runPostern(["check", "--config", copy.path])
            XCTAssertEqual(result.status, 0, "\(file):\n\(result)")
            XCTAssertTrue(result.stdout.contains("configuration OK"), result.description)
            if hasPolicy { XCTAssertTrue(result.stdout.contains("policy OK"), result.description) }
        }
    }

    /// The Dockerfile copies what exists and its health check is a working HTTP probe of /healthz.
    func testDockerfileHealthcheckProbesHealthz() throws {
        let dockerfile = try deployFile("docker/Dockerfile")
        XCTAssertTrue(dockerfile.contains("FROM swift:"), "builds with the official Swift image")
        XCTAssertTrue(dockerfile.contains("FROM debian:bookworm-slim"))
        XCTAssertTrue(dockerfile.contains("\nUSER postern\n"))
        for source in ["Deploy/docker/postern.yaml", "Policies/"] {
            XCTAssertTrue(dockerfile.contains("COPY \(source) "))
            XCTAssertTrue(FileManager.default.fileExists(atPath: Paths.packageRoot.appendingPathComponent(source).path), source)
        }
        let compose = try deployFile("docker/compose.yaml")
        for service in ["  postern:", "  postfix:", "  redis:"] { XCTAssertTrue(compose.contains("\n\(service)\n"), service) }

        // The HEALTHCHECK's exec form, run against a live Postern (then against nothing).
        let joined = dockerfile.replacingOccurrences(of: "\\\n", with: " ")
        let line = try XCTUnwrap(joined.split(separator: "\n").first { $0.hasPrefix("HEALTHCHECK ") })
        let json = try XCTUnwrap(line.range(of: "CMD [").map { String(line[line.index(before: $0.upperBound)...]) })
        let command = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String])
        XCTAssertEqual(command.first, "bash")
        let bash = try requireTool("bash")
        let metricsPort = try Net.freePort()
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["maildir:\(workDir.path)/maildir"])
        config.extra = "metrics: 127.0.0.1:\(metricsPort)"
        let postern = try startPostern(config)
        let probe = command.dropFirst().map { $0.replacingOccurrences(of: "/9125", with: "/\(metricsPort)") }
        let healthy = try Command.run(bash, Array(probe), timeout: 10)
        XCTAssertEqual(healthy.status, 0, healthy.description)
        postern.process.stop()
        let unhealthy = try Command.run(bash, Array(probe), timeout: 10)
        XCTAssertNotEqual(unhealthy.status, 0, unhealthy.description)
    }

    // MARK: - HAProxy

    func testHAProxyConfigurationIsValid() throws {
        let haproxy = try requireTool("haproxy")
        var path = Self.deploy.appendingPathComponent("haproxy/haproxy.cfg").path
        if getpwnam("haproxy") == nil {
            // Without Debian's haproxy user (a bare binary), check a copy without user/group.
            let text = try deployFile("haproxy/haproxy.cfg").split(separator: "\n")
                .filter { !["user ", "group "].contains(where: $0.trimmingCharacters(in: .whitespaces).hasPrefix) }
                .joined(separator: "\n")
            path = try writeConfig(text + "\n", name: "haproxy.cfg").path
        }
        let result = try Command.run(haproxy, ["-c", "-f", path], timeout: 30)
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertTrue(result.output.contains("Configuration file is valid"), result.description)

        let config = try deployFile("haproxy/haproxy.cfg")
        XCTAssertTrue(config.contains("mode tcp"))
        XCTAssertTrue(config.contains("option httpchk GET /readyz"))
        let servers = config.split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces).hasPrefix("server ") }
        XCTAssertGreaterThanOrEqual(servers.count, 2)
        for server in servers {
            XCTAssertTrue(server.contains(" send-proxy-v2"), String(server))
            XCTAssertTrue(server.contains(" check port 9125"), String(server))
        }
    }

    /// A mistake in the configuration is caught by the same check.
    func testHAProxyCheckCatchesAMistake() throws {
        let haproxy = try requireTool("haproxy")
        let broken = try deployFile("haproxy/haproxy.cfg").replacingOccurrences(of: "send-proxy-v2", with: "send-proxy-v9")
        let copy = try writeConfig(broken, name: "haproxy-broken.cfg")
        let result = try Command.run(haproxy, ["-c", "-f", copy.path], timeout: 30)
        XCTAssertNotEqual(result.status, 0, result.description)
        XCTAssertTrue(result.output.contains("send-proxy-v9"), result.description)
    }

    // MARK: - Postfix snippets, applied to a real Postfix

    /// Postern in front (Deploy/postfix/main.cf + master.cf): Postfix's smtpd on loopback
    /// accepts Postern's XCLIENT, so Postfix logs and stamps the PROXY client's address.
    func testFrontModeSnippetsMakePostfixSeeTheRealClient() throws {
        let postfix = try startPostfix()
        let smtpdPort = try Net.freePort()
        try applyPostfixSnippets(postfix, mainCF: "postfix/main.cf", masterCF: "postfix/master.cf",
                                 rewrites: ["127.0.0.1:10025": "127.0.0.1:\(smtpdPort)"])
        XCTAssertEqual(try postconf(postfix, "smtpd_authorized_xclient_hosts"), "127.0.0.1")
        XCTAssertTrue(waitUntil(timeout: 15) { Net.canConnect(port: smtpdPort) }, postfix.maillog)
        XCTAssertFalse(Net.canConnect(port: postfix.port), "the fixture's own smtpd should be gone")

        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(smtpdPort)"])
        config.listenerExtra = ["proxy_protocol: true"]
        config.upstreamExtra = ["forward_client: xclient"]
        config.extra = try relayDomainsIfSupported(["postfix.test"])
        let postern = try startPostern(config)
        let client = try RawSMTPClient(port: postern.port)
        try client.send("PROXY TCP4 203.0.113.9 127.0.0.1 40009 25\r\n")
        XCTAssertEqual(try client.readReply().code, 220)
        XCTAssertEqual(try client.command("EHLO real-client.example").code, 250)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<carol@postfix.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: front mode\r\n\r\nhello\r\n.\r\n")
        let final = try client.readReply()
        XCTAssertTrue(final.text.hasPrefix("250 2.0.0 Ok: queued as "), final.text)
        _ = try? client.command("QUIT")

        XCTAssertTrue(waitUntil(timeout: 20) { !postfix.deliveredMessages(user: "carol").isEmpty }, postfix.maillog)
        let delivered = String(decoding: postfix.deliveredMessages(user: "carol").first ?? Data(), as: UTF8.self)
        // Postfix's own Received header (the first one) names the client from the PROXY header.
        let received = delivered.components(separatedBy: "\nReceived: ").dropFirst()
        let postfixReceived = received.first ?? ""
        XCTAssertTrue(postfixReceived.contains("by upstream.postfix.test (Postfix)"), delivered)
        XCTAssertTrue(postfixReceived.hasPrefix("from ") && postfixReceived.contains(" (unknown [203.0.113.9])"), delivered)
        XCTAssertFalse(postfixReceived.contains("127.0.0.1"), "Postfix names Postern instead of the client:\n\(delivered)")
        XCTAssertTrue(waitUntil(timeout: 10) {
            postfix.maillog.split(separator: "\n").contains { $0.contains(" client=") && $0.contains("[203.0.113.9]") }
        }, postfix.maillog)
    }

    /// Postern as smtpd_proxy_filter (Deploy/postfix/before-queue-filter/): mail to Postfix's
    /// front door goes through Postern to the reinjection smtpd and is queued; a mail that
    /// Postern's policy refuses gets Postern's reply at the front door and is not queued.
    func testBeforeQueueFilterModeRelaysThroughPosternAndPassesItsRefusals() throws {
        let postfix = try startPostfix()
        let front = try Net.freePort(), filter = try Net.freePort(), reinjection = try Net.freePort()
        let metrics = try Net.freePort()

        let policy = try writeConfig("""
            version: 1
            rules:
              - id: no-spammer
                stage: mail
                if: { sender: spammer@bad.example }
                then: reject
                reply: "550 5.7.1 Refused by Postern policy (ref {id})"
            """, name: "policy.yaml")
        let decisions = workDir.appendingPathComponent("decisions.log")
        var yaml = try deployFile("postfix/before-queue-filter/postern.yaml")
        for (from, to) in [("127.0.0.1:10024", "127.0.0.1:\(filter)"), ("127.0.0.1:10025", "127.0.0.1:\(reinjection)"),
                           ("127.0.0.1:9125", "127.0.0.1:\(metrics)"), ("/etc/postern/policy.yaml", policy.path),
                           ("/var/log/postern/decisions.log", decisions.path),
                           ("/var/spool/postern", try makeDirectory("spool").path)] {
            XCTAssertTrue(yaml.contains(from), "before-queue-filter/postern.yaml no longer mentions \(from)")
            yaml = yaml.replacingOccurrences(of: from, with: to)
        }
        let configURL = try writeConfig(yaml, name: "postern-filter.yaml")
        let postern = try startPostern(arguments: ["serve", "--config", configURL.path], port: filter, configURL: configURL)

        try applyPostfixSnippets(postfix, mainCF: "postfix/before-queue-filter/main.cf",
                                 masterCF: "postfix/before-queue-filter/master.cf",
                                 rewrites: ["smtp": "127.0.0.1:\(front)", "127.0.0.1:10024": "127.0.0.1:\(filter)",
                                            "127.0.0.1:10025": "127.0.0.1:\(reinjection)"])
        XCTAssertEqual(try postconf(postfix, "smtpd_proxy_timeout"), "300s")
        XCTAssertTrue(waitUntil(timeout: 15) { Net.canConnect(port: front) && Net.canConnect(port: reinjection) },
                      postfix.maillog)

        let accepted = try runSwaks(port: front, ["--from", "sender@client.test", "--to", "alice@postfix.test",
                                                  "--header", "X-Marker: through-the-filter"])
        XCTAssertEqual(accepted.status, 0, accepted.description)
        let queued = try XCTUnwrap(accepted.swaksReplies.first { $0.hasPrefix("250 2.0.0 Ok: queued as ") },
                                   accepted.description)
        let queueID = String(queued.split(separator: " ").last ?? "")
        XCTAssertTrue(waitUntil(timeout: 20) { !postfix.deliveredMessages(user: "alice").isEmpty }, postfix.maillog)
        let delivered = String(decoding: postfix.deliveredMessages(user: "alice").first ?? Data(), as: UTF8.self)
        XCTAssertTrue(delivered.contains("X-Marker: through-the-filter"), delivered)
        XCTAssertTrue(delivered.contains("by postern.test") || delivered.contains("by mx.example.org"),
                      "Postern's Received header is in the queued message:\n\(delivered)")

        let refused = try runSwaks(port: front, ["--from", "spammer@bad.example", "--to", "bob@postfix.test"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.swaksReplies.contains { $0.hasPrefix("550 5.7.1 Refused by Postern policy (ref ") },
                      refused.description)
        sleep(seconds: 1)
        XCTAssertTrue(postfix.deliveredMessages(user: "bob").isEmpty)

        // Postern's decision records: the accepted one names the reinjection smtpd's queue id,
        // which is the id the client saw; the refused one names the rule.
        var records: [[String: Any]] = []
        XCTAssertTrue(waitUntil(timeout: 10) {
            records = Self.readRecords(decisions)
            return records.count >= 2
        }, "decision records: \(records)\n\(postern.log)")
        let acceptedRecord = records.first { $0["decision"] as? String == "accepted" }
        XCTAssertEqual((acceptedRecord?["upstream"] as? [String: Any])?["queue_id"] as? String, queueID)
        let refusedRecord = records.first { $0["decision"] as? String == "rejected" }
        XCTAssertEqual(refusedRecord?["rule"] as? String, "no-spammer")
        XCTAssertTrue(waitUntil(timeout: 10) { postfix.maillog.contains("\(queueID): ") }, postfix.maillog)
    }

    // MARK: - Helpers

    static func readRecords(_ url: URL) -> [[String: Any]] {
        let text = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    func postconf(_ postfix: PostfixInstance, _ name: String) throws -> String {
        let result = try Command.run(try requireTool("postconf"),
                                     ["-c", postfix.dir.appendingPathComponent("etc").path, "-h", name])
        XCTAssertEqual(result.status, 0, result.description)
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// `relay_domains: [...]` when this Postern knows the key (relay control), else nothing, so
    /// a test whose client is not in a trusted network keeps relaying to Postfix's domain.
    func relayDomainsIfSupported(_ domains: [String]) throws -> String {
        let line = "relay_domains: [\(domains.joined(separator: ", "))]"
        let probe = try writeConfig("listen:\n  - address: 127.0.0.1:2525\nupstreams:\n  - url: smtp://127.0.0.1:25\n\(line)\n",
                                    name: "relay-probe.yaml")
        return try runPostern(["check", "--config", probe.path]).status == 0 ? line : ""
    }

    /// Applies a main.cf snippet (every `name = value`, with `postconf -e`) and a master.cf
    /// snippet (its services replace the fixture's smtpd) to the private Postfix, then reloads
    /// it. `rewrites` maps service names and addresses to the test's ports; the chroot column
    /// becomes `n` (a private instance has no chroot jail).
    func applyPostfixSnippets(_ postfix: PostfixInstance, mainCF: String, masterCF: String,
                              rewrites: [String: String]) throws {
        let etc = postfix.dir.appendingPathComponent("etc")
        let postconf = try requireTool("postconf"), postfixTool = try requireTool("postfix")
        func rewrite(_ text: String) -> String {
            rewrites.reduce(text) { text, pair in
                pair.key.contains(":") ? text.replacingOccurrences(of: pair.key, with: pair.value) : text
            }
        }

        var parameters: [String] = []
        for line in try deployFile(mainCF).split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("#") || line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            if line.first == " " || line.first == "\t", !parameters.isEmpty {
                parameters[parameters.count - 1] += " " + line.trimmingCharacters(in: .whitespaces)
            } else {
                parameters.append(String(line))
            }
        }
        XCTAssertFalse(parameters.isEmpty, "\(mainCF) sets nothing")
        for parameter in parameters {
            let result = try Command.run(postconf, ["-c", etc.path, "-e", rewrite(parameter)])
            XCTAssertEqual(result.status, 0, result.description)
        }

        var services: [String] = []
        for line in try deployFile(masterCF).split(separator: "\n") {
            if line.hasPrefix("#") || line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            if line.first == " " || line.first == "\t" {
                services.append(rewrite(String(line)))
                continue
            }
            var fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            XCTAssertGreaterThanOrEqual(fields.count, 8, "not a master.cf service line: \(line)")
            fields[0] = rewrites[fields[0]] ?? fields[0]
            fields[4] = "n"
            services.append(fields.joined(separator: " "))
        }
        let masterURL = etc.appendingPathComponent("master.cf")
        let fixtureServices = try String(contentsOf: masterURL, encoding: .utf8).split(separator: "\n")
            .filter { !$0.hasPrefix("127.0.0.1:\(postfix.port) ") }
        try (services + fixtureServices.map(String.init)).joined(separator: "\n").appending("\n")
            .write(to: masterURL, atomically: true, encoding: .utf8)

        let check = try Command.run(postfixTool, ["-c", etc.path, "check"], timeout: 60)
        XCTAssertEqual(check.status, 0, check.description)
        let reload = try Command.run(postfixTool, ["-c", etc.path, "reload"], timeout: 60)
        XCTAssertEqual(reload.status, 0, reload.description)
    }
}
