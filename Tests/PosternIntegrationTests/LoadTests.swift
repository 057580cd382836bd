import Foundation
import XCTest

/// Postfix's smtp-source through postern into Postfix's smtp-sink.
final class LoadTests: IntegrationTestCase, @unchecked Sendable {
    func testSMTPSource2000MessagesIn50Sessions() throws {
        let source = try requireTool("smtp-source")
        let sink = try startSMTPSink()
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(sink.port)"])
        // 50 parallel sessions from one IP: keep the per-IP limit out of the way.
        config.extra = "limits:\n  max_connections: 1000\n  max_connections_per_ip: 500\n"
        let postern = try startPostern(config)
        let start = Date()
        let result = try Command.run(source, [
            "-s", "50", "-m", "2000", "-c", "-M", "source.client.test",
            "-f", "load@client.test", "-t", "sink@example.test", "-S", "load test",
            "127.0.0.1:\(postern.port)",
        ], timeout: 150)
        XCTAssertEqual(result.status, 0, String(result.description.suffix(3000)))
        XCTAssertFalse(result.timedOut)
        XCTAssertTrue(waitUntil(timeout: 10) { sink.messageCount >= 2000 },
                      "smtp-sink counted \(sink.messageCount) messages")
        XCTAssertEqual(sink.messageCount, 2000)
        print("[integration] 2000 messages through postern in \(String(format: "%.1f", Date().timeIntervalSince(start)))s")
    }
}
