import Foundation
import XCTest

/// Connection defences: pre-greet, junk commands, session time, minimum data rate, errors
/// per session and connections per address. Each ends the session with its reply, is
/// counted in `postern_defences_total{defence}` and leaves a decision record.
final class DefencesTests: IntegrationTestCase, @unchecked Sendable {
    private func start(_ extra: String) throws -> (server: TrustServer, sink: RecordingSink) {
        let sink = try startRecordingSink()
        let server = try startTrustServer(listeners: [try .plain(), try .proxy()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
                                          extra: "relay_domains: [local.test]\n" + extra)
        return (server, sink)
    }

    private func defences(_ server: TrustServer, _ defence: String, atLeast: Double = 1) -> Double? {
        Metrics.waitForValue(port: server.metricsPort, "postern_defences_total", ["defence": defence], atLeast: atLeast)
    }

    // MARK: - Pre-greet

    func testPregreetTalkerIsRefusedAndPoliteClientIsServed() throws {
        let (server, sink) = try start("timeouts:\n  greet_delay: 1s\n")
        // A bot that does not wait for the banner.
        let bot = try RawSMTPClient(port: server.port)
        try bot.send("EHLO bot.test\r\n")
        let refused = try bot.readReply(timeout: 5)
        XCTAssertEqual(refused.code, 554, refused.text)
        XCTAssertEqual(refused.enhancedCode, "5.5.1", refused.text)
        XCTAssertTrue(refused.text.contains("talked before the greeting"), refused.text)
        XCTAssertTrue(bot.waitForClose(timeout: 3), "connection left open after the pre-greet refusal")
        XCTAssertFalse(String(decoding: bot.transcript, as: UTF8.self).contains("220"), "the bot was greeted")

        // Behind a proxy: the PROXY header is not talking, but EHLO in the same packet is.
        let proxiedBot = try RawSMTPClient(port: server.listeners[1].port)
        try proxiedBot.send("PROXY TCP4 198.51.100.30 127.0.0.1 40000 25\r\nEHLO bot.test\r\n")
        XCTAssertEqual(try proxiedBot.readReply(timeout: 5).code, 554)

        // A polite client waits for the 220, after the delay, and is served.
        let start = Date()
        let polite = try RawSMTPClient(port: server.port)
        let greeting = try polite.readReply(timeout: 5)
        let waited = Date().timeIntervalSince(start)
        XCTAssertEqual(greeting.code, 220, greeting.text)
        XCTAssertGreaterThanOrEqual(waited, 0.9, "the greeting came before greet_delay")
        XCTAssertEqual(try polite.command("EHLO polite.test").code, 250)
        XCTAssertEqual(try polite.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try polite.command("RCPT TO:<user@local.test>").code, 250)
        XCTAssertEqual(try polite.sendMessage("Subject: polite\r\n\r\nwaited\r\n").code, 250)
        let proxiedPolite = try RawSMTPClient.proxied(port: server.listeners[1].port, source: "198.51.100.31")
        XCTAssertEqual(try proxiedPolite.command("NOOP").code, 250)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)

        XCTAssertEqual(defences(server, "pregreet", atLeast: 2), 2)
        let record = DecisionLog.waitForRecord(server.decisionLog) { ($0["reason"] as? String ?? "").hasPrefix("pregreet") }
        XCTAssertEqual(record?["decision"] as? String, "rejected", DecisionLog.describe(server.decisionLog))
        XCTAssertEqual(record?["stage"] as? String, "connect", DecisionLog.describe(server.decisionLog))
        XCTAssertNotNil(DecisionLog.waitForRecord(server.decisionLog) {
            ($0["reason"] as? String ?? "").hasPrefix("pregreet") && DecisionLog.client($0)["ip"] as? String == "198.51.100.30"
        }, "the proxied bot's record: \(DecisionLog.describe(server.decisionLog))")
    }

    // MARK: - Junk commands

    func testJunkCommandsBeyondTheLimitEndTheSession() throws {
        let (server, sink) = try start("limits:\n  junk_commands: 20\n")
        let client = try RawSMTPClient.greeted(port: server.port)
        let junk = ["NOOP", "RSET", "VRFY postmaster", "HELP", "NOOP"]
        for i in 0..<20 {
            let reply = try client.command(junk[i % junk.count])
            XCTAssertLessThan(reply.code, 400, "junk command \(i + 1) of 20: \(reply)")
        }
        let cut = try client.command("NOOP")
        XCTAssertEqual(cut.code, 421, cut.text)
        XCTAssertEqual(cut.enhancedCode, "4.7.0", cut.text)
        XCTAssertTrue(cut.text.contains("too many commands without a transaction"), cut.text)
        XCTAssertTrue(client.waitForClose(timeout: 3))
        XCTAssertEqual(defences(server, "junk_commands"), 1)
        let record = DecisionLog.waitForRecord(server.decisionLog) { ($0["reason"] as? String ?? "").contains("junk_commands") }
        XCTAssertEqual(record?["decision"] as? String, "tempfailed", DecisionLog.describe(server.decisionLog))
        XCTAssertEqual(record?["stage"] as? String, "connect", DecisionLog.describe(server.decisionLog))

        // A message resets the count: 15 + message + 15 is fine.
        let busy = try RawSMTPClient.greeted(port: server.port)
        for _ in 0..<15 { XCTAssertEqual(try busy.command("NOOP").code, 250) }
        XCTAssertEqual(try busy.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try busy.command("RCPT TO:<user@local.test>").code, 250)
        XCTAssertEqual(try busy.sendMessage("Subject: between\r\n\r\nx\r\n").code, 250)
        for _ in 0..<15 { XCTAssertEqual(try busy.command("NOOP").code, 250) }
        XCTAssertEqual(try busy.command("QUIT").code, 221)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)
    }

    // MARK: - Session time

    func testSessionTimeLimit() throws {
        let (server, _) = try start("timeouts:\n  session: 2s\n")
        // A client that keeps the session alive with NOOPs.
        let start = Date()
        let client = try RawSMTPClient.greeted(port: server.port)
        // Meanwhile an idle client (no command at all) is cut off at the session time too,
        // not at the (much longer) command timeout.
        let idle = try RawSMTPClient.greeted(port: server.port)
        var last: SMTPReply?
        while Date().timeIntervalSince(start) < 8 {
            guard let reply = try? client.command("NOOP", timeout: 5) else { break }
            last = reply
            if reply.code != 250 { break }
            sleep(seconds: 0.25)
        }
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(last?.code, 421, last?.text ?? "no reply")
        XCTAssertEqual(last?.enhancedCode, "4.4.2", last?.text ?? "")
        XCTAssertTrue(last?.text.contains("session time limit exceeded") ?? false, last?.text ?? "")
        XCTAssertGreaterThanOrEqual(elapsed, 1.8, "cut off before the session time")
        XCTAssertLessThan(elapsed, 4.5, "cut off long after the session time")
        XCTAssertTrue(client.waitForClose(timeout: 3))

        let reply = try idle.readReply(timeout: 3)
        XCTAssertEqual(reply.code, 421, reply.text)
        XCTAssertEqual(reply.enhancedCode, "4.4.2", reply.text)
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        XCTAssertTrue(idle.waitForClose(timeout: 3))
        XCTAssertEqual(defences(server, "session_time", atLeast: 2), 2)
        let record = DecisionLog.waitForRecord(server.decisionLog) { ($0["reason"] as? String ?? "").hasPrefix("session_time") }
        XCTAssertEqual(record?["decision"] as? String, "tempfailed", DecisionLog.describe(server.decisionLog))
        XCTAssertEqual(record?["stage"] as? String, "connect", DecisionLog.describe(server.decisionLog))

        // During a transaction the record is the transaction's, aborted, naming the defence.
        let busy = try RawSMTPClient.greeted(port: server.port)
        XCTAssertEqual(try busy.command("MAIL FROM:<late@client.test>").code, 250)
        XCTAssertEqual(try busy.command("RCPT TO:<user@local.test>").code, 250)
        XCTAssertEqual(try busy.readReply(timeout: 4).code, 421)
        let aborted = DecisionLog.waitForRecord(server.decisionLog) { $0["mail_from"] as? String == "late@client.test" }
        XCTAssertEqual(aborted?["decision"] as? String, "aborted", DecisionLog.describe(server.decisionLog))
        XCTAssertTrue((aborted?["reason"] as? String ?? "").contains("session_time"), DecisionLog.describe(server.decisionLog))
    }

    // MARK: - Minimum data rate

    func testTricklingClientIsCutOffAndNothingIsRelayed() throws {
        let (server, sink) = try start("limits:\n  min_data_rate: 1000\n  data_rate_grace: 1s\n")
        // A fast client is not affected.
        let fast = try RawSMTPClient.greeted(port: server.port)
        XCTAssertEqual(try fast.command("MAIL FROM:<fast@client.test>").code, 250)
        XCTAssertEqual(try fast.command("RCPT TO:<user@local.test>").code, 250)
        let line = String(repeating: "f", count: 98) + "\r\n"
        XCTAssertEqual(try fast.sendMessage("Subject: fast\r\n\r\n" + String(repeating: line, count: 1000)).code, 250)
        XCTAssertEqual(sink.waitForMessages(1).count, 1)

        // 10 octets a second, far below 1000.
        let slow = try RawSMTPClient.greeted(port: server.port)
        XCTAssertEqual(try slow.command("MAIL FROM:<slow@client.test>").code, 250)
        XCTAssertEqual(try slow.command("RCPT TO:<user@local.test>").code, 250)
        XCTAssertEqual(try slow.command("DATA").code, 354)
        let start = Date()
        var reply: SMTPReply?
        while Date().timeIntervalSince(start) < 10 && reply == nil {
            do { try slow.send("trickle...") } catch { break }
            reply = try? slow.readReply(timeout: 1.0)
        }
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(reply?.code, 421, reply?.text ?? "no reply within 10 s")
        XCTAssertEqual(reply?.enhancedCode, "4.4.2", reply?.text ?? "")
        XCTAssertTrue(reply?.text.contains("data rate too low") ?? false, reply?.text ?? "")
        XCTAssertLessThan(elapsed, 4, "cut off \(elapsed)s after DATA with a 1 s grace")
        XCTAssertTrue(slow.waitForClose(timeout: 3))
        sleep(seconds: 0.5)
        XCTAssertEqual(sink.messageCount, 1, "the trickled message reached the upstream")
        XCTAssertFalse(sink.messages().contains { $0.mailFrom == "slow@client.test" }, sink.transcript)
        // The same for BDAT: a chunk that trickles in.
        let chunked = try RawSMTPClient.greeted(port: server.port)
        XCTAssertEqual(try chunked.command("MAIL FROM:<chunked@client.test>").code, 250)
        XCTAssertEqual(try chunked.command("RCPT TO:<user@local.test>").code, 250)
        try chunked.send("BDAT 100000 LAST\r\n")
        let chunkStart = Date()
        var chunkReply: SMTPReply?
        while Date().timeIntervalSince(chunkStart) < 10 && chunkReply == nil {
            do { try chunked.send("trickle...") } catch { break }
            chunkReply = try? chunked.readReply(timeout: 1.0)
        }
        XCTAssertEqual(chunkReply?.code, 421, chunkReply?.text ?? "no reply within 10 s")
        XCTAssertTrue(chunkReply?.text.contains("data rate too low") ?? false, chunkReply?.text ?? "")
        XCTAssertLessThan(Date().timeIntervalSince(chunkStart), 4)
        sleep(seconds: 0.3)
        XCTAssertFalse(sink.messages().contains { $0.mailFrom == "chunked@client.test" }, sink.transcript)

        XCTAssertEqual(defences(server, "min_data_rate", atLeast: 2), 2)
        let record = DecisionLog.waitForRecord(server.decisionLog) { $0["mail_from"] as? String == "slow@client.test" }
        XCTAssertEqual(record?["decision"] as? String, "aborted", DecisionLog.describe(server.decisionLog))
        XCTAssertTrue((record?["reason"] as? String ?? "").contains("min_data_rate"), DecisionLog.describe(server.decisionLog))
    }

    // MARK: - Errors and connections per address

    func testErrorsPerSessionIsADefence() throws {
        let (server, _) = try start("limits:\n  errors_per_session: 3\n")
        let client = try RawSMTPClient.greeted(port: server.port)
        var codes: [Int] = []
        for i in 0..<6 {
            guard let reply = try? client.command("BOGUS\(i)", timeout: 5) else { break }
            codes.append(reply.code)
            if reply.code == 421 {
                XCTAssertEqual(reply.enhancedCode, "4.7.0", reply.text)
                XCTAssertTrue(reply.text.contains("too many errors"), reply.text)
                break
            }
        }
        XCTAssertEqual(codes.count, 4, "\(codes)")
        XCTAssertTrue(codes.dropLast().allSatisfy { (500..<600).contains($0) }, "\(codes)")
        XCTAssertEqual(codes.last, 421, "\(codes)")
        XCTAssertTrue(client.waitForClose(timeout: 3))
        XCTAssertEqual(defences(server, "errors"), 1)
        let record = DecisionLog.waitForRecord(server.decisionLog) { ($0["reason"] as? String ?? "").hasPrefix("errors") }
        XCTAssertEqual(record?["decision"] as? String, "tempfailed", DecisionLog.describe(server.decisionLog))
        XCTAssertEqual(record?["stage"] as? String, "connect", DecisionLog.describe(server.decisionLog))
    }

    func testMaxConnectionsPerIPJudgesTheProxySource() throws {
        let (server, _) = try start("limits:\n  max_connections_per_ip: 2\n")
        let proxyPort = server.listeners[1].port
        let first = try RawSMTPClient.proxied(port: proxyPort, source: "198.51.100.40", sourcePort: 40001)
        let second = try RawSMTPClient.proxied(port: proxyPort, source: "198.51.100.40", sourcePort: 40002)
        let third = try RawSMTPClient(port: proxyPort, timeout: 5)
        try third.send("PROXY TCP4 198.51.100.40 127.0.0.1 40003 25\r\n")
        let refused = try third.readReply()
        XCTAssertEqual(refused.code, 421, refused.text)
        XCTAssertEqual(refused.enhancedCode, "4.7.0", refused.text)
        XCTAssertTrue(third.waitForClose(timeout: 3))
        // Another address behind the same proxy is served.
        let other = try RawSMTPClient.proxied(port: proxyPort, source: "198.51.100.41")
        XCTAssertEqual(try other.command("NOOP").code, 250)
        XCTAssertEqual(try first.command("NOOP").code, 250)
        XCTAssertEqual(try second.command("NOOP").code, 250)
        first.close()
        XCTAssertTrue(waitUntil(timeout: 5) {
            (try? RawSMTPClient.proxied(port: proxyPort, source: "198.51.100.40", sourcePort: 40004)) != nil
        }, "a slot freed by a closed connection is not reusable")
    }
}
