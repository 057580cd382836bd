import NIOCore
import PosternPolicy
import SMTPCore

/// A policy server as a stage check: asks it with the attributes Postfix sends for the stage
/// and turns its access(5) action into a finding.
public struct PolicyServiceCheck: StageCheck {
    public let client: PolicyServiceClient

    public init(client: PolicyServiceClient) {
        self.client = client
    }

    public var name: String { client.configuration.name }
    public var ruleName: String { "policy_service:\(client.configuration.name)" }
    public var isShadow: Bool { client.configuration.shadow }
    public var stages: Set<PolicyStage> { client.configuration.stages }
    /// A little past the client's own deadline, which closes the connection first.
    public var timeout: Duration { client.configuration.timeout + .milliseconds(500) }

    public var failureMode: CheckFailureMode {
        if case .tempfail = client.configuration.defaultAction { return .tempfail }
        return .ignore
    }

    public var failureReply: SMTPReply? {
        if case .tempfail(let reply) = client.configuration.defaultAction { return reply }
        return nil
    }

    public func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding {
        let action = try await client.ask(PolicyDelegation.encode(Self.attributes(stage, facts: facts)))
        return try Self.finding(PolicyAction(action), text: action)
    }

    /// The request Postfix's `check_policy_service` sends at `stage` (SMTPD_POLICY_README).
    public static func attributes(_ stage: PolicyStage, facts: TransactionFacts) -> [(name: String, value: String?)] {
        let state: String
        switch stage {
        case .connect: state = "CONNECT"
        case .helo: state = facts.protocolName == "SMTP" ? "HELO" : "EHLO"
        case .mail: state = "MAIL"
        case .rcpt: state = "RCPT"
        case .data: state = "END-OF-MESSAGE"
        }
        let inTransaction = stage >= .mail
        let recipient: String? = switch stage {
        case .rcpt: facts.recipient.map(Self.address)
        case .data where facts.recipients.count == 1: Self.address(facts.recipients[0])
        default: nil
        }
        return [
            ("request", "smtpd_access_policy"),
            ("protocol_state", state),
            ("protocol_name", facts.protocolName ?? "SMTP"),
            ("helo_name", facts.helo ?? ""),
            ("queue_id", inTransaction ? facts.transactionID : ""),
            ("sender", facts.sender.map { $0.mailbox?.description ?? "" } ?? ""),
            ("recipient", recipient ?? ""),
            ("recipient_count", stage == .data ? "\(facts.recipients.count)" : "0"),
            ("client_address", "\(facts.clientAddress)"),
            // Postern does no reverse DNS yet: Postfix's word for a name it could not find.
            // Postfix: the verified name, and the PTR name whether it verifies or not.
            ("client_name", facts.clientName?.verifiedName ?? "unknown"),
            ("reverse_client_name", facts.clientName?.name ?? "unknown"),
            ("client_port", "\(facts.clientPort)"),
            ("instance", facts.transactionID),
            ("size", "\(facts.size ?? 0)"),
            ("sasl_method", facts.authUser == nil ? "" : "PLAIN"),
            ("sasl_username", facts.authUser ?? ""),
            ("sasl_sender", ""),
            ("encryption_protocol", facts.tlsVersion ?? ""),
            ("encryption_cipher", ""),
            ("encryption_keysize", "0"),
            ("etrn_domain", ""),
            ("stress", ""),
        ]
    }

    private static func address(_ path: ForwardPath) -> String { path.mailbox?.description ?? "postmaster" }

    /// What an action means here. Actions a gateway cannot carry out before the queue
    /// (FILTER, REDIRECT, a restriction name…) are errors: the default action applies.
    static func finding(_ action: PolicyAction, text: String) throws -> CheckFinding {
        let detail = String(text.prefix(200))
        switch action {
        case .accept: return CheckFinding(.accept, detail: detail)
        case .dunno: return CheckFinding(.pass, detail: detail)
        case .reject(let reply): return CheckFinding(.reject(reply), detail: detail)
        case .tempfail(let reply): return CheckFinding(.tempfail(reply), detail: detail)
        case .disconnect(let reply): return CheckFinding(reply.code < 500 ? .tempfail(reply) : .reject(reply), detail: detail)
        case .deferIfPermit(let reply): return CheckFinding(.deferIfPermit(reply), detail: detail)
        case .deferIfReject(let reply): return CheckFinding(.deferIfReject(reply), detail: detail)
        case .prepend(let name, let value): return CheckFinding(.pass, detail: "PREPEND \(name)", headers: [AddedHeader(name: name, value: value)])
        case .discard: return CheckFinding(.discard, detail: detail)
        case .hold: return CheckFinding(.quarantine, detail: detail)
        case .log: return CheckFinding(.pass, detail: detail)
        case .unsupported(let what): throw PolicyServiceError(.protocolError, "an action Postern cannot carry out: \(what)")
        }
    }
}
