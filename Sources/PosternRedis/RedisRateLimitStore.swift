import Logging
import NIOCore
import PosternPolicy
import Synchronization

/// A ``RateLimitStore`` shared by every Postern instance that points at the same Redis:
/// one atomic Lua script per check runs the GCRA of ``GCRA/decide(tat:now:cost:spec:)``.
///
/// ## The script
///
/// The time comes from Redis (`TIME`, inside the script), so all instances share one
/// clock. Times are integer microseconds held in Lua doubles (exact up to 2^53 µs, about
/// 285 years since 1970). Hence, compared with the in-memory store (attoseconds):
/// - the emission interval `T` is rounded **up** to a whole microsecond (at least 1 µs),
///   so a limit can only get stricter, and results are identical whenever `T` is a whole
///   number of microseconds (every `rate/period` with period/rate ≥ 1 µs that divides
///   evenly, e.g. 10/1m, 100/1h, 10 MB/1h);
/// - a limit faster than one unit per microsecond per key (a bytes limit above 1 GB/s)
///   is held to one unit per microsecond;
/// - the capacity `L` is capped at 2^52 µs (142 years).
///
/// The key's TTL is set to the moment it goes idle (`TAT − now`), so Redis forgets it
/// exactly when forgetting loses nothing. The script is loaded once (`SCRIPT LOAD`) and
/// called by its SHA (`EVALSHA`); after `NOSCRIPT` (Redis restarted, `SCRIPT FLUSH`) it
/// is loaded again and the call retried once.
///
/// ## Failures
///
/// Each call has a deadline (``timeout``) covering the connection, the script load and
/// the call. When Redis is unreachable, slow or answers badly, ``failureMode`` decides:
/// ``FailureMode/failOpen`` returns `allowed` with `remaining == nil`;
/// ``FailureMode/failClosed`` throws ``RateLimitError/storeUnavailable(_:)``. Either way
/// the failure is counted and reported to `onFailure`. The pool reconnects by itself.
public final class RedisRateLimitStore: RateLimitStore {
    /// What a check does when Redis cannot answer.
    public enum FailureMode: String, Hashable, Sendable {
        /// Count it, log it, let the mail pass (`allowed`, `remaining == nil`).
        case failOpen = "fail_open"
        /// Count it, log it, throw ``RateLimitError/storeUnavailable(_:)`` (the session answers 4xx).
        case failClosed = "fail_closed"
    }

    /// Why a check could not be answered, for metrics (`reason` label).
    public enum FailureReason: String, CaseIterable, Hashable, Sendable {
        /// No answer within the timeout.
        case timeout
        /// Redis unreachable: connection refused, lost, or the pool backing off.
        case unavailable
        /// Redis answered with an error (wrong password, out of memory, script error…).
        case server
        /// An unreadable or unexpected reply.
        case `protocol`
    }

    /// One failed check, as reported to `onFailure`.
    public struct Failure: Sendable, CustomStringConvertible {
        public var reason: FailureReason
        public var mode: FailureMode
        public var error: RedisError
        public var description: String { "\(error) (\(mode.rawValue))" }
    }

    /// Where the time comes from.
    public enum TimeSource: Sendable {
        /// Redis `TIME`, read inside the script (production: one clock for all instances).
        case redisServer
        /// A local clock, passed to the script (tests: exact, repeatable time).
        case clock(any RateLimitClock)
    }

    public let pool: RedisConnectionPool
    public let failureMode: FailureMode
    public let timeout: Duration
    /// Prepended to every key (`postern:rl:` by default), so the limits share a database safely.
    public let keyPrefix: String
    private let timeSource: TimeSource
    private let onFailure: @Sendable (Failure) -> Void
    private let state = Mutex(Counters())

    private struct Counters {
        var sha: String?
        var failOpen = 0
        var failClosed = 0
        var byReason: [FailureReason: Int] = [:]
        var scriptLoads = 0
    }

    public init(pool: RedisConnectionPool, failureMode: FailureMode = .failOpen, timeout: Duration = .milliseconds(200),
                keyPrefix: String = "postern:rl:", timeSource: TimeSource = .redisServer,
                onFailure: @escaping @Sendable (Failure) -> Void = { _ in }) {
        self.pool = pool
        self.failureMode = failureMode
        self.timeout = timeout
        self.keyPrefix = keyPrefix
        self.timeSource = timeSource
        self.onFailure = onFailure
    }

    /// Checks answered "allowed" because Redis could not answer (fail open).
    public var failOpenCount: Int { state.withLock { $0.failOpen } }
    /// Checks refused with ``RateLimitError/storeUnavailable(_:)`` (fail closed).
    public var failClosedCount: Int { state.withLock { $0.failClosed } }
    /// Failed checks by reason.
    public func failures(_ reason: FailureReason) -> Int { state.withLock { $0.byReason[reason, default: 0] } }
    /// `SCRIPT LOAD`s sent so far (1 in a steady state; one more after each NOSCRIPT).
    public var scriptLoads: Int { state.withLock { $0.scriptLoads } }

    public func consume(key: String, cost: Int, spec: RateLimitSpec) async throws -> RateLimitDecision {
        guard cost >= 0 else { throw RateLimitError.negativeCost(cost) }
        let deadline = NIODeadline.now() + TimeAmount(timeout)
        do {
            return try await check(key: keyPrefix + key, cost: cost, spec: spec, deadline: deadline)
        } catch {
            let reason: FailureReason
            switch error {
            case .timeout: reason = .timeout
            case .connectionFailed, .backingOff, .poolClosed: reason = .unavailable
            case .server: reason = .server
            case .protocolError: reason = .protocol
            }
            let mode = failureMode
            state.withLock { counters in
                counters.byReason[reason, default: 0] += 1
                if mode == .failOpen { counters.failOpen += 1 } else { counters.failClosed += 1 }
            }
            onFailure(Failure(reason: reason, mode: mode, error: error))
            switch mode {
            case .failOpen: return RateLimitDecision(allowed: true, retryAfter: nil, remaining: nil)
            case .failClosed: throw RateLimitError.storeUnavailable(error.description)
            }
        }
    }

    // MARK: - The script

    /// KEYS[1] the key. ARGV: interval µs, capacity µs, cost, largest cost that can fit
    /// (rate + burst), and optionally now µs (tests). Returns {allowed 1/0, retry-after µs
    /// or -1 for none, remaining}. Mirrors `GCRA.decide` line by line.
    static let script = """
        local interval = tonumber(ARGV[1])
        local capacity = tonumber(ARGV[2])
        local cost = tonumber(ARGV[3])
        local maxCost = tonumber(ARGV[4])
        local now
        if ARGV[5] and ARGV[5] ~= '' then
          now = tonumber(ARGV[5])
        else
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        end
        local base = now
        local stored = redis.call('GET', KEYS[1])
        if stored then
          local tat = tonumber(stored)
          if tat and tat > now then base = tat end
        end
        local function remaining(tat)
          local room = capacity - (tat - now)
          if room <= 0 then return 0 end
          local r = math.floor(room / interval)
          if r * interval > room then r = r - 1 elseif (r + 1) * interval <= room then r = r + 1 end
          return r
        end
        if cost > maxCost then return {0, -1, remaining(base)} end
        if cost == 0 then return {1, -1, remaining(base)} end
        local newTAT = base + cost * interval
        local ahead = newTAT - now
        if ahead <= capacity then
          redis.call('SET', KEYS[1], string.format('%.0f', newTAT), 'PX', math.ceil(ahead / 1000))
          return {1, -1, remaining(newTAT)}
        end
        return {0, ahead - capacity, remaining(base)}
        """

    /// The largest capacity the script handles exactly (2^52 µs).
    static let maximumCapacityMicroseconds: Int128 = 1 << 52

    /// The spec in the script's unit: `T` rounded up to whole microseconds, `L = (rate + burst) × T`.
    static func microsecondParameters(_ spec: RateLimitSpec) -> (interval: Int128, capacity: Int128) {
        let perMicrosecond: Int128 = 1_000_000_000_000
        let interval = Swift.max(1, (spec.emissionIntervalAttoseconds + perMicrosecond - 1) / perMicrosecond)
        let capacity = Swift.min(Int128(spec.rate + spec.burst) * interval, maximumCapacityMicroseconds)
        return (Swift.min(interval, capacity), capacity)
    }

    private func check(key: String, cost: Int, spec: RateLimitSpec, deadline: NIODeadline) async throws(RedisError) -> RateLimitDecision {
        let (interval, capacity) = Self.microsecondParameters(spec)
        var arguments = [String(interval), String(capacity), String(cost), String(spec.rate + spec.burst)]
        if case .clock(let clock) = timeSource {
            let (seconds, attoseconds) = clock.now().components
            arguments.append(String(Int128(seconds) * 1_000_000 + Int128(attoseconds) / 1_000_000_000_000))
        }
        let connection = try await pool.connection(deadline: deadline)
        let sha = try await loadedScript(connection, deadline: deadline)
        let reply: RESPValue
        do {
            reply = try await connection.command(["EVALSHA", sha, "1", key] + arguments, deadline: deadline)
        } catch where error.isNoScript {
            let reloaded = try await loadScript(connection, deadline: deadline)
            reply = try await connection.command(["EVALSHA", reloaded, "1", key] + arguments, deadline: deadline)
        }
        guard let values = reply.elements, values.count == 3,
              let allowed = values[0].int64, let retry = values[1].int64, let remaining = values[2].int64 else {
            throw .protocolError("unexpected script reply \(reply)")
        }
        return RateLimitDecision(allowed: allowed == 1, retryAfter: retry < 0 ? nil : .microseconds(retry),
                                 remaining: Int(clamping: remaining))
    }

    private func loadedScript(_ connection: RedisConnection, deadline: NIODeadline) async throws(RedisError) -> String {
        if let sha = state.withLock({ $0.sha }) { return sha }
        return try await loadScript(connection, deadline: deadline)
    }

    private func loadScript(_ connection: RedisConnection, deadline: NIODeadline) async throws(RedisError) -> String {
        let reply = try await connection.command(["SCRIPT", "LOAD", Self.script], deadline: deadline)
        guard let sha = reply.string, sha.count == 40 else { throw .protocolError("SCRIPT LOAD answered \(reply)") }
        state.withLock {
            $0.sha = sha
            $0.scriptLoads += 1
        }
        return sha
    }
}
