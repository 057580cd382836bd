import SMTPCore
import NIOCore

/// Where accepted mail goes: an SMTP server, or a local Maildir.
public enum UpstreamTarget: Hashable, Sendable, CustomStringConvertible {
    case smtp(host: String, port: Int)
    case maildir(path: String)

    /// Parses `smtp://host[:port]` (port 25 by default) or `maildir:PATH`.
    public init?(url: String) {
        if url.hasPrefix("maildir:") {
            var path = String(url.dropFirst("maildir:".count))
            if path.hasPrefix("//") { path = String(path.dropFirst(2)) }
            guard !path.isEmpty else { return nil }
            self = .maildir(path: path)
            return
        }
        guard url.lowercased().hasPrefix("smtp://") else { return nil }
        var rest = Substring(url.dropFirst("smtp://".count))
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        let host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            // [IPv6]:port — the brackets must hold an IPv6 address.
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            guard let address = IPAddress(String(host)), address.isIPv6 else { return nil }
            let tail = rest[rest.index(after: close)...]
            if !tail.isEmpty {
                guard tail.hasPrefix(":") else { return nil }
                portText = tail.dropFirst()
            }
        } else {
            let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { return nil } // a bare IPv6 address needs brackets
            host = parts[0]
            portText = parts.count == 2 ? parts[1] : nil
            // A host name (letters, digits, '-', '.') or an IPv4 address.
            guard !host.isEmpty, host.utf8.allSatisfy({ PathGrammar.isLetDig($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }),
                  !host.hasPrefix("-"), !host.hasPrefix(".") else { return nil }
        }
        var port = 25
        if let portText {
            guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0 >= "0" && $0 <= "9" }),
                  let parsed = Int(portText), (1...65535).contains(parsed) else { return nil }
            port = parsed
        }
        self = .smtp(host: String(host), port: port)
    }

    /// How logs, metrics and decision records name it: `host:port` or `maildir:PATH`.
    public var name: String {
        switch self {
        case .smtp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .maildir(let path): return "maildir:\(path)"
        }
    }

    public var description: String {
        switch self {
        case .smtp(let host, let port): return host.contains(":") ? "smtp://[\(host)]:\(port)" : "smtp://\(host):\(port)"
        case .maildir(let path): return "maildir:\(path)"
        }
    }
}

/// STARTTLS toward the upstream.
public enum UpstreamTLSMode: String, Hashable, Sendable {
    /// Fail the upstream when it does not offer STARTTLS or the handshake fails.
    case require
    /// Use STARTTLS when offered.
    case opportunistic
    case off
}

/// How the upstream learns who the real client is (Postfix: XCLIENT_README, XFORWARD_README).
public enum ForwardClientMode: String, Hashable, Sendable {
    /// XCLIENT when the upstream offers it, else XFORWARD when offered, else nothing.
    case auto
    case xclient
    case xforward
    /// Only the Received header says who the client was.
    case off
}

/// The client a relayed session is for, as XCLIENT and XFORWARD describe it.
public struct ClientIdentity: Hashable, Sendable {
    public var address: IPAddress
    public var port: Int
    public var helo: String?
    /// `SMTP` or `ESMTP`.
    public var protocolName: String
    public var login: String?
    /// The client's name as FCrDNS found it; nil: not looked up (`NAME=[UNAVAILABLE]`).
    public var name: ClientName?

    public init(address: IPAddress, port: Int, helo: String?, protocolName: String, login: String? = nil, name: ClientName? = nil) {
        self.address = address
        self.port = port
        self.helo = helo
        self.protocolName = protocolName
        self.login = login
        self.name = name
    }

    /// `ADDR=… PORT=… NAME=… HELO=… PROTO=…` with xtext-encoded values, only the attributes
    /// the server listed after XCLIENT or XFORWARD in its EHLO reply. NAME is the verified
    /// name, `[TEMPUNAVAIL]` after a temporary DNS error, else `[UNAVAILABLE]`.
    func attributes(offered: Set<String>) -> String {
        let address = self.address.unmapped
        var parts: [String] = []
        if offered.contains("ADDR") { parts.append("ADDR=" + (address.isIPv6 ? "IPV6:\(address)" : "\(address)")) }
        if offered.contains("PORT") { parts.append("PORT=\(port)") }
        if offered.contains("NAME") { parts.append("NAME=" + Self.xtext(name?.xclientValue ?? "[UNAVAILABLE]")) }
        if offered.contains("HELO"), let helo { parts.append("HELO=" + Self.xtext(helo)) }
        if offered.contains("PROTO") { parts.append("PROTO=" + protocolName) }
        if offered.contains("LOGIN"), let login { parts.append("LOGIN=" + Self.xtext(login)) }
        if offered.contains("SOURCE") { parts.append("SOURCE=REMOTE") }
        return parts.joined(separator: " ")
    }

    /// RFC 1891 xtext: `+XX` for '+', '=', and anything outside printable ASCII.
    static func xtext(_ value: String) -> String {
        var result = ""
        for byte in value.utf8 {
            if byte > 32 && byte < 127 && byte != UInt8(ascii: "+") && byte != UInt8(ascii: "=") {
                result.unicodeScalars.append(UnicodeScalar(byte))
            } else {
                let hex = String(byte, radix: 16, uppercase: true)
                result += "+" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return result
    }
}

/// Client timeouts per stage; defaults are RFC 5321 §4.5.3.2's.
public struct UpstreamTimeouts: Hashable, Sendable {
    public var connect: TimeAmount = .seconds(30)
    public var greeting: TimeAmount = .minutes(5)
    public var ehlo: TimeAmount = .minutes(5)
    public var mail: TimeAmount = .minutes(5)
    public var rcpt: TimeAmount = .minutes(5)
    public var dataInitiation: TimeAmount = .minutes(2)
    public var dataBlock: TimeAmount = .minutes(3)
    public var dataTermination: TimeAmount = .minutes(10)

    public init() {}
}

public struct UpstreamCredentials: Hashable, Sendable {
    public var username: String
    public var password: String
    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }
}

/// One upstream as configured.
public struct UpstreamConfiguration: Hashable, Sendable {
    public var target: UpstreamTarget
    public var tls: UpstreamTLSMode = .opportunistic
    /// Verify the upstream's certificate chain and name (off only for lab setups).
    public var verifyCertificate = true
    /// The TLS versions, suites and groups offered to the upstream (`tls_policy:`).
    public var tlsPolicy = TLSPolicy()
    /// The name Postern gives in EHLO; the server's hostname when nil.
    public var heloName: String?
    public var credentials: UpstreamCredentials?
    public var timeouts = UpstreamTimeouts()
    /// Tell the upstream who the real client is (XCLIENT / XFORWARD).
    public var forwardClient: ForwardClientMode = .auto
    /// Upstream connections kept open between client sessions (after RSET), ready for the
    /// next session; 0 opens a new connection for every client session. A connection that
    /// carries XCLIENT names one client and is never kept.
    public var idleConnections = 16
    /// How long a kept connection may wait for its next session.
    public var idleTimeout: TimeAmount = .seconds(10)

    public init(target: UpstreamTarget) {
        self.target = target
    }
}

/// One connection to one destination (an SMTP upstream, a Maildir), reused across a client
/// session's transactions. `RelayTarget` and `MaildirTarget` hand out `Delivery`s over it.
protocol UpstreamConnection: AnyObject {
    /// The upstream's name for logs and decision records.
    var upstreamName: String { get }
    /// False once the connection is known to be broken.
    var isUsable: Bool { get }
    /// True when the connection came from the idle pool and has not answered since: the
    /// upstream may have closed it meanwhile, so a failure of its first command deserves one
    /// retry on a new connection.
    var isReused: Bool { get }
    /// The connection as the idle pool keeps it, when it can be kept for another session.
    var keepable: SMTPUpstreamSession? { get }
    func mail(_ path: ReversePath, _ parameters: MailParameters) async throws(UpstreamError) -> SMTPReply
    func recipient(_ path: ForwardPath, _ parameters: RecipientParameters) async throws(UpstreamError) -> SMTPReply
    /// Sends the message; returns the upstream's final reply.
    func message(_ message: OutgoingMessage) async throws(UpstreamError) -> SMTPReply
    /// Abandons the current transaction (RSET).
    func reset() async
    func close() async
    /// Passes `ETRN node` (RFC 1985) outside a transaction; returns the upstream's reply.
    func etrn(_ node: String) async throws(UpstreamError) -> SMTPReply
}
