import Foundation
import Logging
import NIOCore
import PosternUpstream
import SMTPCore
import PosternEngines
import PosternLog
import PosternNative
import PosternPolicy
import Yams

/// Reads the YAML configuration. Unknown keys and wrong types are errors with their
/// position, so a typo never silently falls back to a default.
public enum ConfigurationLoader {
    /// The configuration `postern serve` uses without `--config`: listen on loopback 2525,
    /// deliver into `var/maildir` under the working directory. Safe on any machine.
    public static let bundledDefault = """
        # Postern's bundled default: a local test setup that needs no MTA.
        hostname: postern.localhost
        listen:
          - address: 127.0.0.1:2525
        upstreams:
          - url: maildir:var/maildir
        spool:
          directory: /tmp
        decision_log: var/decisions.log
        metrics: 127.0.0.1:9125
        """

    /// The configuration file at `path`, or the bundled default when there is none.
    public static func load(fileOrBundled path: String?) throws(ConfigurationErrors) -> PosternConfiguration {
        guard let path else { return try load(yaml: bundledDefault, file: "<bundled default>") }
        return try load(path: path)
    }

    public static func load(path: String) throws(ConfigurationErrors) -> PosternConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationErrors(errors: [ConfigurationError(file: path, line: 1, column: 1, message: "cannot read file: \(error.localizedDescription)")])
        }
        return try load(yaml: text, file: path)
    }

    public static func load(yaml: String, file: String) throws(ConfigurationErrors) -> PosternConfiguration {
        let root = try YAMLReader.compose(yaml, file: file)
        var reader = YAMLReader(file: file)
        var configuration = reader.configuration(root)
        if !reader.errors.isEmpty { throw ConfigurationErrors(errors: reader.errors) }
        configuration.version = PosternConfiguration.version(of: yaml)
        return configuration
    }
}

extension YAMLReader {
    // MARK: The schema

    mutating func configuration(_ root: Node?) -> PosternConfiguration {
        var configuration = PosternConfiguration(
            hostname: Self.systemHostname(),
            listeners: [PosternConfiguration.Listener(host: "127.0.0.1", port: 2525)],
            upstreams: [])
        guard let root else {
            fail(nil, "the configuration is empty")
            return configuration
        }
        let top = mapping(root, "the configuration", keys: [
            "hostname", "listen", "proxy_trusted_networks", "relay_domains", "trusted_networks", "auth", "tls", "upstreams", "upstream_retry_after", "upstream_probe", "dns", "policy_services", "milters", "limits",
            "timeouts", "bare_line_endings", "forbid_improper_pipelining", "spool", "shutdown_grace_period", "log_level", "log_format", "decision_log", "metrics", "policy", "quarantine", "limits_store", "samples",
        ])
        if let node = top["hostname"], let value = string(node, "hostname") {
            if value.isEmpty || value.contains(" ") { fail(node, "hostname must be a domain name") } else { configuration.hostname = value }
        }
        if let node = top["listen"] {
            let entries = sequence(node, "listen")
            configuration.listeners = entries.compactMap { listener($0) }
            if case .sequence = node, entries.isEmpty { fail(node, "listen needs at least one listener") }
        }
        if let node = top["proxy_trusted_networks"] { configuration.proxyTrustedNetworks = networks(node, "proxy_trusted_networks") }
        if let node = top["trusted_networks"] { configuration.trustedNetworks = networks(node, "trusted_networks") }
        if let node = top["relay_domains"] {
            configuration.relayDomains = sequence(node, "relay_domains").compactMap { entry in
                guard let text = string(entry, "a relay domain") else { return nil }
                guard RelayDomains.isValidEntry(text) else {
                    fail(entry, "not a domain (example.org), a parent domain (.example.org) or an address literal ([192.0.2.1])")
                    return nil
                }
                return text
            }
        }
        if let node = top["auth"] { configuration.authentication = authentication(node) }
        if let node = top["tls"] {
            let entries = mapping(node, "tls", keys: ["certificate", "private_key", "min_version", "ciphers", "curves"])
            let certificate = entries["certificate"].flatMap { string($0, "tls.certificate") }.map { resolvedPath($0) }
            let key = entries["private_key"].flatMap { string($0, "tls.private_key") }.map { resolvedPath($0) }
            if let certificate, let key {
                for (path, entry) in [(certificate, entries["certificate"]!), (key, entries["private_key"]!)]
                where !FileManager.default.isReadableFile(atPath: path) {
                    fail(entry, "cannot read \(path)")
                }
                configuration.tls = .init(certificate: certificate, privateKey: key, policy: tlsPolicy(entries, "tls"))
            } else {
                fail(node, "tls needs both certificate and private_key")
            }
        }
        var upstreamEntries = 0
        if let node = top["upstreams"] {
            let entries = sequence(node, "upstreams")
            upstreamEntries = entries.count
            configuration.upstreams = entries.compactMap { upstream($0) }
        }
        if upstreamEntries == 0 {
            fail(top["upstreams"] ?? root, "at least one upstream is needed (upstreams: [{url: smtp://127.0.0.1:10025}])")
        }
        if let node = top["upstream_retry_after"], let value = duration(node, "upstream_retry_after") { configuration.upstreamRetryAfter = value }
        if let node = top["upstream_probe"] { configuration.upstreamProbe = upstreamProbe(node) }
        if let node = top["dns"] { configuration.dns = dns(node) }
        if let node = top["policy_services"] {
            var names = Set<String>()
            configuration.policyServices = sequence(node, "policy_services").compactMap { entry in
                guard let service = policyService(entry) else { return nil }
                if !names.insert(service.name).inserted { fail(entry, "two policy services named '\(service.name)'") }
                return service
            }
        }
        if let node = top["milters"] {
            // One namespace with the policy services: a name is a check's name in records and metrics.
            var names = Set(configuration.policyServices.map(\.name))
            configuration.milters = sequence(node, "milters").compactMap { entry in
                guard let milter = milter(entry) else { return nil }
                if !names.insert(milter.name).inserted { fail(entry, "two checks named '\(milter.name)' (milters and policy services share names)") }
                return milter
            }
        }
        if let dns = configuration.dns, dns.spf, let node = top["dns"],
           let taken = (configuration.policyServices.map(\.name) + configuration.milters.map(\.name)).first(where: { $0 == "spf" }) {
            fail(node, "a check is named '\(taken)', the name of Postern's own SPF check (dns.spf): rename it, or set dns.spf: false")
        }
        if let node = top["limits"] { configuration.limits = limits(node) }
        if let node = top["timeouts"] {
            let entries = mapping(node, "timeouts", keys: ["command", "data", "proxy_header", "session", "greet_delay"])
            if let entry = entries["session"], let value = duration(entry, "timeouts.session") { configuration.timeouts.session = value }
            if let entry = entries["greet_delay"], let value = duration(entry, "timeouts.greet_delay") {
                if value > .minutes(5) { fail(entry, "timeouts.greet_delay longer than 5m would make clients give up") } else { configuration.timeouts.greetDelay = value }
            }
            if let entry = entries["command"], let value = duration(entry, "timeouts.command") { configuration.timeouts.command = value }
            if let entry = entries["data"], let value = duration(entry, "timeouts.data") { configuration.timeouts.data = value }
            if let entry = entries["proxy_header"], let value = duration(entry, "timeouts.proxy_header") { configuration.timeouts.proxyHeader = value }
        }
        if let node = top["forbid_improper_pipelining"], let value = bool(node, "forbid_improper_pipelining") {
            configuration.forbidImproperPipelining = value
        }
        if let node = top["bare_line_endings"], let text = string(node, "bare_line_endings") {
            if let value = SMTPInputFramer.BareLineEndingPolicy(rawValue: text) { configuration.bareLineEndings = value } else {
                fail(node, "bare_line_endings must be reject or normalise")
            }
        }
        if let node = top["spool"] {
            let entries = mapping(node, "spool", keys: ["directory", "memory_threshold"])
            if let entry = entries["directory"], let value = string(entry, "spool.directory") { configuration.spool.directory = resolvedPath(value) }
            if let entry = entries["memory_threshold"], let value = size(entry, "spool.memory_threshold") { configuration.spool.memoryThreshold = value }
        }
        if let node = top["shutdown_grace_period"], let value = duration(node, "shutdown_grace_period") { configuration.shutdownGracePeriod = value }
        if let node = top["decision_log"] {
            if case .mapping = node {
                let entries = mapping(node, "decision_log", keys: ["path", "rotate_size", "rotate_keep", "local_parts", "subject", "hash_salt"])
                if let entry = entries["path"], let path = string(entry, "decision_log.path"), !path.isEmpty {
                    configuration.decisionLog = path == "-" ? path : resolvedPath(path)
                } else {
                    fail(node, "decision_log needs path: (a file, or - for standard output)")
                }
                if let entry = entries["rotate_size"], let size = size(entry, "decision_log.rotate_size") {
                    var keep = 5
                    if let keepNode = entries["rotate_keep"], let value = integer(keepNode, "decision_log.rotate_keep", range: 0...1000) { keep = value }
                    configuration.decisionLogRotation = (size, keep)
                }
                for (key, assign) in [("local_parts", 0), ("subject", 1)] {
                    guard let entry = entries[key], let text = string(entry, "decision_log.\(key)") else { continue }
                    guard let treatment = DecisionLogPrivacy.Treatment(rawValue: text) else {
                        fail(entry, "decision_log.\(key) must be on, hashed or off")
                        continue
                    }
                    if assign == 0 { configuration.decisionLogPrivacy.localParts = treatment } else { configuration.decisionLogPrivacy.subject = treatment }
                }
                if let entry = entries["hash_salt"], let salt = string(entry, "decision_log.hash_salt") { configuration.decisionLogPrivacy.salt = salt }
            } else if let path = string(node, "decision_log") {
                if path.isEmpty { fail(node, "decision_log must be a file path or -") } else { configuration.decisionLog = path == "-" ? path : resolvedPath(path) }
            }
        }
        if let node = top["samples"] { configuration.samples = samples(node) }
        if let node = top["log_format"], let text = string(node, "log_format") {
            if ["logfmt", "json"].contains(text) { configuration.logFormat = text } else { fail(node, "log_format must be logfmt or json") }
        }
        if let node = top["policy"], let path = string(node, "policy") {
            configuration.policy = resolvedPath(path)
        }
        if let node = top["limits_store"], let store = limitsStore(node) { configuration.limitsStore = store }
        if let node = top["quarantine"], let path = string(node, "quarantine") {
            configuration.quarantine = resolvedPath(path)
        }
        if let node = top["metrics"], let text = string(node, "metrics") {
            if let address = PosternConfiguration.Listener(address: text) { configuration.metrics = address } else {
                fail(node, "metrics must be HOST:PORT, [IPv6]:PORT or :PORT")
            }
        }
        if let node = top["log_level"], let text = string(node, "log_level") {
            if let level = Logger.Level(rawValue: text) { configuration.logLevel = level } else {
                fail(node, "log_level must be one of trace, debug, info, notice, warning, error, critical")
            }
        }
        if let node = top["auth"], configuration.authentication != nil, configuration.tls == nil,
           configuration.listeners.allSatisfy({ configuration.authenticationOffer(for: $0) == .afterTLS }) {
            fail(node, "auth is offered only after STARTTLS and no tls: certificate is configured; add tls:, or auth: always on a protected listener")
        }
        return configuration
    }

    /// `upstream_probe: off`, or `{ interval: 1s, timeout: 5s }`.
    mutating func upstreamProbe(_ node: Node) -> UpstreamProbeSettings {
        var settings = UpstreamProbeSettings()
        if node.scalar?.string == "off" || node.bool == false { return .off }
        let entries = mapping(node, "upstream_probe", keys: ["interval", "timeout"])
        if let entry = entries["interval"], let value = duration(entry, "upstream_probe.interval") {
            if value < .milliseconds(100) { fail(entry, "upstream_probe.interval must be at least 100ms (or upstream_probe: off)") } else { settings.interval = value }
        }
        if let entry = entries["timeout"], let value = duration(entry, "upstream_probe.timeout") {
            if value <= .zero { fail(entry, "upstream_probe.timeout must be longer than 0") } else { settings.timeout = value }
        }
        return settings
    }

    private mutating func listener(_ node: Node) -> PosternConfiguration.Listener? {
        let entries = mapping(node, "a listener", keys: ["address", "proxy_protocol", "require_tls", "auth"])
        guard let addressNode = entries["address"] else {
            fail(node, "a listener needs an address (HOST:PORT)")
            return nil
        }
        guard let text = string(addressNode, "address"), var listener = PosternConfiguration.Listener(address: text) else {
            fail(addressNode, "address must be HOST:PORT, [IPv6]:PORT or :PORT")
            return nil
        }
        if let entry = entries["proxy_protocol"], let value = bool(entry, "proxy_protocol") { listener.proxyProtocol = value }
        if let entry = entries["require_tls"], let value = bool(entry, "require_tls") { listener.requireTLS = value }
        if let entry = entries["auth"], let text = string(entry, "auth") {
            if let value = AuthenticationOffer(rawValue: text) { listener.auth = value } else { fail(entry, "auth must be off, tls or always") }
        }
        return listener
    }

    private mutating func upstream(_ node: Node) -> UpstreamConfiguration? {
        let entries = mapping(node, "an upstream", keys: [
            "url", "tls", "verify_certificate", "helo_name", "auth", "timeouts", "forward_client", "idle_connections", "idle_timeout",
            "tls_policy",
        ])
        guard let urlNode = entries["url"] else {
            fail(node, "an upstream needs a url (smtp://HOST:PORT or maildir:PATH)")
            return nil
        }
        guard let text = string(urlNode, "url"), var target = UpstreamTarget(url: text) else {
            fail(urlNode, "url must be smtp://HOST[:PORT] or maildir:PATH")
            return nil
        }
        if case .maildir(let path) = target { target = .maildir(path: resolvedPath(path)) }
        var upstream = UpstreamConfiguration(target: target)
        if let entry = entries["tls"], let text = string(entry, "tls") {
            if let mode = UpstreamTLSMode(rawValue: text) { upstream.tls = mode } else { fail(entry, "tls must be require, opportunistic or off") }
        }
        if let entry = entries["verify_certificate"], let value = bool(entry, "verify_certificate") { upstream.verifyCertificate = value }
        if let entry = entries["tls_policy"] {
            upstream.tlsPolicy = tlsPolicy(mapping(entry, "tls_policy", keys: ["min_version", "ciphers", "curves"]), "tls_policy")
        }
        if let entry = entries["forward_client"], let text = string(entry, "forward_client") {
            if let mode = ForwardClientMode(rawValue: text) { upstream.forwardClient = mode } else {
                fail(entry, "forward_client must be auto, xclient, xforward or off")
            }
        }
        if let entry = entries["helo_name"], let value = string(entry, "helo_name") { upstream.heloName = value }
        if let entry = entries["idle_connections"], let value = integer(entry, "idle_connections", range: 0...10_000) { upstream.idleConnections = value }
        if let entry = entries["idle_timeout"], let value = duration(entry, "idle_timeout") { upstream.idleTimeout = value }
        if let entry = entries["auth"] {
            let auth = mapping(entry, "auth", keys: ["username", "password"])
            if let user = auth["username"].flatMap({ string($0, "auth.username") }),
               let password = auth["password"].flatMap({ string($0, "auth.password") }) {
                upstream.credentials = UpstreamCredentials(username: user, password: password)
            } else {
                fail(entry, "auth needs username and password")
            }
        }
        if let entry = entries["timeouts"] {
            let keys = ["connect", "greeting", "ehlo", "mail", "rcpt", "data_init", "data_block", "data_termination"]
            let timeouts = mapping(entry, "upstream timeouts", keys: Set(keys))
            for key in keys {
                guard let value = timeouts[key], let amount = duration(value, "timeouts.\(key)") else { continue }
                switch key {
                case "connect": upstream.timeouts.connect = amount
                case "greeting": upstream.timeouts.greeting = amount
                case "ehlo": upstream.timeouts.ehlo = amount
                case "mail": upstream.timeouts.mail = amount
                case "rcpt": upstream.timeouts.rcpt = amount
                case "data_init": upstream.timeouts.dataInitiation = amount
                case "data_block": upstream.timeouts.dataBlock = amount
                default: upstream.timeouts.dataTermination = amount
                }
            }
        }
        return upstream
    }

    private mutating func limits(_ node: Node) -> PosternConfiguration.Limits {
        var limits = PosternConfiguration.Limits()
        let entries = mapping(node, "limits", keys: [
            "command_line_length", "text_line_length", "message_size", "recipients_per_message", "errors_per_session",
            "max_connections", "max_connections_per_ip", "junk_commands", "min_data_rate", "data_rate_grace",
        ])
        if let entry = entries["junk_commands"], let value = integer(entry, "junk_commands", range: 1...1_000_000) { limits.junkCommands = value }
        if let entry = entries["min_data_rate"], let value = integer(entry, "min_data_rate", range: 0...1_000_000_000) { limits.minDataRate = value }
        if let entry = entries["data_rate_grace"], let value = duration(entry, "data_rate_grace") { limits.dataRateGrace = value }
        if let entry = entries["command_line_length"], let value = integer(entry, "command_line_length", range: 512...65536) { limits.commandLineLength = value }
        if let entry = entries["text_line_length"], let value = integer(entry, "text_line_length", range: 1000...1_048_576) { limits.textLineLength = value }
        if let entry = entries["message_size"], let value = size(entry, "message_size") { limits.messageSize = value }
        if let entry = entries["recipients_per_message"], let value = integer(entry, "recipients_per_message", range: 1...100_000) { limits.recipientsPerMessage = value }
        if let entry = entries["errors_per_session"], let value = integer(entry, "errors_per_session", range: 0...10_000) { limits.errorsPerSession = value }
        if let entry = entries["max_connections"], let value = integer(entry, "max_connections", range: 1...1_000_000) { limits.maxConnections = value }
        if let entry = entries["max_connections_per_ip"], let value = integer(entry, "max_connections_per_ip", range: 1...1_000_000) { limits.maxConnectionsPerIP = value }
        return limits
    }

    /// Every path in the configuration goes through here: a relative path is relative to
    /// the directory of the configuration file (not to where Postern was started), and the
    /// result is standardised (`.`, `..` and doubled slashes removed, lexically). The bundled
    /// default, whose "file" is a name in angle brackets, keeps its paths as written,
    /// relative to the working directory, as command-line overrides are.
    func resolvedPath(_ path: String) -> String {
        guard !file.hasPrefix("<"), !path.isEmpty else { return path }
        let url = path.hasPrefix("/")
            ? URL(fileURLWithPath: path)
            : URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent(path)
        return url.standardizedFileURL.path
    }

    private mutating func networks(_ node: Node, _ name: String) -> [IPNetwork] {
        sequence(node, name).compactMap { entry in
            guard let text = string(entry, "a network"), let network = IPNetwork(text) else {
                fail(entry, "not an IP address or CIDR block")
                return nil
            }
            return network
        }
    }

    private mutating func authentication(_ node: Node) -> PosternConfiguration.Authentication? {
        let entries = mapping(node, "auth", keys: ["credentials", "failure_delay", "lockout_failures", "lockout_window", "lockout_duration"])
        guard let entry = entries["credentials"], let path = string(entry, "auth.credentials"), !path.isEmpty else {
            fail(node, "auth needs credentials: (a file of user:crypt-hash lines)")
            return nil
        }
        let resolved = resolvedPath(path)
        var auth = PosternConfiguration.Authentication(credentials: resolved)
        do {
            _ = try CredentialsFile.load(path: resolved)
        } catch {
            fail(entry, "\(error)")
        }
        if let entry = entries["failure_delay"], let value = duration(entry, "auth.failure_delay") {
            if value > .seconds(30) { fail(entry, "auth.failure_delay above 30s keeps sessions open for nothing") } else { auth.failureDelay = value }
        }
        if let entry = entries["lockout_failures"], let value = integer(entry, "auth.lockout_failures", range: 1...10_000) { auth.lockoutFailures = value }
        if let entry = entries["lockout_window"], let value = duration(entry, "auth.lockout_window") { auth.lockoutWindow = value }
        if let entry = entries["lockout_duration"], let value = duration(entry, "auth.lockout_duration") { auth.lockoutDuration = value }
        return auth
    }

    static func systemHostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }
}
