import Logging
import NIOCore
import PosternEngines
import PosternLog
import PosternNative
import PosternUpstream
import SMTPCore

/// Postern's whole configuration. Every field has a default; `ConfigurationLoader` reads
/// the YAML file, and the README documents each key.
public struct PosternConfiguration: Sendable {
    /// A front listener.
    public struct Listener: Hashable, Sendable {
        public var host: String
        public var port: Int
        /// Expect a PROXY protocol v1/v2 header first (from `proxyTrustedNetworks` only).
        public var proxyProtocol = false
        /// Refuse MAIL before STARTTLS (530 5.7.0).
        public var requireTLS = false
        /// When AUTH is offered; nil: `tls` when credentials are configured, else `off`.
        public var auth: AuthenticationOffer?

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

        /// Parses `HOST:PORT`, `[V6]:PORT` or `:PORT` (all IPv4 addresses).
        public init?(address: String) {
            var host: Substring
            let portText: Substring
            if address.hasPrefix("[") {
                guard let close = address.firstIndex(of: "]"), address[address.index(after: close)...].hasPrefix(":") else { return nil }
                host = address[address.index(after: address.startIndex)..<close]
                portText = address[address.index(close, offsetBy: 2)...]
            } else {
                guard let colon = address.lastIndex(of: ":") else { return nil }
                host = address[..<colon]
                portText = address[address.index(after: colon)...]
            }
            if host.isEmpty { host = "0.0.0.0" }
            guard let port = Int(portText), (0...65535).contains(port) else { return nil }
            self.init(host: String(host), port: port)
        }
    }

    public struct TLSFiles: Hashable, Sendable {
        public var certificate: String
        public var privateKey: String
        /// What STARTTLS negotiates (`min_version`, `ciphers`, `curves`).
        public var policy: TLSPolicy
        public init(certificate: String, privateKey: String, policy: TLSPolicy = TLSPolicy()) {
            self.certificate = certificate
            self.privateKey = privateKey
            self.policy = policy
        }
    }

    /// Protocol limits. Each is a named default and is answered with a precise reply.
    public struct Limits: Hashable, Sendable {
        /// RFC 5321 §4.5.3.1.4; longer lines get 500 5.5.2.
        public var commandLineLength = 512
        /// RFC 5321 §4.5.3.1.6; messages with longer lines get 550 5.6.0.
        public var textLineLength = 1000
        /// SIZE; larger messages get 552 5.3.4.
        public var messageSize = 25 * 1024 * 1024
        /// More recipients get 452 4.5.3.
        public var recipientsPerMessage = 100
        /// Past this many client errors: 421 4.7.0 and close.
        public var errorsPerSession = 10
        /// Concurrent sessions in all; more get 421 4.7.0 at connect.
        public var maxConnections = 1000
        /// Concurrent sessions per client address; more get 421 4.7.0 at connect.
        public var maxConnectionsPerIP = 50
        /// NOOP/RSET/VRFY/EXPN/HELP/ETRN since the last message; more get 421 4.7.0.
        public var junkCommands = 100
        /// Octets per second a client must keep up during DATA/BDAT after `dataRateGrace`;
        /// slower gets 421 4.4.2 (slow-loris). 0: off.
        public var minDataRate = 0
        public var dataRateGrace: TimeAmount = .seconds(30)
        public init() {}
    }

    /// Server-side timeouts. RFC 5321 §4.5.3.2.7: at least 5 minutes for the next command.
    public struct Timeouts: Hashable, Sendable {
        public var command: TimeAmount = .minutes(5)
        /// Waiting for the next piece of message content (RFC 5321 §4.5.3.2.5 data block).
        public var data: TimeAmount = .minutes(3)
        /// A PROXY header must arrive this fast.
        public var proxyHeader: TimeAmount = .seconds(10)
        /// A whole session; then 421 4.4.2.
        public var session: TimeAmount = .hours(1)
        /// Pre-greet: wait this long before the 220; a client that talks first gets 554 5.5.1.
        public var greetDelay: TimeAmount = .zero
        public init() {}
    }

    public struct Spool: Hashable, Sendable {
        public var directory = "/tmp"
        /// Messages up to this size stay in memory; larger ones go to an unlinked file.
        public var memoryThreshold = 1024 * 1024
        public init() {}
    }

    /// AUTH (RFC 4954) for clients: who may authenticate, and how failures are slowed.
    public struct Authentication: Hashable, Sendable {
        /// `user:crypt-hash` lines.
        public var credentials: String
        public var failureDelay: TimeAmount = .seconds(1)
        public var lockoutFailures = 5
        public var lockoutWindow: TimeAmount = .minutes(10)
        public var lockoutDuration: TimeAmount = .minutes(15)
        public init(credentials: String) { self.credentials = credentials }
    }

    public var hostname: String
    public var listeners: [Listener]
    /// Domains mail is accepted for from anyone (`example.org`, or `.example.org` for its subdomains).
    public var relayDomains: [String] = []
    /// Clients that may relay to any domain (besides authenticated ones).
    public var trustedNetworks: [IPNetwork] = [IPNetwork("127.0.0.0/8")!, IPNetwork("::1/128")!]
    public var authentication: Authentication?
    public var proxyTrustedNetworks: [IPNetwork] = [IPNetwork("127.0.0.0/8")!, IPNetwork("::1/128")!]
    public var tls: TLSFiles?
    public var upstreams: [UpstreamConfiguration]
    /// Without probes: how long an upstream whose connection failed stays marked down.
    public var upstreamRetryAfter: TimeAmount = .seconds(60)
    /// Probes of an upstream marked down; `.off` leaves it to `upstreamRetryAfter`.
    public var upstreamProbe = UpstreamProbeSettings()
    /// `dns:`: the resolver, and what Postern looks up with it; nil: no DNS at all.
    public var dns: DNSSettings?
    /// Policy servers (Postfix's `check_policy_service`), asked in this order.
    public var policyServices: [PolicyServiceConfiguration] = []
    /// Milter filters, in chain order (Postfix's `smtpd_milters`).
    public var milters: [MilterConfiguration] = []
    public var limits = Limits()
    public var timeouts = Timeouts()
    public var bareLineEndings: SMTPInputFramer.BareLineEndingPolicy = .reject
    /// Commands pipelined before the greeting or after EHLO/HELO end the session with
    /// 554 5.5.0 (RFC 2920 §3.1; Postfix's `smtpd_forbid_unauth_pipelining`).
    public var forbidImproperPipelining = true
    public var spool = Spool()
    public var shutdownGracePeriod: TimeAmount = .seconds(30)
    /// Where decision records go, one JSON line each: a file path, or `-` for standard output.
    public var decisionLog: String?
    /// Built-in size-based rotation of the decision log (`rotate_size`, `rotate_keep`); off when nil.
    public var decisionLogRotation: (maximumSize: Int, keep: Int)?
    /// What the decision log keeps of addresses and subjects.
    public var decisionLogPrivacy = DecisionLogPrivacy()
    /// Diagnostic log lines: `logfmt` (default) or `json`.
    public var logFormat = "logfmt"
    /// The policy file (YAML); no policy when nil: every transaction the protocol allows is relayed.
    public var policy: String?
    /// Where `limit:` rules count (`limits_store`): memory (default) or a shared Redis.
    public var limitsStore: LimitsStore = .memory
    /// The configuration file's version: the first 16 hex digits of its SHA-256 (with any
    /// command-line overrides mixed in), in `/metrics` and in every decision record.
    public var version: String?

    /// The version of a configuration's text (and of what overrides it).
    public static func version(of text: String) -> String {
        String(SHA256.hex(Array(text.utf8)).prefix(16))
    }

    /// The sample store (`samples:`): messages kept for `postern replay`'s content rules; off when nil.
    public var samples: SampleStore.Configuration?
    /// The Maildir that `quarantine` rules keep messages in.
    public var quarantine: String?
    /// Where `/metrics`, `/healthz` and `/readyz` are served; off when nil.
    public var metrics: Listener?
    public var logLevel: Logger.Level = .info

    public init(hostname: String, listeners: [Listener], upstreams: [UpstreamConfiguration]) {
        self.hostname = hostname
        self.listeners = listeners
        self.upstreams = upstreams
    }

    /// The SMTP session settings this configuration implies for one listener.
    public func serverConfiguration(for listener: Listener) -> SMTPServerConfiguration {
        SMTPServerConfiguration(
            hostname: hostname,
            maximumMessageSize: limits.messageSize,
            maximumRecipients: limits.recipientsPerMessage,
            maximumErrors: limits.errorsPerSession,
            maximumCommandLineLength: limits.commandLineLength,
            maximumTextLineLength: limits.textLineLength,
            tlsAvailable: tls != nil,
            requireTLS: listener.requireTLS,
            authentication: authenticationOffer(for: listener),
            maximumJunkCommands: limits.junkCommands)
    }

    /// When `listener` offers AUTH: its own setting, else `tls` when credentials exist.
    /// A `tls` listener without a certificate can never offer it.
    public func authenticationOffer(for listener: Listener) -> AuthenticationOffer {
        guard authentication != nil else { return .off }
        return listener.auth ?? .afterTLS
    }
}

/// `dns: { servers: [ADDR[:PORT], …], timeout: 5s, dnssec: off | validate, trust_anchor: FILE,
/// cache_size: 10000, verify_client_names: true }`.
public struct DNSSettings: Sendable, Hashable {
    public var resolver = DNSResolver.Configuration()
    /// Forward-confirmed reverse DNS of every client before the greeting (XCLIENT NAME=,
    /// the Received header, `client_name` conditions).
    public var verifyClientNames = true
    /// SPF at MAIL (the `spf` condition, and an Authentication-Results header on relayed mail).
    public var spf = true
    /// The authserv-id of Postern's Authentication-Results; nil: the `hostname`.
    public var authservID: String?

    public init() {}
}
