import NIOCore
import PosternEngines
import PosternUpstream
import SMTPCore
import XCTest

import PosternPolicy

@testable import PosternServer

final class ConfigurationLoaderTests: XCTestCase {
    private func load(_ yaml: String) throws -> PosternConfiguration {
        try ConfigurationLoader.load(yaml: yaml, file: "test.yaml")
    }

    private func errors(_ yaml: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try load(yaml)
            XCTFail("expected configuration errors", file: file, line: line)
            return []
        } catch {
            return (error as? ConfigurationErrors)?.errors.map(\.description) ?? ["\(error)"]
        }
    }

    func testBundledDefaultLoads() throws {
        let configuration = try ConfigurationLoader.load(yaml: ConfigurationLoader.bundledDefault, file: "<bundled>")
        XCTAssertEqual(configuration.listeners, [PosternConfiguration.Listener(host: "127.0.0.1", port: 2525)])
        XCTAssertEqual(configuration.upstreams.map(\.target), [.maildir(path: "var/maildir")])
        XCTAssertEqual(configuration.limits, PosternConfiguration.Limits())
        XCTAssertEqual(configuration.decisionLog, "var/decisions.log")
        XCTAssertEqual(configuration.metrics, PosternConfiguration.Listener(host: "127.0.0.1", port: 9125))
    }

    func testDeployExampleLoads() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Deploy/postern.yaml").path
        let configuration = try ConfigurationLoader.load(path: path)
        XCTAssertEqual(configuration.listeners.first?.port, 25)
        XCTAssertEqual(configuration.upstreams.first?.target, .smtp(host: "127.0.0.1", port: 10025))
    }

    func testEveryKeyIsRead() throws {
        let configuration = try load("""
            hostname: mx.example.org
            listen:
              - address: 0.0.0.0:25
              - address: "[::1]:2525"
                proxy_protocol: true
                require_tls: true
            proxy_trusted_networks: [10.0.0.0/8, "2001:db8::/32"]
            upstreams:
              - url: smtp://127.0.0.1:10025
                tls: require
                verify_certificate: false
                helo_name: gw.example.org
                auth: { username: relay, password: secret }
                timeouts: { connect: 5s, greeting: 1m, ehlo: 2m, mail: 3m, rcpt: 4m, data_init: 5m, data_block: 6m, data_termination: 7m }
              - url: maildir:/var/spool/postern/fallback
            upstream_retry_after: 90s
            limits:
              command_line_length: 1024
              text_line_length: 2000
              message_size: 10MiB
              recipients_per_message: 50
              errors_per_session: 3
              max_connections: 200
              max_connections_per_ip: 5
            timeouts: { command: 2m, data: 90s, proxy_header: 250ms }
            bare_line_endings: normalise
            spool: { directory: /var/tmp, memory_threshold: 512KiB }
            shutdown_grace_period: 10s
            log_level: debug
            decision_log: /var/log/postern/decisions.log
            metrics: 127.0.0.1:9125
            """)
        XCTAssertEqual(configuration.hostname, "mx.example.org")
        XCTAssertEqual(configuration.listeners.count, 2)
        XCTAssertEqual(configuration.listeners[1].host, "::1")
        XCTAssertTrue(configuration.listeners[1].proxyProtocol)
        XCTAssertTrue(configuration.listeners[1].requireTLS)
        XCTAssertEqual(configuration.proxyTrustedNetworks, [IPNetwork("10.0.0.0/8")!, IPNetwork("2001:db8::/32")!])
        let upstream = configuration.upstreams[0]
        XCTAssertEqual(upstream.tls, .require)
        XCTAssertFalse(upstream.verifyCertificate)
        XCTAssertEqual(upstream.heloName, "gw.example.org")
        XCTAssertEqual(upstream.credentials, UpstreamCredentials(username: "relay", password: "secret"))
        XCTAssertEqual(upstream.timeouts.connect, .seconds(5))
        XCTAssertEqual(upstream.timeouts.dataTermination, .minutes(7))
        XCTAssertEqual(configuration.upstreams[1].target, .maildir(path: "/var/spool/postern/fallback"))
        XCTAssertEqual(configuration.upstreamRetryAfter, .seconds(90))
        XCTAssertEqual(configuration.limits.commandLineLength, 1024)
        XCTAssertEqual(configuration.limits.textLineLength, 2000)
        XCTAssertEqual(configuration.limits.messageSize, 10 * 1024 * 1024)
        XCTAssertEqual(configuration.limits.recipientsPerMessage, 50)
        XCTAssertEqual(configuration.limits.errorsPerSession, 3)
        XCTAssertEqual(configuration.limits.maxConnections, 200)
        XCTAssertEqual(configuration.limits.maxConnectionsPerIP, 5)
        XCTAssertEqual(configuration.timeouts.command, .minutes(2))
        XCTAssertEqual(configuration.timeouts.data, .seconds(90))
        XCTAssertEqual(configuration.timeouts.proxyHeader, .milliseconds(250))
        XCTAssertEqual(configuration.bareLineEndings, .normalise)
        XCTAssertEqual(configuration.spool.directory, "/var/tmp")
        XCTAssertEqual(configuration.spool.memoryThreshold, 512 * 1024)
        XCTAssertEqual(configuration.shutdownGracePeriod, .seconds(10))
        XCTAssertEqual(configuration.logLevel, .debug)
        XCTAssertEqual(configuration.decisionLog, "/var/log/postern/decisions.log")
        XCTAssertEqual(configuration.metrics, PosternConfiguration.Listener(host: "127.0.0.1", port: 9125))
    }

    /// Every path key is resolved the same way: relative to the configuration file's
    /// directory, standardised; absolute paths are standardised too.
    func testEveryPathKeyIsRelativeToTheConfigurationFile() throws {
        let root = NSTemporaryDirectory() + "postern-config-paths-\(UUID().uuidString)"
        let etc = root + "/etc"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: etc + "/tls", withIntermediateDirectories: true)
        for name in ["tls/cert.pem", "tls/key.pem", "ca.pem"] { try "x\n".write(toFile: etc + "/" + name, atomically: true, encoding: .utf8) }
        try "alice:$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.\n"
            .write(toFile: etc + "/users", atomically: true, encoding: .utf8)
        let yaml = """
            upstreams:
              - url: maildir:../var/mail/./box
              - url: "maildir://mail/fallback/"
              - url: maildir:/srv/x/../absolute
            policy: ./policies/../policy.yaml
            quarantine: quarantine
            decision_log: logs//decisions.log
            tls: { certificate: tls/cert.pem, private_key: ./tls/key.pem }
            spool: { directory: ../spool }
            auth: { credentials: users }
            limits_store: { url: "rediss://redis.example:6380", ca_file: ca.pem }
            """
        try yaml.write(toFile: etc + "/postern.yaml", atomically: true, encoding: .utf8)
        let configuration = try ConfigurationLoader.load(path: etc + "/postern.yaml")
        XCTAssertEqual(configuration.upstreams.map(\.target), [
            .maildir(path: root + "/var/mail/box"), .maildir(path: etc + "/mail/fallback"), .maildir(path: "/srv/absolute"),
        ])
        XCTAssertEqual(configuration.policy, etc + "/policy.yaml")
        XCTAssertEqual(configuration.quarantine, etc + "/quarantine")
        XCTAssertEqual(configuration.decisionLog, etc + "/logs/decisions.log")
        XCTAssertEqual(configuration.tls?.certificate, etc + "/tls/cert.pem")
        XCTAssertEqual(configuration.tls?.privateKey, etc + "/tls/key.pem")
        XCTAssertEqual(configuration.spool.directory, root + "/spool")
        XCTAssertEqual(configuration.authentication?.credentials, etc + "/users")
        guard case .redis(let redis) = configuration.limitsStore else { return XCTFail("\(configuration.limitsStore)") }
        XCTAssertEqual(redis.caFile, etc + "/ca.pem")

        // The mapping form of decision_log, and `-`, which is standard output, not a path.
        let mapped = try ConfigurationLoader.load(
            yaml: "upstreams: [{ url: \"smtp://a\" }]\ndecision_log: { path: ./d.log }\n", file: etc + "/other.yaml")
        XCTAssertEqual(mapped.decisionLog, etc + "/d.log")
        for text in ["decision_log: \"-\"", "decision_log: { path: \"-\" }"] {
            let stdout = try ConfigurationLoader.load(yaml: "upstreams: [{ url: \"smtp://a\" }]\n\(text)\n", file: etc + "/other.yaml")
            XCTAssertEqual(stdout.decisionLog, "-", text)
        }
        // A missing TLS file is reported with the path it was looked for at.
        XCTAssertThrowsError(try ConfigurationLoader.load(
            yaml: "upstreams: [{ url: \"smtp://a\" }]\ntls: { certificate: nope.pem, private_key: tls/key.pem }\n", file: etc + "/other.yaml")) {
            XCTAssertEqual(($0 as? ConfigurationErrors)?.errors.map(\.message), ["cannot read \(etc)/nope.pem"])
        }
    }

    /// The bundled default is not a file: its paths stay relative to the working directory.
    func testTheBundledDefaultKeepsItsPathsRelativeToTheWorkingDirectory() throws {
        let configuration = try ConfigurationLoader.load(yaml: """
            upstreams: [{ url: "maildir:var/maildir" }]
            quarantine: var/quarantine
            decision_log: var/decisions.log
            spool: { directory: spool }
            """, file: "<bundled default>")
        XCTAssertEqual(configuration.upstreams.map(\.target), [.maildir(path: "var/maildir")])
        XCTAssertEqual(configuration.quarantine, "var/quarantine")
        XCTAssertEqual(configuration.decisionLog, "var/decisions.log")
        XCTAssertEqual(configuration.spool.directory, "spool")
    }

    func testTrustKeys() throws {
        let credentials = NSTemporaryDirectory() + "postern-config-users-\(UUID().uuidString)"
        try "alice:$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.\n"
            .write(toFile: credentials, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: credentials) }
        let configuration = try load("""
            listen:
              - address: 127.0.0.1:2525
                auth: always
              - address: 127.0.0.1:2526
            upstreams: [{url: "smtp://127.0.0.1:10025"}]
            relay_domains: [example.org, .example.net, bücher.example]
            trusted_networks: [192.0.2.0/24]
            auth:
              credentials: \(credentials)
              failure_delay: 2s
              lockout_failures: 7
              lockout_window: 5m
              lockout_duration: 1h
            limits: { junk_commands: 20, min_data_rate: 1024, data_rate_grace: 10s }
            timeouts: { session: 10m, greet_delay: 3s }
            """)
        XCTAssertEqual(configuration.relayDomains, ["example.org", ".example.net", "bücher.example"])
        XCTAssertEqual(configuration.trustedNetworks, [IPNetwork("192.0.2.0/24")!])
        XCTAssertEqual(configuration.authentication?.credentials, credentials)
        XCTAssertEqual(configuration.authentication?.failureDelay, .seconds(2))
        XCTAssertEqual(configuration.authentication?.lockoutFailures, 7)
        XCTAssertEqual(configuration.authentication?.lockoutWindow, .minutes(5))
        XCTAssertEqual(configuration.authentication?.lockoutDuration, .hours(1))
        XCTAssertEqual(configuration.listeners.map { configuration.authenticationOffer(for: $0) }, [.always, .afterTLS])
        XCTAssertEqual(configuration.limits.junkCommands, 20)
        XCTAssertEqual(configuration.limits.minDataRate, 1024)
        XCTAssertEqual(configuration.limits.dataRateGrace, .seconds(10))
        XCTAssertEqual(configuration.timeouts.session, .minutes(10))
        XCTAssertEqual(configuration.timeouts.greetDelay, .seconds(3))
        XCTAssertEqual(configuration.serverConfiguration(for: configuration.listeners[0]).authentication, .always)
    }

    func testTrustDefaultsAreNoOpenRelay() throws {
        let configuration = try load("upstreams: [{url: \"smtp://127.0.0.1:10025\"}]")
        XCTAssertEqual(configuration.relayDomains, [])
        XCTAssertEqual(configuration.trustedNetworks, [IPNetwork("127.0.0.0/8")!, IPNetwork("::1/128")!])
        XCTAssertNil(configuration.authentication)
        XCTAssertEqual(configuration.authenticationOffer(for: configuration.listeners[0]), .off)
        XCTAssertEqual(configuration.timeouts.greetDelay, .zero)
        XCTAssertEqual(configuration.limits.minDataRate, 0)
    }

    func testTrustKeyErrors() {
        let problems = errors("""
            listen: [{address: "127.0.0.1:2525", auth: sometimes}]
            upstreams: [{url: "smtp://127.0.0.1:10025"}]
            relay_domains: ["user@example.org", "example..org"]
            trusted_networks: [not-a-network]
            auth: {credentials: /nonexistent/users}
            timeouts: {greet_delay: 10m}
            """)
        let joined = problems.joined(separator: "\n")
        XCTAssertTrue(joined.contains("test.yaml:1:"), joined)
        XCTAssertTrue(joined.contains("auth must be off, tls or always"), joined)
        XCTAssertTrue(joined.contains("test.yaml:3:") && joined.contains("not a domain"), joined)
        XCTAssertTrue(joined.contains("test.yaml:4:") && joined.contains("not an IP address or CIDR block"), joined)
        XCTAssertTrue(joined.contains("cannot read the credentials file"), joined)
        XCTAssertTrue(joined.contains("greet_delay longer than 5m"), joined)
    }

    func testAuthWithoutAnyWayToOfferItIsAnError() throws {
        let credentials = NSTemporaryDirectory() + "postern-config-users-\(UUID().uuidString)"
        try "".write(toFile: credentials, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: credentials) }
        let problems = errors("""
            upstreams: [{url: "smtp://127.0.0.1:10025"}]
            auth: {credentials: \(credentials)}
            """)
        XCTAssertTrue(problems.contains { $0.contains("no tls: certificate is configured") }, "\(problems)")
    }

    func testUnknownKeyIsReportedWithItsPosition() {
        XCTAssertEqual(errors("""
            upstreams:
              - url: smtp://127.0.0.1:10025
            limits:
              mesage_size: 10MB
            """).first?.hasPrefix("test.yaml:4:3: unknown key 'mesage_size' in limits"), true)
    }

    func testEveryErrorIsReportedAtOnce() {
        let found = errors("""
            hostname: mx.example.org
            listen:
              - address: nowhere
            upstreams:
              - url: http://example.org
            limits:
              recipients_per_message: many
            timeouts: { command: soon }
            bare_line_endings: tolerate
            """)
        XCTAssertEqual(found.count, 5, "\(found)")
        XCTAssertTrue(found[0].hasPrefix("test.yaml:3:14: address must be HOST:PORT"), found[0])
        XCTAssertTrue(found[1].hasPrefix("test.yaml:5:10: url must be smtp://"), found[1])
        XCTAssertTrue(found[2].hasPrefix("test.yaml:7:27: recipients_per_message must be an integer"), found[2])
        XCTAssertTrue(found[3].hasPrefix("test.yaml:8:22: timeouts.command must be a duration"), found[3])
        XCTAssertTrue(found[4].hasPrefix("test.yaml:9:20: bare_line_endings must be reject or normalise"), found[4])
    }

    func testWrongTypesAreErrors() {
        let found = errors("""
            listen: 127.0.0.1:25
            upstreams: { url: smtp://a }
            """)
        // The second upstreams error says what is missing once the wrong value is set aside.
        XCTAssertEqual(found, [
            "test.yaml:1:9: listen must be a list",
            "test.yaml:2:12: upstreams must be a list",
            "test.yaml:2:12: at least one upstream is needed (upstreams: [{url: smtp://127.0.0.1:10025}])",
        ])
    }

    func testMissingUpstreamIsAnError() {
        XCTAssertEqual(errors("hostname: a.example").first?.contains("at least one upstream is needed"), true)
    }

    func testYAMLSyntaxErrorHasItsPosition() {
        let found = errors("upstreams:\n  - url: [unclosed\n")
        XCTAssertEqual(found.count, 1)
        XCTAssertTrue(found[0].hasPrefix("test.yaml:3:1: YAML syntax:"), found[0])
    }

    func testLimitOutOfRangeIsAnError() {
        let found = errors("""
            upstreams: [{ url: "smtp://a" }]
            limits: { command_line_length: 100 }
            """)
        XCTAssertEqual(found, ["test.yaml:2:32: command_line_length must be an integer in 512...65536"])
    }

    func testMissingTLSFilesAreErrors() {
        let found = errors("""
            upstreams: [{ url: "smtp://a" }]
            tls: { certificate: /nonexistent/cert.pem, private_key: /nonexistent/key.pem }
            """)
        XCTAssertEqual(found, ["test.yaml:2:21: cannot read /nonexistent/cert.pem", "test.yaml:2:57: cannot read /nonexistent/key.pem"])
    }

    func testUnreadableFileIsAnError() {
        XCTAssertThrowsError(try ConfigurationLoader.load(path: "/nonexistent/postern.yaml")) { error in
            XCTAssertTrue("\(error)".hasPrefix("/nonexistent/postern.yaml:1:1: cannot read file"), "\(error)")
        }
    }

    func testDNS() throws {
        XCTAssertNil(try load("upstreams: [{ url: \"smtp://a\" }]").dns)
        let dns = try XCTUnwrap(try load("""
            upstreams: [{ url: "smtp://a" }]
            dns: { servers: ["127.0.0.1:5353", "[::1]:53", 192.0.2.53], timeout: 2s, cache_size: 500, verify_client_names: false }
            """).dns)
        XCTAssertEqual(dns.resolver.servers, ["127.0.0.1:5353", "[::1]:53", "192.0.2.53"])
        XCTAssertEqual(dns.resolver.timeout, .seconds(2))
        XCTAssertEqual(dns.resolver.cacheSize, 500)
        XCTAssertFalse(dns.verifyClientNames)
        XCTAssertTrue(dns.spf)
        XCTAssertNil(dns.authservID)
        let spfOff = try XCTUnwrap(try load("upstreams: [{ url: \"smtp://a\" }]\ndns: { spf: false, authserv_id: mx.example.org }").dns)
        XCTAssertFalse(spfOff.spf)
        XCTAssertEqual(spfOff.authservID, "mx.example.org")
        XCTAssertEqual(errors("upstreams: [{ url: \"smtp://a\" }]\ndns: { authserv_id: \"a b\" }"),
                       ["test.yaml:2:21: dns.authserv_id must be a host name or token without spaces, ';' or '('"])
        let validating = try XCTUnwrap(try load("upstreams: [{ url: \"smtp://a\" }]\ndns: { dnssec: validate }").dns)
        XCTAssertEqual(validating.resolver.dnssec, .validate(trustAnchorFile: "/usr/share/dns/root.key"))
        XCTAssertEqual(validating.resolver.servers, [], "the system's resolv.conf")
        XCTAssertEqual(errors("""
            upstreams: [{ url: "smtp://a" }]
            dns: { servers: [dns.example, "127.0.0.1:0"], timeout: 0s, dnssec: maybe, trust_anchor: /k, cache: 1 }
            """), [
            "test.yaml:2:93: unknown key 'cache' in dns (expected one of: authserv_id, cache_size, dnssec, servers, spf, timeout, trust_anchor, verify_client_names)",
            "test.yaml:2:18: dns.servers: 'dns.example' is not ADDR or ADDR:PORT (an IP address; [IPv6]:PORT)",
            "test.yaml:2:31: dns.servers: '127.0.0.1:0' is not ADDR or ADDR:PORT (an IP address; [IPv6]:PORT)",
            "test.yaml:2:56: dns.timeout must be between 1ms and 60s",
            "test.yaml:2:68: dns.dnssec must be off or validate",
            "test.yaml:2:89: dns.trust_anchor needs dnssec: validate",
        ])
    }

    func testUpstreamProbe() throws {
        let defaults = try load("upstreams: [{ url: \"smtp://a\" }]")
        XCTAssertEqual(defaults.upstreamProbe, UpstreamProbeSettings(interval: .seconds(1), timeout: .seconds(5)))
        XCTAssertTrue(defaults.upstreamProbe.isEnabled)
        let set = try load("upstreams: [{ url: \"smtp://a\" }]\nupstream_probe: { interval: 250ms, timeout: 2s }")
        XCTAssertEqual(set.upstreamProbe.interval, .milliseconds(250))
        XCTAssertEqual(set.upstreamProbe.timeout, .seconds(2))
        XCTAssertFalse(try load("upstreams: [{ url: \"smtp://a\" }]\nupstream_probe: off").upstreamProbe.isEnabled)
        XCTAssertEqual(errors("upstreams: [{ url: \"smtp://a\" }]\nupstream_probe: { interval: 10ms, timeout: 0s, every: 1s }"), [
            "test.yaml:2:48: unknown key 'every' in upstream_probe (expected one of: interval, timeout)",
            "test.yaml:2:29: upstream_probe.interval must be at least 100ms (or upstream_probe: off)",
            "test.yaml:2:44: upstream_probe.timeout must be longer than 0",
        ])
        XCTAssertEqual(errors("upstreams: [{ url: \"smtp://a\" }]\nupstream_probe: sometimes"),
                       ["test.yaml:2:17: upstream_probe must be a mapping"])
    }

    func testPolicyServices() throws {
        let loaded = try load("""
            upstreams: [{ url: "smtp://a" }]
            policy_services:
              - { name: postfwd, address: "inet:127.0.0.1:10040", stages: [rcpt, data], timeout: 10s, default_action: DUNNO, max_connections: 4 }
              - { name: spf, spawn: [/bin/cat, -u] }
            """)
        XCTAssertEqual(loaded.policyServices.map(\.name), ["postfwd", "spf"])
        let postfwd = loaded.policyServices[0]
        XCTAssertEqual(postfwd.address, .inet(host: "127.0.0.1", port: 10040))
        XCTAssertEqual(postfwd.stages, [.rcpt, .data])
        XCTAssertEqual(postfwd.timeout, .seconds(10))
        XCTAssertEqual(postfwd.defaultAction, .dunno)
        XCTAssertEqual(postfwd.maximumConnections, 4)
        let spf = loaded.policyServices[1]
        XCTAssertEqual(spf.address, .spawn(["/bin/cat", "-u"]))
        XCTAssertEqual(spf.stages, [.rcpt], "RCPT by default, as Postfix's usual place")
        XCTAssertEqual(spf.timeout, .seconds(100))
        XCTAssertEqual(spf.defaultAction, .postfix)
        let custom = try load("""
            upstreams: [{ url: "smtp://a" }]
            policy_services: [{ name: p, address: "unix:/run/p.sock", default_action: "450 4.7.1 Policy unavailable" }]
            """)
        XCTAssertEqual(custom.policyServices.first?.defaultAction, .tempfail(SMTPReply(450, EnhancedStatusCode(4, 7, 1), "Policy unavailable")))
    }

    func testPolicyServiceErrors() {
        let found = errors("""
            upstreams: [{ url: "smtp://a" }]
            policy_services:
              - { name: a, address: "tcp:1" }
              - { name: b, spawn: [/nonexistent/policyd] }
              - { name: c }
              - { name: d, address: "inet:h:1", spawn: [/bin/cat] }
              - { name: "e f", address: "inet:h:1" }
              - { name: g, address: "inet:h:1", stages: [queue], default_action: REJECT }
              - { name: g, address: "inet:h:2" }
            """)
        XCTAssertEqual(found, [
            "test.yaml:3:25: policy service address must be inet:HOST:PORT or unix:PATH",
            "test.yaml:4:23: cannot run /nonexistent/policyd (spawn needs an executable program)",
            "test.yaml:5:5: policy service 'c' needs address (inet:HOST:PORT, unix:PATH) or spawn ([program, args…])",
            "test.yaml:6:5: a policy service has address or spawn, not both",
            "test.yaml:7:13: policy service name 'e f' may only have letters, digits, '-' and '_'",
            "test.yaml:8:46: unknown stage 'queue' (expected connect, helo, mail, rcpt or data)",
            "test.yaml:8:70: default_action must be DUNNO or a 4xx reply such as \"451 4.3.5 Server configuration problem\"",
            "test.yaml:9:5: two policy services named 'g'",
        ])
    }

    func testMilters() throws {
        let loaded = try load("""
            upstreams: [{ url: "smtp://a" }]
            milters:
              - { name: rspamd, address: "inet:127.0.0.1:11332", default_action: accept, timeouts: { content: 150s } }
              - name: dkim
                address: unix:/run/opendkim/opendkim.sock
                stages: [data]
                mode: shadow
                macros: { mail: "i {auth_type} {auth_authen}", connect: j }
            """)
        XCTAssertEqual(loaded.milters.map(\.name), ["rspamd", "dkim"], "in chain order")
        let rspamd = loaded.milters[0]
        XCTAssertEqual(rspamd.address, .inet(host: "127.0.0.1", port: 11332))
        XCTAssertEqual(rspamd.stages, Set(PolicyStage.allCases), "every stage by default")
        XCTAssertEqual(rspamd.defaultAction, .accept)
        XCTAssertEqual(rspamd.timeouts, MilterConfiguration.Timeouts(connect: .seconds(30), command: .seconds(30), content: .seconds(150)))
        XCTAssertFalse(rspamd.shadow)
        let dkim = loaded.milters[1]
        XCTAssertEqual(dkim.address, .unix(path: "/run/opendkim/opendkim.sock"))
        XCTAssertEqual(dkim.stages, [.data])
        XCTAssertEqual(dkim.defaultAction, .tempfail, "Postfix's default")
        XCTAssertTrue(dkim.shadow)
        XCTAssertEqual(dkim.macros, [.mail: ["i", "{auth_type}", "{auth_authen}"], .connect: ["j"]])
    }

    func testMilterErrors() {
        let found = errors("""
            upstreams: [{ url: "smtp://a" }]
            policy_services: [{ name: shared, address: "inet:h:1" }]
            milters:
              - { name: a, address: "spawn:/bin/cat" }
              - { name: b }
              - { name: c, address: "inet:h:1", default_action: shutdown, mode: loud }
              - { name: d, address: "inet:h:1", timeouts: { command: 0s, reply: 1s } }
              - { name: e, address: "inet:h:1", macros: { mail: "i {bad name", queue: i } }
              - { name: shared, address: "inet:h:2" }
            """)
        XCTAssertEqual(found, [
            "test.yaml:4:25: milter address must be inet:HOST:PORT or unix:PATH",
            "test.yaml:5:5: milter 'b' needs an address (inet:HOST:PORT or unix:PATH)",
            "test.yaml:6:53: default_action must be accept, tempfail, reject or quarantine",
            "test.yaml:6:69: milters.mode must be enforce or shadow, not 'loud'",
            "test.yaml:7:62: unknown key 'reply' in milters.timeouts (expected one of: command, connect, content)",
            "test.yaml:7:58: milters.timeouts.command must be longer than 0",
            "test.yaml:8:68: unknown key 'queue' in milters.macros (expected one of: connect, data, end_of_headers, end_of_message, helo, mail, rcpt)",
            "test.yaml:8:53: '{bad' is not a macro name (a letter such as j, or {name})",
            "test.yaml:9:5: two checks named 'shared' (milters and policy services share names)",
        ])
    }

    func testTLSPolicies() throws {
        // A fixed path: the error columns below depend on its length.
        let certificate = "/tmp/postern-tls-policy.pem"
        XCTAssertTrue(FileManager.default.createFile(atPath: certificate, contents: Data("x".utf8)))
        defer { try? FileManager.default.removeItem(atPath: certificate) }
        let configuration = try load("""
            upstreams:
              - { url: "smtp://127.0.0.1:25", tls_policy: { min_version: "1.3" } }
              - { url: "smtp://127.0.0.1:26" }
            tls: { certificate: \(certificate), private_key: \(certificate), min_version: 1.0, ciphers: [ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-SHA], curves: [X25519, prime256v1] }
            """)
        let policy = try XCTUnwrap(configuration.tls?.policy)
        XCTAssertEqual(policy, TLSPolicy(minimumVersion: .tls10, ciphers: ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"], curves: ["X25519", "prime256v1"]))
        XCTAssertEqual(configuration.upstreams.map(\.tlsPolicy.minimumVersion), [.tls13, .tls12])
        // The defaults: TLS 1.2, Mozilla's intermediate suites; below 1.2 the CBC suites those versions need join.
        XCTAssertEqual(TLSPolicy().effectiveCiphers, TLSPolicy.intermediateCiphers)
        XCTAssertEqual(TLSPolicy(minimumVersion: .tls11).effectiveCiphers, TLSPolicy.intermediateCiphers + TLSPolicy.legacyCiphers)
        XCTAssertTrue(TLSPolicy.intermediateCiphers.allSatisfy { $0.hasPrefix("ECDHE-") && !$0.hasSuffix("-SHA") })

        XCTAssertEqual(errors("""
            upstreams: [{ url: "smtp://127.0.0.1:25", tls_policy: { min_version: "2", ciphers: [] } }]
            tls: { certificate: \(certificate), private_key: \(certificate), min_version: ssl3, ciphers: [RC4-MD5], curves: [X448] }
            """), [
            "test.yaml:2:105: tls.min_version must be \"1.0\", \"1.1\", \"1.2\" or \"1.3\"",
            "test.yaml:2:120: tls.ciphers 'RC4-MD5' is not a TLS 1.2 cipher suite this build supports (one of: \(TLSPolicy.supportedCiphers.sorted().joined(separator: ", ")))",
            "test.yaml:2:139: tls.curves 'X448' is not a group this build supports (one of: X25519, P-256, P-384, P-521, X25519MLKEM768)",
            "test.yaml:1:70: tls_policy.min_version must be \"1.0\", \"1.1\", \"1.2\" or \"1.3\"",
            "test.yaml:1:84: tls_policy.ciphers names no cipher suite",
        ])
    }

    func testSamples() throws {
        let configuration = try load("""
            upstreams: [{ url: "smtp://127.0.0.1:25" }]
            samples: { directory: /var/lib/postern/samples, fraction: 0.05, max_size: 1MiB, keep: 3d, decisions: [rejected, quarantined], body: false }
            """)
        var expected = SampleStore.Configuration(directory: "/var/lib/postern/samples")
        expected.fraction = 0.05
        expected.maximumSize = 1 << 20
        expected.keep = .hours(72)
        expected.decisions = [.rejected, .quarantined]
        expected.body = false
        XCTAssertEqual(configuration.samples, expected)
        // The defaults: one in a hundred, 256 KB, a week, every decision a message exists for.
        let defaults = try XCTUnwrap(try load("upstreams: [{ url: \"smtp://127.0.0.1:25\" }]\nsamples: { directory: /tmp/s }\n").samples)
        XCTAssertEqual(defaults, SampleStore.Configuration(directory: "/tmp/s"))
        XCTAssertEqual(defaults.fraction, 0.01)
        XCTAssertEqual(defaults.maximumSize, 256_000)
        XCTAssertEqual(defaults.keep, .hours(24 * 7))
        XCTAssertEqual(defaults.decisions, [.accepted, .rejected, .tempfailed, .discarded, .quarantined])
        XCTAssertNil(try load("upstreams: [{ url: \"smtp://127.0.0.1:25\" }]\n").samples)

        XCTAssertEqual(errors("""
            upstreams: [{ url: "smtp://127.0.0.1:25" }]
            samples: { fraction: 2, max_size: 0, keep: 0, decisions: [accepted, aborted], body: maybe, every: 1 }
            """), [
            "test.yaml:2:92: unknown key 'every' in samples (expected one of: body, decisions, directory, fraction, keep, max_size)",
            "test.yaml:2:10: samples needs directory: (where the message samples are kept)",
        ])
        XCTAssertEqual(errors("""
            upstreams: [{ url: "smtp://127.0.0.1:25" }]
            samples: { directory: /tmp/s, fraction: 2, max_size: 0, keep: 0, decisions: [accepted, aborted], body: maybe }
            """), [
            "test.yaml:2:41: samples.fraction must be a number from 0 to 1 (0.01: one message in a hundred)",
            "test.yaml:2:54: samples.max_size must be a size such as 25MiB, 100KB or 1048576",
            "test.yaml:2:63: samples.keep must be longer than 0",
            "test.yaml:2:88: samples.decisions: 'aborted' is not one of accepted, rejected, tempfailed, discarded, quarantined",
            "test.yaml:2:104: samples.body must be true or false",
        ])
    }

    func testDurations() {
        XCTAssertEqual(YAMLReader.parseDuration("30s"), .seconds(30))
        XCTAssertEqual(YAMLReader.parseDuration("30"), .seconds(30))
        XCTAssertEqual(YAMLReader.parseDuration("250ms"), .milliseconds(250))
        XCTAssertEqual(YAMLReader.parseDuration("5m"), .minutes(5))
        XCTAssertEqual(YAMLReader.parseDuration("2h"), .hours(2))
        XCTAssertEqual(YAMLReader.parseDuration("7d"), .hours(7 * 24))
        // Longer than TimeAmount holds (about 292 years): refused, not a crash.
        XCTAssertNil(YAMLReader.parseDuration("999999999h"))
        XCTAssertNil(YAMLReader.parseDuration("999999d"))
        XCTAssertEqual(YAMLReader.parseDuration("106751d"), .hours(106_751 * 24))
        XCTAssertNil(YAMLReader.parseDuration("5 minutes"))
        XCTAssertNil(YAMLReader.parseDuration("-5s"))
        XCTAssertNil(YAMLReader.parseDuration(""))
    }

    func testSizes() {
        XCTAssertEqual(YAMLReader.parseSize("25MiB"), 25 * 1024 * 1024)
        XCTAssertEqual(YAMLReader.parseSize("100KB"), 100_000)
        XCTAssertEqual(YAMLReader.parseSize("1GB"), 1_000_000_000)
        XCTAssertEqual(YAMLReader.parseSize("4096"), 4096)
        XCTAssertNil(YAMLReader.parseSize("lots"))
        XCTAssertNil(YAMLReader.parseSize("10 TB"))
    }

    func testListenerAddresses() {
        XCTAssertEqual(PosternConfiguration.Listener(address: "127.0.0.1:25"), PosternConfiguration.Listener(host: "127.0.0.1", port: 25))
        XCTAssertEqual(PosternConfiguration.Listener(address: ":25"), PosternConfiguration.Listener(host: "0.0.0.0", port: 25))
        XCTAssertEqual(PosternConfiguration.Listener(address: "[::]:25"), PosternConfiguration.Listener(host: "::", port: 25))
        XCTAssertNil(PosternConfiguration.Listener(address: "127.0.0.1"))
        XCTAssertNil(PosternConfiguration.Listener(address: "127.0.0.1:70000"))
    }
}

/// What a reload applies and what it leaves for a restart.
final class ConfigurationChangesTests: XCTestCase {
    private func base() -> PosternConfiguration {
        PosternConfiguration(hostname: "mx.test", listeners: [PosternConfiguration.Listener(host: "127.0.0.1", port: 2525)],
                             upstreams: [UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: 10025))])
    }

    func testReloadableKeysApplyAndTheOthersWaitForARestart() {
        let old = base()
        XCTAssertTrue(ConfigurationChanges(from: old, to: old).isEmpty)
        var new = old
        new.relayDomains = ["example.org"]
        new.limits.maxConnections = 10
        new.upstreams = [UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: 10026))]
        new.listeners[0].requireTLS = true
        new.logLevel = .debug
        new.listeners[0].port = 2526
        let changes = ConfigurationChanges(from: old, to: new)
        XCTAssertEqual(changes.applied, ["relay_domains", "upstreams", "limits", "log_level"])
        XCTAssertEqual(changes.needRestart, ["listen", "listen (require_tls, auth)"], "a moved listener's flags wait with it")
        XCTAssertTrue(changes.upstreamsChanged)

        // What is then in force: the reloadable keys from the file, the others as they were.
        let applied = ConfigurationChanges.applying(new, to: old)
        XCTAssertEqual(applied.relayDomains, ["example.org"])
        XCTAssertEqual(applied.limits.maxConnections, 10)
        XCTAssertEqual(applied.upstreams, new.upstreams)
        XCTAssertEqual(applied.logLevel, .debug)
        XCTAssertEqual(applied.listeners, old.listeners, "a moved listener keeps its old address and flags until a restart")

        // A listener that stays where it is takes its new require_tls.
        var flagOnly = old
        flagOnly.listeners[0].requireTLS = true
        XCTAssertEqual(ConfigurationChanges.applying(flagOnly, to: old).listeners[0].requireTLS, true)
        XCTAssertFalse(ConfigurationChanges(from: old, to: flagOnly).upstreamsChanged)
        XCTAssertEqual(ConfigurationChanges(from: old, to: flagOnly).applied, ["listen (require_tls, auth)"])
    }

    func testAuthAndTheDecisionLogApplyUnlessTheyStartStopOrMoveToStandardOutput() {
        var old = base()
        old.authentication = .init(credentials: "/etc/postern/users")
        old.decisionLog = "/var/log/postern/decisions.log"
        var new = old
        new.authentication?.lockoutFailures = 2
        new.authentication?.credentials = "/etc/postern/users.new"
        new.decisionLog = "/var/log/postern/other.log"
        new.decisionLogRotation = (1_000_000, 3)
        new.decisionLogPrivacy.subject = .hashed
        var changes = ConfigurationChanges(from: old, to: new)
        XCTAssertEqual(changes.applied, ["auth", "decision_log"])
        XCTAssertEqual(changes.needRestart, [])
        let applied = ConfigurationChanges.applying(new, to: old)
        XCTAssertEqual(applied.authentication, new.authentication)
        XCTAssertEqual(applied.decisionLog, "/var/log/postern/other.log")
        XCTAssertEqual(applied.decisionLogRotation?.keep, 3)
        XCTAssertEqual(applied.decisionLogPrivacy.subject, .hashed)

        // AUTH offered where it was not, a log started or moved to standard output: a restart.
        for (name, change) in [("auth", { (c: inout PosternConfiguration) in c.authentication = nil }),
                               ("decision_log", { (c: inout PosternConfiguration) in c.decisionLog = "-" }),
                               ("decision_log", { (c: inout PosternConfiguration) in c.decisionLog = nil })] {
            var other = old
            change(&other)
            changes = ConfigurationChanges(from: old, to: other)
            XCTAssertEqual(changes.needRestart, [name])
            XCTAssertEqual(changes.applied, [])
            XCTAssertEqual(ConfigurationChanges.applying(other, to: old).authentication, old.authentication)
            XCTAssertEqual(ConfigurationChanges.applying(other, to: old).decisionLog, old.decisionLog)
        }
    }
}
