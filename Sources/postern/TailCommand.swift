import SMTPCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ArgumentParser
import Foundation
import PosternLog

extension Postern {
    /// `postern tail`: reads the decision log (JSON lines), one readable line per record, with
    /// filters; `--follow` keeps reading across rotations; `--summary` counts instead.
    struct Tail: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the decision log readably, filtered, optionally following it; or summarise it.",
            discussion: """
                One line per record: time, decision, rule, client (and country), sender → recipients, reply. \
                Colour only on a terminal, and never with NO_COLOR set. Filters combine with AND; --decision \
                may repeat (any of them). Malformed lines are skipped with a warning on standard error. \
                --follow prints the last 10 matching records (every match with --since), then new ones as \
                they are written, reopening the file when it is rotated or truncated. Exit status: 0, or 1 \
                when the log cannot be read.
                """)

        @Argument(help: ArgumentHelp("The decision log.", valueName: "path"))
        var path: String = "var/decisions.log"

        @Flag(name: [.short, .long], help: "Keep reading as records are written (survives rotation and truncation).")
        var follow = false

        @Option(help: ArgumentHelp("Only this decision (accepted, rejected, tempfailed, discarded, quarantined, aborted); repeat for several.", valueName: "decision"))
        var decision: [String] = []

        @Option(help: ArgumentHelp("Only records decided by this rule.", valueName: "id"))
        var rule: String?

        @Option(help: ArgumentHelp("Only clients in this network (an IP address or CIDR).", valueName: "cidr"))
        var client: String?

        @Option(help: ArgumentHelp("Only senders matching this glob (* wildcard, case-insensitive; '<>' is the null sender).", valueName: "glob"))
        var sender: String?

        @Option(help: ArgumentHelp("Only records with a recipient matching this glob.", valueName: "glob"))
        var recipient: String?

        @Option(help: ArgumentHelp("Only records since then: 15m, 2h, 1d, or an RFC 3339 time.", valueName: "when"))
        var since: String?

        @Flag(help: "Print the matching records' original JSON lines (for jq).")
        var json = false

        @Flag(help: "Count by decision, top rules, top rejected networks and sender domains, shadow rule hits.")
        var summary = false

        /// Records printed from the existing file when following without --since.
        static let followBacklog = 10
        static let pollInterval: Duration = .milliseconds(250)

        func validate() throws {
            for name in decision where !DecisionRecordFilter.decisionNames.contains(name) {
                throw ValidationError("--decision '\(name)' is not one of \(DecisionRecordFilter.decisionNames.joined(separator: ", "))")
            }
            if let client, IPNetwork(client) == nil {
                throw ValidationError("--client '\(client)' is not an IP address or network (e.g. 192.0.2.0/24 or 2001:db8::/32)")
            }
            if let since {
                do { _ = try DecisionRecordFilter.parseSince(since) } catch { throw ValidationError(error.description) }
            }
            if summary && follow { throw ValidationError("--summary and --follow cannot be combined") }
            if summary && json { throw ValidationError("--summary and --json cannot be combined") }
        }

        func run() async throws {
            let filter = try makeFilter()
            let follower: DecisionLogFollower
            do {
                follower = try DecisionLogFollower(path: path)
            } catch {
                Self.warn(error.description)
                throw ExitCode(1)
            }
            if summary {
                var result = DecisionSummary()
                for record in Self.records(follower.poll() + follower.finish()) where filter.matches(record) {
                    result.add(record)
                }
                Self.write(result.render().joined(separator: "\n") + "\n")
                return
            }
            let formatter = DecisionLineFormatter(colour: Self.useColour())
            let existing = Self.records(follower.poll() + (follow ? [] : follower.finish())).filter(filter.matches)
            let shown = follow && since == nil ? Array(existing.suffix(Self.followBacklog)) : existing
            emit(shown, formatter)
            guard follow else { return }
            while true {
                try await Task.sleep(for: Self.pollInterval)
                emit(Self.records(follower.poll()).filter(filter.matches), formatter)
            }
        }

        private func emit(_ records: [LoggedDecision], _ formatter: DecisionLineFormatter) {
            guard !records.isEmpty else { return }
            if json {
                for chunk in records.chunked(1000) { Self.write(chunk.map { $0.line + "\n" }.joined()) }
            } else {
                formatter.widen(for: records)
                for chunk in records.chunked(1000) { Self.write(chunk.map { formatter.format($0) + "\n" }.joined()) }
            }
        }

        private func makeFilter() throws -> DecisionRecordFilter {
            var filter = DecisionRecordFilter(decisions: Set(decision), rule: rule)
            if let client { filter.client = IPNetwork(client) }
            if let sender { filter.sender = AddressGlob(sender) }
            if let recipient { filter.recipient = AddressGlob(recipient) }
            if let since {
                do { filter.since = try DecisionRecordFilter.parseSince(since) } catch { throw ValidationError(error.description) }
            }
            return filter
        }

        /// The records; each malformed line is reported on standard error.
        static func records(_ events: [DecisionLogEvent]) -> [LoggedDecision] {
            events.compactMap { event in
                if let warning = event.warning { warn(warning) }
                return event.record
            }
        }

        static func warn(_ message: String) {
            FileHandle.standardError.write(Data("postern tail: \(message)\n".utf8))
        }

        static func write(_ text: String) {
            FileHandle.standardOutput.write(Data(text.utf8))
        }

        /// Colour on a terminal unless NO_COLOR is set (to anything).
        static func useColour() -> Bool {
            isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
        }
    }
}

/// One aligned line per record: time, decision, rule, client, envelope, reply. Column widths
/// grow to the widest value seen (a batch is measured before it is printed).
final class DecisionLineFormatter {
    let colour: Bool
    /// time, decision, rule, client, envelope (the reply is last and not padded).
    private var widths = [8, 11, 1, 1, 1]

    init(colour: Bool) {
        self.colour = colour
    }

    func widen(for records: [LoggedDecision]) {
        for record in records {
            for (index, cell) in cells(record).prefix(widths.count).enumerated() {
                widths[index] = max(widths[index], cell.count)
            }
        }
    }

    func format(_ record: LoggedDecision) -> String {
        let cells = cells(record)
        var parts: [String] = []
        for (index, cell) in cells.enumerated() {
            var text = index < widths.count ? cell.padding(toLength: max(widths[index], cell.count), withPad: " ", startingAt: 0) : cell
            if colour && index == 1, let code = Self.colourCode(record.decision) {
                text = "\u{1B}[\(code)m\(cell)\u{1B}[0m" + String(repeating: " ", count: text.count - cell.count)
            } else if colour && index == 0 {
                text = "\u{1B}[2m\(cell)\u{1B}[0m" + String(repeating: " ", count: text.count - cell.count)
            }
            parts.append(text)
        }
        var line = parts.joined(separator: "  ")
        while line.last == " " { line.removeLast() }
        return line
    }

    func cells(_ record: LoggedDecision) -> [String] {
        let client = [record.clientIP, record.clientCountry].compactMap { $0 }.joined(separator: " ")
        var reply = "-"
        if let code = record.replyCode {
            reply = [String(code), record.replyEnhanced].compactMap { $0 }.joined(separator: " ")
        }
        return [Self.time(record.timestamp), record.decision, record.rule ?? "-", client, Self.envelope(record), reply]
    }

    static func colourCode(_ decision: String) -> String? {
        switch decision {
        case "accepted": return "32"
        case "rejected": return "31"
        case "tempfailed": return "33"
        case "discarded", "quarantined": return "35"
        case "aborted": return "2"
        default: return nil
        }
    }

    /// `alice@example.org → bob@example.net, carol@example.net +2`; `<>` for the null sender.
    static func envelope(_ record: LoggedDecision) -> String {
        guard record.mailFrom != nil || !record.recipients.isEmpty else { return "-" }
        let sender = record.mailFrom.map { $0.isEmpty ? "<>" : $0 } ?? "-"
        var recipients = record.recipients.prefix(2).joined(separator: ", ")
        if recipients.isEmpty { recipients = "-" }
        if record.recipients.count > 2 { recipients += " +\(record.recipients.count - 2)" }
        return "\(sender) → \(recipients)"
    }

    /// Local `HH:MM:SS` today, `YYYY-MM-DD HH:MM:SS` before (or after) today.
    static func time(_ milliseconds: Int64, now: Date = Date()) -> String {
        func local(_ seconds: time_t) -> tm {
            var value = seconds
            var parts = tm()
            localtime_r(&value, &parts)
            return parts
        }
        let parts = local(time_t(milliseconds / 1000))
        let today = local(time_t(now.timeIntervalSince1970))
        let clock = String(format: "%02d:%02d:%02d", parts.tm_hour, parts.tm_min, parts.tm_sec)
        if parts.tm_year == today.tm_year && parts.tm_yday == today.tm_yday { return clock }
        return String(format: "%04d-%02d-%02d ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday) + clock
    }
}

extension Array {
    fileprivate func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: size).map { self[$0..<Swift.min($0 + size, count)] }
    }
}
