/// What a configuration reload (SIGHUP) finds changed between the configuration in force and
/// the file as it is now: the keys it applies (new sessions see them; sessions in flight keep
/// what they started with) and the keys that need a restart (reported, not applied).
struct ConfigurationChanges: Equatable {
    /// Changed keys that apply without rebinding, in the file's key order.
    var applied: [String] = []
    /// Changed keys that need a restart (a new listener, another process setup).
    var needRestart: [String] = []

    var isEmpty: Bool { applied.isEmpty && needRestart.isEmpty }

    /// One top-level key: its name, whether a reload applies it, and its value for comparing.
    private struct Key: Sendable {
        var name: String
        var reloadable: Bool
        var value: @Sendable (PosternConfiguration) -> AnyHashable
    }

    private static let keys: [Key] = [
        Key(name: "hostname", reloadable: false) { $0.hostname },
        // Where and how each listener listens needs a new socket; its require_tls and auth do not.
        Key(name: "listen", reloadable: false) { $0.listeners.map { [AnyHashable($0.host), AnyHashable($0.port), AnyHashable($0.proxyProtocol)] } },
        Key(name: "listen (require_tls, auth)", reloadable: true) { $0.listeners.map { [AnyHashable($0.requireTLS), AnyHashable($0.auth)] } },
        Key(name: "proxy_trusted_networks", reloadable: true) { $0.proxyTrustedNetworks },
        Key(name: "relay_domains", reloadable: true) { $0.relayDomains },
        Key(name: "trusted_networks", reloadable: true) { $0.trustedNetworks },
        Key(name: "auth", reloadable: false) { $0.authentication },
        Key(name: "tls", reloadable: false) { $0.tls },
        Key(name: "upstreams", reloadable: true) { $0.upstreams },
        Key(name: "upstream_retry_after", reloadable: true) { $0.upstreamRetryAfter },
        Key(name: "upstream_probe", reloadable: true) { $0.upstreamProbe },
        Key(name: "dns", reloadable: false) { $0.dns },
        Key(name: "policy_services", reloadable: false) { $0.policyServices },
        Key(name: "milters", reloadable: false) { $0.milters },
        Key(name: "limits", reloadable: true) { $0.limits },
        Key(name: "timeouts", reloadable: true) { $0.timeouts },
        Key(name: "bare_line_endings", reloadable: true) { $0.bareLineEndings },
        Key(name: "forbid_improper_pipelining", reloadable: true) { $0.forbidImproperPipelining },
        Key(name: "spool", reloadable: false) { $0.spool },
        Key(name: "shutdown_grace_period", reloadable: false) { $0.shutdownGracePeriod },
        Key(name: "log_level", reloadable: false) { $0.logLevel.rawValue },
        Key(name: "log_format", reloadable: false) { $0.logFormat },
        Key(name: "decision_log", reloadable: false) {
            [AnyHashable($0.decisionLog), AnyHashable($0.decisionLogRotation.map { [$0.maximumSize, $0.keep] }), AnyHashable($0.decisionLogPrivacy)]
        },
        Key(name: "metrics", reloadable: false) { $0.metrics },
        Key(name: "policy", reloadable: false) { $0.policy },
        Key(name: "quarantine", reloadable: false) { $0.quarantine },
        Key(name: "limits_store", reloadable: false) { $0.limitsStore },
        Key(name: "samples", reloadable: false) { $0.samples },
    ]

    init(from old: PosternConfiguration, to new: PosternConfiguration) {
        for key in Self.keys where key.value(old) != key.value(new) {
            if key.reloadable { applied.append(key.name) } else { needRestart.append(key.name) }
        }
    }

    /// `old` with what a reload applies taken from `new`: the configuration then in force.
    static func applying(_ new: PosternConfiguration, to old: PosternConfiguration) -> PosternConfiguration {
        var result = old
        if zip(old.listeners, new.listeners).allSatisfy({ $0.host == $1.host && $0.port == $1.port && $0.proxyProtocol == $1.proxyProtocol })
            && old.listeners.count == new.listeners.count {
            result.listeners = new.listeners
        }
        result.proxyTrustedNetworks = new.proxyTrustedNetworks
        result.relayDomains = new.relayDomains
        result.trustedNetworks = new.trustedNetworks
        result.upstreams = new.upstreams
        result.upstreamRetryAfter = new.upstreamRetryAfter
        result.upstreamProbe = new.upstreamProbe
        result.limits = new.limits
        result.timeouts = new.timeouts
        result.bareLineEndings = new.bareLineEndings
        result.forbidImproperPipelining = new.forbidImproperPipelining
        // The file's version now in force (its restart-only keys aside).
        result.version = new.version
        return result
    }

    /// Whether the upstream pool must be built anew (its connections are to other upstreams).
    var upstreamsChanged: Bool {
        applied.contains { ["upstreams", "upstream_retry_after", "upstream_probe"].contains($0) }
    }
}
