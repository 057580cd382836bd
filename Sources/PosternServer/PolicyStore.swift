import Dispatch
import Foundation
import Logging
import PosternFilters
import PosternPolicy
import Synchronization

/// The policy in force. Sessions take a snapshot when they start and keep it; a reload
/// compiles the files off the hot path and swaps atomically, or keeps the old policy and
/// logs every error.
public final class PolicyStore: Sendable {
    public let path: String?
    private let current: Mutex<Policy>
    private let logger: Logger
    private let metrics: PosternMetrics
    /// Rate-limit counts live in its store, not in a policy, so a reload keeps them.
    private let compiler: PolicyCompiler
    private let loads = Mutex(LastLoad(result: "success", milliseconds: 0, errors: []))

    /// The last load or reload: its result, when (milliseconds since the epoch), its errors.
    public struct LastLoad: Sendable {
        public var result: String
        public var milliseconds: Int64
        public var errors: [String]
    }

    public var lastLoad: LastLoad { loads.withLock { $0 } }

    private func noteLoad(_ result: String, errors: [String] = []) {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        loads.withLock { $0 = LastLoad(result: result, milliseconds: now, errors: errors) }
    }

    /// Compiles the policy at `path` (no policy when nil); throws every error found.
    init(path: String?, logger: Logger, metrics: PosternMetrics,
         rateLimitStore: any RateLimitStore = InMemoryRateLimitStore()) throws(ConfigurationErrors) {
        self.compiler = BuiltinFilters.compiler(rateLimitStore: rateLimitStore)
        self.path = path
        self.logger = logger
        self.metrics = metrics
        let compiler = self.compiler
        let policy = try path.map { path throws(ConfigurationErrors) in try compiler.compile(path: path) } ?? .empty
        current = Mutex(policy)
        metrics.policyLoaded(version: policy.version, result: "success")
        noteLoad("success")
    }

    public var policy: Policy { current.withLock { $0 } }

    /// Recompiles the policy file. On success the new policy serves new sessions; on failure
    /// the old one stays.
    @discardableResult
    public func reload() -> Bool {
        guard let path else { return true }
        do {
            let policy = try compiler.compile(path: path)
            let old = current.withLock { current in
                defer { current = policy }
                return current.version
            }
            metrics.policyLoaded(version: policy.version, result: "success")
            noteLoad("success")
            logger.notice("policy reloaded", metadata: ["policy": "\(path)", "version": "\(policy.version)", "previous": "\(old)", "rules": "\(policy.rules.count)"])
            return true
        } catch {
            metrics.policyLoaded(version: nil, result: "failure")
            noteLoad("failure", errors: error.errors.map(\.description))
            logger.error("policy reload failed; the previous policy stays in force", metadata: [
                "policy": "\(path)", "errors": "\(error.errors.count)",
            ])
            for problem in error.errors { logger.error("\(problem.description)") }
            return false
        }
    }

    /// Reloads when any file the policy was built from changes (see ``FileWatch``).
    func watchFiles() -> DispatchSourceTimer {
        FileWatch.watch({ [self] in policy.files }) { [self] in
            logger.notice("policy files changed: reloading")
            reload()
        }
    }
}
