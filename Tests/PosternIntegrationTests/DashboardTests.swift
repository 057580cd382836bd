import Foundation
import XCTest

/// The dashboard of the status endpoint: the page, its summary, the event stream, and the
/// page in a real browser (headless Chromium) while mail goes through Postern.
final class DashboardTests: IntegrationTestCase, @unchecked Sendable {
    private func startServer() throws -> (TrustServer, RecordingSink) {
        let sink = try startRecordingSink()
        let policy = try writeConfig("""
            rules:
              - { id: no-bad, stage: mail, if: { sender: "@bad.example" }, then: reject }
              - { id: pills, stage: data, if: { subject: { regex: pills } }, then: reject, mode: shadow }

            """, name: "policy.yaml")
        let server = try startTrustServer(listeners: [try .plain()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
                                          extra: "policy: \(policy.path)\n")
        return (server, sink)
    }

    /// GET `path` from the status endpoint: status line and body.
    private func get(_ port: Int, _ path: String) throws -> (status: String, body: String) {
        let client = try RawSMTPClient(port: port, timeout: 5)
        defer { client.close() }
        try client.send("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        var lines: [String] = []
        while let line = try client.readLine() { lines.append(line) }
        let blank = lines.firstIndex(of: "") ?? lines.count
        return (lines.first ?? "", lines[min(blank + 1, lines.count)...].joined(separator: "\n"))
    }

    private func send(_ server: TrustServer, from sender: String, subject: String = "hello") throws -> String {
        let result = try runSwaks(port: server.port, ["--from", sender, "--to", "r@example.org", "--header", "Subject: \(subject)"])
        return result.stdout + result.stderr
    }

    func testThePageTheSummaryAndTheEventStream() throws {
        let (server, _) = try startServer()
        let page = try get(server.metricsPort, "/")
        XCTAssertTrue(page.status.contains(" 200"), page.status)
        XCTAssertTrue(page.body.contains("<title>Postern</title>"), page.body)
        XCTAssertTrue(page.body.contains("new EventSource(\"events\")"), "the page streams the decisions")
        for loader in ["src=", "href=", "@import", "url("] {
            XCTAssertFalse(page.body.contains(loader), "the page loads nothing from elsewhere (\(loader))")
        }

        // A stream opened before the mail gets each record as one event.
        let stream = try RawSMTPClient(port: server.metricsPort, timeout: 10)
        defer { stream.close() }
        try stream.send("GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        var head: [String] = []
        while let line = try stream.readLine(), !line.isEmpty { head.append(line) }
        XCTAssertTrue(head.first?.contains(" 200") ?? false, "\(head)")
        XCTAssertTrue(head.contains { $0.lowercased() == "content-type: text/event-stream; charset=utf-8" }, "\(head)")

        XCTAssertTrue(try send(server, from: "a@good.example", subject: "cheap pills").contains("250 2.0.0"))
        XCTAssertTrue(try send(server, from: "b@bad.example").contains("550"))
        var events: [[String: Any]] = []
        while events.count < 2, let line = try stream.readLine() {
            // Chunked transfer: the chunk sizes are lines of their own.
            guard line.hasPrefix("data: ") else { continue }
            if let object = try JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any] { events.append(object) }
        }
        XCTAssertEqual(events.map { $0["decision"] as? String }, ["accepted", "rejected"])
        XCTAssertEqual(events.map { $0["mail_from"] as? String }, ["a@good.example", "b@bad.example"])

        // The summary counts them.
        var summary: [String: Any] = [:]
        waitUntil(timeout: 5) {
            summary = (try? JSONSerialization.jsonObject(with: Data(get(server.metricsPort, "/api/summary").body.utf8)) as? [String: Any]) ?? [:]
            return (summary["last_hour"] as? [String: Any])?["decisions"] as? [String: Int] == ["accepted": 1, "rejected": 1]
        }
        let hour = summary["last_hour"] as? [String: Any] ?? [:]
        XCTAssertEqual(hour["decisions"] as? [String: Int], ["accepted": 1, "rejected": 1], "\(summary)")
        XCTAssertEqual((hour["rules"] as? [[String: Any]])?.first?["name"] as? String, "no-bad")
        XCTAssertEqual((hour["senders"] as? [[String: Any]])?.first?["name"] as? String, "b@bad.example")
        XCTAssertEqual((hour["shadow"] as? [[String: Any]])?.first?["name"] as? String, "pills")
        XCTAssertEqual((summary["per_second"] as? [Any])?.count, 600)
        let policy = summary["policy"] as? [String: Any] ?? [:]
        XCTAssertEqual((policy["last_load"] as? [String: Any])?["result"] as? String, "success")
        XCTAssertEqual(policy["rules"] as? Int, 2)
        XCTAssertEqual((summary["upstreams"] as? [[String: Any]])?.first?["up"] as? Bool, true)
        XCTAssertEqual(summary["subscribers"] as? Int, 1)

        // At most 32 streams at once: the 33rd is refused, and one closed makes room.
        var streams: [RawSMTPClient] = []
        defer { streams.forEach { $0.close() } }
        for _ in 0..<31 {
            let other = try RawSMTPClient(port: server.metricsPort, timeout: 10)
            try other.send("GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            XCTAssertTrue(try other.readLine()?.contains(" 200") ?? false)
            streams.append(other)
        }
        XCTAssertTrue(try get(server.metricsPort, "/events").status.contains(" 503"))
        streams.removeLast().close()
        XCTAssertTrue(waitUntil(timeout: 5) {
            let client = try? RawSMTPClient(port: server.metricsPort, timeout: 5)
            defer { client?.close() }
            try? client?.send("GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return (try? client?.readLine())??.contains(" 200") ?? false
        }, "a stream closed makes room for another")
    }

    func testThePageInAHeadlessBrowserShowsANewDecisionAndItsCount() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"),
              FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver") else {
            throw XCTSkip("chromium and chromium-driver are not installed (make test-deps installs them)")
        }
        let python = try requirePython()
        let (server, _) = try startServer()
        XCTAssertTrue(try send(server, from: "early@good.example").contains("250 2.0.0"))
        let idFile = workDir.appendingPathComponent("transaction-id")
        let screenshot = workDir.appendingPathComponent("dashboard.png")
        let browser = try launch("browser", python, [Paths.fixture("dashboard_browser.py").path,
                                                     "http://127.0.0.1:\(server.metricsPort)/", idFile.path, screenshot.path])
        try browser.waitForOutput(containing: "LOADED accepted=", timeout: 60)
        XCTAssertTrue(try send(server, from: "new@good.example").contains("250 2.0.0"))
        // The id of the new mail, from the decision log.
        var id = ""
        waitUntil(timeout: 10) {
            let records = ((try? Data(contentsOf: server.decisionLog)) ?? Data()).split(separator: 0x0A).compactMap {
                try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any]
            }
            id = records.first { $0["mail_from"] as? String == "new@good.example" }?["id"] as? String ?? ""
            return !id.isEmpty
        }
        XCTAssertFalse(id.isEmpty, "no record of the new mail")
        try id.write(to: idFile, atomically: true, encoding: .utf8)
        try browser.waitForOutput(containing: "SEEN id=\(id)", timeout: 45)
        // The script quits the browser and chromedriver, then exits: nothing is left running.
        XCTAssertEqual(browser.waitForExit(timeout: 30), 0, browser.output)
        XCTAssertTrue(browser.stdout.contains("accepted=1->2"), browser.output)
        XCTAssertTrue(browser.stdout.contains("chart=1"), browser.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: screenshot.path), "the screenshot")
        if let keep = ProcessInfo.processInfo.environment["POSTERN_DASHBOARD_SCREENSHOT"] {
            try? FileManager.default.removeItem(atPath: keep)
            try FileManager.default.copyItem(atPath: screenshot.path, toPath: keep)
        }
    }
}
