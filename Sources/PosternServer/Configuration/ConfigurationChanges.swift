/// What a configuration reload (SIGHUP) finds changed between the configuration in force and
/// the file as it is now: the keys it applies (new sessions see them; sessions in flight keep
/// what they started with) and the keys that need a restart (reported, not applied).
struct ConfigurationChanges: Equatable {
    /// Changed keys that apply without rebinding, in the file's key order.
    var applied: [String] = []
    /// Changed keys that need a restart (a new listener, another process setup).
    var needRestart: [String] = []

    var isEmpty: Bool { applied.isEmpty && needRestart.isEmpty }

    /// One top-level key: its name, its value for comparing, and for a key a reload applies,
    /// how it is taken from the new configuration (nil: it needs a restart), and when a
    /// reload can apply it (otherwise that change needs a restart too).
    private struct Key: Sendable {
        var name: String
        var value: @Sendable (PosternConfiguration) -> AnyHashable
        var apply: (@Sendable (inout PosternConfiguration, PosternConfiguration) -> Void)?
        var applies: @Sendable (_ old: PosternConfiguration, _ new: PosternConfiguration) -> Bool = { _, _ in true }

        /// A key that needs a restart.
        init(_ name: String, _ value: @escaping @Sendable (PosternConfiguration) -> AnyHashable) {
            self.name = name
            self.value = value
            apply = nil
        }

        /// A key a reload applies by taking the new value of `field`.
        init<Value: Hashable & Sendable>(_ name: String, reloads field: WritableKeyPath<PosternConfiguration, Value> & Sendable) {
            self.name = name
            value = { AnyHashable($0[keyPath: field]) }
            apply = { $0[keyPath: field] = $1[keyPath: field] }
        }

        init(_ name: String, value: @escaping @Sendable (PosternConfiguration) -> AnyHashable,
             apply: @escaping @Sendable (inout PosternConfiguration, PosternConfiguration) -> Void,
             when applies: @escaping @Sendable (_ old: PosternConfiguration, _ new: PosternConfiguration) -> Bool = { _, _ in true }) {
            self.name = name
            self.value = value
            self.apply = apply
            self.applies = applies
        }

        func canApply(from old: PosternConfiguration, to new: PosternConfiguration) -> Bool {
            apply != nil && applies(old, new)
        }
    }

    /// The decision log's file, rotation and privacy options.
    private static func decisionLog(_ configuration: PosternConfiguration) -> AnyHashable {
        [AnyHashable(configuration.decisionLog), AnyHashable(configuration.decisionLogRotation.map { [$0.maximumSize, $0.keep] }),
         AnyHashable(configuration.decisionLogPrivacy)]
    }

    /// Where and how a listener listens: changing it needs a new socket.
    private static func sockets(_ configuration: PosternConfiguration) -> AnyHashable {
        configuration.listeners.map { [AnyHashable($0.host), AnyHashable($0.port), AnyHashable($0.proxyProtocol)] }
    }

    private static let keys: [Key] = [
        Key("hostname") { $0.hostname },
        Key("listen", sockets),
        // A listener's require_tls and auth apply, when the listeners stay where they are.
        Key("listen (require_tls, auth)", value: { $0.listeners.map { [AnyHashable($0.requireTLS), AnyHashable($0.auth)] } },
            apply: { $0.listeners = $1.listeners }, when: { sockets($0) == sockets($1) }),
        Key("proxy_trusted_networks", reloads: \.proxyTrustedNetworks),
        Key("relay_domains", reloads: \.relayDomains),
        Key("trusted_networks", reloads: \.trustedNetworks),
        // The credentials file and the failure and lockout settings; offering AUTH where it was
        // not (or no longer) needs a restart.
        Key("auth", value: { $0.authentication }, apply: { $0.authentication = $1.authentication },
            when: { ($0.authentication == nil) == ($1.authentication == nil) }),
        Key("tls") { $0.tls },
        Key("upstreams", reloads: \.upstreams),
        Key("upstream_retry_after", reloads: \.upstreamRetryAfter),
        Key("upstream_probe", reloads: \.upstreamProbe),
        Key("dns") { $0.dns },
        Key("policy_services") { $0.policyServices },
        Key("milters") { $0.milters },
        Key("limits", reloads: \.limits),
        Key("timeouts", reloads: \.timeouts),
        Key("bare_line_endings", reloads: \.bareLineEndings),
        Key("forbid_improper_pipelining", reloads: \.forbidImproperPipelining),
        Key("spool") { $0.spool },
        Key("shutdown_grace_period") { $0.shutdownGracePeriod },
        Key("log_level", reloads: \.logLevel),
        Key("log_format") { $0.logFormat },
        // Another file, rotation or privacy options; starting or stopping the log, or moving it
        // to or from standard output, needs a restart.
        Key("decision_log", value: decisionLog, apply: {
            $0.decisionLog = $1.decisionLog
            $0.decisionLogRotation = $1.decisionLogRotation
            $0.decisionLogPrivacy = $1.decisionLogPrivacy
        }, when: { old, new in
            guard let before = old.decisionLog, let after = new.decisionLog else { return old.decisionLog == new.decisionLog }
            return before == after || (before != "-" && after != "-")
        }),
        Key("metrics") { $0.metrics },
        Key("policy") { $0.policy },
        Key("quarantine") { $0.quarantine },
        Key("limits_store") { $0.limitsStore },
        Key("samples") { $0.samples },
    ]

    init(from old: PosternConfiguration, to new: PosternConfiguration) {
        for key in Self.keys where key.value(old) != key.value(new) {
            if key.canApply(from: old, to: new) { applied.append(key.name) } else { needRestart.append(key.name) }
        }
    }

    /// `old` with what a reload applies taken from `new`: the configuration then in force.
    static func applying(_ new: PosternConfiguration, to old: PosternConfiguration) -> PosternConfiguration {
        var result = old
        for key in keys where key.canApply(from: old, to: new) { key.apply?(&result, new) }
        // The file's version now in force (its restart-only keys aside).
        result.version = new.version
        return result
    }

    /// Whether the upstream pool must be built anew (its connections are to other upstreams).
    var upstreamsChanged: Bool {
        applied.contains { ["upstreams", "upstream_retry_after", "upstream_probe"].contains($0) }
    }
}
