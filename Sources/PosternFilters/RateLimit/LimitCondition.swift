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
    /// get the same answer. Bounded: past `rememberedTransactions` the oldest is forgotten.
    private let outcomes = Mutex(RecentOutcomes<ConditionMatch?>(capacity: LimitCondition.rememberedTransactions))
    /// How many transactions' outcomes a `messages` limit remembers.
    static let rememberedTransactions = 10_000

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
        if limit.counter == .messages, let known = outcomes.withLock({ $0[facts.transactionID] }) {
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
            outcomes.withLock { $0.record(result, for: facts.transactionID) }
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

/// The values of the last `capacity` keys recorded: a dictionary, and a fixed ring of the
/// keys in the order they came, so forgetting the oldest is O(1) (no array shifting under
/// the lock that guards it).
struct RecentOutcomes<Value> {
    let capacity: Int
    private var values: [String: Value] = [:]
    /// The keys held, oldest at `next` once the ring is full.
    private var ring: [String?]
    private var next = 0

    init(capacity: Int) {
        precondition(capacity > 0, "a RecentOutcomes holds at least one key")
        self.capacity = capacity
        ring = Array(repeating: nil, count: capacity)
    }

    /// The value recorded for `key`, when it is still remembered.
    subscript(key: String) -> Value? { values[key] }

    /// How many keys are remembered (at most `capacity`).
    var count: Int { values.count }

    /// Remembers `value` for `key`. A new key takes the oldest one's place when all
    /// `capacity` are in use; a key already held gets the new value and keeps its age.
    mutating func record(_ value: Value, for key: String) {
        guard values.updateValue(value, forKey: key) == nil else { return }
        if let oldest = ring[next] { values.removeValue(forKey: oldest) }
        ring[next] = key
        next = (next + 1) % capacity
    }
}

extension RecentOutcomes: Sendable where Value: Sendable {}
