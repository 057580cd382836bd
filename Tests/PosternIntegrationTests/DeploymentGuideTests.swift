import Foundation
import XCTest

/// Follows the README's "Deploying in front of Postfix" literally: the blocks marked
/// `<!-- guide: NAME -->` are read from README.md at test time and run (shell blocks with
/// `/bin/sh -eu`) or written where the guide says (`<!-- guide: file PATH -->`), against a real
/// Postfix. The only changes are the substitutions below, each asserted to still apply (so
/// the guide cannot drift away from the test unnoticed):
///
/// - `/` is a temporary directory, `root`: every path the guide installs to or reads from
///   (`/usr/local/bin`, `/etc/postern`, `/etc/systemd/system`, `/usr/lib/sysusers.d`,
///   `/usr/lib/tmpfiles.d`, `/etc/logrotate.d`, `/var/log/postern`, `/var/spool/postern`,
///   `/var/lib/postern`, `/var/lib/GeoIP`) is under it, including in the files step 1 installs
///   from Deploy/; `systemd-sysusers` and `systemd-tmpfiles` get `--root`; logrotate gets a
///   `--state` file under it; `PATH` starts with `root/usr/local/bin`, where step 1 put `postern`.
/// - Step 1 does not run `apt-get install` nor `make build`: the binary under test (built with
///   those packages) is what `.build/release/postern` names.
/// - Postfix is the private test instance (its `config_directory` is given as `MAIL_CONFIG`).
///   Its public smtpd on a free loopback port stands in for Debian's `smtp inet` (port 25), so
///   `smtp/inet` names it; its chroot column is `n` (a private instance has no chroot jail);
///   its domain is the guide's `example.org`.
/// - Ports: 25 → a free port; 10025 → a free port; the metrics port 9125 → a free port.
/// - The `[::]:25` listener becomes a PROXY-protocol listener on a free loopback port: it
///   stands in for clients on the Internet, whose addresses a loopback test cannot have.
/// - The GeoLite2 database that geoipupdate would fetch is the project's MaxMind DB fixture,
///   which knows only documentation addresses (192.0.2.0/24 is GB): the blocked country `KP`
///   becomes `GB`, and `explain`'s North Korean address 175.45.176.1 becomes 192.0.2.1.
/// - systemd is not asked to start anything: the installed unit's `ExecStartPre` and
///   `ExecStart` run directly (as root, not as the `postern` user).
/// - logrotate's postrotate signals this test's Postern by PID (`systemctl kill` has no unit
///   to signal, and `pkill -x postern` would signal every Postern on the machine), and
///   `create` names root (the `postern` user exists only in `root/etc/passwd`).
final class DeploymentGuideTests: IntegrationTestCase, @unchecked Sendable {
    // MARK: - The guide's blocks

    struct GuideBlock {
        var name: String
        var language: String
        var text: String
    }

    static let sectionHeading = "## Deploying in front of Postfix"

    /// The marked blocks of the README's deployment section, by marker name.
    static func guideBlocks() throws -> [String: GuideBlock] {
        let readme = try String(contentsOf: Paths.packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let lines = readme.components(separatedBy: "\n")
        guard let start = lines.firstIndex(of: sectionHeading) else {
            throw HarnessError.missing("README.md has no '\(sectionHeading)' section")
        }
        let end = lines[(start + 1)...].firstIndex { $0.hasPrefix("## ") } ?? lines.endIndex
        var blocks: [String: GuideBlock] = [:]
        var index = start + 1
        while index < end {
            let line = lines[index].trimmingCharacters(in: .whitespaces)
            index += 1
            guard line.hasPrefix("<!-- guide: "), line.hasSuffix(" -->") else { continue }
            let name = String(line.dropFirst("<!-- guide: ".count).dropLast(" -->".count))
            guard index < end, lines[index].hasPrefix("```") else {
                throw HarnessError.failed("README.md: the marker '\(name)' is not followed by a fenced block")
            }
            let language = String(lines[index].dropFirst(3))
            index += 1
            var body: [String] = []
            while index < end, lines[index] != "```" {
                body.append(lines[index])
                index += 1
            }
            guard index < end else { throw HarnessError.failed("README.md: the block '\(name)' is not closed") }
            index += 1
            guard blocks[name] == nil else { throw HarnessError.failed("README.md: two blocks are marked '\(name)'") }
            blocks[name] = GuideBlock(name: name, language: language, text: body.joined(separator: "\n") + "\n")
        }
        return blocks
    }

    // MARK: - Substitutions

    /// The guide's system paths that live under the test's stand-in for `/`.
    static let rootedPaths = [
        "/usr/local/bin", "/etc/systemd/system", "/usr/lib/sysusers.d", "/usr/lib/tmpfiles.d",
        "/etc/logrotate.d", "/etc/postern", "/var/log/postern", "/var/spool/postern",
        "/var/lib/postern", "/var/lib/GeoIP",
    ]

    /// One run of the guide: the stand-in root, the ports, and the substitutions.
    struct Deployment {
        var root: URL
        var port: Int            // 25
        var proxyPort: Int       // the [::]:25 listener, as a PROXY listener
        var smtpdPort: Int       // 10025
        var metricsPort: Int     // 9125
        var mailConfig: URL?     // Postfix's config_directory

        func path(_ absolute: String) -> URL { root.appendingPathComponent(String(absolute.dropFirst())) }

        var decisionLog: URL { path("/var/log/postern/decisions.log") }
        var geoipCountry: URL { path("/var/lib/GeoIP/GeoLite2-Country.mmdb") }

        /// Substitutions for every block and installed file: the paths, then the ports.
        func rootPaths(_ text: String) -> String {
            let alternatives = DeploymentGuideTests.rootedPaths.map(NSRegularExpression.escapedPattern(for:))
            let pattern = "(?<![A-Za-z0-9_./-])(" + alternatives.joined(separator: "|") + ")(?![A-Za-z0-9_.-])"
            let regex = try! NSRegularExpression(pattern: pattern)
            let template = NSRegularExpression.escapedTemplate(for: root.path) + "$1"
            return regex.stringByReplacingMatches(in: text, range: NSRange(text.startIndex..., in: text), withTemplate: template)
                .replacingOccurrences(of: "127.0.0.1:10025", with: "127.0.0.1:\(smtpdPort)")
                .replacingOccurrences(of: "127.0.0.1:9125", with: "127.0.0.1:\(metricsPort)")
        }

        /// `text` with `pairs` replaced (each must occur: a guide that changed fails here, not
        /// silently), then the common substitutions.
        func localise(_ text: String, _ pairs: [(String, String)], what: String) throws -> String {
            var text = text
            for (from, to) in pairs {
                guard text.contains(from) else {
                    throw HarnessError.failed("\(what) no longer contains '\(from)':\n\(text)")
                }
                text = text.replacingOccurrences(of: from, with: to)
            }
            return rootPaths(text)
        }

        var environment: [String: String] {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
            var environment = ["PATH": self.path("/usr/local/bin").path + ":" + path + ":/usr/sbin:/sbin"]
            if let mailConfig { environment["MAIL_CONFIG"] = mailConfig.path }
            return environment
        }
    }

    /// Runs a shell block of the guide, localised, with `sh -eu`.
    func run(_ block: GuideBlock?, _ deployment: Deployment, _ pairs: [(String, String)] = [],
             in directory: URL? = nil) throws -> CommandResult {
        let block = try XCTUnwrap(block, "a marked block is missing from the README")
        XCTAssertEqual(block.language, "sh", block.name)
        let script = try deployment.localise(block.text, pairs, what: "the guide's '\(block.name)' block")
        return try Command.run(URL(fileURLWithPath: "/bin/sh"), ["-eu", "-c", script],
                               environment: deployment.environment,
                               currentDirectory: directory ?? deployment.root, timeout: 60)
    }

    /// Writes a `file PATH` block of the guide where it says, localised.
    func write(_ blocks: [String: GuideBlock], file absolute: String, _ deployment: Deployment,
               _ pairs: [(String, String)] = []) throws {
        let block = try XCTUnwrap(blocks["file \(absolute)"], "the README has no block for \(absolute)")
        let text = try deployment.localise(block.text, pairs, what: absolute)
        try text.write(to: deployment.path(absolute), atomically: true, encoding: .utf8)
    }

    /// Rewrites a file that step 1 installed from Deploy/ (its paths, and `pairs`).
    func localiseInstalled(_ absolute: String, _ deployment: Deployment, _ pairs: [(String, String)] = []) throws {
        let url = deployment.path(absolute)
        let text = try deployment.localise(try String(contentsOf: url, encoding: .utf8), pairs, what: absolute)
        try text.write(to: url, atomically: false, encoding: .utf8)
    }

    // MARK: - Steps shared by the tests

    /// Steps 1, 3, 4 (the database), 5 and 6 of the guide; the caller has done step 2.
    /// Returns the running Postern.
    func installConfigureAndStart(_ blocks: [String: GuideBlock], _ deployment: Deployment) throws -> ManagedProcess {
        for tool in ["systemd-sysusers", "systemd-tmpfiles"] { _ = try requireTool(tool) }
        // The directories a Debian system has.
        for dir in ["/usr/local/bin", "/etc/systemd/system", "/usr/lib/sysusers.d", "/usr/lib/tmpfiles.d",
                    "/etc/logrotate.d", "/var/lib/GeoIP", "/var/lib/logrotate", "/etc"] {
            try FileManager.default.createDirectory(at: deployment.path(dir), withIntermediateDirectories: true)
        }

        // 1. Install.
        let install = try run(blocks["install"], deployment, [
            ("apt-get install libpcre2-dev libmaxminddb-dev libunbound-dev\n", ""),
            ("make build\n", ""),
            (".build/release/postern", try posternBinary().path),
            ("systemd-sysusers postern.conf", "systemd-sysusers --root=\(deployment.root.path) postern.conf"),
            ("systemd-tmpfiles --create postern.conf", "systemd-tmpfiles --root=\(deployment.root.path) --create postern.conf"),
        ], in: Paths.packageRoot)
        XCTAssertEqual(install.status, 0, install.description)
        let passwd = (try? String(contentsOf: deployment.path("/etc/passwd"), encoding: .utf8)) ?? ""
        XCTAssertTrue(passwd.contains("\npostern:") || passwd.hasPrefix("postern:"), "systemd-sysusers made no postern user:\n\(passwd)")
        for dir in ["/var/log/postern", "/var/spool/postern", "/var/lib/postern", "/etc/postern"] {
            var isDirectory: ObjCBool = false
            XCTAssertTrue(FileManager.default.fileExists(atPath: deployment.path(dir).path, isDirectory: &isDirectory)
                          && isDirectory.boolValue, "\(dir) was not created")
        }
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: deployment.path("/usr/local/bin/postern").path))

        // 3. The configuration.
        try write(blocks, file: "/etc/postern/postern.yaml", deployment, [
            ("0.0.0.0:25", "127.0.0.1:\(deployment.port)"),
            ("  - address: \"[::]:25\"", "  - address: 127.0.0.1:\(deployment.proxyPort)\n    proxy_protocol: true"),
        ])

        // 4. What geoipupdate would have fetched.
        try FileManager.default.copyItem(at: Self.fixtureDatabase("postern-country.mmdb"), to: deployment.geoipCountry)

        // 5. The policy, checked and explained.
        try write(blocks, file: "/etc/postern/policy.yaml", deployment, [("[KP]", "[GB]")])
        let check = try run(blocks["check"], deployment)
        XCTAssertEqual(check.status, 0, check.description)
        XCTAssertTrue(check.stdout.contains("configuration OK"), check.description)
        XCTAssertTrue(check.stdout.contains("policy OK"), check.description)

        let explain = try run(blocks["explain"], deployment, [("175.45.176.1", "192.0.2.1")])
        XCTAssertEqual(explain.status, 1, "explain exits 1 for a refused mail\n\(explain)")
        XCTAssertTrue(explain.stdout.contains("blocked-countries") && explain.stdout.contains("MATCHED"), explain.description)
        XCTAssertTrue(explain.stdout.contains("554 5.7.1 Mail from your network is not accepted here"), explain.description)

        // 6. Start: the installed unit's ExecStartPre, then its ExecStart.
        let unit = try String(contentsOf: deployment.path("/etc/systemd/system/postern.service"), encoding: .utf8)
        func command(_ key: String) throws -> [String] {
            let line = try XCTUnwrap(unit.split(separator: "\n").first { $0.hasPrefix(key + "=") }, "the unit has no \(key)")
            return deployment.rootPaths(String(line.dropFirst(key.count + 1))).split(separator: " ").map(String.init)
        }
        let pre = try command("ExecStartPre"), start = try command("ExecStart")
        let preResult = try Command.run(URL(fileURLWithPath: pre[0]), Array(pre.dropFirst()), currentDirectory: deployment.root)
        XCTAssertEqual(preResult.status, 0, preResult.description)
        let postern = try launch("postern", URL(fileURLWithPath: start[0]), Array(start.dropFirst()),
                                 currentDirectory: deployment.root)
        let listening = waitUntil(timeout: 20) {
            !postern.isRunning || (postern.output.contains("listening on 127.0.0.1:\(deployment.port)")
                                   && postern.output.contains("listening on 127.0.0.1:\(deployment.proxyPort)"))
        }
        guard postern.isRunning, listening else {
            throw HarnessError.failed("postern did not start as the unit says\n\(postern.tail())")
        }
        return postern
    }

    static func fixtureDatabase(_ name: String) -> URL {
        Paths.packageRoot.appendingPathComponent("Tests/PosternNativeTests/Fixtures").appendingPathComponent(name)
    }

    static func records(_ url: URL) -> [[String: Any]] {
        let text = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// Connects to the PROXY listener as `address`; returns the client and its greeting.
    func connect(as address: String, _ deployment: Deployment) throws -> (RawSMTPClient, SMTPReply) {
        let client = try RawSMTPClient(port: deployment.proxyPort)
        try client.send("PROXY TCP4 \(address) 127.0.0.1 40025 25\r\n")
        return (client, try client.readReply())
    }

    /// A whole transaction from `address` through the PROXY listener; returns the reply to DATA.
    func sendMail(from address: String, to recipient: String, subject: String, _ deployment: Deployment) throws -> SMTPReply {
        let (client, greeting) = try connect(as: address, deployment)
        defer { client.close() }
        XCTAssertEqual(greeting.code, 220, greeting.text)
        XCTAssertEqual(try client.command("EHLO mail.sender.example").code, 250)
        XCTAssertEqual(try client.command("MAIL FROM:<someone@sender.example>").code, 250)
        let rcpt = try client.command("RCPT TO:<\(recipient)>")
        XCTAssertEqual(rcpt.code, 250, rcpt.text)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: \(subject)\r\nMessage-ID: <\(subject)@sender.example>\r\n\r\nHello.\r\n.\r\n")
        let final = try client.readReply()
        _ = try? client.command("QUIT")
        return final
    }

    /// Whether one line of Postfix's log contains all of `parts`.
    static func logged(_ postfix: PostfixInstance, _ parts: String...) -> Bool {
        postfix.maillog.split(separator: "\n").contains { line in parts.allSatisfy { line.contains($0) } }
    }

    static func queueID(_ reply: String) -> String? {
        guard let range = reply.range(of: "queued as ") else { return nil }
        return String(reply[range.upperBound...].prefix { $0.isLetter || $0.isNumber })
    }

    // MARK: - The guide, end to end

    func testTheGuideDeploysPosternInFrontOfARealPostfix() throws {
        _ = try requireTool("swaks")
        _ = try requireTool("postconf")
        let blocks = try Self.guideBlocks()
        for name in ["install", "postfix", "file /etc/postern/postern.yaml", "file /etc/postern/policy.yaml",
                     "check", "explain", "swaks", "tail", "logrotate"] {
            XCTAssertNotNil(blocks[name], "README.md lost the guide block '\(name)'")
        }

        let postfix = try startPostfix(domain: "example.org")
        let deployment = Deployment(root: try makeDirectory("root"), port: try Net.freePort(), proxyPort: try Net.freePort(),
                                    smtpdPort: try Net.freePort(), metricsPort: try Net.freePort(),
                                    mailConfig: postfix.dir.appendingPathComponent("etc"))

        // The test instance allows XCLIENT and XFORWARD from loopback for other tests; a stock
        // Postfix allows neither, and the guide's step 2 must be what grants it.
        let stock = try Command.run(try requireTool("postconf"), ["-c", postfix.dir.appendingPathComponent("etc").path,
                                                                  "-X", "smtpd_authorized_xclient_hosts", "smtpd_authorized_xforward_hosts"])
        XCTAssertEqual(stock.status, 0, stock.description)

        // 2. Postfix: smtpd moves to loopback:10025, XCLIENT for Postern.
        let postfixStep = try run(blocks["postfix"], deployment, [
            ("smtp/inet", "127.0.0.1:\(postfix.port)/inet"),
            ("inet n - y - - smtpd", "inet n - n - - smtpd"),
        ])
        XCTAssertEqual(postfixStep.status, 0, postfixStep.description)
        // The last command prints the domains for relay_domains: the guide's example.org.
        XCTAssertTrue(postfixStep.stdout.split(separator: "\n").contains("example.org"), postfixStep.description)
        XCTAssertTrue(waitUntil(timeout: 15) { Net.canConnect(port: deployment.smtpdPort) }, postfix.maillog)
        XCTAssertTrue(waitUntil(timeout: 10) { !Net.canConnect(port: postfix.port) }, "the public smtpd is still there")
        let master = try String(contentsOf: postfix.dir.appendingPathComponent("etc/master.cf"), encoding: .utf8)
        XCTAssertTrue(master.contains("\n#127.0.0.1:\(postfix.port) ") || master.hasPrefix("#127.0.0.1:\(postfix.port) "), master)

        // 1, 3, 4, 5, 6.
        let postern = try installConfigureAndStart(blocks, deployment)

        // 7. The test mail, from the server itself.
        let swaks = try run(blocks["swaks"], deployment, [("127.0.0.1:25 ", "127.0.0.1:\(deployment.port) ")])
        XCTAssertEqual(swaks.status, 0, swaks.description)
        let swaksQueued = try XCTUnwrap(swaks.swaksReplies.first { $0.hasPrefix("250 2.0.0 Ok: queued as ") }, swaks.description)
        let swaksQueueID = try XCTUnwrap(Self.queueID(swaksQueued))
        XCTAssertTrue(waitUntil(timeout: 20) { !postfix.deliveredMessages(user: "postmaster").isEmpty }, postfix.maillog)
        XCTAssertTrue(Self.logged(postfix, "\(swaksQueueID): client=", "[127.0.0.1]"), postfix.maillog)

        // Mail from the Internet (a PROXY client from Sweden, in the test database): queued by
        // Postfix, whose log and Received header name the real client, not Postern.
        let accepted = try sendMail(from: "198.51.100.7", to: "alice@example.org", subject: "from-sweden", deployment)
        XCTAssertTrue(accepted.text.hasPrefix("250 2.0.0 Ok: queued as "), accepted.text)
        let acceptedQueueID = try XCTUnwrap(Self.queueID(accepted.text))
        XCTAssertTrue(waitUntil(timeout: 20) { !postfix.deliveredMessages(user: "alice").isEmpty }, postfix.maillog)
        XCTAssertTrue(Self.logged(postfix, "\(acceptedQueueID): client=", "[198.51.100.7]"), postfix.maillog)
        let delivered = String(decoding: postfix.deliveredMessages(user: "alice").first ?? Data(), as: UTF8.self)
        let postfixReceived = delivered.components(separatedBy: "\nReceived: ").dropFirst().first ?? ""
        XCTAssertTrue(postfixReceived.contains("by upstream.example.org (Postfix)"), delivered)
        XCTAssertTrue(postfixReceived.contains("(unknown [198.51.100.7])"), delivered)
        XCTAssertTrue(delivered.contains("by mx.example.org (Postern)"), "Postern's own Received header:\n\(delivered)")

        // A client from a blocked country (GB in the test database): 554 at connect, and Postfix
        // never hears of it: no connection, no log line.
        // Postern ends its upstream session (QUIT) after the client's session ends: wait for
        // Postfix to log that, so that it is not mistaken for a new connection below.
        XCTAssertTrue(waitUntil(timeout: 10) { postfix.maillog.contains("disconnect from unknown[198.51.100.7]") }, postfix.maillog)
        let connectsBefore = postfix.maillog.components(separatedBy: " connect from ").count
        let (refusedClient, refusal) = try connect(as: "192.0.2.7", deployment)
        XCTAssertTrue(refusal.text.hasPrefix("554 5.7.1 Mail from your network is not accepted here (ref "), refusal.text)
        XCTAssertEqual(try refusedClient.command("MAIL FROM:<spam@sender.example>").code, 503,
                       "after a refusal at connect only QUIT is served")
        _ = try? refusedClient.command("QUIT")
        refusedClient.close()
        var records: [[String: Any]] = []
        XCTAssertTrue(waitUntil(timeout: 10) {
            records = Self.records(deployment.decisionLog)
            return records.contains { $0["rule"] as? String == "blocked-countries" }
        }, "no decision record for the refusal: \(records)\n\(postern.tail())")
        sleep(seconds: 1)
        XCTAssertEqual(postfix.maillog.components(separatedBy: " connect from ").count, connectsBefore, postfix.maillog)
        XCTAssertFalse(postfix.maillog.contains("192.0.2.7"), postfix.maillog)
        let refused = try XCTUnwrap(records.first { $0["rule"] as? String == "blocked-countries" })
        XCTAssertEqual(refused["decision"] as? String, "rejected")
        XCTAssertEqual(refused["stage"] as? String, "connect")
        XCTAssertEqual((refused["client"] as? [String: Any])?["country"] as? String, "GB")
        XCTAssertNil(refused["upstream"] as? [String: Any], "the refused session reached an upstream: \(refused)")
        let versionBefore = try XCTUnwrap(refused["policy_version"] as? String)
        let acceptedRecord = try XCTUnwrap(records.first {
            (($0["upstream"] as? [String: Any])?["queue_id"] as? String) == acceptedQueueID
        }, "\(records)")
        XCTAssertEqual((acceptedRecord["client"] as? [String: Any])?["ip"] as? String, "198.51.100.7")
        XCTAssertEqual((acceptedRecord["client"] as? [String: Any])?["country"] as? String, "SE")

        // geoipupdate replaces the database (a .temporary file renamed into place, keeping the
        // old file time as with PreserveFileTime): Postern picks it up by itself, no restart,
        // no SIGHUP. In the new database 192.0.2.0/24 is NL, so the client is let in.
        let oldAttributes = try FileManager.default.attributesOfItem(atPath: deployment.geoipCountry.path)
        let temporary = deployment.geoipCountry.appendingPathExtension("temporary")
        try FileManager.default.copyItem(at: Self.fixtureDatabase("postern-ipv4-only.mmdb"), to: temporary)
        if let modified = oldAttributes[.modificationDate] as? Date {
            try FileManager.default.setAttributes([.modificationDate: modified], ofItemAtPath: temporary.path)
        }
        let replaced = Date()
        XCTAssertEqual(rename(temporary.path, deployment.geoipCountry.path), 0)
        var greeting: SMTPReply?
        XCTAssertTrue(waitUntil(timeout: 20, interval: 0.25) {
            guard let attempt = try? connect(as: "192.0.2.7", deployment) else { return false }
            let (client, reply) = attempt
            _ = try? client.command("QUIT")
            client.close()
            greeting = reply
            return reply.code == 220
        }, "the replaced database was not picked up: \(greeting?.text ?? "-")\n\(postern.tail())")
        let pickedUp = Date().timeIntervalSince(replaced)
        print("[guide] the replaced GeoIP database was in force after \(String(format: "%.1f", pickedUp)) s")
        XCTAssertLessThan(pickedUp, 8, "the README says a few seconds (2 s checks, once settled)")
        XCTAssertTrue(postern.isRunning)
        XCTAssertTrue(postern.output.contains("policy reloaded"), postern.tail())

        let afterUpdate = try sendMail(from: "192.0.2.7", to: "bob@example.org", subject: "after-update", deployment)
        XCTAssertTrue(afterUpdate.text.hasPrefix("250 2.0.0 Ok: queued as "), afterUpdate.text)
        XCTAssertTrue(waitUntil(timeout: 10) {
            records = Self.records(deployment.decisionLog)
            return records.contains { $0["message_id"] as? String == "<after-update@sender.example>" }
        }, "\(records)")
        let updated = try XCTUnwrap(records.first { $0["message_id"] as? String == "<after-update@sender.example>" })
        XCTAssertEqual(updated["decision"] as? String, "accepted")
        XCTAssertEqual((updated["client"] as? [String: Any])?["country"] as? String, "NL")
        let versionAfter = try XCTUnwrap(updated["policy_version"] as? String)
        XCTAssertNotEqual(versionAfter, versionBefore, "the new database must show as a new policy version")
        XCTAssertTrue(waitUntil(timeout: 20) { !postfix.deliveredMessages(user: "bob").isEmpty }, postfix.maillog)
        XCTAssertTrue(Self.logged(postfix, ": client=", "[192.0.2.7]"), postfix.maillog)

        // A broken download (a truncated file renamed into place) leaves the policy in force.
        try FileManager.default.copyItem(at: Self.fixtureDatabase("postern-truncated.mmdb"), to: temporary)
        XCTAssertEqual(rename(temporary.path, deployment.geoipCountry.path), 0)
        XCTAssertTrue(waitUntil(timeout: 20) { postern.output.contains("policy reload failed") }, postern.tail())
        XCTAssertTrue(postern.isRunning)
        let afterBrokenUpdate = try sendMail(from: "192.0.2.7", to: "bob@example.org", subject: "after-broken-update", deployment)
        XCTAssertTrue(afterBrokenUpdate.text.hasPrefix("250 2.0.0 Ok: queued as "), afterBrokenUpdate.text)
        XCTAssertTrue(waitUntil(timeout: 10) {
            records = Self.records(deployment.decisionLog)
            return records.contains { $0["message_id"] as? String == "<after-broken-update@sender.example>" }
        }, "\(records)")
        let unchanged = try XCTUnwrap(records.first { $0["message_id"] as? String == "<after-broken-update@sender.example>" })
        XCTAssertEqual(unchanged["policy_version"] as? String, versionAfter)
        XCTAssertEqual((unchanged["client"] as? [String: Any])?["country"] as? String, "NL")

        // `postern tail`: one line per transaction, the refusal with its rule.
        let tail = try run(blocks["tail"], deployment)
        XCTAssertEqual(tail.status, 0, tail.description)
        let tailLines = tail.stdout.split(separator: "\n")
        XCTAssertTrue(tailLines.contains { $0.contains("rejected") && $0.contains("blocked-countries") && $0.contains("192.0.2.7") },
                      tail.description)
        XCTAssertTrue(tailLines.contains { $0.contains("accepted") && $0.contains("198.51.100.7") && $0.contains("alice@example.org") },
                      tail.description)
        XCTAssertTrue(tailLines.contains { $0.contains("accepted") && $0.contains("127.0.0.1") && $0.contains("postmaster@example.org") },
                      tail.description)
    }

    /// Step 8: logrotate with the installed Deploy/logrotate/postern moves the decision log and
    /// sends SIGUSR1; Postern goes on writing to a new file at the configured path.
    func testTheGuidesLogRotationMakesPosternStartANewDecisionLog() throws {
        _ = try requireTool("logrotate")
        let blocks = try Self.guideBlocks()
        // No Postfix is needed: the sessions here are refused at connect, before any upstream.
        let deployment = Deployment(root: try makeDirectory("root"), port: try Net.freePort(), proxyPort: try Net.freePort(),
                                    smtpdPort: try Net.freePort(), metricsPort: try Net.freePort(), mailConfig: nil)
        let postern = try installConfigureAndStart(blocks, deployment)
        try localiseInstalled("/etc/logrotate.d/postern", deployment, [
            ("systemctl kill --signal=SIGUSR1 postern.service 2>/dev/null || pkill -USR1 -x postern || true",
             "kill -USR1 \(postern.pid)"),
            ("create 0640 postern postern", "create 0640 root root"),
        ])

        func refuse(_ address: String) throws {
            let (client, reply) = try connect(as: address, deployment)
            XCTAssertEqual(reply.code, 554, reply.text)
            _ = try? client.command("QUIT")
            client.close()
        }
        func ips(_ url: URL) -> [String] {
            Self.records(url).compactMap { ($0["client"] as? [String: Any])?["ip"] as? String }
        }
        try refuse("192.0.2.1")
        XCTAssertTrue(waitUntil(timeout: 10) { ips(deployment.decisionLog) == ["192.0.2.1"] },
                      "\(ips(deployment.decisionLog))\n\(postern.tail())")

        let rotate = try run(blocks["logrotate"], deployment, [
            ("logrotate --force", "logrotate --state \(deployment.path("/var/lib/logrotate/status").path) --force"),
        ])
        XCTAssertEqual(rotate.status, 0, rotate.description)
        let rotated = URL(fileURLWithPath: deployment.decisionLog.path + ".1")
        XCTAssertEqual(ips(rotated), ["192.0.2.1"], "logrotate did not move the decision log")
        XCTAssertTrue(waitUntil(timeout: 10) { postern.output.contains("SIGUSR1: reopening the decision log") }, postern.tail())

        try refuse("192.0.2.2")
        XCTAssertTrue(waitUntil(timeout: 10) { ips(deployment.decisionLog) == ["192.0.2.2"] },
                      "the record after rotation is not in a new decisions.log: \(ips(deployment.decisionLog)); "
                      + ".1 has \(ips(rotated))\n\(postern.tail())")
        XCTAssertEqual(ips(rotated), ["192.0.2.1"], "a record went to the rotated file")
        XCTAssertTrue(postern.isRunning)
    }
}
