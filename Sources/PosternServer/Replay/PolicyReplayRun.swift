#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOPosix
import PosternFilters
import PosternLog
import PosternMIME
import PosternPolicy
import SMTPCore

/// `postern replay`: reads decision logs, rebuilds each transaction from its record, replays
/// them in timestamp order through a candidate policy and counts what would change. With a
/// sample store (`samples`), a transaction whose message was sampled is replayed with it, so
/// the candidate's content rules read the message itself.
public struct PolicyReplayRun {
    /// One transaction the candidate decides differently.
    public struct Change: Sendable, Equatable {
        public var id: String
        public var timestamp: Int64
        public var client: String
        public var sender: String?
        public var recipient: String?
        public var was: String
        public var now: String
        /// The candidate's deciding rule; `relay_control` for relay control; nil when nothing
        /// of the candidate decided (the transaction now goes through).
        public var rule: String?
    }

    /// What a run found.
    public struct Report: Sendable {
        /// Records read (well-formed), in the time window or not.
        public var records = 0
        /// Lines that are not decision records (skipped, each with its file and line).
        public var malformed: [String] = []
        public var replayed = 0
        public var unchanged = 0
        public var changed = 0
        public var notEvaluable = 0
        /// Replayed transactions whose message came from the sample store.
        public var sampled = 0
        /// Samples that could not be read (the transaction is replayed without its message).
        public var unreadableSamples: [String] = []
        /// Why records were not evaluable, with how many.
        public var notEvaluableReasons: [String: Int] = [:]
        /// `"WAS->NOW"` → how many.
        public var byChange: [String: Int] = [:]
        /// The candidate's deciding rule of each change (`(none)`: it now goes through).
        public var byRule: [String: Int] = [:]
        /// The first changes of each direction, in time order (at most `examples` each).
        public var changes: [Change] = []

        public init() {}
    }

    public let policy: Policy
    public let relayControl: RelayControl
    public let clock: ManualRateLimitClock
    /// Only records at or after / before these times (milliseconds since the epoch).
    public var since: Int64?
    public var until: Int64?
    /// Changes kept per direction (0: all).
    public var examples: Int
    /// The sample store's directory (`samples.directory`), when there is one.
    public var samples: String?

    public init(policy: Policy, relayControl: RelayControl, clock: ManualRateLimitClock, since: Int64? = nil, until: Int64? = nil, examples: Int = 10,
                samples: String? = nil) {
        self.policy = policy
        self.relayControl = relayControl
        self.clock = clock
        self.since = since
        self.until = until
        self.examples = examples
        self.samples = samples
    }

    /// A log that cannot be read.
    public struct UnreadableLog: Error, CustomStringConvertible {
        public var description: String
    }

    /// The decision log at `path` and its rotated files beside it (`PATH.1`, `PATH.2.gz`,
    /// `PATH-20261206`, …), oldest names last.
    public static func logFiles(rotatedFrom path: String) -> [String] {
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        let base = url.lastPathComponent
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let rotated = names.filter { $0.hasPrefix(base + ".") || $0.hasPrefix(base + "-") }.sorted()
        return [path] + rotated.map { directory + "/" + $0 }
    }

    /// Reads every record of `paths` (a `.gz` file through `gzip -dc`), skipping malformed lines.
    /// A file is read in blocks of whole lines, and the blocks are parsed on every core.
    public static func read(_ paths: [String], into report: inout Report) async throws(UnreadableLog) -> [LoggedDecision] {
        var records: [LoggedDecision] = []
        for path in paths {
            let source = try LogSource(path: path)
            defer { source.close() }
            var carry: [UInt8] = []
            var blocks: [(bytes: [UInt8], linesBefore: Int)] = []
            var lines = 0
            var ended = false
            while !ended {
                var block = carry
                carry = []
                ended = try source.read(appendingTo: &block, upTo: Self.blockSize)
                if !ended, let lastNewline = block.lastIndex(of: 0x0A) {
                    carry = Array(block[(lastNewline + 1)...])
                    block.removeSubrange((lastNewline + 1)...)
                } else if !ended {
                    carry = block  // a line longer than a block: read on
                    continue
                }
                let count = block.reduce(0) { $1 == 0x0A ? $0 + 1 : $0 }
                blocks.append((block, lines))
                lines += count
                guard blocks.count == Self.parallelBlocks || ended else { continue }
                for events in await parse(blocks) {
                    for event in events {
                        switch event {
                        case .record(let record): records.append(record)
                        case .malformed(let line, let reason): report.malformed.append("\(path):\(line): \(reason)")
                        }
                    }
                }
                blocks = []
            }
            try source.finish()
        }
        report.records = records.count
        return records
    }

    /// Octets read at a time from a log.
    static let blockSize = 4 << 20
    /// Blocks parsed at once, one task each.
    static let parallelBlocks = 4

    /// Each block's events, in order; the last block may end without a newline (malformed).
    private static func parse(_ blocks: [(bytes: [UInt8], linesBefore: Int)]) async -> [[DecisionLogEvent]] {
        await withTaskGroup(of: (Int, [DecisionLogEvent]).self) { group in
            for (index, block) in blocks.enumerated() {
                group.addTask {
                    // On NIO's thread pool: tasks of the global executor here share one event loop.
                    let events = try? await NIOThreadPool.singleton.runIfActive {
                        var parser = DecisionLogParser(keepLines: false, linesBefore: block.linesBefore)
                        return parser.feed(block.bytes) + parser.finish()
                    }
                    return (index, events ?? [])
                }
            }
            var results = [[DecisionLogEvent]](repeating: [], count: blocks.count)
            for await (index, events) in group { results[index] = events }
            return results
        }
    }

    /// A log file, or `gzip -dc` of one.
    private final class LogSource {
        let path: String
        private let descriptor: Int32
        private let process: Process?
        private let errors: Pipe?

        init(path: String) throws(UnreadableLog) {
            self.path = path
            if path.hasSuffix(".gz") {
                guard FileManager.default.isReadableFile(atPath: path) else {
                    throw UnreadableLog(description: "cannot read \(path): \(FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")")
                }
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/bin/gzip")
                process.arguments = ["-dc", path]
                let output = Pipe()
                let errors = Pipe()
                process.standardOutput = output
                process.standardError = errors
                do {
                    try process.run()
                } catch {
                    throw UnreadableLog(description: "cannot read \(path): gzip: \(error)")
                }
                self.process = process
                self.errors = errors
                descriptor = output.fileHandleForReading.fileDescriptor
            } else {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    let reason = errno == ENOENT ? "no such file" : errno == EACCES ? "permission denied" : String(cString: strerror(errno))
                    throw UnreadableLog(description: "cannot read \(path): \(reason)")
                }
                process = nil
                errors = nil
                descriptor = fd
            }
        }

        /// Appends up to `limit` octets; true at the end of the file.
        func read(appendingTo buffer: inout [UInt8], upTo limit: Int) throws(UnreadableLog) -> Bool {
            var failure: Int32?
            var ended = false
            let chunk = [UInt8](unsafeUninitializedCapacity: limit) { space, initialized in
                var filled = 0
                while filled < limit {
                    let count = Glibc.read(descriptor, space.baseAddress! + filled, limit - filled)
                    if count < 0 {
                        if errno == EINTR { continue }
                        failure = errno
                        break
                    }
                    if count == 0 {
                        ended = true
                        break
                    }
                    filled += count
                }
                initialized = filled
            }
            if let failure {
                throw UnreadableLog(description: "cannot read \(path): \(failure == EISDIR ? "a directory" : String(cString: strerror(failure)))")
            }
            buffer += chunk
            return ended
        }

        /// After the end: gzip's verdict.
        func finish() throws(UnreadableLog) {
            guard let process, let errors else { return }
            let message = errors.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                let text = String(decoding: message, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                throw UnreadableLog(description: "cannot read \(path): \(text.isEmpty ? "gzip failed" : text)")
            }
        }

        func close() {
            if process == nil { _ = Glibc.close(descriptor) }
        }
    }

    /// Replays `records` (sorted here by time) and counts.
    public func run(_ records: [LoggedDecision], report: inout Report) async {
        var replay = PolicyReplay(policy: policy, relayControl: relayControl, clock: clock)
        var kept: [String: Int] = [:]
        let sampleFiles = samples.map(SampleStore.index) ?? [:]
        // Stable: records written in the same millisecond keep their order.
        let order = records.indices.sorted { (records[$0].timestamp, $0) < (records[$1].timestamp, $1) }
        for index in order {
            let record = records[index]
            if let since, record.timestamp < since { continue }
            if let until, record.timestamp >= until { continue }
            report.replayed += 1
            let outcome: PolicyReplay.Outcome
            switch Self.transaction(from: record) {
            case .success(var transaction):
                if transaction.stage == .data, let id = record.id, let path = sampleFiles[id] {
                    do {
                        let sample = try SampleStore.read(path)
                        let message = MIMEMessage.parse(Array(sample.message.prefix(Policy.contentScanLimit)))
                        transaction.sample = SampledMessage(message, withheld: sample.withheld)
                        report.sampled += 1
                    } catch {
                        report.unreadableSamples.append(error.description)
                    }
                }
                outcome = await replay.replay(transaction)
            case .failure(let why): outcome = .notEvaluable(why.description)
            }
            switch outcome {
            case .notEvaluable(let why):
                report.notEvaluable += 1
                report.notEvaluableReasons[why, default: 0] += 1
            case .decided(let now, let stage, let rule):
                guard now.rawValue != record.decision else {
                    report.unchanged += 1
                    continue
                }
                report.changed += 1
                let direction = "\(record.decision)->\(now.rawValue)"
                report.byChange[direction, default: 0] += 1
                let deciding = rule ?? (now == .accepted || now == .aborted ? nil : (stage == .rcpt ? "relay_control" : nil))
                report.byRule[deciding ?? "(none)", default: 0] += 1
                if examples == 0 || kept[direction, default: 0] < examples {
                    kept[direction, default: 0] += 1
                    report.changes.append(Change(id: record.id ?? "", timestamp: record.timestamp, client: record.clientIP, sender: record.mailFrom,
                                                 recipient: record.recipients.first, was: record.decision, now: now.rawValue, rule: deciding))
                }
            }
        }
    }

    struct NotReplayable: Error, CustomStringConvertible {
        var description: String
    }

    /// The transaction a record describes, or why it cannot be rebuilt.
    static func transaction(from record: LoggedDecision) -> Result<PolicyReplay.Transaction, NotReplayable> {
        guard let client = IPAddress(record.clientIP) else { return .failure(NotReplayable(description: "the client address is not an IP address")) }
        guard let decision = PolicyReplay.Transaction.Decision(rawValue: record.decision) else {
            return .failure(NotReplayable(description: "an unknown decision"))
        }
        let stage = record.stage.flatMap(PolicyStage.init(rawValue:)) ?? .connect
        let details = record.details
        let replies = details.recipientReplies.map { $0.flatMap(Self.reply) }
        // Relay control's refusal is the reply `RelayControl.reply(for:)` makes for that recipient.
        let relayControlRefusedAll = !record.recipients.isEmpty && zip(record.recipients, details.recipientReplies).allSatisfy { address, reply in
            ForwardPath(text: address).map { RelayControl.reply(for: $0).description } == reply
        } && details.recipientReplies.count == record.recipients.count
        var transaction = PolicyReplay.Transaction(
            timestamp: record.timestamp, id: record.id ?? "", session: record.session ?? record.id ?? "", client: client,
            clientPort: details.clientPort, decision: decision, stage: stage, rule: record.rule,
            decidedByPolicy: record.rule != nil || (stage == .rcpt && relayControlRefusedAll && decision != .aborted))
        transaction.helo = details.helo
        transaction.tlsVersion = details.tls
        transaction.authUser = details.auth
        transaction.country = record.clientCountry
        transaction.asn = details.asn.flatMap { UInt32(exactly: $0) }
        if let status = details.clientNameStatus.flatMap(ClientName.Status.init(rawValue:)) {
            transaction.clientName = ClientName(status, name: details.clientName)
        }
        transaction.dnsLists = details.dnsLists.map { list in
            let outcome: DNSListResult.Outcome = list.result == "listed"
                ? .listed(list.detail.split(separator: ",").compactMap { code in
                    if case .v4(let value)? = IPAddress(String(code).trimmingCharacters(in: .whitespaces)) { value } else { nil }
                })
                : .error(list.detail)
            return DNSListResult(list: list.name, outcome: outcome, weight: list.result == "listed" ? list.weight : 0)
        }
        if let mailFrom = record.mailFrom {
            guard let sender = ReversePath(text: mailFrom) else { return .failure(Self.pseudonymised(mailFrom)) }
            transaction.sender = sender
        }
        for (index, address) in record.recipients.enumerated() {
            guard let path = ForwardPath(text: address) else { return .failure(Self.pseudonymised(address)) }
            transaction.recipients.append((path, index < replies.count ? replies[index] : nil))
        }
        transaction.size = details.size
        transaction.messageID = details.messageID
        transaction.subject = details.subject.flatMap { Self.isPseudonym($0) ? nil : $0 }
        return .success(transaction)
    }

    private static func pseudonymised(_ address: String) -> NotReplayable {
        if address.hasPrefix("h:") || address.hasPrefix("@") {
            return NotReplayable(description: "the log keeps only the domain of an address (decision_log.local_parts)")
        }
        return NotReplayable(description: "an address that is not an SMTP path")
    }

    static func isPseudonym(_ text: String) -> Bool {
        text.utf8.count == 18 && text.hasPrefix("h:") && text.utf8.dropFirst(2).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// `250 2.1.5 Ok` as a reply (the code is what the replay reads).
    static func reply(_ text: String) -> SMTPReply? {
        let utf8 = Array(text.utf8)
        guard utf8.count >= 3, let code = Int(String(decoding: utf8[0..<3], as: UTF8.self)), (200...599).contains(code) else { return nil }
        let rest = text.dropFirst(3).trimmingCharacters(in: .whitespaces)
        return SMTPReply(code, nil, rest)
    }

}

extension PolicyReplayRun.Report {
    /// The report for people: totals, changes by direction and by rule, reasons, examples.
    public func text(policy: String, version: String) -> String {
        var lines = ["Replay of \(records) record\(records == 1 ? "" : "s") against \(policy) (version \(version))"]
        var totals = "  replayed \(replayed): unchanged \(unchanged), changed \(changed), not evaluable \(notEvaluable)"
        if sampled > 0 { totals += "; \(sampled) with the message from the sample store" }
        if !unreadableSamples.isEmpty { totals += "; \(unreadableSamples.count) sample\(unreadableSamples.count == 1 ? "" : "s") unreadable" }
        if records > replayed { totals += "; \(records - replayed) outside the time window" }
        if !malformed.isEmpty { totals += "; \(malformed.count) malformed line\(malformed.count == 1 ? "" : "s") skipped" }
        lines.append(totals)
        func table(_ title: String, _ counts: [String: Int], _ name: (String) -> String = { $0 }) {
            guard !counts.isEmpty else { return }
            lines.append(title)
            let ordered = counts.sorted { ($1.value, $0.key) < ($0.value, $1.key) }
            let width = ordered.map { name($0.key).count }.max() ?? 0
            for (key, count) in ordered {
                let label = name(key)
                lines.append("  " + label + String(repeating: " ", count: width - label.count) + "  \(count)")
            }
        }
        table("Changes:", byChange) { $0.replacingOccurrences(of: "->", with: " -> ") }
        table("By the candidate's deciding rule:", byRule)
        table("Not evaluable:", notEvaluableReasons)
        if !changes.isEmpty {
            lines.append("Examples:")
            for change in changes {
                var line = "  \(DecisionRecord.rfc3339(milliseconds: change.timestamp))  \(change.id.isEmpty ? "-" : change.id)  \(change.was) -> \(change.now)"
                line += change.rule.map { " by \($0)" } ?? ""
                line += "  client \(change.client)"
                if let sender = change.sender { line += "  from <\(sender)>" }
                if let recipient = change.recipient { line += "  to <\(recipient)>" }
                lines.append(line)
            }
        }
        if replayed == 0 { lines.append("No record to replay.") }
        return lines.joined(separator: "\n")
    }

    /// One JSON object, for scripts and CI.
    public func json(policy: String, version: String) -> String {
        let object: [String: Any] = [
            "policy": policy, "policy_version": version,
            "records": records, "replayed": replayed, "unchanged": unchanged, "changed": changed, "not_evaluable": notEvaluable,
            "malformed": malformed.count, "not_evaluable_reasons": notEvaluableReasons,
            "sampled": sampled, "unreadable_samples": unreadableSamples.count,
            "by_change": byChange, "by_rule": byRule,
            "changes": changes.map { change -> [String: Any] in
                var entry: [String: Any] = ["id": change.id, "ts": DecisionRecord.rfc3339(milliseconds: change.timestamp),
                                            "client": change.client, "was": change.was, "now": change.now, "rule": change.rule ?? NSNull()]
                if let sender = change.sender { entry["mail_from"] = sender }
                if let recipient = change.recipient { entry["rcpt"] = recipient }
                return entry
            },
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
