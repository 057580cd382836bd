import PosternPolicy
import SMTPCore

/// One policy server (Postfix's `check_policy_service`), as configured.
public struct PolicyServiceConfiguration: Hashable, Sendable {
    public enum Address: Hashable, Sendable, CustomStringConvertible {
        case inet(host: String, port: Int)
        case unix(path: String)
        /// A server on standard input and output, started by Postern (Postfix's `spawn`): argv.
        case spawn([String])

        /// `inet:HOST:PORT` (`inet:[IPv6]:PORT`) or `unix:PATH`.
        public init?(parsing text: String) {
            if text.hasPrefix("unix:") {
                let path = String(text.dropFirst(5))
                guard !path.isEmpty else { return nil }
                self = .unix(path: path)
                return
            }
            guard text.hasPrefix("inet:") else { return nil }
            let rest = text.dropFirst(5)
            guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), (1...65535).contains(port) else {
                return nil
            }
            var host = rest[..<colon]
            if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
            guard !host.isEmpty, !host.contains(" ") else { return nil }
            self = .inet(host: String(host), port: port)
        }

        public var description: String {
            switch self {
            case .inet(let host, let port): return host.contains(":") ? "inet:[\(host)]:\(port)" : "inet:\(host):\(port)"
            case .unix(let path): return "unix:\(path)"
            case .spawn(let argv): return "spawn:\(argv.joined(separator: " "))"
            }
        }
    }

    /// What a failed request (the server down, too slow, or answering nonsense) means.
    public enum DefaultAction: Hashable, Sendable {
        /// Postfix's `smtpd_policy_service_default_action`: `451 4.3.5 Server configuration problem`.
        case tempfail(SMTPReply)
        /// Go on as if the server had said DUNNO (for services that are not critical).
        case dunno

        public static let postfix = DefaultAction.tempfail(SMTPReply(451, EnhancedStatusCode(4, 3, 5), "Server configuration problem"))
    }

    public var name: String
    public var address: Address
    /// Where it is asked; Postfix's usual place is RCPT.
    public var stages: Set<PolicyStage>
    /// For one request: connecting, sending and reading the answer (Postfix's 100s).
    public var timeout: Duration
    public var defaultAction: DefaultAction
    /// Connections (or spawned processes) open at most at once; more requests wait for one.
    public var maximumConnections: Int
    /// A connection idle this long is closed (Postfix's `smtpd_policy_service_max_idle`).
    public var maximumIdle: Duration
    /// `mode: shadow`: the server is asked and its answer recorded; it decides nothing.
    public var shadow = false

    public init(name: String, address: Address, stages: Set<PolicyStage> = [.rcpt], timeout: Duration = .seconds(100),
                defaultAction: DefaultAction = .postfix, maximumConnections: Int = 16, maximumIdle: Duration = .seconds(300)) {
        self.name = name
        self.address = address
        self.stages = stages
        self.timeout = timeout
        self.defaultAction = defaultAction
        self.maximumConnections = maximumConnections
        self.maximumIdle = maximumIdle
    }
}
