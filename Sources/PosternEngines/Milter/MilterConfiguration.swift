import PosternPolicy
import SMTPCore

/// One milter filter (Postfix's `smtpd_milters` entry), as configured.
public struct MilterConfiguration: Hashable, Sendable {
    /// What a filter that is down, too slow or breaks the protocol means (Postfix's
    /// `milter_default_action`). The failure lasts for the rest of the client's session.
    public enum DefaultAction: String, Hashable, Sendable, CaseIterable {
        /// As if the filter were not there.
        case accept
        /// 451 4.7.1 Service unavailable - try again later (Postfix's default).
        case tempfail
        /// 550 5.5.0 Service unavailable.
        case reject
        /// Accept, and keep the message in the quarantine.
        case quarantine
    }

    public struct Timeouts: Hashable, Sendable {
        /// Connecting and option negotiation.
        public var connect: Duration
        /// Each of CONNECT, HELO, MAIL, RCPT, DATA and its answer.
        public var command: Duration
        /// Each header, end of headers, body chunk and end of message, and its answer.
        public var content: Duration

        /// Postfix's `milter_connect_timeout`, `milter_command_timeout`, `milter_content_timeout`.
        public init(connect: Duration = .seconds(30), command: Duration = .seconds(30), content: Duration = .seconds(300)) {
            self.connect = connect
            self.command = command
            self.content = content
        }
    }

    public var name: String
    /// `inet:HOST:PORT` or `unix:PATH` (never `spawn`).
    public var address: PolicyServiceConfiguration.Address
    /// Where Postern calls the filter. The events of stages left out are sent with the next
    /// stage that is in (the protocol needs CONNECT first, then HELO, MAIL and RCPT).
    public var stages: Set<PolicyStage>
    public var timeouts: Timeouts
    public var defaultAction: DefaultAction
    /// Macro names per stage, replacing Postern's defaults for that stage (a filter's own
    /// request at negotiation replaces both).
    public var macros: [Milter.MacroStage: [String]]
    /// `mode: shadow`: the filter is asked and its answer recorded; it decides and changes nothing.
    public var shadow = false

    public init(name: String, address: PolicyServiceConfiguration.Address, stages: Set<PolicyStage> = Set(PolicyStage.allCases),
                timeouts: Timeouts = Timeouts(), defaultAction: DefaultAction = .tempfail, macros: [Milter.MacroStage: [String]] = [:]) {
        self.name = name
        self.address = address
        self.stages = stages
        self.timeouts = timeouts
        self.defaultAction = defaultAction
        self.macros = macros
    }

    /// The macros Postern sends when neither the configuration nor the filter names others:
    /// Postfix 3.7's defaults, plus the client's address, name and port at connect.
    public static let defaultMacros: [Milter.MacroStage: [String]] = [
        .connect: ["j", "{daemon_name}", "{daemon_addr}", "v", "_", "{client_addr}", "{client_name}", "{client_port}"],
        .helo: ["{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"],
        .mail: ["i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}"],
        .recipient: ["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
        .data: ["i"],
        .endOfHeaders: ["i"],
        .endOfMessage: ["i"],
    ]

    /// The configuration's name of a macro stage (`macros:` keys).
    public static func macroStage(named name: String) -> Milter.MacroStage? {
        switch name {
        case "connect": return .connect
        case "helo": return .helo
        case "mail": return .mail
        case "rcpt": return .recipient
        case "data": return .data
        case "end_of_headers", "eoh": return .endOfHeaders
        case "end_of_message", "eom": return .endOfMessage
        default: return nil
        }
    }

    public static let macroStageNames = ["connect", "helo", "mail", "rcpt", "data", "end_of_headers", "end_of_message"]
}
