import SMTPCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Which records `postern tail` shows: every set criterion must hold (AND); the decisions are
/// alternatives (OR among them).
public struct DecisionRecordFilter: Sendable {
    public var decisions: Set<String> = []
    public var rule: String?
    public var client: IPNetwork?
    public var sender: AddressGlob?
    public var recipient: AddressGlob?
    /// Milliseconds since the epoch; older records are left out.
    public var since: Int64?

    public init(
        decisions: Set<String> = [], rule: String? = nil, client: IPNetwork? = nil, sender: AddressGlob? = nil,
        recipient: AddressGlob? = nil, since: Int64? = nil
    ) {
        self.decisions = decisions
        self.rule = rule
        self.client = client
        self.sender = sender
        self.recipient = recipient
        self.since = since
    }

    public func matches(_ record: LoggedDecision) -> Bool {
        if !decisions.isEmpty && !decisions.contains(record.decision) { return false }
        if let rule, record.rule != rule { return false }
        if let since, record.timestamp < since { return false }
        if let client {
            guard let address = IPAddress(record.clientIP), client.contains(address) else { return false }
        }
        if let sender {
            guard let from = record.mailFrom, sender.matches(from) else { return false }
        }
        if let recipient, !record.recipients.contains(where: recipient.matches) { return false }
        return true
    }

    /// The known decision names, for checking `--decision`.
    public static let decisionNames = ["accepted", "rejected", "tempfailed", "discarded", "quarantined", "aborted"]

    public struct InvalidArgument: Error, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// `--since`: `90s`, `15m`, `2h`, `1d`, `1w` before `now`, or an RFC 3339 timestamp.
    public static func parseSince(_ text: String, now: Date = Date(), option: String = "--since") throws(InvalidArgument) -> Int64 {
        let nowMillis = Int64((now.timeIntervalSince1970 * 1000).rounded())
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let unit = trimmed.last, let amount = Int64(trimmed.dropLast()), amount >= 0 {
            let seconds: Int64?
            switch unit {
            case "s": seconds = 1
            case "m": seconds = 60
            case "h": seconds = 3600
            case "d": seconds = 86400
            case "w": seconds = 7 * 86400
            default: seconds = nil
            }
            if let seconds { return nowMillis - amount * seconds * 1000 }
        }
        if let timestamp = Timestamps.parseRFC3339(trimmed) { return timestamp }
        throw InvalidArgument("\(option) '\(text)' is neither a duration (15m, 2h, 1d) nor an RFC 3339 time (2026-11-23T19:00:00Z)")
    }
}

/// An address pattern: `*` matches any run of characters, case is ignored; `<>` matches the
/// null sender (written as "" in records). Surrounding angle brackets are ignored.
public struct AddressGlob: Sendable, Equatable {
    public let pattern: String
    private let characters: [Character]

    public init(_ pattern: String) {
        self.pattern = pattern
        var text = pattern
        if text.count > 2 && text.hasPrefix("<") && text.hasSuffix(">") { text = String(text.dropFirst().dropLast()) }
        if text == "<>" { text = "" }
        characters = Array(text.lowercased())
    }

    public func matches(_ address: String) -> Bool {
        let subject = Array(address.lowercased())
        // Iterative wildcard match with backtracking to the last `*`.
        var p = 0, s = 0
        var star = -1, mark = 0
        while s < subject.count {
            if p < characters.count && characters[p] != "*" && characters[p] == subject[s] {
                p += 1
                s += 1
            } else if p < characters.count && characters[p] == "*" {
                star = p
                mark = s
                p += 1
            } else if star >= 0 {
                p = star + 1
                mark += 1
                s = mark
            } else {
                return false
            }
        }
        while p < characters.count && characters[p] == "*" { p += 1 }
        return p == characters.count
    }
}

