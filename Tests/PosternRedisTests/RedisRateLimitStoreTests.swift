import Logging
import NIOCore
import NIOPosix
import PosternPolicy
import Synchronization
import XCTest
@testable import PosternRedis

/// The Redis store against a real `redis-server`: the same GCRA as the in-memory store,
/// pipelining, login, databases, the script cache, and every failure path.
final class RedisRateLimitStoreTests: XCTestCase {
    private var server: RedisServerFixture?
    private var pools: [RedisConnectionPool] = []

    override func tearDown() async throws {
        for pool in pools { pool.close() }
        pools = []
        server?.stop()
        server = nil
    }

    private func startServer(_ extra: [String] = []) async throws -> RedisServerFixture {
        let server = try await RedisServerFixture.start(extra: extra)
        self.server = server
        return server
    }

    private func pool(_ url: String, size: Int = 2) throws -> RedisConnectionPool {
        var quiet = Logger(label: "test.redis")
        quiet.logLevel = .critical
        let pool = RedisConnectionPool(endpoint: try RedisEndpoint(url: url),
                                       options: .init(size: size, initialBackoff: .milliseconds(50), maximumBackoff: .milliseconds(200)),
                                       logger: quiet)
        pools.append(pool)
        return pool
    }

    private func store(_ url: String, mode: RedisRateLimitStore.FailureMode = .failOpen, timeout: Duration = .milliseconds(500),
                       clock: (any RateLimitClock)? = nil, failures: FailureRecorder? = nil) throws -> RedisRateLimitStore {
        RedisRateLimitStore(pool: try pool(url), failureMode: mode, timeout: timeout,
                            timeSource: clock.map { .clock($0) } ?? .redisServer,
                            onFailure: { failure in failures?.seen.withLock { $0.append(failure) } })
    }

    private func spec(_ text: String, burst: Int = 0) -> RateLimitSpec { RateLimitSpec(parsing: text, burst: burst)! }

    // MARK: - Parity with the in-memory store

    /// One scripted step: advance the shared manual clock, then charge both stores.
    private struct Step {
        var advance: Duration = .zero
        var key = "k"
        var cost = 1
    }

    /// Runs the same steps against both stores at the same (manual) times and requires the
    /// very same decisions.
    private func assertParity(_ limit: RateLimitSpec, _ steps: [Step], file: StaticString = #filePath, line: UInt = #line) async throws {
        let clock = ManualRateLimitClock(.seconds(1_000))
        let memory = InMemoryRateLimitStore(clock: clock)
        let redis = try store(server!.url, clock: clock)
        let prefix = UUID().uuidString
        for (index, step) in steps.enumerated() {
            clock.advance(by: step.advance)
            let expected = try memory.consume(key: prefix + step.key, cost: step.cost, spec: limit, at: clock.now())
            let actual = try await redis.consume(key: prefix + step.key, cost: step.cost, spec: limit)
            XCTAssertEqual(actual, expected, "step \(index) (\(step))", file: file, line: line)
        }
        XCTAssertEqual(redis.failOpenCount, 0, file: file, line: line)
    }

    func testParityExactnessAndRecovery() async throws {
        _ = try await startServer()
        // 10/1m: ten at once, the 11th refused for 6 s; one µs early still refused.
        var steps = Array(repeating: Step(), count: 11)
        steps += [Step(advance: .seconds(6) - .microseconds(1)), Step(advance: .microseconds(1)), Step()]
        steps += (1...59).map { _ in Step(advance: .seconds(1)) }
        steps += [Step(advance: .seconds(60))] + Array(repeating: Step(), count: 11)
        try await assertParity(spec("10/1m"), steps)
        // Burst on top of the rate, and full recovery after (rate + burst) × T.
        try await assertParity(spec("10/1m", burst: 5), Array(repeating: Step(), count: 16)
            + [Step(advance: .seconds(89))] + Array(repeating: Step(), count: 15)
            + [Step(advance: .seconds(90))] + Array(repeating: Step(), count: 16))
    }

    func testParityCostsPeeksAndRefusals() async throws {
        _ = try await startServer()
        // Bytes: a refusal consumes nothing; a smaller request still fits (T = 360 µs).
        try await assertParity(RateLimitSpec(rate: 10_000_000, period: .seconds(3600))!, [
            Step(cost: 6_000_000), Step(cost: 5_000_000), Step(cost: 4_000_000), Step(cost: 1), Step(cost: 0),
            Step(advance: .microseconds(360), cost: 1), Step(advance: .seconds(1), cost: 0),
        ])
        // A cost above rate + burst never fits (retryAfter nil) and stores nothing; cost 0 peeks.
        try await assertParity(spec("100/1m", burst: 10), [
            Step(cost: 0), Step(cost: 110), Step(cost: 0), Step(advance: .seconds(3600), cost: 111), Step(key: "fresh", cost: 111),
            Step(key: "fresh", cost: 0), Step(cost: 1),
        ])
        // Independent keys.
        try await assertParity(spec("2/1m"), ["a", "b", "a", "b", "a", "b", "c"].map { Step(key: $0) })
    }

    /// A long random walk (seeded): costs, peeks, pauses of every size, several keys.
    func testParityRandomWalk() async throws {
        _ = try await startServer()
        var random = SeededGenerator(seed: 7)
        for limit in [spec("100/1h", burst: 20), spec("8/1s"), spec("3/30s", burst: 2)] {
            let steps = (0..<600).map { _ in
                Step(advance: .microseconds(Int64.random(in: 0...400_000, using: &random) * (Bool.random(using: &random) ? 1 : 40)),
                     key: ["x", "y"].randomElement(using: &random)!, cost: Int.random(in: 0...4, using: &random))
            }
            try await assertParity(limit, steps)
        }
    }

    func testNegativeCostThrowsAndIsNoStoreFailure() async throws {
        let server = try await startServer()
        let redis = try store(server.url)
        do {
            _ = try await redis.consume(key: "k", cost: -1, spec: spec("1/1s"))
            XCTFail("expected a throw")
        } catch {
            XCTAssertEqual(error as? RateLimitError, .negativeCost(-1))
        }
        XCTAssertEqual(redis.failOpenCount, 0)
    }

    /// The script's parameters: T rounded up to whole microseconds, never looser.
    func testMicrosecondParameters() {
        XCTAssertTrue(RedisRateLimitStore.microsecondParameters(spec("10/1m")) == (6_000_000, 60_000_000))
        let seven = RedisRateLimitStore.microsecondParameters(spec("7/1m"))
        XCTAssertEqual(seven.interval, 8_571_429)  // 8 571 428.57… rounded up
        let fast = RedisRateLimitStore.microsecondParameters(RateLimitSpec(rate: 1 << 40, period: .seconds(1))!)
        XCTAssertEqual(fast.interval, 1)
        let absurd = RedisRateLimitStore.microsecondParameters(RateLimitSpec(rate: 1, period: .seconds(3650 * 86_400), burst: 100)!)
        XCTAssertEqual(absurd.capacity, RedisRateLimitStore.maximumCapacityMicroseconds)
    }

    // MARK: - The server's clock, shared

    /// Two stores (two pools, as two Postern instances) share one limit through Redis's TIME,
    /// and the key expires when it goes idle.
    func testTwoStoresShareOneLimitOnServerTime() async throws {
        let server = try await startServer()
        let a = try store(server.url), b = try store(server.url)
        let limit = spec("10/1m")
        var allowed = 0
        for index in 0..<10 {
            let decision = try await (index.isMultiple(of: 2) ? a : b).consume(key: "shared", spec: limit)
            if decision.allowed { allowed += 1 }
        }
        XCTAssertEqual(allowed, 10)
        let refusedA = try await a.consume(key: "shared", spec: limit)
        let refusedB = try await b.consume(key: "shared", spec: limit)
        XCTAssertFalse(refusedA.allowed)
        XCTAssertFalse(refusedB.allowed)
        let wait = try XCTUnwrap(refusedB.retryAfter)
        XCTAssertGreaterThan(wait, .seconds(5))
        XCTAssertLessThanOrEqual(wait, .seconds(6))
        // The TTL is the time until the key is idle: about a minute, never more.
        let ttl = try await a.pool.command(["PTTL", "postern:rl:shared"], deadline: .now() + .seconds(1)).int64
        XCTAssertNotNil(ttl)
        XCTAssertGreaterThan(ttl ?? 0, 55_000)
        XCTAssertLessThanOrEqual(ttl ?? .max, 60_000)
        // A key that goes idle is forgotten by Redis itself.
        _ = try await a.consume(key: "short", spec: spec("1/200ms"))
        try await Task.sleep(for: .milliseconds(400))
        let exists = try await a.pool.command(["EXISTS", "postern:rl:short"], deadline: .now() + .seconds(1))
        XCTAssertEqual(exists, .integer(0))
        XCTAssertEqual(a.scriptLoads, 1)
    }

    // MARK: - Pipelining

    func testPipeliningRepliesInOrder() async throws {
        let server = try await startServer()
        let connection = try await RedisConnection.connect(to: RedisEndpoint(url: server.url),
                                                           on: MultiThreadedEventLoopGroup.singleton.next(),
                                                           deadline: .now() + .seconds(2)).get()
        defer { connection.close() }
        // 2 000 commands written before any reply is read; each reply must be its own.
        let futures = (0..<2_000).map { connection.send(["ECHO", "m\($0)"], deadline: .now() + .seconds(10)) }
        for (index, future) in futures.enumerated() {
            let reply = try await future.get()
            XCTAssertEqual(reply.string, "m\(index)")
        }
        let error = try await connection.send(["NOSUCHCOMMAND"], deadline: nil).get()
        guard case .error(let message) = error else { return XCTFail("\(error)") }
        XCTAssertTrue(message.hasPrefix("ERR"))
        let pong = try await connection.send(["PING"], deadline: nil).get()
        XCTAssertEqual(pong, .simpleString("PONG"))
        // A command on a closed connection fails at once (it never waits for a reply).
        connection.close()
        try await connection.closeFuture.get()
        XCTAssertFalse(connection.isActive)
        do {
            let late = try await connection.send(["PING"], deadline: nil).get()
            XCTFail("a closed connection answered \(late)")
        } catch {}
    }

    func testConcurrentChecksThroughThePool() async throws {
        let server = try await startServer()
        let redis = try store(server.url, timeout: .seconds(5))
        let limit = spec("3/1h")
        let allowed = try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<1_500 {
                group.addTask { try await redis.consume(key: "c\(index % 300)", spec: limit).allowed }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        XCTAssertEqual(allowed, 900)  // 300 keys × 3, whatever the interleaving
        XCTAssertEqual(redis.failOpenCount, 0)
        XCTAssertLessThanOrEqual(redis.pool.connectionsMade, 2)
        // Racing first calls may each load the script; after that, never again.
        let loads = redis.scriptLoads
        XCTAssertGreaterThanOrEqual(loads, 1)
        _ = try await redis.consume(key: "after", spec: limit)
        XCTAssertEqual(redis.scriptLoads, loads)
    }

    // MARK: - AUTH and SELECT

    func testAuthWithRequirePass() async throws {
        let server = try await startServer(["--requirepass", "s3cret:@x"])
        let right = try store("redis://:s3cret%3A%40x@127.0.0.1:\(server.port)")
        let decision = try await right.consume(key: "k", spec: spec("1/1m"))
        XCTAssertEqual(decision, RateLimitDecision(allowed: true, retryAfter: nil, remaining: 0))
        let user = try store("redis://default:s3cret%3A%40x@127.0.0.1:\(server.port)")
        let refused = try await user.consume(key: "k", spec: spec("1/1m"))
        XCTAssertFalse(refused.allowed)

        let failures = FailureRecorder()
        let wrong = try store("redis://:nope@127.0.0.1:\(server.port)", mode: .failClosed, failures: failures)
        await assertStoreUnavailable(wrong)
        let missing = try store(server.url, failures: failures)
        let open = try await missing.consume(key: "k", spec: spec("1/1m"))
        XCTAssertEqual(open, RateLimitDecision(allowed: true, retryAfter: nil, remaining: nil))
        let seen = failures.seen.withLock { $0 }
        XCTAssertEqual(seen.map(\.reason), [.server, .server])
        XCTAssertTrue(seen[0].error.description.contains("WRONGPASS"), seen[0].description)
        XCTAssertTrue(seen[1].error.description.contains("NOAUTH"), seen[1].description)
        XCTAssertFalse(seen.description.contains("nope"))  // the password never reaches the logs
        XCTAssertEqual(wrong.failClosedCount, 1)
        XCTAssertEqual(missing.failOpenCount, 1)
        XCTAssertEqual(missing.failures(.server), 1)
    }

    func testSelectDatabase() async throws {
        let server = try await startServer()
        let inThree = try store(server.url + "/3")
        _ = try await inThree.consume(key: "db", spec: spec("5/1m"))
        let zero = try pool(server.url), three = try pool(server.url + "/3")
        let deadline = NIODeadline.now() + .seconds(2)
        let inZero = try await zero.command(["EXISTS", "postern:rl:db"], deadline: deadline)
        let inThreeCount = try await three.command(["EXISTS", "postern:rl:db"], deadline: deadline)
        XCTAssertEqual(inZero, .integer(0))
        XCTAssertEqual(inThreeCount, .integer(1))
        // A database the server does not have: every check fails (open), reason server.
        let bad = try store(server.url + "/99")
        let decision = try await bad.consume(key: "db", spec: spec("5/1m"))
        XCTAssertNil(decision.remaining)
        XCTAssertEqual(bad.failures(.server), 1)
    }

    // MARK: - The script cache

    func testNoScriptReloadsAndRetriesOnce() async throws {
        let server = try await startServer()
        let redis = try store(server.url)
        let limit = spec("3/1m")
        let first = try await redis.consume(key: "k", spec: limit)
        XCTAssertEqual(first.remaining, 2)
        _ = try await redis.pool.command(["SCRIPT", "FLUSH"], deadline: .now() + .seconds(1))
        let second = try await redis.consume(key: "k", spec: limit)
        XCTAssertEqual(second.remaining, 1)
        XCTAssertEqual(redis.scriptLoads, 2)
        XCTAssertEqual(redis.failOpenCount, 0)
        let third = try await redis.consume(key: "k", spec: limit)
        XCTAssertEqual(third.remaining, 0)
        XCTAssertEqual(redis.scriptLoads, 2)
    }

    // MARK: - Failures

    private func assertStoreUnavailable(_ redis: RedisRateLimitStore, file: StaticString = #filePath, line: UInt = #line) async {
        do {
            let decision = try await redis.consume(key: "k", spec: spec("1/1m"))
            XCTFail("fail closed answered \(decision)", file: file, line: line)
        } catch let RateLimitError.storeUnavailable(message) {
            XCTAssertFalse(message.isEmpty, file: file, line: line)
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
        }
    }

    /// A server that stops answering (CLIENT PAUSE): the call ends at its timeout, in the
    /// configured mode, and the next call after the pause works on a new connection.
    func testTimeoutFailsOpenOrClosedThenRecovers() async throws {
        let server = try await startServer()
        let open = try store(server.url, mode: .failOpen, timeout: .milliseconds(200))
        let closed = try store(server.url, mode: .failClosed, timeout: .milliseconds(200))
        let limit = spec("100/1m")
        _ = try await open.consume(key: "warm", spec: limit)
        _ = try await closed.consume(key: "warm", spec: limit)
        let admin = try pool(server.url)
        _ = try await admin.command(["CLIENT", "PAUSE", "1500", "ALL"], deadline: .now() + .seconds(1))
        let started = ContinuousClock.now
        let decision = try await open.consume(key: "k", spec: limit)
        XCTAssertEqual(decision, RateLimitDecision(allowed: true, retryAfter: nil, remaining: nil))
        await assertStoreUnavailable(closed)
        XCTAssertLessThan(ContinuousClock.now - started, .milliseconds(1_200), "a timeout of 200 ms took too long")
        XCTAssertEqual(open.failures(.timeout), 1)
        XCTAssertEqual(open.failOpenCount, 1)
        XCTAssertEqual(closed.failures(.timeout), 1)
        XCTAssertEqual(closed.failClosedCount, 1)
        try await Task.sleep(for: .milliseconds(1_600))
        let after = try await open.consume(key: "k", spec: limit)
        XCTAssertEqual(after.remaining, 99)
        let afterClosed = try await closed.consume(key: "k", spec: limit)
        XCTAssertEqual(afterClosed.remaining, 98)
    }

    /// Redis killed: fail open lets the check pass, fail closed throws; both fast while the
    /// pool backs off. Redis back on the same port: both stores recover by themselves.
    func testRedisKilledThenRestarted() async throws {
        let server = try await startServer()
        let failures = FailureRecorder()
        let open = try store(server.url, mode: .failOpen, timeout: .milliseconds(300), failures: failures)
        let closed = try store(server.url, mode: .failClosed, timeout: .milliseconds(300))
        let limit = spec("2/1h")
        let firstA = try await open.consume(key: "a", spec: limit)
        let firstB = try await closed.consume(key: "b", spec: limit)
        XCTAssertTrue(firstA.allowed)
        XCTAssertTrue(firstB.allowed)

        server.kill()
        let started = ContinuousClock.now
        for _ in 0..<20 {
            let decision = try await open.consume(key: "a", spec: limit)
            XCTAssertEqual(decision, RateLimitDecision(allowed: true, retryAfter: nil, remaining: nil))
            await assertStoreUnavailable(closed)
        }
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5))
        XCTAssertEqual(open.failOpenCount, 20)
        XCTAssertEqual(closed.failClosedCount, 20)
        XCTAssertEqual(open.failures(.unavailable), 20)
        XCTAssertEqual(failures.seen.withLock { $0.count }, 20)

        try await server.start()  // same port, empty: the limit starts over
        var recovered = false
        for _ in 0..<50 where !recovered {
            try await Task.sleep(for: .milliseconds(100))
            recovered = (try? await closed.consume(key: "b", spec: limit)) != nil
        }
        XCTAssertTrue(recovered, "fail-closed store never recovered")
        let secondB = try await closed.consume(key: "b", spec: limit)
        let thirdB = try await closed.consume(key: "b", spec: limit)
        XCTAssertTrue(secondB.allowed)
        XCTAssertFalse(thirdB.allowed)
        let openBefore = open.failOpenCount
        var decisions: [RateLimitDecision] = []
        for _ in 0..<50 {
            let decision = try await open.consume(key: "a", spec: limit)
            if decision.remaining != nil { decisions.append(decision) }
            if decisions.count == 3 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTAssertEqual(decisions.map(\.allowed), [true, true, false], "limit not enforced again after the restart")
        XCTAssertLessThanOrEqual(open.failOpenCount - openBefore, 40)
        XCTAssertGreaterThanOrEqual(open.pool.connectionsMade, 2)
    }

    func testClosedPoolFails() async throws {
        let server = try await startServer()
        let redis = try store(server.url, mode: .failClosed)
        redis.pool.close()
        await assertStoreUnavailable(redis)
        XCTAssertEqual(redis.failures(.unavailable), 1)
    }
}

/// Collects the failures a store reports.
final class FailureRecorder: Sendable {
    let seen = Mutex<[RedisRateLimitStore.Failure]>([])
}

/// A small deterministic generator (SplitMix64) for repeatable random walks.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
