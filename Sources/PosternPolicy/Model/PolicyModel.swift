import Foundation
import PosternNative
import SMTPCore

/// Where in the transaction a rule runs (DESIGN.md "The filter pipeline").
public enum PolicyStage: String, CaseIterable, Comparable, Sendable {
    case connect, helo, mail, rcpt, data

    /// The stage's place in a session, from 0 (connect).
    public var ordinal: Int {
        switch self {
        case .connect: return 0
        case .helo: return 1
        case .mail: return 2
        case .rcpt: return 3
        case .data: return 4
        }
    }

    public static func < (lhs: PolicyStage, rhs: PolicyStage) -> Bool {
        lhs.ordinal < rhs.ordinal
    }
}

/// The message as content conditions see it (at `data`): decoded headers, text bodies,
/// attachments. The MIME parser provides it.
public protocol PolicyMessage: Sendable {
    /// Every value of the header `name` (case-insensitive), RFC 2047 encoded words decoded.
    func headerValues(named name: String) -> [String]
    var subjectText: String? { get }
    /// MIME-decoded text parts, converted to UTF-8, HTML parts included.
    var bodyTexts: [String] { get }
    var attachmentList: [(name: String?, type: String)] { get }
    /// The message as received (up to the scan cap).
    var rawBytes: [UInt8] { get }
    /// Where readers keep what they derive from the message once (the content rules' one
    /// pass); nil: nothing is kept, each reader derives again.
    var derivedValues: (any AnyObject & Sendable)? { get }
    /// How many octets a scan of the message covers (`rawBytes.count`), without reading them.
    var scanLength: Int { get }
}

extension PolicyMessage {
    public var derivedValues: (any AnyObject & Sendable)? { nil }
    public var scanLength: Int { rawBytes.count }
}

/// What the policy knows about a transaction when a stage's rules run.
public struct TransactionFacts: Sendable {
    public var transactionID: String
    public var clientAddress: IPAddress
    public var clientPort: Int
    public var helo: String?
    public var tls: Bool
    public var authUser: String?
    /// From MAIL on.
    public var sender: ReversePath?
    /// At `rcpt`: the recipient being decided.
    public var recipient: ForwardPath?
    /// At `data`: every accepted recipient.
    public var recipients: [ForwardPath]
    /// `SIZE=` at `mail`; the octets received at `data`.
    public var size: Int?
    /// At `data`, when the policy has content conditions.
    public var message: (any PolicyMessage)?
    /// Where the client is, when the policy has `geoip:` databases.
    public var location: ClientLocation?
    /// The client's name from forward-confirmed reverse DNS, when a resolver is configured.
    public var clientName: ClientName?
    /// What each of the policy's DNS lists said about the client (asked at connect).
    public var dnsLists: [DNSListResult] = []
    /// The sum of the weights of the DNS lists that list the client.
    public var dnsListScore: Double { dnsLists.reduce(0) { $0 + $1.weight } }
    /// The scores of the rules that matched so far (earlier stages, and earlier rules of this one).
    public var ruleScore: Double = 0
    /// The same for shadow rules: never enforced, recorded.
    public var shadowScore: Double = 0
    /// The running score (`score: { over: N }`): matched rules' scores, the DNS lists' weights
    /// and the engines' scores.
    public var score: Double { ruleScore + dnsListScore + engineScores.reduce(0) { $0 + $1.score } }
    /// The scores engines reported in their spam headers (rspamd's `X-Spamd-Result`,
    /// SpamAssassin's `X-Spam-Status`): the latest outcome of each check that is not in
    /// shadow mode, by check name.
    public var engineScores: [ScoreContribution] { CheckOutcome.scores(Array(earlierChecks.values) + Array(checks.values)) }
    /// What the pipeline's checks found at this stage, by check name.
    public var checks: [String: CheckOutcome] = [:]
    /// What they found at the transaction's earlier stages (the last outcome of each), for
    /// conditions that outlive their stage (`spf` at `data`).
    public var earlierChecks: [String: CheckOutcome] = [:]
    /// `ESMTP` after EHLO, `SMTP` after HELO; nil before either.
    public var protocolName: String?
    /// The TLS version of the session (`TLSv1.3`), when STARTTLS was done.
    public var tlsVersion: String?
    /// The SASL mechanism of a successful AUTH (`PLAIN`).
    public var authMechanism: String?
    /// From MAIL on: the MAIL parameters.
    public var senderParameters: MailParameters?
    /// At `rcpt`: the RCPT parameters of the recipient being decided.
    public var recipientParameters: RecipientParameters?

    public init(transactionID: String, clientAddress: IPAddress, clientPort: Int, helo: String? = nil, tls: Bool = false,
                authUser: String? = nil, sender: ReversePath? = nil, recipient: ForwardPath? = nil,
                recipients: [ForwardPath] = [], size: Int? = nil) {
        self.transactionID = transactionID
        self.clientAddress = clientAddress
        self.clientPort = clientPort
        self.helo = helo
        self.tls = tls
        self.authUser = authUser
        self.sender = sender
        self.recipient = recipient
        self.recipients = recipients
        self.size = size
    }
}

/// Why a condition matched, for the decision log's `reason`: the list entry, the network,
/// the pattern's id — never the message itself.
public struct ConditionMatch: Hashable, Sendable {
    public var reason: String
    /// The condition could not be decided (a shared rate-limit store is unavailable and
    /// configured to fail closed): the engine answers 451 4.7.1 whatever the rule's action.
    public var isTemporaryFailure: Bool
    public init(_ reason: String, isTemporaryFailure: Bool = false) {
        self.reason = reason
        self.isTemporaryFailure = isTemporaryFailure
    }
}

/// A detector. It reports whether it matches; the rule decides what a match means.
public protocol PolicyCondition: Sendable {
    /// The first stage at which the condition has what it needs (`sender` needs `mail`).
    var earliestStage: PolicyStage { get }
    /// Nil when it does not match.
    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch?
    /// True when it reads the message's content (so the session parses it).
    var needsMessage: Bool { get }
    /// The filter's name in metrics (`postern_filter_duration_seconds{filter=…}`).
    var filterName: String { get }
    /// For each content pattern in the condition: the pattern, and the engine that matches it
    /// (`postern check` reports the ones a one-pass scan cannot take).
    var patternEngines: [(pattern: String, engine: PatternEngine)] { get }
    /// True when it reads what one of the pipeline's checks answered (a milter, a policy
    /// server, SPF): `postern replay` does not ask them again.
    var readsCheckAnswers: Bool { get }
}

/// How a content pattern is matched.
public enum PatternEngine: Sendable, Hashable {
    /// In the policy's one Hyperscan pass over the subject; PCRE2 confirms a hit.
    case prefiltered
    /// One character repeated (`X{200}`): a count of the runs of that character rules the
    /// subject in or out; PCRE2 confirms a subject with a run of `minimum`.
    case runCount(minimum: Int)
    /// By PCRE2 alone, and why (a pattern Hyperscan cannot take, the pass turned off).
    case pcre2(String)
    /// By PCRE2, one search per value: the target's values are short (headers, the
    /// subject, attachment names), not worth a pass.
    case shortValues
}

extension PolicyCondition {
    public var patternEngines: [(pattern: String, engine: PatternEngine)] { [] }
    public var needsMessage: Bool { false }
    public var readsCheckAnswers: Bool { false }
    public var filterName: String { String(describing: type(of: self)) }
}

/// A condition that counts against a rate limit: its default tempfail reply is 450 4.7.1,
/// and what it counts decides the stages it may run at.
public protocol RateLimitingCondition: PolicyCondition {
    /// Why the condition cannot count at `stage`, or nil when it can.
    func stageProblem(_ stage: PolicyStage) -> String?
    /// The limit's name in `limits:`.
    var limitName: String { get }
}

/// `any`, `all`, `not` (DESIGN.md).
public struct AnyOfCondition: PolicyCondition {
    public let conditions: [any PolicyCondition]
    public init(_ conditions: [any PolicyCondition]) { self.conditions = conditions }
    public var earliestStage: PolicyStage { conditions.map(\.earliestStage).max() ?? .connect }
    public var needsMessage: Bool { conditions.contains { $0.needsMessage } }
    public var readsCheckAnswers: Bool { conditions.contains { $0.readsCheckAnswers } }
    public var patternEngines: [(pattern: String, engine: PatternEngine)] { conditions.flatMap(\.patternEngines) }
    public var filterName: String { "any" }
    public func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        var undecided: ConditionMatch?
        for condition in conditions {
            guard let match = await condition.evaluate(facts) else { continue }
            if !match.isTemporaryFailure { return match }
            undecided = undecided ?? match  // unknown or false is unknown; unknown or true is true
        }
        return undecided
    }
}

public struct AllOfCondition: PolicyCondition {
    public let conditions: [any PolicyCondition]
    public init(_ conditions: [any PolicyCondition]) { self.conditions = conditions }
    public var earliestStage: PolicyStage { conditions.map(\.earliestStage).max() ?? .connect }
    public var needsMessage: Bool { conditions.contains { $0.needsMessage } }
    public var readsCheckAnswers: Bool { conditions.contains { $0.readsCheckAnswers } }
    public var patternEngines: [(pattern: String, engine: PatternEngine)] { conditions.flatMap(\.patternEngines) }
    public var filterName: String { "all" }
    public func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        var reasons: [String] = []
        var undecided = false
        for condition in conditions {
            guard let match = await condition.evaluate(facts) else { return nil }
            reasons.append(match.reason)
            undecided = undecided || match.isTemporaryFailure
        }
        return ConditionMatch(reasons.joined(separator: " and "), isTemporaryFailure: undecided)
    }
}

public struct NotCondition: PolicyCondition {
    public let condition: any PolicyCondition
    public let description: String
    public init(_ condition: any PolicyCondition, description: String) {
        self.condition = condition
        self.description = description
    }
    public var earliestStage: PolicyStage { condition.earliestStage }
    public var needsMessage: Bool { condition.needsMessage }
    public var readsCheckAnswers: Bool { condition.readsCheckAnswers }
    public var patternEngines: [(pattern: String, engine: PatternEngine)] { condition.patternEngines }
    public var filterName: String { "not" }
    public func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let match = await condition.evaluate(facts) else { return ConditionMatch("not \(description)") }
        return match.isTemporaryFailure ? match : nil  // not unknown is unknown
    }
}

/// What a rule does when its condition matches.
public enum RuleAction: Hashable, Sendable {
    /// Stop evaluating; relay (the rest of this stage and later stages are skipped).
    case accept
    case reject
    case tempfail
    /// Say 250, relay nothing.
    case discard
    /// Keep a copy in the quarantine Maildir; the client gets the rule's reply.
    case quarantine
    case addHeader(name: String, value: String)
    case tagSubject(String)
    case `continue`

    /// Decisive actions end evaluation; the others accumulate.
    public var isDecisive: Bool {
        switch self {
        case .accept, .reject, .tempfail, .discard, .quarantine: return true
        case .addHeader, .tagSubject, .continue: return false
        }
    }

    public var name: String {
        switch self {
        case .accept: return "accept"
        case .reject: return "reject"
        case .tempfail: return "tempfail"
        case .discard: return "discard"
        case .quarantine: return "quarantine"
        case .addHeader: return "add_header"
        case .tagSubject: return "tag_subject"
        case .continue: return "continue"
        }
    }
}

/// `enforce` (default), `shadow` (recorded and counted, never changes the outcome), `off`.
public enum RuleMode: String, Hashable, Sendable {
    case enforce, shadow, off
}

/// A reply with placeholders: `{id}`, `{rule}`, `{client_ip}`, `{sender}`, `{recipient}`.
public struct ReplyTemplate: Hashable, Sendable {
    public var code: Int
    public var enhanced: EnhancedStatusCode?
    public var text: String

    public init(code: Int, enhanced: EnhancedStatusCode?, text: String) {
        self.code = code
        self.enhanced = enhanced
        self.text = text
    }

    /// The placeholders a template may use.
    public static let placeholders: Set<String> = ["id", "rule", "client_ip", "sender", "recipient"]

    /// Parses `550 5.7.1 text…`; the enhanced code is optional.
    public static func parse(_ text: String) -> ReplyTemplate? {
        let words = text.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard let first = words.first, first.count == 3, let code = Int(first), (200...599).contains(code) else { return nil }
        if words.count >= 2, let enhanced = EnhancedStatusCode(parsing: words[1]) {
            guard enhanced.codeClass == code / 100 else { return nil }
            return ReplyTemplate(code: code, enhanced: enhanced, text: words.count == 3 ? String(words[2]) : "")
        }
        return ReplyTemplate(code: code, enhanced: nil, text: words.dropFirst().joined(separator: " "))
    }

    /// Placeholder names used in the text that are not known.
    public var unknownPlaceholders: [String] {
        var unknown: [String] = []
        var rest = Substring(text)
        while let open = rest.firstIndex(of: "{"), let close = rest[open...].firstIndex(of: "}") {
            let name = String(rest[rest.index(after: open)..<close])
            if !Self.placeholders.contains(name) { unknown.append(name) }
            rest = rest[rest.index(after: close)...]
        }
        return unknown
    }

    /// The reply with placeholders filled in (client-supplied values are made printable).
    public func render(rule: String, facts: TransactionFacts) -> SMTPReply {
        let values = [
            "id": facts.transactionID, "rule": rule, "client_ip": "\(facts.clientAddress)",
            "sender": facts.sender.map { $0.mailbox?.description ?? "<>" } ?? "",
            "recipient": facts.recipient?.mailbox?.description ?? "",
        ]
        var rendered = text
        for (name, value) in values {
            rendered = rendered.replacingOccurrences(of: "{\(name)}", with: Self.printable(value))
        }
        return SMTPReply(code, enhanced, rendered)
    }

    private static func printable(_ value: String) -> String {
        String(value.unicodeScalars.prefix(256).map { $0.value < 32 || $0.value == 127 ? "?" : Character($0) })
    }

    /// The default replies; they never reveal which rule matched (the id joins them to the log).
    public static func `default`(for action: RuleAction, stage: PolicyStage, isLimit: Bool) -> ReplyTemplate? {
        switch action {
        case .reject where stage == .connect:
            return ReplyTemplate(code: 554, enhanced: EnhancedStatusCode(5, 7, 1), text: "Service refused (ref {id})")
        case .reject:
            return ReplyTemplate(code: 550, enhanced: EnhancedStatusCode(5, 7, 1), text: "Message refused by policy (ref {id})")
        case .tempfail where isLimit:
            return ReplyTemplate(code: 450, enhanced: EnhancedStatusCode(4, 7, 1), text: "Rate limit reached, try again later (ref {id})")
        case .tempfail:
            return ReplyTemplate(code: 451, enhanced: EnhancedStatusCode(4, 7, 1), text: "Try again later (ref {id})")
        case .discard, .quarantine:
            return ReplyTemplate(code: 250, enhanced: EnhancedStatusCode(2, 0, 0), text: "Ok (ref {id})")
        default:
            return nil
        }
    }
}

/// One rule of the policy.
public struct PolicyRule: Sendable {
    public var id: String
    public var stage: PolicyStage
    public var condition: any PolicyCondition
    public var action: RuleAction
    public var mode: RuleMode
    /// The reply for decisive actions other than accept.
    public var reply: ReplyTemplate?
    /// Added to the transaction's running score when the rule matches (`score: N`).
    public var score: Double?

    public init(id: String, stage: PolicyStage, condition: any PolicyCondition, action: RuleAction, mode: RuleMode, reply: ReplyTemplate?,
                score: Double? = nil) {
        self.score = score
        self.id = id
        self.stage = stage
        self.condition = condition
        self.action = action
        self.mode = mode
        self.reply = reply
    }
}

/// Where a client address is, from the policy's GeoIP databases.
public struct ClientLocation: Hashable, Sendable {
    public var country: String?
    public var continent: String?
    public var asn: UInt32?
    public var asOrganization: String?
    public init(country: String? = nil, continent: String? = nil, asn: UInt32? = nil, asOrganization: String? = nil) {
        self.country = country
        self.continent = continent
        self.asn = asn
        self.asOrganization = asOrganization
    }
}

/// The `geoip:` databases of a policy, opened once when it compiles.
public struct PolicyGeoIP: Sendable {
    public var country: GeoIPDatabase?
    public var asn: GeoIPDatabase?

    /// Country, continent and AS of `address`; fields are nil where a database knows nothing.
    public func locate(_ address: IPAddress) -> ClientLocation {
        let bytes = address.unmapped.bytes
        var location = ClientLocation()
        if let record = (try? country?.lookup(bytes: bytes)) ?? nil {
            location.country = record.countryCode
            location.continent = record.continentCode
        }
        if let record = (try? asn?.lookup(bytes: bytes)) ?? nil {
            location.asn = record.autonomousSystemNumber
            location.asOrganization = record.autonomousSystemOrganization
        }
        return location
    }
}

/// A compiled, validated policy: rules by stage, and the version that decision records name.
public struct Policy: Sendable {
    /// A content hash of the policy's files: the same files give the same version.
    public var version: String
    /// Every rule, in policy order.
    public let rules: [PolicyRule]
    /// The rules of each stage in policy order (`off` ones included), split once when the
    /// policy compiles; indexed by `PolicyStage.ordinal`.
    private let byStage: [[PolicyRule]]
    /// Every file the policy was built from (the policy, includes, lists, GeoIP databases):
    /// a change to any of them is a reason to reload.
    public var files: [String]
    /// The policy's GeoIP databases, when it has any.
    public var geoip: PolicyGeoIP?
    /// The policy's DNS block and allow lists (`dnsbl:`): client lists asked when a client
    /// connects, domain lists at the stage of what they look up.
    public var dnsLists: [DNSList] = []
    /// When the client lists' answers are awaited (`dnsbl_wait:`).
    public var dnsListWait: DNSListWait = .connect(nil)
    /// True when some rule reads the message's content: the session then parses it.
    public let needsMessage: Bool
    /// True when some rule quarantines (the server then needs a quarantine Maildir).
    public let quarantines: Bool

    public init(version: String, rules: [PolicyRule], files: [String] = [], geoip: PolicyGeoIP? = nil) {
        self.version = version
        self.rules = rules
        var byStage = [[PolicyRule]](repeating: [], count: PolicyStage.allCases.count)
        for rule in rules { byStage[rule.stage.ordinal].append(rule) }
        self.byStage = byStage
        self.files = files
        self.geoip = geoip
        needsMessage = rules.contains { $0.mode != .off && $0.condition.needsMessage }
        quarantines = rules.contains { $0.mode == .enforce && $0.action == .quarantine }
    }

    /// Content rules look at no more than this much of a message (its start: the headers and
    /// first parts); each decoded part is further capped by the MIME parser's limits.
    public static let contentScanLimit = 10 * 1024 * 1024

    /// A policy with no rules: everything passes.
    public static let empty = Policy(version: "none", rules: [])

    /// The rules of `stage`, in policy order, `off` ones included.
    public func rules(at stage: PolicyStage) -> [PolicyRule] {
        byStage[stage.ordinal]
    }

    /// Whether `stage` has a rule that runs (not `off`).
    public func hasActiveRules(at stage: PolicyStage) -> Bool {
        byStage[stage.ordinal].contains { $0.mode != .off }
    }

    /// Whether `stage` has a rule that runs and reads a check's answer (milter, policy server, SPF).
    public func readsCheckAnswers(at stage: PolicyStage) -> Bool {
        byStage[stage.ordinal].contains { $0.mode != .off && $0.condition.readsCheckAnswers }
    }
}
