import NIOCore
import PosternPolicy
import SMTPCore

/// What one listener's sessions share: built once per listener, held by reference by every
/// session. Every limit is a named default in the server's configuration.
public final class SessionConfiguration: Sendable {
    /// Command order, extensions offered, protocol limits.
    public let server: SMTPServerConfiguration
    public let timeouts: SessionTimeouts
    /// A bare CR or LF in message content (`bare_line_endings`).
    public let bareLineEndings: SMTPInputFramer.BareLineEndingPolicy
    /// Octets per second a client must keep up during content once `dataRateGrace` has
    /// passed (`limits.min_data_rate`); 0: off.
    public let minimumDataRate: Int
    public let dataRateGrace: TimeAmount
    /// The listener expects a PROXY header first, from these peers only.
    public let proxyProtocol: Bool
    public let proxyTrustedNetworks: [IPNetwork]
    /// Who may relay where (the fixed first step at RCPT).
    public let relayControl: RelayControl
    /// A failed AUTH is answered this late (`auth.failure_delay`).
    public let authFailureDelay: TimeAmount
    /// Refuse commands pipelined before the greeting or after EHLO/HELO
    /// (`forbid_improper_pipelining`, as Postfix's `smtpd_forbid_unauth_pipelining`).
    public let forbidImproperPipelining: Bool
    /// Stages at which a check of the pipeline runs besides the rules.
    public let checkedStages: Set<PolicyStage>
    /// Postern's Authentication-Results authserv-id (with SPF on): incoming fields claiming it
    /// are removed from relayed messages (RFC 8601 §5).
    public let authservID: String?

    public init(
        server: SMTPServerConfiguration, timeouts: SessionTimeouts = SessionTimeouts(),
        bareLineEndings: SMTPInputFramer.BareLineEndingPolicy = .reject, minimumDataRate: Int = 0,
        dataRateGrace: TimeAmount = .seconds(30), proxyProtocol: Bool = false, proxyTrustedNetworks: [IPNetwork] = [],
        relayControl: RelayControl = RelayControl(relayDomains: [], trustedNetworks: []), authFailureDelay: TimeAmount = .seconds(1),
        forbidImproperPipelining: Bool = true, checkedStages: Set<PolicyStage> = [], authservID: String? = nil
    ) {
        self.authservID = authservID
        self.server = server
        self.timeouts = timeouts
        self.bareLineEndings = bareLineEndings
        self.minimumDataRate = minimumDataRate
        self.dataRateGrace = dataRateGrace
        self.proxyProtocol = proxyProtocol
        self.proxyTrustedNetworks = proxyTrustedNetworks
        self.relayControl = relayControl
        self.authFailureDelay = authFailureDelay
        self.forbidImproperPipelining = forbidImproperPipelining
        self.checkedStages = checkedStages
    }

    public var hostname: String { server.hostname }
}

/// Server-side timeouts. RFC 5321 §4.5.3.2.7: at least 5 minutes for the next command.
public struct SessionTimeouts: Hashable, Sendable {
    /// Waiting for the next command (and for each SASL response).
    public var command: TimeAmount = .minutes(5)
    /// Waiting for the next piece of message content (RFC 5321 §4.5.3.2.5, data block).
    public var data: TimeAmount = .minutes(3)
    /// A PROXY header must arrive this fast.
    public var proxyHeader: TimeAmount = .seconds(10)
    /// A whole session; then 421 4.4.2.
    public var session: TimeAmount = .hours(1)
    /// Pre-greet: wait this long before the 220; a client that talks first gets 554 5.5.1.
    public var greetDelay: TimeAmount = .zero
    /// A STARTTLS handshake must complete this fast (the command timeout by default).
    public var tlsHandshake: TimeAmount = .minutes(5)

    public init() {}
}

/// Where a session's client is, after any PROXY header.
public struct ClientEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: Int
    /// What forward-confirmed reverse DNS found (nil: no resolver configured, or not looked up).
    public var name: ClientName?

    public init(address: IPAddress, port: Int, name: ClientName? = nil) {
        self.address = address
        self.port = port
        self.name = name
    }

    public var description: String { "\(address):\(port)" }
}
