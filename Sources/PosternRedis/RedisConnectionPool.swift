import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// A few connections to one Redis server, made lazily, each reused for many pipelined
/// commands. A lost connection is replaced on the next call; while Redis is unreachable,
/// attempts are spaced by an exponential backoff and calls in between fail at once with
/// ``RedisError/backingOff`` (so a down Redis costs a caller nothing but the first timeout).
public final class RedisConnectionPool: Sendable {
    /// How the pool behaves; every value has a documented default.
    public struct Options: Hashable, Sendable {
        /// Connections kept open (at least 1). Default 4.
        public var size: Int
        /// The first wait after a failed connection attempt. Default 100 ms.
        public var initialBackoff: TimeAmount
        /// The longest wait between attempts (the backoff doubles up to it). Default 2 s.
        public var maximumBackoff: TimeAmount
        /// Limits on what a reply may declare.
        public var parserLimits: RESPParser.Limits

        public init(size: Int = 4, initialBackoff: TimeAmount = .milliseconds(100), maximumBackoff: TimeAmount = .seconds(2),
                    parserLimits: RESPParser.Limits = .init()) {
            self.size = Swift.max(1, size)
            self.initialBackoff = initialBackoff
            self.maximumBackoff = Swift.max(initialBackoff, maximumBackoff)
            self.parserLimits = parserLimits
        }
    }

    public let endpoint: RedisEndpoint
    public let options: Options
    private let tlsConfiguration: TLSConfiguration?
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state: Mutex<State>

    private enum Slot {
        case idle(retryAt: NIODeadline)
        case connecting(EventLoopFuture<RedisConnection>)
        case connected(RedisConnection)
    }

    private struct State {
        var slots: [Slot]
        /// Consecutive failed attempts per slot (the backoff's exponent).
        var failures: [Int]
        var next = 0
        var closed = false
        var connectionsMade = 0
    }

    private enum Pick {
        case use(RedisConnection)
        case wait(EventLoopFuture<RedisConnection>)
        case start(index: Int, promise: EventLoopPromise<RedisConnection>)
        case fail(RedisError)
    }

    public init(endpoint: RedisEndpoint, options: Options = Options(), tlsConfiguration: TLSConfiguration? = nil,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger = Logger(label: "postern.redis")) {
        self.endpoint = endpoint
        self.options = options
        self.tlsConfiguration = tlsConfiguration
        self.group = group
        self.logger = logger
        self.state = Mutex(State(slots: Array(repeating: .idle(retryAt: .uptimeNanoseconds(0)), count: options.size),
                                 failures: Array(repeating: 0, count: options.size)))
    }

    /// Connections made so far (reconnections included).
    public var connectionsMade: Int { state.withLock { $0.connectionsMade } }

    /// Runs one command on a pooled connection. An error reply throws ``RedisError/server(_:)``.
    public func command(_ arguments: [String], deadline: NIODeadline) async throws(RedisError) -> RESPValue {
        let connection = try await connection(deadline: deadline)
        return try await connection.command(arguments, deadline: deadline)
    }

    /// A live connection: the next slot's (round robin), made now if needed.
    public func connection(deadline: NIODeadline) async throws(RedisError) -> RedisConnection {
        let pick: Pick = state.withLock { state in
            guard !state.closed else { return .fail(.poolClosed) }
            let index = state.next % state.slots.count
            state.next &+= 1
            let now = NIODeadline.now()
            switch state.slots[index] {
            case .connected(let connection) where connection.isActive:
                return .use(connection)
            case .connecting(let future):
                return .wait(future)
            case .idle(let retryAt) where retryAt > now:
                // This slot is backing off; another live connection will do.
                for slot in state.slots {
                    if case .connected(let connection) = slot, connection.isActive { return .use(connection) }
                }
                return .fail(.backingOff)
            case .idle, .connected:
                let promise = group.next().makePromise(of: RedisConnection.self)
                state.slots[index] = .connecting(promise.futureResult)
                return .start(index: index, promise: promise)
            }
        }
        let future: EventLoopFuture<RedisConnection>
        switch pick {
        case .use(let connection):
            return connection
        case .fail(let error):
            throw error
        case .wait(let pending):
            future = pending
        case .start(let index, let promise):
            startConnecting(slot: index, promise: promise, deadline: deadline)
            future = promise.futureResult
        }
        do {
            return try await withDeadline(future, deadline: deadline).get()
        } catch let error as RedisError {
            throw error
        } catch {
            throw .connectionFailed("\(error)")
        }
    }

    /// Closes every connection; later calls fail with ``RedisError/poolClosed``.
    public func close() {
        let slots = state.withLock { state in
            state.closed = true
            return state.slots
        }
        for slot in slots {
            switch slot {
            case .connected(let connection): connection.close()
            case .connecting(let future): future.whenSuccess { $0.close() }
            case .idle: break
            }
        }
    }

    private func startConnecting(slot index: Int, promise: EventLoopPromise<RedisConnection>, deadline: NIODeadline) {
        let attempt = RedisConnection.connect(to: endpoint, tlsConfiguration: tlsConfiguration, on: promise.futureResult.eventLoop,
                                              deadline: deadline, parserLimits: options.parserLimits)
        attempt.whenComplete { [self] result in
            let closeNow: Bool = state.withLock { state in
                switch result {
                case .success(let connection):
                    state.connectionsMade += 1
                    state.failures[index] = 0
                    state.slots[index] = .connected(connection)
                    return state.closed
                case .failure:
                    let failures = Swift.min(state.failures[index] + 1, 30)
                    state.failures[index] = failures
                    state.slots[index] = .idle(retryAt: .now() + backoff(afterFailures: failures))
                    return false
                }
            }
            switch result {
            case .success(let connection):
                if closeNow { connection.close() }
                logger.debug("redis connected", metadata: ["redis.endpoint": "\(endpoint)", "redis.slot": "\(index)"])
                connection.closeFuture.whenComplete { [self] _ in
                    state.withLock { state in
                        if case .connected(let current) = state.slots[index], current === connection {
                            state.slots[index] = .idle(retryAt: .uptimeNanoseconds(0))
                        }
                    }
                }
            case .failure(let error):
                logger.warning("redis connection failed", metadata: ["redis.endpoint": "\(endpoint)", "error": "\(error)"])
            }
            promise.completeWith(result)
        }
    }

    /// `initialBackoff × 2^(failures − 1)`, at most `maximumBackoff`.
    private func backoff(afterFailures failures: Int) -> TimeAmount {
        var wait = options.initialBackoff.nanoseconds
        for _ in 1..<failures where wait < options.maximumBackoff.nanoseconds { wait *= 2 }
        return .nanoseconds(Swift.min(wait, options.maximumBackoff.nanoseconds))
    }

    /// The future, or ``RedisError/timeout`` if it has not completed by `deadline`.
    private func withDeadline<Value: Sendable>(_ future: EventLoopFuture<Value>, deadline: NIODeadline) -> EventLoopFuture<Value> {
        let promise = future.eventLoop.makePromise(of: Value.self)
        let timer = future.eventLoop.scheduleTask(deadline: deadline) { promise.fail(RedisError.timeout) }
        future.whenComplete { _ in timer.cancel() }
        promise.completeWith(future)  // a second completion is ignored
        return promise.futureResult
    }
}
