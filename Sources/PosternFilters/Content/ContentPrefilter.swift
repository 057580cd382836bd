import Foundation
import PosternMIME
import PosternNative
import PosternPolicy
import Synchronization

/// Which engine content patterns get (`POSTERN_CONTENT_ENGINE=pcre2` in the environment, or
/// `ContentMatching.prefilter`, turns the one-pass prefilter off: every pattern is then
/// matched by PCRE2 alone, as the tests do to prove both give the same answers).
public enum ContentMatching {
    private static let enabled = Atomic<Bool>(
        ProcessInfo.processInfo.environment["POSTERN_CONTENT_ENGINE"]?.lowercased() != "pcre2")

    /// Whether policies compiled from now on prefilter their body and raw patterns with Hyperscan.
    public static var prefilter: Bool {
        get { enabled.load(ordering: .relaxed) }
        set { enabled.store(newValue, ordering: .relaxed) }
    }

    private static let scanSize = Atomic<Int>(16 * 1024)

    /// Subjects shorter than this (in octets) are searched by PCRE2 directly: on a few
    /// kilobytes its own start-of-match optimisations beat a scan for every pattern (measured
    /// with `postern-policy-bench`: the one pass pays from about 16 KB of text on). The
    /// tests set it to 0 so that every subject goes through the pass.
    public static var minimumScanSize: Int {
        get { scanSize.load(ordering: .relaxed) }
        set { scanSize.store(newValue, ordering: .relaxed) }
    }
}

/// The body (or raw) patterns of one policy, scanned together in one Hyperscan pass per
/// subject (each body part; the raw message) instead of one PCRE2 search per pattern. A
/// pattern Hyperscan says cannot match is not searched; one it says may match is confirmed
/// by PCRE2, so the answers are PCRE2's, with its options and limits. Patterns Hyperscan
/// cannot compile are always searched with PCRE2. A pattern that is one character repeated
/// (`X{200}`, `LiteralRun`) is not in the pass: a count of runs rules it out or in, for
/// subjects of any size.
///
/// Conditions register their patterns while the policy compiles; the database is built the
/// first time a message is scanned (after every pattern is in), once.
final class ContentPrefilter: Sendable {
    enum Subject: Sendable {
        /// Each decoded text part (valid UTF-8).
        case bodyParts
        /// The message as received (bytes).
        case raw
    }

    /// How a registered pattern is prefiltered.
    private enum Entry: Sendable {
        /// Pattern `index` of the Hyperscan database.
        case scanned(Int)
        case run(LiteralRun)
    }

    /// What the prefilter found in one subject.
    private struct Found: Sendable {
        /// The ids of the scanned patterns that may match; nil: the subject was not scanned
        /// (too short, or the scan failed), so each must be searched.
        var scanned: Set<Int>?
        /// The ids of the run patterns whose run is there.
        var runs: Set<Int>
    }

    /// What the first scan builds from the registered patterns, once.
    private struct Built: Sendable {
        let entries: [Entry]
        /// Nil when Hyperscan could not build it (then every scanned pattern is searched).
        let database: HyperscanDatabase?
        /// The run patterns, with their ids.
        let runs: [(id: Int, run: LiteralRun)]
        /// The id of each pattern of the database, by its index there.
        let scannedIDs: [Int]
    }

    let subject: Subject
    private let state = Mutex<(entries: [Entry], patterns: [HyperscanDatabase.Pattern], built: Built?)>(([], [], nil))

    init(_ subject: Subject) {
        self.subject = subject
    }

    /// Adds a pattern (PCRE2 syntax, case-insensitive unless it says otherwise); its id. One
    /// added after the first scan is not in the database: it is always searched.
    func register(_ expression: String) -> Int {
        state.withLock { state in
            if let run = LiteralRun(expression, caseInsensitive: true) {
                state.entries.append(.run(run))
            } else {
                state.entries.append(.scanned(state.patterns.count))
                state.patterns.append(HyperscanDatabase.Pattern(expression, caseInsensitive: true, utf8: subject == .bodyParts))
            }
            return state.entries.count - 1
        }
    }

    /// The database and what goes with it, built on first use; patterns registered later are
    /// not in it.
    private var built: Built {
        state.withLock { state in
            if let built = state.built { return built }
            let entries = state.entries
            let built = Built(
                entries: entries, database: try? HyperscanDatabase(state.patterns),
                runs: entries.indices.compactMap { id in if case .run(let run) = entries[id] { (id, run) } else { nil } },
                scannedIDs: entries.indices.filter { if case .scanned = entries[$0] { true } else { false } })
            state.built = built
            return built
        }
    }

    /// For each subject of `message` (each body part, or the raw message), what the pass
    /// found; computed once per message.
    private func found(in message: any PolicyMessage) -> [Found] {
        func scan() -> [Found] {
            let built = self.built
            let minimum = ContentMatching.minimumScanSize
            func look(_ bytes: UnsafeRawBufferPointer) -> Found {
                var found = Found(scanned: nil, runs: [])
                if let database = built.database, bytes.count >= minimum, let hits = database.candidates(in: bytes) {
                    found.scanned = Set(hits.map { built.scannedIDs[$0] })
                }
                for (id, run) in built.runs where run.occurs(in: bytes) { found.runs.insert(id) }
                return found
            }
            switch subject {
            case .bodyParts:
                return message.bodyTexts.map { text in
                    var text = text
                    return text.withUTF8 { look(UnsafeRawBufferPointer($0)) }
                }
            case .raw:
                return [message.rawBytes.withUnsafeBytes(look)]
            }
        }
        guard let memo = message.derivedValues as? MessageMemo else { return scan() }
        return memo.value(for: ObjectIdentifier(self), make: scan)
    }

    /// For each subject of `message`, the scanned patterns that may match (nil: not scanned).
    func candidates(in message: any PolicyMessage) -> [Set<Int>?] {
        found(in: message).map(\.scanned)
    }

    /// Whether pattern `id` may match subject `index` (of `length` octets) of `message`:
    /// false only when the pass ruled it out there (a scanned pattern Hyperscan compiled, in
    /// a subject it scanned; a run pattern whose run is not there).
    func mayMatch(_ id: Int, subject index: Int, length: Int, in message: any PolicyMessage) -> Bool {
        let (entries, database) = (built.entries, built.database)
        guard id < entries.count else { return true }
        switch entries[id] {
        case .run:
            let found = found(in: message)
            guard index < found.count else { return true }
            return found[index].runs.contains(id)
        case .scanned(let pattern):
            guard length >= ContentMatching.minimumScanSize else { return true }
            guard let database, pattern < database.patterns.count, database.unsupported[pattern] == nil else { return true }
            let found = found(in: message)
            guard index < found.count, let scanned = found[index].scanned else { return true }
            return scanned.contains(id)
        }
    }

    /// What the pattern got, for `postern check`.
    func engine(of id: Int) -> PatternEngine {
        let (entries, database) = (built.entries, built.database)
        guard id < entries.count else { return .pcre2("added after the first scan") }
        switch entries[id] {
        case .run(let run):
            return .runCount(minimum: run.minimum)
        case .scanned(let pattern):
            guard let database else { return .pcre2("Hyperscan could not build the database") }
            guard pattern < database.patterns.count else { return .pcre2("added after the first scan") }
            if let reason = database.unsupported[pattern] { return .pcre2("Hyperscan: \(reason)") }
            return .prefiltered
        }
    }
}
