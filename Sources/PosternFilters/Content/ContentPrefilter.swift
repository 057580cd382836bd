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
    /// match, nil where every pattern must be searched; computed once per message.
    func candidates(in message: any PolicyMessage) -> [Set<Int>?] {
        guard let database else { return [] }
        func scan() -> [Set<Int>?] {
            switch subject {
            case .bodyParts: return message.bodyTexts.map { database.candidates(in: $0) }
            case .raw: return [message.rawBytes.withUnsafeBytes { database.candidates(in: $0) }]
            }
        }
        guard let memo = (message as? MIMEMessage)?.memo else { return scan() }
        return memo.value(for: ObjectIdentifier(self), make: scan)
    }

    /// Whether pattern `id` may match subject `index` of `message`: false only when
    /// Hyperscan compiled it and found no candidate there.
    func mayMatch(_ id: Int, subject index: Int, in message: any PolicyMessage) -> Bool {
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
