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

    /// `{ name, address: inet:HOST:PORT | unix:PATH, or spawn: [argv…], stages, timeout, default_action, max_connections }`.
    mutating func policyService(_ node: Node) -> PolicyServiceConfiguration? {
        let what = "a policy service"
        let entries = mapping(node, what, keys: ["name", "address", "spawn", "stages", "timeout", "default_action", "max_connections", "max_idle", "mode"])
        guard let nameNode = entries["name"], let name = string(nameNode, "policy_services.name") else {
            if entries["name"] == nil { fail(node, "a policy service needs a name") }
            return nil
        }
        guard name.utf8.allSatisfy({ PathGrammar.isLetDig($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }), !name.isEmpty else {
            fail(nameNode, "policy service name '\(name)' may only have letters, digits, '-' and '_'")
            return nil
        }
        var address: PolicyServiceConfiguration.Address?
        switch (entries["address"], entries["spawn"]) {
        case (let node?, nil):
            if let text = string(node, "policy_services.address") {
                address = PolicyServiceConfiguration.Address(parsing: text)
                if address == nil { fail(node, "policy service address must be inet:HOST:PORT or unix:PATH") }
                if case .unix(let path)? = address { address = .unix(path: resolvedPath(path)) }
            }
        case (nil, let node?):
            let argv = sequence(node, "policy_services.spawn").compactMap { string($0, "a spawn argument") }
            if let program = argv.first {
                let path = resolvedPath(program)
                if FileManager.default.isExecutableFile(atPath: path) {
                    address = .spawn([path] + argv.dropFirst())
                } else {
                    fail(node, "cannot run \(path) (spawn needs an executable program)")
                }
            } else if case .sequence = node {
                fail(node, "spawn needs a program: [/usr/bin/policyd-spf]")
            }
        case (.some, .some):
            fail(node, "a policy service has address or spawn, not both")
        case (nil, nil):
            fail(node, "policy service '\(name)' needs address (inet:HOST:PORT, unix:PATH) or spawn ([program, args…])")
        }
        var service = PolicyServiceConfiguration(name: name, address: address ?? .unix(path: "/"))
        if let node = entries["stages"], let stages = stages(node, "policy_services.stages") { service.stages = stages }
        if let node = entries["timeout"], let value = duration(node, "policy_services.timeout") {
            if value <= .zero { fail(node, "policy_services.timeout must be longer than 0") } else { service.timeout = Duration(value) }
        }
        if let node = entries["max_idle"], let value = duration(node, "policy_services.max_idle") { service.maximumIdle = Duration(value) }
        if let node = entries["max_connections"], let value = integer(node, "policy_services.max_connections", range: 1...1000) {
            service.maximumConnections = value
        }
        if let node = entries["default_action"], let text = string(node, "policy_services.default_action") {
            switch PolicyAction(text) {
            case .dunno: service.defaultAction = .dunno
            case .tempfail(let reply): service.defaultAction = .tempfail(reply)
            default: fail(node, "default_action must be DUNNO or a 4xx reply such as \"451 4.3.5 Server configuration problem\"")
            }
        }
        if let node = entries["mode"] { service.shadow = shadowMode(node, "policy_services.mode") }
        return address == nil ? nil : service
    }

    /// `stages: [rcpt, data]`: nil when none could be read (each problem is reported).
    mutating func stages(_ node: Node, _ what: String) -> Set<PolicyStage>? {
        var stages = Set<PolicyStage>()
        for entry in sequence(node, what) {
            guard let text = string(entry, "a stage") else { continue }
            if let stage = PolicyStage(rawValue: text) { stages.insert(stage) } else {
                fail(entry, "unknown stage '\(text)' (expected connect, helo, mail, rcpt or data)")
            }
        }
        if case .sequence(let list) = node, list.isEmpty { fail(node, "stages needs at least one stage") }
        return stages.isEmpty ? nil : stages
    }

    /// `mode: enforce | shadow`; true for shadow.
    mutating func shadowMode(_ node: Node, _ what: String) -> Bool {
        switch string(node, what) {
        case "shadow"?: return true
        case "enforce"?, nil: return false
        case let other?:
            fail(node, "\(what) must be enforce or shadow, not '\(other)'")
            return false
        }
    }

    /// `min_version: "1.2", ciphers: [NAME…], curves: [X25519, P-256…]` of `tls:` or an upstream's `tls_policy:`.
    mutating func tlsPolicy(_ entries: [String: Node], _ prefix: String) -> TLSPolicy {
        var policy = TLSPolicy()
        if let entry = entries["min_version"], let text = string(entry, "\(prefix).min_version") {
            if let version = TLSPolicy.Version(rawValue: text) { policy.minimumVersion = version } else {
                fail(entry, "\(prefix).min_version must be \"1.0\", \"1.1\", \"1.2\" or \"1.3\"")
            }
        }
        if let entry = entries["ciphers"] {
            let names = sequence(entry, "\(prefix).ciphers").compactMap { string($0, "\(prefix).ciphers") }
            if let problem = TLSPolicy.cipherProblem(names) { fail(entry, "\(prefix).ciphers \(problem)") } else { policy.ciphers = names }
        }
        if let entry = entries["curves"] {
            let names = sequence(entry, "\(prefix).curves").compactMap { string($0, "\(prefix).curves") }
            if let problem = TLSPolicy.curveProblem(names) { fail(entry, "\(prefix).curves \(problem)") } else { policy.curves = names }
        }
        return policy
    }

    /// `samples: { directory: PATH, fraction: 0.01, max_size: 256KB, keep: 7d, decisions: [accepted, …], body: true }`.
    mutating func samples(_ node: Node) -> SampleStore.Configuration? {
        let entries = mapping(node, "samples", keys: ["directory", "fraction", "max_size", "keep", "decisions", "body"])
        guard let entry = entries["directory"], let directory = string(entry, "samples.directory"), !directory.isEmpty else {
            fail(node, "samples needs directory: (where the message samples are kept)")
            return nil
        }
        var samples = SampleStore.Configuration(directory: resolvedPath(directory))
        if let entry = entries["fraction"] {
            if let text = string(entry, "samples.fraction"), let value = Double(text), (0...1).contains(value) {
                samples.fraction = value
            } else {
                fail(entry, "samples.fraction must be a number from 0 to 1 (0.01: one message in a hundred)")
            }
        }
        if let entry = entries["max_size"], let value = size(entry, "samples.max_size") { samples.maximumSize = value }
        if let entry = entries["keep"], let value = duration(entry, "samples.keep") {
            if value > .zero { samples.keep = value } else { fail(entry, "samples.keep must be longer than 0") }
        }
        if let entry = entries["decisions"] {
            var decisions: Set<DecisionRecord.Decision> = []
            for item in sequence(entry, "samples.decisions") {
                guard let text = string(item, "samples.decisions") else { continue }
                if let decision = DecisionRecord.Decision(rawValue: text), SampleStore.Configuration.keepable.contains(decision) {
                    decisions.insert(decision)
                } else {
                    fail(item, "samples.decisions: '\(text)' is not one of accepted, rejected, tempfailed, discarded, quarantined")
                }
            }
            samples.decisions = decisions
        }
        if let entry = entries["body"], let value = bool(entry, "samples.body") { samples.body = value }
        return samples
    }

    /// `{ name, address: inet:HOST:PORT | unix:PATH, stages, timeouts: {connect, command, content},
    /// default_action: accept | tempfail | reject | quarantine, macros: {STAGE: "names…"} }`.
    mutating func milter(_ node: Node) -> MilterConfiguration? {
        let entries = mapping(node, "a milter", keys: ["name", "address", "stages", "timeouts", "default_action", "macros", "mode"])
        guard let nameNode = entries["name"], let name = string(nameNode, "milters.name") else {
            if entries["name"] == nil { fail(node, "a milter needs a name") }
            return nil
        }
        guard name.utf8.allSatisfy({ PathGrammar.isLetDig($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }), !name.isEmpty else {
            fail(nameNode, "milter name '\(name)' may only have letters, digits, '-' and '_'")
            return nil
        }
        guard let addressNode = entries["address"] else {
            fail(node, "milter '\(name)' needs an address (inet:HOST:PORT or unix:PATH)")
            return nil
        }
        guard let text = string(addressNode, "milters.address") else { return nil }
        guard var address = PolicyServiceConfiguration.Address(parsing: text) else {
            fail(addressNode, "milter address must be inet:HOST:PORT or unix:PATH")
            return nil
        }
        if case .unix(let path) = address { address = .unix(path: resolvedPath(path)) }
        var milter = MilterConfiguration(name: name, address: address)
        if let node = entries["stages"], let stages = stages(node, "milters.stages") { milter.stages = stages }
        if let node = entries["timeouts"] {
            let timeouts = mapping(node, "milters.timeouts", keys: ["connect", "command", "content"])
            for (key, path) in [("connect", \MilterConfiguration.Timeouts.connect), ("command", \.command), ("content", \.content)] {
                guard let entry = timeouts[key], let value = duration(entry, "milters.timeouts.\(key)") else { continue }
                if value <= .zero { fail(entry, "milters.timeouts.\(key) must be longer than 0") } else { milter.timeouts[keyPath: path] = Duration(value) }
            }
        }
        if let node = entries["default_action"], let text = string(node, "milters.default_action") {
            if let action = MilterConfiguration.DefaultAction(rawValue: text) { milter.defaultAction = action } else {
                fail(node, "default_action must be accept, tempfail, reject or quarantine")
            }
        }
        if let node = entries["macros"] {
            let lists = mapping(node, "milters.macros", keys: Set(MilterConfiguration.macroStageNames))
            for (key, entry) in lists {
                guard let stage = MilterConfiguration.macroStage(named: key), let text = string(entry, "milters.macros.\(key)") else { continue }
                let names = text.split(separator: " ").map(String.init)
                if let bad = names.first(where: { !Self.isMacroName($0) }) {
                    fail(entry, "'\(bad)' is not a macro name (a letter such as j, or {name})")
                } else {
                    milter.macros[stage] = names
                }
            }
        }
        if let node = entries["mode"] { milter.shadow = shadowMode(node, "milters.mode") }
        return milter
    }

    /// `j`, `_`, or `{name}` of letters, digits and `_`.
    static func isMacroName(_ name: String) -> Bool {
        let word = name.hasPrefix("{") && name.hasSuffix("}") && name.count > 2 ? name.dropFirst().dropLast() : Substring(name)
        guard !word.isEmpty, word.count == 1 || name.hasPrefix("{") else { return false }
        return word.utf8.allSatisfy { PathGrammar.isLetDig($0) || $0 == UInt8(ascii: "_") }
    }

    /// `dns: { servers, timeout, dnssec, trust_anchor, cache_size, verify_client_names }`; the
    /// resolver itself is made (and its servers and trust anchor checked) when the server starts
    /// and by `postern check`.
    mutating func dns(_ node: Node) -> DNSSettings {
        var settings = DNSSettings()
        if node.scalar?.string == "" || node.scalar?.string == "{}" { return settings }
        let entries = mapping(node, "dns", keys: ["servers", "timeout", "dnssec", "trust_anchor", "cache_size", "verify_client_names", "spf", "authserv_id"])
        if let entry = entries["servers"] {
            settings.resolver.servers = sequence(entry, "dns.servers").compactMap { server in
                guard let text = string(server, "a DNS server") else { return nil }
                guard DNSResolver.Configuration.unboundAddress(text) != nil else {
                    fail(server, "dns.servers: '\(text)' is not ADDR or ADDR:PORT (an IP address; [IPv6]:PORT)")
                    return nil
                }
                return text
            }
        }
        if let entry = entries["timeout"], let value = duration(entry, "dns.timeout") {
            if value <= .zero || value > .seconds(60) { fail(entry, "dns.timeout must be between 1ms and 60s") } else {
                settings.resolver.timeout = .nanoseconds(value.nanoseconds)
            }
        }
        var validate = false
        if let entry = entries["dnssec"], let text = string(entry, "dns.dnssec") {
            switch text {
            case "off": break
            case "validate": validate = true
            default: fail(entry, "dns.dnssec must be off or validate")
            }
        }
        if validate {
            let anchor = entries["trust_anchor"].flatMap { string($0, "dns.trust_anchor") }.map(resolvedPath) ?? "/usr/share/dns/root.key"
            settings.resolver.dnssec = .validate(trustAnchorFile: anchor)
        } else if let entry = entries["trust_anchor"] {
            fail(entry, "dns.trust_anchor needs dnssec: validate")
        }
        if let entry = entries["cache_size"], let value = integer(entry, "dns.cache_size", range: 0...10_000_000) {
            settings.resolver.cacheSize = value
        }
        if let entry = entries["verify_client_names"], let value = bool(entry, "dns.verify_client_names") {
            settings.verifyClientNames = value
        }
        if let entry = entries["spf"], let value = bool(entry, "dns.spf") { settings.spf = value }
        if let entry = entries["authserv_id"], let value = string(entry, "dns.authserv_id") {
            if value.isEmpty || value.contains(where: { $0 == ";" || $0 == " " || $0 == "(" || !$0.isASCII }) {
                fail(entry, "dns.authserv_id must be a host name or token without spaces, ';' or '('")
            } else {
                settings.authservID = value
            }
        }
        return settings
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
