import Dispatch
import Foundation
import Glibc
import Logging
import NIOCore
import PosternLog
import PosternPolicy
import PosternUpstream
import Synchronization

/// The sample store (`samples:`): a fraction of the messages, kept after their decision so
/// that `postern replay` can run a candidate's content rules over them.
///
/// A sample is written after the decision record, by one background writer, never by the
/// session: the session hands over its spool (the message as received, before Postern's
/// headers) and goes on. When the writer is behind (`maximumPending` samples waiting), a
/// sample is dropped and counted, never waited for. Which transactions are sampled depends
/// on their id only (a hash against `fraction`), so a rerun samples the same ones.
///
/// Layout: `DIRECTORY/YYYY-MM-DD/ID.eml` (the record's UTC day), mode 0600 in directories
/// of mode 0700. Each file is the message with one line before it,
///     X-Postern-Sample: id=ID; decision=accepted; received=2026-12-07T10:00:00.000Z; withheld=subject,addresses
/// and the decision log's privacy options applied: a hashed or dropped Subject, address
/// fields' local parts hashed or dropped (`SampledMessage.addressFields`), and with
/// `body: false` nothing after the header section. `withheld` names what was treated, so
/// replay knows which rules it cannot decide. Files older than `keep` are removed hourly.
public final class SampleStore: Sendable {
    public struct Configuration: Hashable, Sendable {
        public var directory: String
        /// The share of eligible transactions kept, 0 to 1.
        public var fraction: Double = 0.01
        /// Larger messages are not kept.
        public var maximumSize = 256_000
        /// Samples older than this are removed.
        public var keep: TimeAmount = .hours(24 * 7)
        /// The decisions whose messages are kept.
        public var decisions: Set<DecisionRecord.Decision> = Self.keepable
        /// False: only the header section is kept.
        public var body = true

        /// The decisions a message exists for (an aborted transaction's message is incomplete).
        public static let keepable: Set<DecisionRecord.Decision> = [.accepted, .rejected, .tempfailed, .discarded, .quarantined]

        public init(directory: String) {
            self.directory = directory
        }
    }

    public let configuration: Configuration
    /// The decision log's privacy options (a configuration reload may change them: ``setPrivacy(_:)``).
    private let privacy: Mutex<DecisionLogPrivacy>
    private let logger: Logger
    /// The writer (internal: a test holds it up to fill the pending samples).
    let queue = DispatchQueue(label: "postern.samples", qos: .utility)
    private let pending = Atomic<Int>(0)
    private let lastFailureLog = Mutex<UInt64>(0)
    private let counted: @Sendable (String) -> Void
    /// Samples waiting for the writer at most; more are dropped.
    static let maximumPending = 64

    /// Creates the directory when missing (mode 0700) and starts the hourly removal of old samples.
    /// `counted` hears each sample's result: written, too_large, dropped, failed.
    public init(_ configuration: Configuration, privacy: DecisionLogPrivacy, logger: Logger,
                counted: @escaping @Sendable (String) -> Void = { _ in }) throws(Failure) {
        self.configuration = configuration
        self.privacy = Mutex(privacy)
        self.logger = logger
        self.counted = counted
        try Self.makeDirectory(configuration.directory)
        queue.async { [weak self] in self?.sweepHourly() }
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Whether the transaction `id` is in the sampled fraction.
    public static func isSampled(id: String, fraction: Double) -> Bool {
        guard fraction < 1 else { return true }
        guard fraction > 0 else { return false }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for octet in id.utf8 {
            hash ^= UInt64(octet)
            hash &*= 0x0100_0000_01b3
        }
        return Double(hash >> 11) / Double(1 << 53) < fraction
    }

    /// After the decision `record`: keeps the message in `spool` when the record is one to
    /// sample. Called on the session's event loop; returns at once.
    func offer(_ record: DecisionRecord, spool: MessageSpool) {
        guard record.stage == .data, let size = record.size, size == spool.size, configuration.decisions.contains(record.decision),
              Self.isSampled(id: record.id, fraction: configuration.fraction) else { return }
        guard size <= configuration.maximumSize else { return counted("too_large") }
        guard pending.add(1, ordering: .relaxed).newValue <= Self.maximumPending else {
            pending.subtract(1, ordering: .relaxed)
            return counted("dropped")
        }
        let handed = Handed(record: record, spool: spool)
        queue.async { [self] in
            defer { pending.subtract(1, ordering: .relaxed) }
            write(handed.record, handed.spool)
        }
    }

    /// Waits until every sample offered so far is written (tests, shutdown).
    public func flush() {
        queue.sync {}
    }

    /// A configuration reload's privacy options, for the samples written from now on.
    public func setPrivacy(_ privacy: DecisionLogPrivacy) {
        self.privacy.withLock { $0 = privacy }
    }

    /// The spool, no longer used by its session, handed to the writer.
    private struct Handed: @unchecked Sendable {
        let record: DecisionRecord
        let spool: MessageSpool
    }

    private func write(_ record: DecisionRecord, _ spool: MessageSpool) {
        let path = Self.path(directory: configuration.directory, id: record.id, timestamp: record.timestamp)
        do {
            let message = try spool.prefix(configuration.maximumSize)
            let (treated, withheld) = Self.treated(message, privacy: privacy.withLock { $0 }, body: configuration.body)
            var line = "X-Postern-Sample: id=\(record.id); decision=\(record.decision.rawValue); received=\(DecisionRecord.rfc3339(milliseconds: record.timestamp))"
            line += "; withheld=" + (withheld.isEmpty ? "none" : withheld.map(\.rawValue).sorted().joined(separator: ","))
            try Self.makeDirectory(Self.parent(of: path))
            try Self.writeFile(path, Array((line + "\r\n").utf8) + treated)
            counted("written")
        } catch {
            counted("failed")
            let now = DispatchTime.now().uptimeNanoseconds
            let shouldLog = lastFailureLog.withLock { last in
                guard last == 0 || now - last > 60_000_000_000 else { return false }
                last = now
                return true
            }
            if shouldLog {
                logger.error("a message sample could not be written (logged at most once a minute)",
                             metadata: ["path": "\(path)", "error": "\(error)"])
            }
        }
    }

    // MARK: Layout

    /// Where the sample of transaction `id`, decided at `timestamp` (ms since the epoch), is kept.
    public static func path(directory: String, id: String, timestamp: Int64) -> String {
        directory + "/" + String(DecisionRecord.rfc3339(milliseconds: timestamp).prefix(10)) + "/" + id + ".eml"
    }

    /// Every sample under `directory`: transaction id → file.
    public static func index(_ directory: String) -> [String: String] {
        var found: [String: String] = [:]
        let manager = FileManager.default
        for day in ((try? manager.contentsOfDirectory(atPath: directory)) ?? []) where isDayName(day) {
            for name in ((try? manager.contentsOfDirectory(atPath: directory + "/" + day)) ?? []) where name.hasSuffix(".eml") {
                found[String(name.dropLast(4))] = directory + "/" + day + "/" + name
            }
        }
        return found
    }

    /// A sample as replay reads it: the message, and what the privacy treatment withheld.
    public static func read(_ path: String) throws(Failure) -> (message: [UInt8], withheld: Set<SampledMessage.Withheld>) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Failure(description: "cannot read \(path)")
        }
        let bytes = [UInt8](data)
        let marker = Array("X-Postern-Sample:".utf8)
        guard bytes.starts(with: marker), let end = bytes.firstIndex(of: 0x0A) else {
            throw Failure(description: "\(path): not a Postern sample (no X-Postern-Sample line first)")
        }
        let line = String(decoding: bytes[..<end], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        var withheld: Set<SampledMessage.Withheld> = []
        for part in line.dropFirst(marker.count).split(separator: ";") {
            let pair = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2, pair[0] == "withheld", pair[1] != "none" else { continue }
            for name in pair[1].split(separator: ",") {
                guard let part = SampledMessage.Withheld(rawValue: String(name)) else {
                    throw Failure(description: "\(path): withheld names an unknown part '\(name)'")
                }
                withheld.insert(part)
            }
        }
        return (Array(bytes[(end + 1)...]), withheld)
    }

    // MARK: Privacy

    /// `message` with the decision log's privacy options applied to its header section (and
    /// without its body when `body` is false), and what was withheld.
    static func treated(_ message: [UInt8], privacy: DecisionLogPrivacy, body: Bool) -> ([UInt8], Set<SampledMessage.Withheld>) {
        let headerEnd = headerSectionEnd(message)
        var withheld: Set<SampledMessage.Withheld> = []
        if !body && headerEnd < message.count { withheld.insert(.body) }
        guard privacy.subject != .on || privacy.localParts != .on else {
            return (body || headerEnd == message.count ? message : Array(message[..<headerEnd]) + [0x0D, 0x0A], withheld)
        }
        var output: [UInt8] = []
        output.reserveCapacity(message.count)
        for field in fields(message[..<headerEnd]) {
            let colon = field.firstIndex(of: 0x3A)
            let name = colon.map { String(decoding: field[field.startIndex..<$0], as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            if name == "subject", privacy.subject != .on, let colon {
                withheld.insert(.subject)
                let value = unfolded(field[(colon + 1)...])
                if let kept = privacy.subjectText(value) { output += Array("Subject: \(kept)\r\n".utf8) }
            } else if privacy.localParts != .on, SampledMessage.addressFields.contains(name) {
                withheld.insert(.addresses)
                output += Array(privacy.addresses(in: String(decoding: field, as: UTF8.self)).utf8)
            } else {
                output += field
            }
        }
        if body { output += message[headerEnd...] } else if headerEnd < message.count { output += [0x0D, 0x0A] }
        return (output, withheld)
    }

    /// Where the header section ends: just after the CRLF of the empty line that ends it
    /// is where the body starts; that CRLF belongs to the body here (kept or dropped with it).
    private static func headerSectionEnd(_ message: [UInt8]) -> Int {
        if message.starts(with: [0x0D, 0x0A]) { return 0 }
        var index = 0
        while index + 3 < message.count {
            if message[index] == 0x0D, message[index + 1] == 0x0A, message[index + 2] == 0x0D, message[index + 3] == 0x0A { return index + 2 }
            index += 1
        }
        return message.count
    }

    /// The header section's fields, each with its continuation lines and line endings.
    private static func fields(_ section: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var fields: [ArraySlice<UInt8>] = []
        var start = section.startIndex
        var index = section.startIndex
        while index < section.endIndex {
            guard section[index] == 0x0A else {
                index += 1
                continue
            }
            let next = index + 1
            if next == section.endIndex || (section[next] != 0x20 && section[next] != 0x09) {
                fields.append(section[start..<next])
                start = next
            }
            index = next
        }
        if start < section.endIndex { fields.append(section[start...]) }
        return fields
    }

    private static func unfolded(_ value: ArraySlice<UInt8>) -> String {
        String(decoding: value.filter { $0 != 0x0D && $0 != 0x0A }, as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }

    // MARK: Files

    private static func isDayName(_ name: String) -> Bool {
        let utf8 = Array(name.utf8)
        return utf8.count == 10 && utf8[4] == 0x2D && utf8[7] == 0x2D
            && utf8.enumerated().allSatisfy { $0.offset == 4 || $0.offset == 7 || (0x30...0x39).contains($0.element) }
    }

    private static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func makeDirectory(_ path: String) throws(Failure) {
        var info = stat()
        if stat(path, &info) == 0 {
            guard (info.st_mode & S_IFMT) == S_IFDIR else { throw Failure(description: "\(path) exists and is not a directory") }
            return
        }
        let parent = parent(of: path)
        if parent != path, stat(parent, &info) != 0 { try makeDirectory(parent) }
        guard mkdir(path, 0o700) == 0 || errno == EEXIST else {
            throw Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Written to a temporary name first, then renamed: a reader never sees half a sample.
    private static func writeFile(_ path: String, _ bytes: [UInt8]) throws(Failure) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure(description: "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, bytes.count - written) }
            if count < 0 {
                if errno == EINTR { continue }
                let reason = String(cString: strerror(errno))
                close(fd)
                unlink(temporary)
                throw Failure(description: "cannot write \(temporary): \(reason)")
            }
            written += count
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw Failure(description: "cannot rename \(temporary): \(reason)")
        }
    }

    // MARK: Removal

    private func sweepHourly() {
        Self.sweep(configuration.directory, olderThan: Date().addingTimeInterval(-Double(configuration.keep.nanoseconds) / 1e9))
        queue.asyncAfter(deadline: .now() + .seconds(3600)) { [weak self] in self?.sweepHourly() }
    }

    /// Removes the samples (and the temporary files) last modified before `limit`, then the
    /// day directories left empty. Returns how many files were removed.
    @discardableResult
    public static func sweep(_ directory: String, olderThan limit: Date) -> Int {
        let manager = FileManager.default
        var removed = 0
        for day in ((try? manager.contentsOfDirectory(atPath: directory)) ?? []) where isDayName(day) {
            let dayPath = directory + "/" + day
            let names = (try? manager.contentsOfDirectory(atPath: dayPath)) ?? []
            var left = names.count
            for name in names where name.hasSuffix(".eml") || name.hasSuffix(".eml.tmp") {
                let path = dayPath + "/" + name
                guard let modified = (try? manager.attributesOfItem(atPath: path))?[.modificationDate] as? Date, modified < limit else { continue }
                if unlink(path) == 0 {
                    removed += 1
                    left -= 1
                }
            }
            if left == 0 { rmdir(dayPath) }
        }
        return removed
    }
}
