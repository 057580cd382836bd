import PosternNative
import PosternPolicy
import SMTPCore

/// SPF (RFC 7208) as a stage check at MAIL: the MAIL FROM identity, or the HELO identity for
/// the null sender; its result is the `spf` condition's (`facts.checks["spf"]`), and the
/// relayed message gets `Authentication-Results: AUTHSERV-ID; spf=RESULT smtp.mailfrom=…`
/// (RFC 8601). It never refuses by itself: rules decide.
public struct SPFCheck: StageCheck {
    let evaluator: SPFEvaluator
    let authservID: String
    /// The resolver's per-lookup timeout; the whole evaluation may take a few of them.
    let lookupTimeout: Duration
    /// Hears each finding (`postern explain` prints it).
    let observe: (@Sendable (CheckFinding) -> Void)?

    public init(evaluator: SPFEvaluator, authservID: String, lookupTimeout: Duration,
                observe: (@Sendable (CheckFinding) -> Void)? = nil) {
        self.evaluator = evaluator
        self.authservID = authservID
        self.lookupTimeout = lookupTimeout
        self.observe = observe
    }

    public var name: String { "spf" }
    public var ruleName: String { "spf" }
    public var stages: Set<PolicyStage> { [.mail] }
    public var timeout: Duration { lookupTimeout * 4 }
    public var failureMode: CheckFailureMode { .ignore }

    public func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding {
        guard let sender = facts.sender else { return CheckFinding(.pass, detail: "no sender") }
        let helo = facts.helo ?? ""
        let domain: String, identity: String, property: String
        if case .mailbox(let mailbox) = sender {
            domain = mailbox.domain.description
            identity = "\(mailbox.localPart)@\(mailbox.domain)"
            property = "smtp.mailfrom=\(identity)"
        } else {
            domain = helo
            identity = "postmaster@\(helo)"
            property = "smtp.helo=\(helo)"
        }
        let outcome = await evaluator.check(address: facts.clientAddress.unmapped.bytes, domain: domain, sender: identity, helo: helo)
        let header = AddedHeader(name: "Authentication-Results",
                                 value: "\(authservID); spf=\(outcome.result.rawValue) \(Self.comment(outcome)) \(property)")
        let finding = CheckFinding(.pass, detail: "spf=\(outcome.result.rawValue): \(outcome.reason)", headers: [header],
                                   effects: CheckEffects(result: outcome.result.rawValue))
        observe?(finding)
        return finding
    }

    /// An RFC 8601 comment: parentheses and backslashes in the reason escaped.
    static func comment(_ outcome: SPFEvaluator.Outcome) -> String {
        var text = ""
        for character in outcome.reason.prefix(200) {
            if character == "(" || character == ")" || character == "\\" { text.append("\\") }
            if character.isASCII, !character.isNewline { text.append(character) }
        }
        return "(\(text))"
    }
}
