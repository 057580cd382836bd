import Foundation
import XCTest

/// A milter that misbehaves, behind the real binary: Fixtures/fake_milter.py scripted to never
/// answer, to hang up in the middle of a message, to send garbage or to ask for what was not
/// offered. Each time the client gets the default action within the configured timeout, the
/// decision log and `/metrics` say what happened, and one warning is logged per failure streak.
final class MilterFaultTests: IntegrationTestCase, @unchecked Sendable {
    /// Starts fake_milter.py with `script` (JSON); returns its port and the file it records to.
    private func startFakeMilter(_ script: String, name: String = "fake-milter") throws -> (port: Int, record: URL) {
        let python = try requirePython()
        let record = workDir.appendingPathComponent("\(name).jsonl")
        let process = try launch(name, python, [Paths.fixture("fake_milter.py").path, "--port", "0",
                                                "--script-json", script, "--record", record.path])
        try process.waitForOutput(containing: "LISTENING ", timeout: 15)
        guard let line = process.stdout.split(separator: "\n").first(where: { $0.hasPrefix("LISTENING ") }),
              let port = Int(line.dropFirst(10).trimmingCharacters(in: .whitespaces))
        else { throw HarnessError.failed("cannot parse the fake milter's port from: \(process.stdout)") }
        return (port, record)
    }

    private func send(_ port: Int, body: String = "hello\n") throws -> (CommandResult, TimeInterval) {
        let start = Date()
        let result = try runSwaks(port: port, ["--from", "a@client.example", "--to", "r@example.org", "--body", body])
        return (result, Date().timeIntervalSince(start))
    }

    func testAMilterThatNeverAnswersGetsTheDefaultActionWithinItsTimeout() throws {
        let fake = try startFakeMilter(#"{"never_answer_at": "E"}"#)
        let decisions = workDir.appendingPathComponent("decisions.log")
        let metricsPort = try Net.freePort()
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                decision_log: \(decisions.path)
                metrics: 127.0.0.1:\(metricsPort)
                milters:
                  - { name: slow, address: "inet:127.0.0.1:\(fake.port)", timeouts: { content: 2s } }
                """
        }
        let (result, elapsed) = try send(postern.port)
        XCTAssertNotEqual(result.status, 0, result.description)
        XCTAssertTrue(result.swaksReplies.contains { $0.hasPrefix("451 4.7.1") }, result.description)
        XCTAssertLessThan(elapsed, 10, "answered within the content timeout, not hung")
        XCTAssertGreaterThanOrEqual(elapsed, 2)
        let record = DecisionLog.waitForRecord(decisions) { ($0["decision"] as? String) != nil }
        XCTAssertEqual(record?["decision"] as? String, "tempfailed", "\(record ?? [:])")
        XCTAssertEqual(record?["rule"] as? String, "milter:slow", "\(record ?? [:])")
        XCTAssertEqual(sink.messageCount, 0)
        // A second client session fails the same way; still one warning for the streak.
        _ = try send(postern.port)
        let metrics = try Metrics.scrape(port: metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_check_errors_total", ["check": "slow", "kind": "timeout"]), 2, metrics)
        XCTAssertEqual(postern.log.components(separatedBy: "milter failing").count - 1, 1, postern.log)
    }

    func testEachDefaultAction() throws {
        let fake = try startFakeMilter(#"{"close_at": "B"}"#)
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                milters:
                  - { name: optional, address: "inet:127.0.0.1:\(fake.port)", default_action: accept }
                """
        }
        // accept: the filter hung up at the body; the message goes on without it.
        let (accepted, _) = try send(postern.port)
        XCTAssertEqual(accepted.status, 0, accepted.description)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)

        for (action, expected) in [("reject", "550 5.5.0"), ("tempfail", "451 4.7.1")] {
            let (other, _) = try startPosternWithSink {
                $0.extra = """
                    milters:
                      - { name: \(action), address: "inet:127.0.0.1:\(fake.port)", default_action: \(action) }
                    """
            }
            let (result, _) = try send(other.port)
            XCTAssertTrue(result.swaksReplies.contains { $0.hasPrefix(expected) }, "\(action)\n\(result.description)")
        }
    }

    func testDefaultActionQuarantineKeepsTheMessage() throws {
        let fake = try startFakeMilter(#"{"close_at": "B"}"#)
        let quarantine = workDir.appendingPathComponent("quarantine")
        let (keeping, keptSink) = try startPosternWithSink {
            $0.extra = """
                quarantine: \(quarantine.path)
                milters:
                  - { name: keep, address: "inet:127.0.0.1:\(fake.port)", default_action: quarantine }
                """
        }
        let (kept, _) = try send(keeping.port)
        XCTAssertEqual(kept.status, 0, kept.description)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: quarantine.appendingPathComponent("new").path).count, 1)
        XCTAssertEqual(keptSink.messageCount, 0)
    }

    func testGarbageAnOversizePacketAndUnofferedActionsAreProtocolFailures() throws {
        let garbage = try startFakeMilter(#"{"garbage_at": "M", "garbage_kind": "text"}"#, name: "garbage")
        let oversize = try startFakeMilter(#"{"oversize_at": "E"}"#, name: "oversize")
        let greedy = try startFakeMilter(#"{"unoffered_actions": true}"#, name: "greedy")
        for (name, port, kind) in [("garbage", garbage.port, "protocol"), ("oversize", oversize.port, "protocol"),
                                   ("greedy", greedy.port, "negotiation")] {
            let metricsPort = try Net.freePort()
            let (postern, sink) = try startPosternWithSink {
                $0.extra = """
                    metrics: 127.0.0.1:\(metricsPort)
                    milters:
                      - { name: \(name), address: "inet:127.0.0.1:\(port)", timeouts: { command: 3s, content: 3s } }
                    """
            }
            let (result, elapsed) = try send(postern.port)
            XCTAssertTrue(result.swaksReplies.contains { $0.hasPrefix("451 4.7.1") }, "\(name)\n\(result.description)")
            XCTAssertLessThan(elapsed, 10, name)
            XCTAssertEqual(sink.messageCount, 0, name)
            let metrics = try Metrics.scrape(port: metricsPort)
            XCTAssertEqual(Metrics.value(metrics, "postern_check_errors_total", ["check": name, "kind": kind]), 1, "\(name)\n\(metrics)")
        }
    }

    func testWhatTheFilterReceivesFromTheRealBinary() throws {
        let fake = try startFakeMilter(#"{"eom_actions": [{"add_header": ["X-Seen-Queue-Id", "$macro:{i}"]}]}"#)
        let decisions = workDir.appendingPathComponent("decisions.log")
        let (postern, sink) = try startPosternWithSink {
            $0.extra = """
                decision_log: \(decisions.path)
                milters:
                  - { name: recorder, address: "inet:127.0.0.1:\(fake.port)" }
                """
        }
        let (result, _) = try send(postern.port, body: String(repeating: "x", count: 100) + "\n")
        XCTAssertEqual(result.status, 0, result.description)
        let message = try XCTUnwrap(sink.waitForMessages(1).first)
        let lines = try String(contentsOf: fake.record, encoding: .utf8).split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let commands = lines.compactMap { $0["cmd"] as? String }.filter { $0 != "D" }.joined()
        XCTAssertTrue(commands.hasPrefix("OCHMRTL"), commands)
        XCTAssertTrue(commands.hasSuffix("NBEQ"), commands)
        let connect = lines.first { ($0["cmd"] as? String) == "C" }?["fields"] as? [String]
        XCTAssertEqual(connect?[3], "127.0.0.1")
        let helo = lines.first { ($0["cmd"] as? String) == "H" }?["fields"] as? [String]
        XCTAssertEqual(helo, ["client.test"])
        let mail = lines.first { ($0["cmd"] as? String) == "M" }?["fields"] as? [String]
        XCTAssertEqual(mail?.first, "<a@client.example>")
        // The filter's `i` is Postern's transaction id: the header it added says so.
        let id = message.text.components(separatedBy: "X-Seen-Queue-Id: ").dropFirst().first?.components(separatedBy: "\r\n").first
        let record = DecisionLog.waitForRecord(decisions) { ($0["decision"] as? String) == "accepted" }
        XCTAssertEqual(id, record?["id"] as? String, message.text)
    }
}
