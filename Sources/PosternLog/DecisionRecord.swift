import Foundation

/// One decision: what happened to one transaction, or to a connection refused before any
/// transaction. Written as one JSON object per line; `schema` versions the layout.
public struct DecisionRecord: Sendable, Equatable {
    /// The layout version written in every line.
    public static let schemaVersion = 1

    public enum Decision: String, Sendable {
        case accepted, rejected, tempfailed, discarded, quarantined, aborted
    }

    public enum Stage: String, Sendable {
        case connect, helo, mail, rcpt, data
    }

    /// One DNS list's answer about the client, in the record.
    public struct DNSListEntry: Sendable, Equatable {
        public var name: String
        /// `listed` or `error`.
        public var result: String
        /// The return code (listed) or what went wrong (error).
        public var detail: String
        public var weight: Double

        public init(name: String, result: String, detail: String, weight: Double) {
            self.name = name
            self.result = result
            self.detail = detail
            self.weight = weight
        }
    }

    public struct Client: Sendable, Equatable {
        public var ip: String
        public var port: Int
        public var helo: String?
        /// The TLS version when the session used STARTTLS.
        public var tls: String?
        public var auth: String?
        /// ISO 3166 country code, when the policy has a GeoIP country database and knows the address.
        public var country: String?
        /// Autonomous system number, when the policy has a GeoIP ASN database and knows the address.
        public var asn: Int?
        /// The client's host name from reverse DNS, with `nameStatus` saying whether it was
        /// forward-confirmed (`verified`, `unverified`, `none`, `tempfail`); nil without a resolver.
        public var name: String?
        public var nameStatus: String?
        /// The DNS lists that listed the client or failed: `{name, result: listed|error, code|error, weight}`.
        public var dnsLists: [DNSListEntry] = []
        public init(ip: String, port: Int, helo: String? = nil, tls: String? = nil, auth: String? = nil, country: String? = nil, asn: Int? = nil,
                    name: String? = nil, nameStatus: String? = nil, dnsLists: [DNSListEntry] = []) {
            self.dnsLists = dnsLists
            self.name = name
            self.nameStatus = nameStatus
            self.ip = ip
            self.port = port
            self.country = country
            self.asn = asn
            self.helo = helo
            self.tls = tls
            self.auth = auth
        }
    }

    public struct Recipient: Sendable, Equatable {
        public var address: String
        /// The reply the client got for this RCPT, e.g. `250 2.1.5 Ok`.
        public var reply: String
        public init(address: String, reply: String) {
            self.address = address
            self.reply = reply
        }
    }

    public struct Reply: Sendable, Equatable {
        public var code: Int
        public var enhanced: String?
        public var text: String
        public init(code: Int, enhanced: String?, text: String) {
            self.code = code
            self.enhanced = enhanced
            self.text = text
        }
    }

    public struct Upstream: Sendable, Equatable {
        public var host: String
        public var reply: String?
        /// Parsed from the upstream's 250 (Postfix: `queued as ABC123`).
        public var queueID: String?
        public init(host: String, reply: String?, queueID: String?) {
            self.host = host
            self.reply = reply
            self.queueID = queueID
        }
    }

    public struct Timings: Sendable, Equatable {
        public var totalMilliseconds: Int
        public var filtersMilliseconds: Int
        public var upstreamMilliseconds: Int
        public init(total: Int, filters: Int, upstream: Int) {
            totalMilliseconds = total
            filtersMilliseconds = filters
            upstreamMilliseconds = upstream
        }
    }

    /// Milliseconds since the Unix epoch.
    public var timestamp: Int64
    /// The transaction id, as in the Received header and the reply texts.
    public var id: String
    public var session: String
    public var policyVersion: String?
    /// The version of the configuration the session ran under (written when known).
    public var configVersion: String?
    public var client: Client
    /// The reverse-path without brackets; empty for the null sender.
    public var mailFrom: String?
    public var recipients: [Recipient]
    public var size: Int?
    public var messageID: String?
    /// The decoded Subject (subject to the log's privacy settings).
    public var subject: String?
    public var decision: Decision
    public var stage: Stage
    public var rule: String?
    public var reason: String?
    public var reply: Reply?
    public var upstream: Upstream?
    /// Shadow rules that matched: what they would have done.
    public var shadow: [Shadow]
    /// What the pipeline's checks (DNS lists, external engines) found; written only when
    /// some check ran, so records of a policy without checks keep their layout.
    public var checks: [Check]
    public var timings: Timings
    /// The running score when the transaction ended (rules' scores plus the DNS lists'
    /// weights), with each rule's part; written only when some rule or list contributed.
    public var score: Double?
    public var scores: [Score] = []
    /// Shadow rules' scores: what the score would have been, never enforced.
    public var shadowScores: [Score] = []

    public struct Score: Sendable, Equatable {
        public var rule: String
        public var score: Double

        public init(rule: String, score: Double) {
            self.rule = rule
            self.score = score
        }
    }

    public struct Check: Sendable, Equatable {
        public var check: String
        public var stage: String
        /// pass, reject, tempfail, timeout or error.
        public var result: String
        public var detail: String
        public var milliseconds: Int
        public init(check: String, stage: String, result: String, detail: String, milliseconds: Int) {
            self.check = check
            self.stage = stage
            self.result = result
            self.detail = detail
            self.milliseconds = milliseconds
        }
    }

    public struct Shadow: Sendable, Equatable {
        public var rule: String
        public var action: String
        public init(rule: String, action: String) {
            self.rule = rule
            self.action = action
        }
    }

    public init(
        timestamp: Int64, id: String, session: String, policyVersion: String? = nil, client: Client,
        mailFrom: String? = nil, recipients: [Recipient] = [], size: Int? = nil, messageID: String? = nil, subject: String? = nil,
        decision: Decision, stage: Stage, rule: String? = nil, reason: String? = nil, reply: Reply? = nil,
        upstream: Upstream? = nil, shadow: [Shadow] = [], checks: [Check] = [], timings: Timings
    ) {
        self.shadow = shadow
        self.checks = checks
        self.timestamp = timestamp
        self.id = id
        self.session = session
        self.policyVersion = policyVersion
        self.client = client
        self.mailFrom = mailFrom
        self.recipients = recipients
        self.size = size
        self.messageID = messageID
        self.subject = subject
        self.decision = decision
        self.stage = stage
        self.rule = rule
        self.reason = reason
        self.reply = reply
        self.upstream = upstream
        self.timings = timings
    }

    /// The record as one JSON line (with its newline), keys in the documented order.
    public func jsonLine() -> String {
        var json = JSONObjectWriter()
        json.field("schema", Self.schemaVersion)
        json.field("ts", Self.rfc3339(milliseconds: timestamp))
        json.field("id", id)
        json.field("session", session)
        json.field("policy_version", policyVersion)
        if let configVersion { json.field("config_version", configVersion) }
        json.object("client") { object in
            object.field("ip", client.ip)
            object.field("port", client.port)
            if let status = client.nameStatus {
                object.field("name", client.name)
                object.field("name_status", status)
            }
            if !client.dnsLists.isEmpty {
                object.array("dnsbl", client.dnsLists) { entry, list in
                    entry.field("name", list.name)
                    entry.field("result", list.result)
                    entry.field(list.result == "listed" ? "code" : "error", list.detail)
                    entry.field("weight", list.weight)
                }
            }
            object.field("country", client.country)
            object.field("asn", client.asn)
            object.field("helo", client.helo)
            object.field("tls", client.tls)
            object.field("auth", client.auth)
        }
        json.field("mail_from", mailFrom)
        json.array("rcpts", recipients) { object, recipient in
            object.field("address", recipient.address)
            object.field("reply", recipient.reply)
        }
        json.field("size", size)
        json.field("message_id", messageID)
        json.field("subject", subject)
        json.field("decision", decision.rawValue)
        json.field("stage", stage.rawValue)
        json.field("rule", rule)
        json.field("reason", reason)
        if let reply {
            json.object("reply") { object in
                object.field("code", reply.code)
                object.field("enhanced", reply.enhanced)
                object.field("text", reply.text)
            }
        } else {
            json.null("reply")
        }
        if let upstream {
            json.object("upstream") { object in
                object.field("host", upstream.host)
                object.field("reply", upstream.reply)
                object.field("queue_id", upstream.queueID)
            }
        } else {
            json.null("upstream")
        }
        json.array("shadow", shadow) { object, hit in
            object.field("rule", hit.rule)
            object.field("action", hit.action)
        }
        if !checks.isEmpty {
            json.array("checks", checks) { object, check in
                object.field("check", check.check)
                object.field("stage", check.stage)
                object.field("result", check.result)
                object.field("detail", check.detail)
                object.field("ms", check.milliseconds)
            }
        }
        func parts(_ name: String, _ list: [Score]) {
            json.array(name, list) { object, part in
                object.field("rule", part.rule)
                object.field("score", part.score)
            }
        }
        if let score {
            json.field("score", score)
            parts("scores", scores)
        }
        if !shadowScores.isEmpty { parts("shadow_scores", shadowScores) }
        json.object("timings") { object in
            object.field("total_ms", timings.totalMilliseconds)
            object.field("filters_ms", timings.filtersMilliseconds)
            object.field("upstream_ms", timings.upstreamMilliseconds)
        }
        return json.finish() + "\n"
    }

    /// `2026-11-23T19:11:38.123Z` (RFC 3339, UTC, milliseconds).
    public static func rfc3339(milliseconds: Int64) -> String {
        let seconds = milliseconds >= 0 ? milliseconds / 1000 : (milliseconds - 999) / 1000
        let millis = Int(milliseconds - seconds * 1000)
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let secondOfDay = Int(seconds - days * 86400)
        let (year, month, day) = CivilDate.from(daysSinceEpoch: days)
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(secondOfDay / 3600, 2)):\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2)).\(pad(millis, 3))Z"
    }

    /// The queue id in an upstream's acceptance: Postfix's `queued as ABC123`, Exim's `id=1abcDE-…`.
    public static func queueID(fromReply text: String) -> String? {
        for marker in ["queued as ", "id="] {
            guard let range = text.range(of: marker, options: .caseInsensitive) else { continue }
            let token = text[range.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }
            if !token.isEmpty { return String(token) }
        }
        return nil
    }
}

/// Writes one JSON object with keys in call order; strings escaped per RFC 8259.
struct JSONObjectWriter {
    private var text = "{"
    private var first = true

    private mutating func key(_ name: String) {
        if !first { text += "," }
        first = false
        text += "\"\(name)\":"
    }

    mutating func field(_ name: String, _ value: String?) {
        key(name)
        if let value { Self.escape(value, into: &text) } else { text += "null" }
    }

    mutating func field(_ name: String, _ value: Int?) {
        key(name)
        text += value.map(String.init) ?? "null"
    }

    /// A finite number, as an integer when it is one (`3`, `-1.5`).
    mutating func field(_ name: String, _ value: Double) {
        key(name)
        guard value.isFinite else { return text += "null" }
        text += value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    mutating func null(_ name: String) {
        key(name)
        text += "null"
    }

    mutating func object(_ name: String, _ body: (inout JSONObjectWriter) -> Void) {
        key(name)
        var nested = JSONObjectWriter()
        body(&nested)
        text += nested.finish()
    }

    mutating func array<Element>(_ name: String, _ elements: [Element], _ body: (inout JSONObjectWriter, Element) -> Void) {
        key(name)
        text += "["
        for (index, element) in elements.enumerated() {
            if index > 0 { text += "," }
            var nested = JSONObjectWriter()
            body(&nested, element)
            text += nested.finish()
        }
        text += "]"
    }

    func finish() -> String { text + "}" }

    static func escape(_ value: String, into text: inout String) {
        text += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": text += "\\\""
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            case "\r": text += "\\r"
            case "\t": text += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                text += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default:
                text.unicodeScalars.append(scalar)
            }
        }
        text += "\""
    }
}

/// Calendar dates from day counts, without Foundation's formatters (they are slow to build,
/// and these timestamps are written for every message).
public enum CivilDate {
    /// Year, month, day of the day `daysSinceEpoch` days after 1970-01-01 (proleptic Gregorian;
    /// Howard Hinnant's civil-from-days).
    public static func from(daysSinceEpoch: Int64) -> (year: Int, month: Int, day: Int) {
        let shifted = daysSinceEpoch + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        return (Int(yearOfEra + era * 400 + (month <= 2 ? 1 : 0)), Int(month), Int(day))
    }
}
