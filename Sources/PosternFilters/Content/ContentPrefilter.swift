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
/// cannot compile are always searched with PCRE2.
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

    let subject: Subject
    private let state = Mutex<(patterns: [HyperscanDatabase.Pattern], database: HyperscanDatabase??)>(([], nil))

    init(_ subject: Subject) {
        self.subject = subject
    }

    /// Adds a pattern (PCRE2 syntax, case-insensitive unless it says otherwise); its id. One
    /// added after the first scan is not in the database: it is always searched.
    func register(_ expression: String) -> Int {
        state.withLock { state in
            state.patterns.append(HyperscanDatabase.Pattern(expression, caseInsensitive: true, utf8: subject == .bodyParts))
            return state.patterns.count - 1
        }
    }

    /// The database, built on first use; nil when Hyperscan could not build it (then every
    /// pattern is searched with PCRE2).
    var database: HyperscanDatabase? {
        state.withLock { state in
            if let built = state.database { return built }
            let built = try? HyperscanDatabase(state.patterns)
            state.database = .some(built)
            return built
        }
    }

    /// For each subject of `message` (each body part, or the raw message), the ids that may
    /// match, nil where every pattern must be searched (a short subject, a failed scan);
    /// computed once per message.
    func candidates(in message: any PolicyMessage) -> [Set<Int>?] {
        guard let database else { return [] }
        let minimum = ContentMatching.minimumScanSize
        func scan() -> [Set<Int>?] {
            switch subject {
            case .bodyParts:
                return message.bodyTexts.map { $0.utf8.count < minimum ? nil : database.candidates(in: $0) }
            case .raw:
                let raw = message.rawBytes
                return [raw.count < minimum ? nil : raw.withUnsafeBytes { database.candidates(in: $0) }]
            }
        }
        guard let memo = message.derivedValues as? MessageMemo else { return scan() }
        return memo.value(for: ObjectIdentifier(self), make: scan)
    }

    /// Whether pattern `id` may match subject `index` (of `length` octets) of `message`:
    /// false only when Hyperscan compiled it, scanned that subject and found no candidate.
    func mayMatch(_ id: Int, subject index: Int, length: Int, in message: any PolicyMessage) -> Bool {
        guard length >= ContentMatching.minimumScanSize else { return true }
        guard let database, id < database.patterns.count, database.unsupported[id] == nil else { return true }
        let candidates = candidates(in: message)
        guard index < candidates.count, let found = candidates[index] else { return true }
        return found.contains(id)
    }

    /// What the pattern got, for `postern check`.
    func engine(of id: Int) -> PatternEngine {
        guard let database else { return .pcre2("Hyperscan could not build the database") }
        guard id < database.patterns.count else { return .pcre2("added after the first scan") }
        if let reason = database.unsupported[id] { return .pcre2("Hyperscan: \(reason)") }
        return .prefiltered
    }
}
