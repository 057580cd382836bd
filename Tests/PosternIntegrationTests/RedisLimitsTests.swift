import Foundation
import XCTest

/// Shared rate limits (issue 7): two Postern instances count one limit in one `redis-server`;
/// Redis killed → each instance's configured failure mode; Redis back → limits enforced again.
final class RedisLimitsTests: IntegrationTestCase, @unchecked Sendable {
    private let perMinute = 5

    private var policy: String {
        """
        version: 1
        limits:
          per_sender: { key: sender, count: messages, rate: \(perMinute)/1m }
        rules:
          - id: shared-throttle
            stage: mail
            if: { limit: per_sender }
            then: tempfail

        """
    }

    private func startRedis(port: Int, name: String) throws -> ManagedProcess {
        let exe = try requireTool("redis-server")
        let dir = try makeDirectory(name)
        let redis = try launch(name, exe, ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                           "--daemonize", "no", "--dir", dir.path])
        // SIGKILL first in teardown: nothing is persisted, and SIGTERM may be blocked by the
        // signal mask redis-server inherits from the test runner.
        onTeardown { redis.signal(SIGKILL) }
        try redis.waitForPort(port)
        return redis
    }

    /// MAIL's reply code; when accepted, the message is sent through to the sink.
    private func send(_ port: Int, sender: String, subject: String) throws -> Int {
        let client = try RawSMTPClient.greeted(port: port)
        defer { client.close() }
        let mail = try client.command("MAIL FROM:<\(sender)>")
        guard mail.code == 250 else { return mail.code }
        XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: \(subject)\r\n\r\nshared limits\r\n.\r\n")
        XCTAssertEqual(try client.readReply(timeout: 20).code, 250, subject)
        _ = try? client.command("QUIT")
        return mail.code
    }

    private func metrics(_ port: Int) -> String {
        let fd = Net.connect(host: "127.0.0.1", port: port, timeout: 2)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        let request = Array("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func metricValue(_ text: String, _ name: String) -> Double {
        text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
    }

    func testTwoInstancesShareOneLimitAndSurviveARedisRestart() throws {
        let redisPort = try Net.freePort()
        let redis = try startRedis(port: redisPort, name: "redis")
        let policyURL = try writeConfig(policy, name: "policy.yaml")
        let sink = try startRecordingSink()
        func instance(_ name: String, failure: String) throws -> (PosternServer, metrics: Int) {
            let metricsPort = try Net.freePort()
            var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(sink.port)"])
            config.extra = """
                policy: \(policyURL.path)
                metrics: 127.0.0.1:\(metricsPort)
                limits_store:
                  url: redis://127.0.0.1:\(redisPort)/0
                  failure: \(failure)
                  timeout: 300ms
                  pool_size: 2
                """
            return (try startPostern(config, name: name), metricsPort)
        }
        let (open, openMetrics) = try instance("postern-open", failure: "fail_open")
        let (closed, closedMetrics) = try instance("postern-closed", failure: "fail_closed")
        let sender = "bulk@client.test"

        // 1. N per minute across both instances, alternating: N accepted in total, then 4xx on both.
        var codes: [Int] = []
        for index in 0..<perMinute {
            codes.append(try send(index.isMultiple(of: 2) ? open.port : closed.port, sender: sender, subject: "shared \(index)"))
        }
        XCTAssertEqual(codes, Array(repeating: 250, count: perMinute), "the first \(perMinute) across both instances")
        let overOpen = try send(open.port, sender: sender, subject: "over open")
        let overClosed = try send(closed.port, sender: sender, subject: "over closed")
        XCTAssertEqual(overOpen, 450, "the limit is shared: instance 1 must refuse message \(perMinute + 1)")
        XCTAssertEqual(overClosed, 450, "the limit is shared: instance 2 must refuse message \(perMinute + 1)")
        XCTAssertEqual(sink.waitForMessages(perMinute).count, perMinute)
        XCTAssertEqual(try send(open.port, sender: "other@client.test", subject: "other sender"), 250, "another sender has its own count")

        // 2. Redis killed: fail_open lets mail pass, fail_closed answers 451 4.7.1.
        redis.signal(SIGKILL)
        XCTAssertNotNil(redis.waitForExit(timeout: 10), "redis-server did not die")
        for round in 0..<3 {
            XCTAssertEqual(try send(open.port, sender: sender, subject: "redis down \(round)"), 250, "fail_open must let mail pass")
            let client = try RawSMTPClient.greeted(port: closed.port)
            let refused = try client.command("MAIL FROM:<\(sender)>")
            client.close()
            XCTAssertEqual(refused.code, 451, "fail_closed: \(refused.text)")
            XCTAssertTrue(refused.text.contains("4.7.1"), refused.text)
        }
        XCTAssertEqual(sink.waitForMessages(perMinute + 4).count, perMinute + 4)
        let openText = metrics(openMetrics), closedText = metrics(closedMetrics)
        XCTAssertGreaterThanOrEqual(metricValue(openText, "postern_limits_store_fail_open_total"), 3, openText)
        XCTAssertGreaterThanOrEqual(metricValue(closedText, "postern_limits_store_fail_closed_total"), 3, closedText)
        XCTAssertTrue(openText.contains("postern_limits_store_errors_total{reason="), openText)
        XCTAssertTrue(open.log.contains("rate limit store unavailable"), "no log line for the failure")

        // 3. Redis back on the same port (empty): both recover by themselves; the limit holds again.
        _ = try startRedis(port: redisPort, name: "redis-restarted")
        var recovered = false
        let deadline = Date().addingTimeInterval(15)
        while !recovered, Date() < deadline {
            let code = try send(closed.port, sender: sender, subject: "recovery probe")
            if code == 250 { recovered = true } else { XCTAssertEqual(code, 451); sleep(seconds: 0.2) }
        }
        XCTAssertTrue(recovered, "the fail_closed instance never recovered after Redis came back")
        // The probe that passed counted one message; N - 1 more pass across both, then 450.
        codes = []
        for index in 1..<perMinute {
            codes.append(try send(index.isMultiple(of: 2) ? closed.port : open.port, sender: sender, subject: "after restart \(index)"))
        }
        XCTAssertEqual(codes, Array(repeating: 250, count: perMinute - 1))
        XCTAssertEqual(try send(open.port, sender: sender, subject: "over again open"), 450)
        XCTAssertEqual(try send(closed.port, sender: sender, subject: "over again closed"), 450)
    }
}
