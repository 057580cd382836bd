import PosternMIME
import ArgumentParser
import Foundation
import PosternFilters
import PosternPolicy
import SMTPCore

extension Postern {
    /// `postern explain`: evaluates a policy offline (no server, no network) for one made-up
    /// session, the way `SMTPSession` would, and prints every rule with what it did and why.
    struct Explain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show, rule by rule, how the policy would decide a transaction (offline).",
            discussion: """
                Walks the stages as a session does: connect; helo (with --helo); mail (with --from); \
                rcpt once per --to; data (with a message file). Stops where a session would stop. \
                Exit status: 0 accepted, 1 refused (rejected, tempfailed, discarded), 2 bad arguments \
                or policy errors.
                """)

        @Option(name: .customLong("policy"), help: ArgumentHelp("The policy file (YAML). Required.", valueName: "path"))
        var policy: String?

        @Option(name: .customLong("client-ip"), help: ArgumentHelp("The client's IP address. Required.", valueName: "ip"))
        var clientIP: String?

        @Option(help: ArgumentHelp("The EHLO/HELO name.", valueName: "name"))
        var helo: String?

        @Option(help: ArgumentHelp("The envelope sender (MAIL FROM); '<>' is the null sender.", valueName: "address"))
        var from: String?

        @Option(help: ArgumentHelp("An envelope recipient (RCPT TO); repeat for several.", valueName: "address"))
        var to: [String] = []

        @Option(name: .customLong("auth-user"), help: ArgumentHelp("The authenticated (SASL) user.", valueName: "user"))
        var authUser: String?

        @Flag(help: "The session is under STARTTLS.")
        var tls = false

        @Argument(help: ArgumentHelp("The message (RFC 5322, e.g. a .eml file) for data-stage rules.", valueName: "message.eml"))
        var message: String?

        func run() async throws {
            let walk: ExplainWalk
            do {
                walk = try await prepare()
            } catch let error as InvalidConfiguration {
                FileHandle.standardError.write(Data("\(error.message)\n".utf8))
                throw ExitCode(2)
            }
            let report = await walk.run()
            print(report.lines.joined(separator: "\n"))
            if report.refused { throw ExitCode(1) }
        }

        /// Checks the arguments, compiles the policy, reads the message.
        private func prepare() async throws -> ExplainWalk {
            guard let policyPath = policy else { throw InvalidConfiguration(message: "explain needs --policy PATH") }
            guard let clientText = clientIP else { throw InvalidConfiguration(message: "explain needs --client-ip IP") }
            let trimmed = clientText.hasPrefix("[") && clientText.hasSuffix("]") ? String(clientText.dropFirst().dropLast()) : clientText
            guard let address = IPAddress(trimmed) else {
                throw InvalidConfiguration(message: "--client-ip '\(clientText)' is not an IP address (e.g. 192.0.2.10 or 2001:db8::10)")
            }
            if let helo, helo.isEmpty || helo.contains(where: { $0.isWhitespace }) {
                throw InvalidConfiguration(message: "--helo '\(helo)' is not a HELO name (one word, e.g. mail.example.org or [192.0.2.10])")
            }
            let sender = try from.map(Self.reversePath)
            let recipients = try to.map(Self.forwardPath)
            var messageInput: ExplainWalk.MessageInput?
            if let message {
                guard let data = FileManager.default.contents(atPath: message) else {
                    throw InvalidConfiguration(message: "cannot read the message file \(message)")
                }
                messageInput = .init(size: data.count, parsed: MIMEMessage.parse(Self.crlf(data.prefix(Self.contentScanLimit))))
            }
            let compiled: Policy
            do {
                compiled = try BuiltinFilters.compiler.compile(path: policyPath)
            } catch {
                throw InvalidConfiguration(message: error.description)
            }
            let facts = TransactionFacts(
                transactionID: "EXPLAIN", clientAddress: address, clientPort: 0, helo: nil, tls: tls, authUser: authUser)
            return ExplainWalk(
                policy: compiled, policyPath: policyPath, base: facts, helo: helo, sender: sender, recipients: recipients,
                message: messageInput)
        }

        /// As much of a message as a session's content rules look at (SMTPSession.contentScanLimit).
        static let contentScanLimit = 10 * 1024 * 1024

        /// The message with CRLF line ends, as a session hands it to the policy.
        static func crlf(_ bytes: Data) -> [UInt8] {
            var out: [UInt8] = []
            out.reserveCapacity(bytes.count + bytes.count / 32)
            var previous: UInt8 = 0
            for byte in bytes {
                if byte == 0x0A && previous != 0x0D { out.append(0x0D) }
                out.append(byte)
                previous = byte
            }
            return out
        }

        static func reversePath(_ text: String) throws -> ReversePath {
            if text == "<>" || text.isEmpty { return .null }
            let path = text.hasPrefix("<") ? text : "<\(text)>"
            guard case .mail(let parsed, _)? = try? SMTPCommandParser().parse(Array("MAIL FROM:\(path)".utf8)) else {
                throw InvalidConfiguration(message: "--from '\(text)' is not an address (local@domain, or '<>' for the null sender)")
            }
            return parsed
        }

        static func forwardPath(_ text: String) throws -> ForwardPath {
            let path = text.hasPrefix("<") ? text : "<\(text)>"
            guard case .rcpt(let parsed, _)? = try? SMTPCommandParser().parse(Array("RCPT TO:\(path)".utf8)) else {
                throw InvalidConfiguration(message: "--to '\(text)' is not an address (local@domain or postmaster)")
            }
            return parsed
        }
    }
}

/// One offline session through the policy, stage by stage, mirroring `SMTPSession`'s
/// `evaluatePolicy` / `policyRefusal`: a refusal at connect, helo or mail ends it; a refused
/// RCPT refuses that recipient only; an `accept` at connect or helo ends policy for the
/// session, at mail or rcpt for the transaction.
struct ExplainWalk {
    struct MessageInput {
        var size: Int
        var parsed: MIMEMessage
    }

    struct Report {
        var lines: [String]
        var refused: Bool
    }

    /// One printed rule line.
    private struct Line {
        var label: String
        var explanation: RuleExplanation
    }

    private struct Refusal {
        var stage: PolicyStage
        var rule: String
        var action: RuleAction
        var reply: SMTPReply
        var recipient: ForwardPath?
    }

    let policy: Policy
    let policyPath: String
    let base: TransactionFacts
    let helo: String?
    let sender: ReversePath?
    let recipients: [ForwardPath]
    let message: MessageInput?

    func run() async -> Report {
        var lines: [Line] = []
        var shadow: [(RuleExplanation, String?)] = []
        /// Why every later stage is skipped (a refusal at connect/helo/mail, an accept at connect/helo).
        var sessionStop: String?
        /// True when that stop is an accept (the mail is relayed, policy is over).
        var sessionAccepted = false
        /// Why later transaction stages are skipped (an accept at mail/rcpt).
        var transactionStop: String?
        var refusal: Refusal?
        var recipientRefusals: [Refusal] = []
        var accepted: [ForwardPath] = []
        var acceptedBy: (stage: PolicyStage, rule: String)?
        var headerActions: [RuleAction] = []

        func add(_ explanations: [RuleExplanation], label: String) {
            lines += explanations.map { Line(label: label, explanation: $0) }
        }
        func skip(_ stage: PolicyStage, _ why: String, label: String? = nil) {
            add(PolicyExplainer.skipped(policy, stage: stage, why: why), label: label ?? "[\(stage.rawValue)]")
        }
        /// Runs one stage; returns its verdict after recording lines, shadow hits and the decision.
        func evaluate(_ stage: PolicyStage, _ facts: TransactionFacts, label: String, recipient: ForwardPath? = nil) async -> PolicyVerdict {
            let result = await PolicyExplainer.explainStage(policy, stage: stage, facts: facts)
            add(result.rules, label: label)
            for rule in result.rules where rule.mode == .shadow && rule.matched {
                shadow.append((rule, recipient.map(Self.display)))
            }
            if case .decided(let action, let reply) = result.verdict.outcome, let rule = result.verdict.rule {
                let decision = Refusal(stage: stage, rule: rule, action: action, reply: reply, recipient: recipient)
                if stage == .rcpt { recipientRefusals.append(decision) } else { refusal = decision }
            } else if result.verdict.outcome == .accept, let rule = result.verdict.rule {
                acceptedBy = acceptedBy ?? (stage, rule)
            }
            return result.verdict
        }

        // connect
        var facts = base
        let connect = await evaluate(.connect, facts, label: "[connect]")
        if let rule = connect.rule {
            sessionAccepted = connect.outcome == .accept
            sessionStop = sessionAccepted ? PolicyExplainer.acceptEnded(at: .connect) : PolicyExplainer.earlierRuleDecided(rule)
        }

        // helo (a session runs these when the client says MAIL, before the mail rules)
        facts.helo = helo
        if let sessionStop {
            skip(.helo, sessionStop)
        } else if helo == nil {
            skip(.helo, "no HELO given (--helo)")
        } else {
            facts.sender = sender
            let verdict = await evaluate(.helo, facts, label: "[helo]")
            if let rule = verdict.rule {
                sessionAccepted = verdict.outcome == .accept
                sessionStop = sessionAccepted ? PolicyExplainer.acceptEnded(at: .helo) : PolicyExplainer.earlierRuleDecided(rule)
            }
        }

        // mail
        facts.sender = sender
        if let sessionStop {
            skip(.mail, sessionStop)
        } else if sender == nil {
            skip(.mail, "no sender given (--from)")
        } else {
            let verdict = await evaluate(.mail, facts, label: "[mail]")
            if let rule = verdict.rule {
                if verdict.outcome == .accept {
                    transactionStop = PolicyExplainer.acceptEnded(at: .mail)
                } else {
                    sessionStop = PolicyExplainer.earlierRuleDecided(rule)
                }
            }
        }

        // rcpt, once per recipient
        if recipients.isEmpty {
            skip(.rcpt, sessionStop ?? (sender == nil ? "no sender given (--from)" : "no recipient given (--to)"))
        }
        for recipient in recipients {
            let label = "[rcpt \(Self.display(recipient))]"
            if let why = sessionStop ?? (sender == nil ? "no sender given (--from)" : nil) ?? transactionStop {
                skip(.rcpt, why, label: label)
                // Policy is over after an accept: the recipient goes on to the upstream.
                if (sessionStop == nil || sessionAccepted) && sender != nil { accepted.append(recipient) }
                continue
            }
            var rcptFacts = facts
            rcptFacts.recipient = recipient
            rcptFacts.recipients = accepted
            let verdict = await evaluate(.rcpt, rcptFacts, label: label, recipient: recipient)
            switch verdict.outcome {
            case .decided: continue
            case .accept:
                transactionStop = PolicyExplainer.acceptEnded(at: .rcpt)
                accepted.append(recipient)
            case .pass:
                accepted.append(recipient)
            }
        }

        // data
        let allRecipientsRefused = !recipients.isEmpty && accepted.isEmpty
        if let why = sessionStop ?? (sender == nil ? "no sender given (--from)" : nil)
            ?? (recipients.isEmpty ? "no recipient given (--to)" : nil)
            ?? (allRecipientsRefused ? "no recipient was accepted" : nil) ?? transactionStop
            ?? (message == nil ? "no message given" : nil) {
            skip(.data, why)
        } else if let message {
            var dataFacts = facts
            dataFacts.recipient = nil
            dataFacts.recipients = accepted
            dataFacts.size = message.size
            dataFacts.message = message.parsed
            let verdict = await evaluate(.data, dataFacts, label: "[data]")
            // As the session does: headers are added when the message is relayed (accept or pass).
            if case .decided = verdict.outcome {} else { headerActions = verdict.headerActions }
        }

        // The report.
        var output = ["Policy: \(policyPath) (\(policy.rules.count) rule\(policy.rules.count == 1 ? "" : "s"), version \(policy.version))"]
        let labelWidth = lines.map(\.label.count).max() ?? 0
        let idWidth = lines.map(\.explanation.rule.count).max() ?? 0
        for line in lines {
            output.append("  " + Self.pad(line.label, labelWidth) + " " + Self.pad(line.explanation.rule, idWidth) + "  "
                          + Self.describe(line.explanation))
        }
        if lines.isEmpty { output.append("  (the policy has no rules)") }

        var refused = false
        if let refusal {
            refused = true
            output.append("Verdict: \(Self.pastTense(refusal.action)) at \(refusal.stage.rawValue) by rule \(refusal.rule)")
            output.append("Reply: \(refusal.reply)")
        } else if allRecipientsRefused, let first = recipientRefusals.first {
            refused = true
            output.append("Verdict: \(Self.pastTense(first.action)) at rcpt by rule \(first.rule)")
            if recipientRefusals.count == 1 {
                output.append("Reply: \(first.reply)")
            } else {
                for each in recipientRefusals {
                    output.append("Reply to \(Self.display(each.recipient)): \(each.reply) (rule \(each.rule))")
                }
            }
        } else {
            let by = acceptedBy.map { " at \($0.stage.rawValue) by rule \($0.rule)" } ?? ""
            if sender != nil && !accepted.isEmpty {
                output.append("Verdict: accepted\(by) (relayed)")
            } else {
                output.append("Verdict: accepted\(by) (nothing to relay without --from and --to)")
            }
            for each in recipientRefusals {
                output.append("Recipient \(Self.display(each.recipient)) \(Self.pastTense(each.action)) by rule \(each.rule): \(each.reply)")
            }
            for case .addHeader(let name, let value) in headerActions {
                output.append("Add header: \(name): \(value)")
            }
        }
        for (hit, recipient) in shadow {
            output.append("Shadow: \(hit.rule) would have \(Self.pastTense(hit.action)) at \(hit.stage.rawValue)"
                          + (recipient.map { " (\($0))" } ?? ""))
        }
        return Report(lines: output, refused: refused)
    }

    static func describe(_ explanation: RuleExplanation) -> String {
        switch explanation.outcome {
        case .notMatched:
            return "not matched"
        case .skipped(let why):
            return "skipped: \(why)"
        case .matched(let reason):
            if explanation.mode == .shadow {
                return "MATCHED (shadow) -> would have \(pastTense(explanation.action)): \(reason)"
            }
            var action = explanation.actionName
            if case .addHeader(let name, let value) = explanation.action { action += " \"\(name): \(value)\"" }
            return "MATCHED (enforce) -> \(action): \(reason)"
        }
    }

    static func pastTense(_ action: RuleAction) -> String {
        switch action {
        case .accept: return "accepted"
        case .reject: return "rejected"
        case .tempfail: return "tempfailed"
        case .discard: return "discarded"
        case .quarantine: return "quarantined"
        case .addHeader: return "added a header"
        case .tagSubject: return "tagged the subject"
        case .continue: return "continued"
        }
    }

    static func display(_ path: ForwardPath?) -> String {
        guard let path else { return "" }
        return path.mailbox?.description ?? "postmaster"
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}
