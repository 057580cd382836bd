import Dispatch
import Glibc
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
            logger.notice("policy reloaded", metadata: ["policy": "\(path)", "version": "\(policy.version)", "previous": "\(old)", "rules": "\(policy.rules.count)"])
            return true
        } catch {
            metrics.policyLoaded(version: nil, result: "failure")
            logger.error("policy reload failed; the previous policy stays in force", metadata: [
                "policy": "\(path)", "errors": "\(error.errors.count)",
            ])
            for problem in error.errors { logger.error("\(problem.description)") }
            return false
        }
    }

    /// How often the policy's files are checked for changes.
    static let watchInterval: DispatchTimeInterval = .seconds(2)

    /// Reloads when any file the policy was built from changes (mtime, inode or size), once the
    /// change has been stable for one interval, so a file being written is not read half-way.
    func watchFiles() -> DispatchSourceTimer {
        let timer = DispatchSource.makeTimerSource(queue: .global())
        let state = Mutex<(seen: [String: FileStamp], pending: [String: FileStamp]?)>((Self.stamps(policy.files), nil))
        timer.schedule(deadline: .now() + Self.watchInterval, repeating: Self.watchInterval)
        timer.setEventHandler { [self] in
            let now = Self.stamps(policy.files)
            let reload: Bool = state.withLock { state in
                if now == state.seen { state.pending = nil; return false }
                // Changed: wait one more interval for it to settle.
                guard let pending = state.pending, pending == now else { state.pending = now; return false }
                state.seen = now
                state.pending = nil
                return true
            }
            if reload {
                logger.notice("policy files changed: reloading")
                self.reload()
                let after = Self.stamps(policy.files)
                state.withLock { $0.seen = after }
            }
        }
        timer.resume()
        return timer
    }

    struct FileStamp: Equatable {
        var modified: Int
        var inode: UInt64
        var size: Int64
    }

    static func stamps(_ files: [String]) -> [String: FileStamp] {
        var result: [String: FileStamp] = [:]
        for path in files {
            var info = stat()
            guard stat(path, &info) == 0 else { continue }
            result[path] = FileStamp(modified: info.st_mtim.tv_sec * 1_000_000_000 + info.st_mtim.tv_nsec, inode: UInt64(info.st_ino), size: Int64(info.st_size))
        }
        return result
    }

    /// Reloads on SIGHUP until the returned source is cancelled.
    func watchSIGHUP() -> DispatchSourceSignal {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler { [self] in
            logger.notice("SIGHUP: reloading the policy")
            reload()
        }
        source.resume()
        return source
    }
}
