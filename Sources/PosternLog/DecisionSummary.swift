import SMTPCore
import Foundation

/// `postern tail --summary`: what an operator looks at before promoting a shadow rule to
/// enforce. Counts by decision, the rules that decided most, the client networks (/24, /64)
/// and sender domains refused most, and every shadow rule with its would-have-hit count.
public struct DecisionSummary: Sendable, Equatable {
    public struct Count: Sendable, Equatable {
        public var key: String
        public var count: Int
        public init(_ key: String, _ count: Int) {
            self.key = key
            self.count = count
        }
    }

    public struct ShadowCount: Sendable, Equatable {
        public var rule: String
        /// What it would have done (the most frequent action when a rule logged several).
        public var action: String
        /// Records it matched in.
        public var hits: Int
        /// Of those, how many were accepted (mail that promoting it would have refused).
        public var accepted: Int
        public init(rule: String, action: String, hits: Int, accepted: Int) {
            self.rule = rule
            self.action = action
            self.hits = hits
            self.accepted = accepted
        }
    }

    public static let topCount = 10

    public private(set) var total = 0
    public private(set) var first: Int64?
    public private(set) var last: Int64?
    private var decisionCounts: [String: Int] = [:]
    private var ruleCounts: [String: Int] = [:]
    private var networkCounts: [String: Int] = [:]
    private var domainCounts: [String: Int] = [:]
    private var shadowHits: [String: (actions: [String: Int], hits: Int, accepted: Int)] = [:]

    public init() {}

    public init<Records: Sequence>(_ records: Records) where Records.Element == LoggedDecision {
        for record in records { add(record) }
    }

    public static func == (lhs: DecisionSummary, rhs: DecisionSummary) -> Bool {
        lhs.total == rhs.total && lhs.decisions == rhs.decisions && lhs.topRules == rhs.topRules
            && lhs.topRejectedNetworks == rhs.topRejectedNetworks && lhs.topRejectedSenderDomains == rhs.topRejectedSenderDomains
            && lhs.shadowRules == rhs.shadowRules
    }

    public mutating func add(_ record: LoggedDecision) {
        total += 1
        first = min(first ?? record.timestamp, record.timestamp)
        last = max(last ?? record.timestamp, record.timestamp)
        decisionCounts[record.decision, default: 0] += 1
        if let rule = record.rule { ruleCounts[rule, default: 0] += 1 }
        if record.decision == "rejected" {
            if let address = IPAddress(record.clientIP)?.unmapped {
                networkCounts[IPNetwork(address: address, prefixLength: address.isIPv6 ? 64 : 24).description, default: 0] += 1
            }
            if let from = record.mailFrom {
                domainCounts[Self.domain(of: from), default: 0] += 1
            }
        }
        // A rule counts once per record even if it matched at several recipients.
        var seen: Set<String> = []
        for hit in record.shadow where seen.insert(hit.rule).inserted {
            var entry = shadowHits[hit.rule] ?? ([:], 0, 0)
            entry.actions[hit.action, default: 0] += 1
            entry.hits += 1
            if record.decision == "accepted" { entry.accepted += 1 }
            shadowHits[hit.rule] = entry
        }
    }

    /// Every decision seen, the known ones in their usual order first.
    public var decisions: [Count] {
        let known = DecisionRecordFilter.decisionNames
        let order = known + decisionCounts.keys.filter { !known.contains($0) }.sorted()
        return order.compactMap { name in decisionCounts[name].map { Count(name, $0) } }
    }

    public var topRules: [Count] { Self.top(ruleCounts) }
    public var topRejectedNetworks: [Count] { Self.top(networkCounts) }
    public var topRejectedSenderDomains: [Count] { Self.top(domainCounts) }

    public var shadowRules: [ShadowCount] {
        shadowHits.map { rule, entry in
            let action = entry.actions.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key ?? "?"
            return ShadowCount(rule: rule, action: action, hits: entry.hits, accepted: entry.accepted)
        }.sorted { $0.hits != $1.hits ? $0.hits > $1.hits : $0.rule < $1.rule }
    }

    /// The domain of an address; `<>` for the null sender, the whole text when there is no `@`.
    static func domain(of address: String) -> String {
        if address.isEmpty { return "<>" }
        guard let at = address.lastIndex(of: "@") else { return address.lowercased() }
        return String(address[address.index(after: at)...]).lowercased()
    }

    private static func top(_ counts: [String: Int]) -> [Count] {
        Array(counts.map { Count($0.key, $0.value) }
            .sorted { $0.count != $1.count ? $0.count > $1.count : $0.key < $1.key }
            .prefix(topCount))
    }

    /// The summary as aligned plain-text tables.
    public func render() -> [String] {
        var lines: [String] = []
        var period = ""
        if let first, let last {
            period = " from \(DecisionRecord.rfc3339(milliseconds: first)) to \(DecisionRecord.rfc3339(milliseconds: last))"
        }
        lines.append("\(total) decision\(total == 1 ? "" : "s")\(period)")
        func percent(_ count: Int) -> String {
            guard total > 0 else { return "" }
            return String(format: "%.1f%%", Double(count) * 100 / Double(total))
        }
        func section(_ title: String, _ header: [String], _ rows: [[String]], empty: String) {
            lines.append("")
            lines.append(title)
            if rows.isEmpty {
                lines.append("  (\(empty))")
                return
            }
            lines += Self.table([header] + rows, rightAligned: Set(1..<header.count)).map { "  " + $0 }
        }
        section("Decisions", ["decision", "count", "share"], decisions.map { [$0.key, String($0.count), percent($0.count)] },
                empty: "none")
        section("Top rules", ["rule", "hits"], topRules.map { [$0.key, String($0.count)] }, empty: "no rule decided")
        section("Top rejected client networks", ["network", "rejected"],
                topRejectedNetworks.map { [$0.key, String($0.count)] }, empty: "none rejected")
        section("Top rejected sender domains", ["domain", "rejected"],
                topRejectedSenderDomains.map { [$0.key, String($0.count)] }, empty: "none rejected")
        lines.append("")
        lines.append("Shadow rules (would have hit)")
        let shadows = shadowRules
        if shadows.isEmpty {
            lines.append("  (no shadow rule matched)")
        } else {
            let rows = shadows.map { [$0.rule, $0.action, String($0.hits), String($0.accepted)] }
            lines += Self.table([["rule", "would", "hits", "of them accepted"]] + rows, rightAligned: [2, 3]).map { "  " + $0 }
        }
        return lines
    }

    /// Rows padded to column widths, two spaces between columns, no trailing spaces.
    public static func table(_ rows: [[String]], rightAligned: Set<Int> = []) -> [String] {
        let columns = rows.map(\.count).max() ?? 0
        var widths = [Int](repeating: 0, count: columns)
        for row in rows {
            for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
        }
        return rows.map { row in
            var cells: [String] = []
            for (index, cell) in row.enumerated() {
                let padding = String(repeating: " ", count: widths[index] - cell.count)
                cells.append(rightAligned.contains(index) ? padding + cell : cell + padding)
            }
            var line = cells.joined(separator: "  ")
            while line.last == " " { line.removeLast() }
            return line
        }
    }
}
