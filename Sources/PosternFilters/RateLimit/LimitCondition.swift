import PosternPolicy
import SMTPCore
import Synchronization
import Yams

/// `limit: NAME`: matches when the named limit (from `limits:`) is exceeded. Evaluating it
/// counts: a connection once per session at `connect`, a message once per transaction,
/// each recipient at `rcpt`, the message's bytes at `data`. A refused count consumes nothing.
///     limits: { per_ip: { key: client_ip, count: messages, rate: 100/1h, burst: 20 } }
///     rules:  [ { id: throttle, stage: rcpt, if: { limit: per_ip }, then: tempfail } ]
final class LimitCondition: RateLimitingCondition {
    let limit: PolicyLimit
    let store: any RateLimitStore
    /// For `messages`: each transaction's outcome, so several RCPTs count one message and
    /// get the same answer. Bounded: the oldest entries are forgotten.
    private let outcomes = Mutex<(order: [String], over: [String: ConditionMatch?])>(([], [:]))

    init(limit: PolicyLimit, store: any RateLimitStore) {
        self.limit = limit
        self.store = store
    }

    var filterName: String { "limit" }
    var limitName: String { limit.name }

    var earliestStage: PolicyStage {
        switch limit.counter {
        case .connections: return .connect
        case .messages: return .mail
        case .recipients: return .rcpt
        case .bytes: return .data
        }
    }

    func stageProblem(_ stage: PolicyStage) -> String? {
        switch limit.counter {
        case .connections where stage != .connect:
            return "limit '\(limit.name)' counts connections: it runs at stage connect"
        case .recipients where stage != .rcpt:
            return "limit '\(limit.name)' counts recipients: it runs at stage rcpt"
        case .bytes where stage != .data:
            return "limit '\(limit.name)' counts bytes: it runs at stage data"
        default:
            return nil
        }
    }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        let subject = RateLimitSubject(
            clientAddress: facts.clientAddress.bytes,
            sender: facts.sender.map { $0.mailbox?.description ?? "<>" },
            recipient: facts.recipient.map { $0.mailbox?.description ?? "postmaster" },
            authUser: facts.authUser, country: facts.location?.country)
        guard let key = RateLimitKey.make(limit: limit.name, fields: limit.fields, subject: subject, prefixes: limit.prefixes) else {
            return nil
        }
        if limit.counter == .messages, let known = outcomes.withLock({ $0.over[facts.transactionID] }) {
            return known  // This transaction was counted already: the same answer.
        }
        let cost = limit.counter == .bytes ? (facts.size ?? 0) : 1
        let decision: RateLimitDecision
        do {
            decision = try await store.consume(key: key, cost: cost, spec: limit.spec)
        } catch RateLimitError.storeUnavailable {
            // A shared store configured to fail closed: undecided, so the engine answers 451
            // (and nothing is remembered: the next recipient asks again).
            return ConditionMatch("limit \(limit.name): rate limit store unavailable", isTemporaryFailure: true)
        } catch {
            return nil  // Any other store error never blocks mail (fail open).
        }
        let result = decision.allowed ? nil : over(key, retryAfter: decision.retryAfter)
        if limit.counter == .messages {
            outcomes.withLock { outcomes in
                outcomes.order.append(facts.transactionID)
                outcomes.over[facts.transactionID] = .some(result)
                if outcomes.order.count > 10_000 { outcomes.over.removeValue(forKey: outcomes.order.removeFirst()) }
            }
        }
        return result
    }

    private func over(_ key: String, retryAfter: Duration? = nil) -> ConditionMatch {
        let retry = retryAfter.map { " (retry after \($0.components.seconds)s)" } ?? ""
        return ConditionMatch("limit \(limit.name) (\(limit.spec)) reached for \(key.split(separator: "|").dropFirst().joined(separator: "+"))\(retry)")
    }

    static let make: ConditionFactory = { value, context in
        guard let name = context.reader.string(value, "limit") else { return nil }
        guard let limit = context.limits[name] else {
            let known = context.limits.keys.sorted()
            context.reader.fail(value, "unknown limit '\(name)'" + (known.isEmpty ? " (no limits are defined)" : " (defined: \(known.joined(separator: ", ")))"))
            return nil
        }
        return LimitCondition(limit: limit, store: context.rateLimitStore)
    }
}
