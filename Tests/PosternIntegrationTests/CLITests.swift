import Foundation
import XCTest

/// `postern serve` without a config, `postern check`, `postern version`, SIGTERM.
final class CLITests: IntegrationTestCase, @unchecked Sendable {
    func testServeWithoutConfigDeliversToMaildir() throws {
        let port = try Net.freePort()
        let maildir = workDir.appendingPathComponent("Maildir")
        let postern = try startPostern(arguments: ["serve", "--listen", "127.0.0.1:\(port)",
                                                   "--upstream", "maildir:\(maildir.path)"], port: port)
        let result = try runSwaks(port: postern.port, ["--from", "sender@client.test", "--to", "box@example.test",
                                                       "--header", "Subject: to the maildir",
                                                       "--body", "line one\n.dot line\nline three"])
        XCTAssertEqual(result.status, 0, result.description)
        let newDir = maildir.appendingPathComponent("new")
        XCTAssertTrue(waitUntil(timeout: 10) {
            ((try? FileManager.default.contentsOfDirectory(atPath: newDir.path)) ?? []).count == 1
        }, "nothing in \(newDir.path)")
        guard let name = try FileManager.default.contentsOfDirectory(atPath: newDir.path).first else { return }
        let data = try Data(contentsOf: newDir.appendingPathComponent(name))
        let text = String(decoding: data, as: UTF8.self)
        XCTAssertFalse(data.contains(0x0D), "maildir files use LF line endings")
        let lines = text.components(separatedBy: "\n")
        XCTAssertTrue(lines.first?.hasPrefix("Return-Path: <sender@client.test>") ?? false, text)
        XCTAssertTrue(lines.dropFirst().first?.hasPrefix("Delivered-To: ") ?? false, text)
        XCTAssertTrue(text.contains("box@example.test"), text)
        XCTAssertTrue(text.contains("Subject: to the maildir\n"), text)
        XCTAssertTrue(text.contains("\nline one\n.dot line\nline three\n"), text)
        XCTAssertTrue(text.contains("Received: from "), text)
    }

    func testCheckReportsUnknownKeyWithFileLineColumn() throws {
        let bad = try writeConfig("""
        hostname: postern.test
        listen:
          - address: 127.0.0.1:2525
        no_such_option: true
        upstreams:
          - url: smtp://127.0.0.1:10025

        """, name: "bad.yaml")
        let result = try runPostern(["check", "--config", bad.path])
        XCTAssertEqual(result.status, 2, result.description)
        let pattern = #"bad\.yaml:4:\d+: "#
        XCTAssertNotNil(result.stderr.range(of: pattern, options: .regularExpression),
                        "expected `…bad.yaml:4:<column>: message` on stderr:\n\(result.description)")
        XCTAssertTrue(result.stderr.contains("no_such_option"), result.description)

        let good = try writeConfig(PosternConfig(port: 2525, upstreams: ["smtp://127.0.0.1:10025"]).yaml,
                                   name: "good.yaml")
        let ok = try runPostern(["check", "--config", good.path])
        XCTAssertEqual(ok.status, 0, ok.description)
    }

    func testCheckReportsBadValueWithPosition() throws {
        let bad = try writeConfig("""
        hostname: postern.test
        limits:
          message_size: lots
        upstreams:
          - url: smtp://127.0.0.1:10025

        """, name: "badvalue.yaml")
        let result = try runPostern(["check", "--config", bad.path])
        XCTAssertEqual(result.status, 2, result.description)
        XCTAssertNotNil(result.stderr.range(of: #"badvalue\.yaml:3:\d+: "#, options: .regularExpression),
                        result.description)
    }

    func testVersion() throws {
        let result = try runPostern(["version"])
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertFalse(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, result.description)
    }

    func testSIGTERMSays421ToIdleSessionsAndExitsZero() throws {
        let (postern, _) = try startPosternWithSink { $0.extra = "shutdown_grace_period: 5s\n" }
        let idle = try RawSMTPClient.greeted(port: postern.port)
        postern.process.signal(SIGTERM)
        let reply = try? idle.readReply(timeout: 10)
        XCTAssertEqual(reply?.code, 421, reply?.text ?? "no reply before close")
        XCTAssertEqual(postern.process.waitForExit(timeout: 15), 0, postern.process.tail())
        XCTAssertFalse(Net.canConnect(port: postern.port))
    }

    func testSIGTERMLetsAnInFlightTransactionFinish() throws {
        let (postern, sink) = try startPosternWithSink { $0.extra = "shutdown_grace_period: 10s\n" }
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<s@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<r@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: in flight\r\n\r\nfirst half\r\n")
        postern.process.signal(SIGTERM)
        sleep(seconds: 0.5)
        XCTAssertTrue(postern.process.isRunning, "postern exited with a transaction in flight")
        try client.send("second half\r\n.\r\n")
        let final = try client.readReply(timeout: 10)
        XCTAssertEqual(final.code, 250, final.text)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)
        _ = try? client.command("QUIT")
        XCTAssertEqual(postern.process.waitForExit(timeout: 15), 0, postern.process.tail())
    }

    func testSIGTERMExitsAfterTheGracePeriodEvenIfAClientStalls() throws {
        let (postern, sink) = try startPosternWithSink { $0.extra = "shutdown_grace_period: 2s\n" }
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<s@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<r@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: never finished\r\n\r\nand then silence\r\n")
        let start = Date()
        postern.process.signal(SIGTERM)
        let status = postern.process.waitForExit(timeout: 12)
        XCTAssertNotNil(status, "postern still running 12s after SIGTERM with a 2s grace period\n\(postern.process.tail())")
        XCTAssertEqual(status, 0)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 1.5, "did not wait for the grace period")
        XCTAssertEqual(sink.messageCount, 0, "an unfinished message was relayed")
        XCTAssertTrue(client.waitForClose(timeout: 2))
    }

    /// A connection whose session has not begun (its PROXY header not yet sent, so no slot and
    /// nothing to drain) is closed at the end of the grace period too, not at its own timeout.
    func testSIGTERMClosesAConnectionStillWaitingForItsProxyHeaderAtTheEndOfTheGracePeriod() throws {
        let (postern, _) = try startPosternWithSink {
            $0.listenerExtra = ["proxy_protocol: true"]
            $0.extra = "shutdown_grace_period: 1s\nproxy_trusted_networks: [127.0.0.0/8]\ntimeouts:\n  proxy_header: 60s\n"
        }
        // Its sockets only: files it opens and closes meanwhile (the policy and configuration
        // watches, the decision log) would make the count rise before the connection is accepted.
        let directory = "/proc/\(postern.process.pid)/fd"
        let descriptors = {
            ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter {
                ((try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + $0)) ?? "").hasPrefix("socket:")
            }.count
        }
        let before = descriptors()
        let silent = try RawSMTPClient(port: postern.port)
        // Accepted (a descriptor more), not just queued in the listener's backlog.
        let deadline = Date().addingTimeInterval(5)
        while descriptors() <= before, Date() < deadline { usleep(10_000) }
        XCTAssertGreaterThan(descriptors(), before, "postern did not accept the connection")
        let start = Date()
        postern.process.signal(SIGTERM)
        let status = postern.process.waitForExit(timeout: 20)
        XCTAssertEqual(status, 0, "postern did not exit in time after SIGTERM\n\(postern.process.tail())")
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(elapsed, 0.8, "did not wait for the grace period")
        XCTAssertLessThan(elapsed, 15, "waited for the connection's own 60 s timeout")
        XCTAssertTrue(silent.waitForClose(timeout: 2))
    }
}

