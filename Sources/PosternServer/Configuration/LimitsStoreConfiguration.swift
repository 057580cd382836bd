import Foundation
import Logging
import NIOCore
import NIOSSL
import PosternPolicy
import PosternRedis
import Prometheus
import Synchronization
import Yams

extension PosternConfiguration {
    /// Where the rate-limit counts of `limit:` rules live (`limits_store:`).
    public enum LimitsStore: Hashable, Sendable {
        /// This process's memory (the default): each instance counts on its own.
        case memory
        /// A Redis server shared by every instance pointing at it.
        case redis(RedisLimitsStore)
    }

    /// `limits_store: { url: redis://…, failure: fail_open, timeout: 200ms, pool_size: 4, ca_file: … }`.
    public struct RedisLimitsStore: Hashable, Sendable {
        public var endpoint: RedisEndpoint
        /// What a check does when Redis cannot answer in time. Default: fail open.
        public var failureMode: RedisRateLimitStore.FailureMode = .failOpen
        /// The most one check may take (connection, script load and call). Default 200 ms.
        public var timeout: TimeAmount = .milliseconds(200)
        /// Connections to Redis. Default 4.
        public var poolSize = 4
        /// Trust roots for `rediss://` (PEM); the system's when nil.
        public var caFile: String?

        public init(endpoint: RedisEndpoint) { self.endpoint = endpoint }
    }
}

extension PosternConfiguration.LimitsStore {
    /// The store the policy compiler counts in, reporting Redis failures to the log and metrics.
    func makeStore(logger: Logger, metrics: PosternMetrics) -> any RateLimitStore {
        switch self {
        case .memory:
            return InMemoryRateLimitStore()
        case .redis(let settings):
            var tls: TLSConfiguration?
            if let caFile = settings.caFile {
                var configuration = TLSConfiguration.makeClientConfiguration()
                configuration.trustRoots = .file(caFile)
                tls = configuration
            }
            let pool = RedisConnectionPool(endpoint: settings.endpoint, options: .init(size: settings.poolSize),
                                           tlsConfiguration: tls, logger: logger)
            let reporter = LimitsStoreFailureLog(logger: logger, endpoint: settings.endpoint.description)
            return RedisRateLimitStore(
                pool: pool, failureMode: settings.failureMode, timeout: Duration(settings.timeout),
                onFailure: { failure in
                    metrics.limitsStoreFailure(reason: failure.reason.rawValue, mode: failure.mode)
                    reporter.log(failure)
                })
        }
    }
}

/// Logs store failures at most once a second (with the count since the last line), so a
/// Redis outage under load does not flood the log.
final class LimitsStoreFailureLog: Sendable {
    private let logger: Logger
    private let endpoint: String
    private let state = Mutex<(last: ContinuousClock.Instant?, suppressed: Int)>((nil, 0))

    init(logger: Logger, endpoint: String) {
        self.logger = logger
        self.endpoint = endpoint
    }

    func log(_ failure: RedisRateLimitStore.Failure) {
        let now = ContinuousClock.now
        let suppressed: Int? = state.withLock { state in
            if let last = state.last, now - last < .seconds(1) {
                state.suppressed += 1
                return nil
            }
            defer { state = (now, 0) }
            return state.suppressed
        }
        guard let suppressed else { return }
        logger.warning("rate limit store unavailable", metadata: [
            "limits_store": "\(endpoint)", "reason": "\(failure.reason.rawValue)", "failure": "\(failure.mode.rawValue)",
            "error": "\(failure.error)", "suppressed": "\(suppressed)",
        ])
    }
}

extension PosternMetrics {
    /// `postern_limits_store_errors_total{reason}` and `postern_limits_store_fail_open_total`
    /// or `postern_limits_store_fail_closed_total`.
    func limitsStoreFailure(reason: String, mode: RedisRateLimitStore.FailureMode) {
        limitsStoreErrors(reason).increment()
        (mode == .failOpen ? limitsStoreFailOpen : limitsStoreFailClosed)().increment()
    }
}

extension YAMLReader {
    /// `limits_store: memory`, `limits_store: redis://…`, or the mapping form with options.
    mutating func limitsStore(_ node: Node) -> PosternConfiguration.LimitsStore? {
        var urlNode = node
        var entries: [String: Node] = [:]
        if case .mapping = node {
            entries = mapping(node, "limits_store", keys: ["url", "failure", "timeout", "pool_size", "ca_file"])
            guard let url = entries["url"] else {
                fail(node, "limits_store needs url: (memory, or redis://[user:password@]host:port/db)")
                return nil
            }
            urlNode = url
        }
        guard let text = string(urlNode, "limits_store") else { return nil }
        if text == "memory" {
            for key in ["failure", "timeout", "pool_size", "ca_file"] where entries[key] != nil {
                fail(entries[key], "limits_store.\(key) applies to a redis:// store only")
            }
            return .memory
        }
        let endpoint: RedisEndpoint
        do {
            endpoint = try RedisEndpoint(url: text)
        } catch {
            fail(urlNode, "limits_store must be memory or redis://[user:password@]host:port/db (rediss:// for TLS): \(error)")
            return nil
        }
        var settings = PosternConfiguration.RedisLimitsStore(endpoint: endpoint)
        if let entry = entries["failure"], let mode = string(entry, "limits_store.failure") {
            if let value = RedisRateLimitStore.FailureMode(rawValue: mode) { settings.failureMode = value } else {
                fail(entry, "limits_store.failure must be fail_open or fail_closed")
            }
        }
        if let entry = entries["timeout"], let value = duration(entry, "limits_store.timeout") {
            if value <= .zero || value > .seconds(30) { fail(entry, "limits_store.timeout must be between 1ms and 30s") } else { settings.timeout = value }
        }
        if let entry = entries["pool_size"], let value = integer(entry, "limits_store.pool_size", range: 1...256) { settings.poolSize = value }
        if let entry = entries["ca_file"], let path = string(entry, "limits_store.ca_file") {
            let resolved = resolvedPath(path)
            if !endpoint.tls {
                fail(entry, "limits_store.ca_file needs a rediss:// url")
            } else if FileManager.default.isReadableFile(atPath: resolved) {
                settings.caFile = resolved
            } else {
                fail(entry, "cannot read \(resolved)")
            }
        }
        return .redis(settings)
    }
}
