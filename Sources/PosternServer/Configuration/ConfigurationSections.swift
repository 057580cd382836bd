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

/// The sections of the configuration that configure the pipeline's checks (policy
/// services, milters, DNS), TLS policies and the sample store.
extension YAMLReader {
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

}
