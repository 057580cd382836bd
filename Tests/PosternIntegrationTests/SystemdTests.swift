import Foundation
import XCTest

/// systemd's side of Postern without systemd as PID 1: socket activation (sd_listen_fds)
/// through Debian's `systemd-socket-activate` and through a script that holds the socket
/// across restarts as systemd does, and the sd_notify messages on a test socket.
final class SystemdTests: IntegrationTestCase, @unchecked Sendable {
    func testSystemdSocketActivateHandsItsSocketsToPostern() throws {
        let activate = try requireTool("systemd-socket-activate")
        let sink = try startRecordingSink()
        let port = try Net.freePort()
        let spare = try Net.freePort()
        let config = try writeConfig("""
            listen: [{ address: 127.0.0.1:\(port) }]
            upstreams: [{ url: "smtp://127.0.0.1:\(sink.port)" }]
            relay_domains: [example.test]

            """, name: "postern.yaml")
        // Two sockets: one for the listener, one no listener is configured for. Under a shell
        // that stays its parent: systemd-socket-activate closes every other descriptor before
        // it execs Postern, and Foundation's Process takes that for the child's exit (then
        // blocks waiting for it). The shell passes SIGTERM on, so the test still stops it by PID.
        let command = [activate.path, "-l", "127.0.0.1:\(port)", "-l", "127.0.0.1:\(spare)", "--fdname=smtp:spare",
                       try posternBinary().path, "serve", "--config", config.path].map { "'\($0)'" }.joined(separator: " ")
        let process = try launch("activate", URL(fileURLWithPath: "/bin/sh"),
                                 ["-c", "\(command) & child=$!; trap 'kill -TERM $child; wait $child' TERM; wait $child"])
        try process.waitForPort(port)
        // The first connection starts Postern, which takes the socket it is waiting on.
        let result = try runSwaks(port: port, ["--from", "a@client.test", "--to", "r@example.test"])
        XCTAssertEqual(result.status, 0, result.description + process.tail())
        XCTAssertEqual(sink.waitForMessages(1).count, 1)
        XCTAssertTrue(process.output.contains("msg=\"listener on a socket from systemd\""), process.tail())
        XCTAssertTrue(process.output.contains("name=smtp"), process.tail())
        XCTAssertTrue(process.output.contains("systemd passed a socket that no listener is configured for; it is closed"), process.tail())
        XCTAssertTrue(process.output.contains("name=spare"), process.tail())
        XCTAssertFalse(process.output.contains("cannot listen"), process.tail())
    }

    private struct RestartReport {
        var json: [String: Any]
        var refused: Int { json["refused"] as? Int ?? -1 }
        var lost: Int { json["lost"] as? Int ?? -1 }
        var acknowledged: Int { json["acknowledged"] as? Int ?? 0 }
        var problems: [String] { json["problems"] as? [String] ?? ["no report"] }
        /// Per generation, the first line of each notification.
        var notifications: [Int: [String]] {
            var byGeneration: [Int: [String]] = [:]
            for entry in json["notifications"] as? [[Any]] ?? [] {
                guard let generation = entry.first as? Int, let text = entry.last as? String else { continue }
                byGeneration[generation, default: []].append(String(text.split(separator: "\n").first ?? ""))
            }
            return byGeneration
        }
    }

    /// Postern restarted `restarts` times under continuous load by `socket_activation.py`.
    private func restartUnderLoad(mode: String, restarts: Int) throws -> RestartReport {
        let maildir = try makeDirectory("maildir-\(mode)")
        let port = try Net.freePort()
        let config = try writeConfig("""
            listen: [{ address: 127.0.0.1:\(port) }]
            upstreams: [{ url: "maildir:\(maildir.path)" }]
            relay_domains: [example.test]
            shutdown_grace_period: 5s

            """, name: "postern-\(mode).yaml")
        let log = workDir.appendingPathComponent("postern-\(mode).log")
        let run = try runPython(script: "socket_activation.py", [
            "--mode", mode, "--port", "\(port)", "--maildir", maildir.path, "--restarts", "\(restarts)", "--uptime", "2", "--reload",
            "--connections", "4", "--log", log.path, "--", try posternBinary().path, "serve", "--config", config.path,
        ], timeout: 300)
        XCTAssertEqual(run.status, 0, run.description)
        let json = (try? JSONSerialization.jsonObject(with: run.stdoutData) as? [String: Any]) ?? [:]
        return RestartReport(json: json)
    }

    func testRestartsUnderLoadWithSocketActivationRefuseNothingAndLoseNothing() throws {
        let report = try restartUnderLoad(mode: "activate", restarts: 5)
        XCTAssertEqual(report.problems, [], "\(report.json)")
        XCTAssertEqual(report.refused, 0, "connections refused across 5 restarts: \(report.json)")
        XCTAssertEqual(report.lost, 0, "acknowledged but never delivered: \(report.json)")
        XCTAssertGreaterThan(report.acknowledged, 100, "\(report.json)")
        // Each generation: ready, a reload bracketed by RELOADING/READY, then stopping.
        let notifications = report.notifications
        XCTAssertEqual(notifications.count, 6, "\(report.json)")
        for generation in 0...5 {
            XCTAssertEqual(notifications[generation], ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], "generation \(generation)")
        }
        // The first READY=1 comes after each upstream was probed once.
        let ready = (report.json["notifications"] as? [[Any]] ?? []).compactMap { $0.last as? String }.filter { $0.hasPrefix("READY=1\nSTATUS=listening") }
        XCTAssertEqual(ready.count, 6, "\(report.json)")
        XCTAssertTrue(ready.allSatisfy { $0.hasSuffix("; 1 of 1 upstream(s) answering") }, "\(ready)")
    }
}
