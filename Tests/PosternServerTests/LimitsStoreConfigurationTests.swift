import NIOCore
import PosternPolicy
import PosternRedis
import XCTest

@testable import PosternServer

/// `limits_store:` — memory, a Redis URL, or the mapping form with options.
final class LimitsStoreConfigurationTests: XCTestCase {
    private let head = "upstreams:\n  - url: smtp://127.0.0.1:10025\n"

    private func load(_ yaml: String) throws -> PosternConfiguration {
        try ConfigurationLoader.load(yaml: head + yaml, file: "test.yaml")
    }

    private func errors(_ yaml: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try load(yaml)
            XCTFail("expected configuration errors", file: file, line: line)
            return []
        } catch {
            return (error as? ConfigurationErrors)?.errors.map(\.description) ?? ["\(error)"]
        }
    }

    func testDefaultIsMemory() throws {
        XCTAssertEqual(try load("").limitsStore, .memory)
        XCTAssertEqual(try load("limits_store: memory\n").limitsStore, .memory)
        XCTAssertEqual(try load("limits_store: { url: memory }\n").limitsStore, .memory)
    }

    func testRedisURLWithDefaults() throws {
        guard case .redis(let settings) = try load("limits_store: redis://:pw@10.0.0.5:6380/2\n").limitsStore else {
            return XCTFail("not redis")
        }
        XCTAssertEqual(settings.endpoint, RedisEndpoint(host: "10.0.0.5", port: 6380, password: "pw", database: 2))
        XCTAssertEqual(settings.failureMode, .failOpen)
        XCTAssertEqual(settings.timeout, .milliseconds(200))
        XCTAssertEqual(settings.poolSize, 4)
        XCTAssertNil(settings.caFile)
    }

    func testMappingForm() throws {
        let yaml = """
            limits_store:
              url: rediss://postern:s3cret@redis.internal:6379/1
              failure: fail_closed
              timeout: 50ms
              pool_size: 8

            """
        guard case .redis(let settings) = try load(yaml).limitsStore else { return XCTFail("not redis") }
        XCTAssertEqual(settings.endpoint, RedisEndpoint(host: "redis.internal", port: 6379, username: "postern", password: "s3cret", database: 1, tls: true))
        XCTAssertEqual(settings.failureMode, .failClosed)
        XCTAssertEqual(settings.timeout, .milliseconds(50))
        XCTAssertEqual(settings.poolSize, 8)
        // The password never appears in the description used for logs.
        XCTAssertEqual(settings.endpoint.description, "rediss://postern:***@redis.internal:6379/1")
    }

    func testErrorsHavePositions() {
        XCTAssertEqual(errors("limits_store: mysql://db\n"), [
            "test.yaml:3:15: limits_store must be memory or redis://[user:password@]host:port/db (rediss:// for TLS): must start with redis:// or rediss://",
        ])
        XCTAssertEqual(errors("limits_store: redis://h:99999\n"), [
            "test.yaml:3:15: limits_store must be memory or redis://[user:password@]host:port/db (rediss:// for TLS): port '99999' is not a number from 1 to 65535",
        ])
        XCTAssertEqual(errors("""
            limits_store:
              url: redis://127.0.0.1:6379
              failure: fail_sideways
              timeout: forever
              pool_size: 0
              ca_file: /etc/ca.pem
              colour: blue

            """), [
                "test.yaml:9:3: unknown key 'colour' in limits_store (expected one of: ca_file, failure, pool_size, timeout, url)",
                "test.yaml:5:12: limits_store.failure must be fail_open or fail_closed",
                "test.yaml:6:12: limits_store.timeout must be a duration such as 30s, 5m, 1h or 250ms",
                "test.yaml:7:14: limits_store.pool_size must be an integer in 1...256",
                "test.yaml:8:12: limits_store.ca_file needs a rediss:// url",
            ])
        XCTAssertEqual(errors("limits_store: { url: \"rediss://h\", ca_file: /nonexistent/ca.pem }\n"), [
            "test.yaml:3:45: cannot read /nonexistent/ca.pem",
        ])
        XCTAssertEqual(errors("limits_store: { failure: fail_closed }\n"), [
            "test.yaml:3:15: limits_store needs url: (memory, or redis://[user:password@]host:port/db)",
        ])
        XCTAssertEqual(errors("limits_store: { url: memory, failure: fail_closed }\n"), [
            "test.yaml:3:39: limits_store.failure applies to a redis:// store only",
        ])
        XCTAssertEqual(errors("limits_store: { url: \"redis://h\", timeout: 0s }\n"), [
            "test.yaml:3:44: limits_store.timeout must be between 1ms and 30s",
        ])
    }

    /// The URL grammar, including what must be refused.
    func testEndpointURLs() throws {
        XCTAssertEqual(try RedisEndpoint(url: "redis://localhost"), RedisEndpoint(host: "localhost"))
        XCTAssertEqual(try RedisEndpoint(url: "redis://[::1]:7000/15"), RedisEndpoint(host: "::1", port: 7000, database: 15))
        XCTAssertEqual(try RedisEndpoint(url: "redis://secret@h/"), RedisEndpoint(host: "h", password: "secret"))
        XCTAssertEqual(try RedisEndpoint(url: "redis://u:p%40ss%3Aw@h:1"), RedisEndpoint(host: "h", port: 1, username: "u", password: "p@ss:w"))
        for bad in ["redis://", "redis://:6379", "http://h", "redis://h:0", "redis://h:x", "redis://h/db", "redis://[::1", "redis://[::1]x",
                    "redis://u:%zz@h", "redis://h/123456"] {
            XCTAssertThrowsError(try RedisEndpoint(url: bad), bad)
        }
        XCTAssertEqual(RedisEndpoint(host: "::1", port: 1, password: "x").description, "redis://:***@[::1]:1/0")
    }
}
