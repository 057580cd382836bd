import Foundation
import NIOCore
import PosternServer
import PosternUpstream
import SMTPCore
import XCTest

/// The server over a real loopback socket, delivering into a temporary Maildir: the driver,
/// the listener and what they are composed of. What a session answers is tested without
/// sockets, by transcripts, in PosternSessionTests.
final class SessionTests: XCTestCase {
    private var fixtures: [ServerFixture] = []

    override func tearDown() {
        for fixture in fixtures { fixture.stop() }
        fixtures = []
    }

    private func start(
        listeners: [PosternConfiguration.Listener] = [PosternConfiguration.Listener(host: "127.0.0.1", port: 0)],
        _ configure: (inout PosternConfiguration) -> Void = { _ in }
    ) throws -> ServerFixture {
        // Clients behind a PROXY header present documentation addresses, which are not in
        // trusted_networks: they may send to the test domain only.
        let proxied = listeners.contains { $0.proxyProtocol }
        let fixture = try ServerFixture(listeners: listeners) { configuration in
            if proxied { configuration.relayDomains = ["example.org"] }
            configure(&configuration)
        }
        fixtures.append(fixture)
        return fixture
    }

    private func connect(_ fixture: ServerFixture, port: Int? = nil, ehlo: Bool = true) throws -> RawSMTPClient {
        let client = try RawSMTPClient(port: port ?? fixture.port)
        XCTAssertEqual(client.readReply()?.code, 220)
        if ehlo { XCTAssertEqual(client.command("EHLO client.example")?.code, 250) }
        return client
    }

    // MARK: The ordinary path

    func testGreetingAndEHLOKeywords() throws {
        let fixture = try start()
        let client = try RawSMTPClient(port: fixture.port)
        let greeting = try XCTUnwrap(client.readReply())
        XCTAssertEqual(greeting.code, 220)
        XCTAssertEqual(greeting.text, "mx.test ESMTP Postern")
        let ehlo = try XCTUnwrap(client.command("EHLO client.example"))
        XCTAssertEqual(ehlo.lines, ["mx.test", "SIZE 26214400", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN"])
        XCTAssertEqual(client.command("NOOP")?.text, "2.0.0 Ok")
    }

    func testPipelinedTransactionIsDeliveredWithRepliesInOrder() throws {
        let fixture = try start()
        let client = try connect(fixture)
        client.send("MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        XCTAssertEqual(client.readReply()?.text, "2.1.0 Ok")
        XCTAssertEqual(client.readReply()?.text, "2.1.5 Ok")
        XCTAssertEqual(client.readReply()?.text, "2.1.5 Ok")
        XCTAssertEqual(client.readReply()?.code, 354)
        client.send("Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n")
        let final = try XCTUnwrap(client.readReply())
        XCTAssertEqual(final.code, 250)
        XCTAssertTrue(final.text.hasPrefix("2.0.0 Ok: delivered as"), final.text)
        XCTAssertEqual(client.readReply()?.code, 221)
        let message = try XCTUnwrap(fixture.waitForMessages(1).first)
        XCTAssertTrue(message.hasPrefix("Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\nDelivered-To: carol@example.org\nReceived: from client.example (unknown [127.0.0.1])\n\tby mx.test (Postern) with ESMTP id "), message)
        XCTAssertTrue(message.hasSuffix("\nSubject: hi\n\n.leading dot\nbody\n"), message)
    }

    func testBDATChunksAreDelivered() throws {
        let fixture = try start()
        let client = try connect(fixture)
        let first = "Subject: chunked\r\n\r\n"
        let second = ".dot stays\r\nend\r\n"
        client.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT \(first.utf8.count)\r\n\(first)BDAT \(second.utf8.count) LAST\r\n\(second)")
        XCTAssertEqual(client.readReply()?.code, 250)
        XCTAssertEqual(client.readReply()?.code, 250)
        XCTAssertEqual(client.readReply()?.text, "2.0.0 \(first.utf8.count) octets received")
        XCTAssertEqual(client.readReply()?.code, 250)
        let message = try XCTUnwrap(fixture.waitForMessages(1).first)
        XCTAssertTrue(message.hasSuffix("Subject: chunked\n\n.dot stays\nend\n"), message)
        // DATA after BDAT in one transaction is out of sequence (RFC 3030 §3).
        client.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 3\r\nab\nDATA\r\n")
        XCTAssertEqual(client.readReply()?.code, 250)
        XCTAssertEqual(client.readReply()?.code, 250)
        XCTAssertEqual(client.readReply()?.code, 250)
        XCTAssertEqual(client.readReply()?.code, 503)
    }

    // MARK: Limits

    func testConnectionsPerAddressLimit() throws {
        let fixture = try start { $0.limits.maxConnectionsPerIP = 1 }
        let first = try connect(fixture)
        let second = try RawSMTPClient(port: fixture.port)
        let refusal = try XCTUnwrap(second.readReply())
        XCTAssertEqual(refusal.code, 421)
        XCTAssertTrue(refusal.text.hasPrefix("4.7.0"))
        XCTAssertTrue(second.isClosedByServer())
        XCTAssertEqual(first.command("QUIT")?.code, 221)
        XCTAssertTrue(first.isClosedByServer())
        // The slot is released when the session ends.
        var accepted = false
        for _ in 0..<50 where !accepted {
            let third = try RawSMTPClient(port: fixture.port)
            accepted = third.readReply()?.code == 220
            if !accepted { usleep(20_000) }
        }
        XCTAssertTrue(accepted)
    }

    func testTotalConnectionsLimit() throws {
        let fixture = try start { $0.limits.maxConnections = 2 }
        let first = try connect(fixture)
        let second = try connect(fixture)
        let third = try RawSMTPClient(port: fixture.port)
        XCTAssertEqual(third.readReply()?.code, 421)
        _ = (first, second)
    }

    func testIdleTimeout() throws {
        let fixture = try start { $0.timeouts.command = .milliseconds(300) }
        let client = try connect(fixture)
        let reply = try XCTUnwrap(client.readReply())
        XCTAssertEqual(reply.code, 421)
        XCTAssertTrue(reply.text.hasPrefix("4.4.2"))
        XCTAssertTrue(client.isClosedByServer())
    }

    // MARK: Framing and smuggling

    func testDisconnectMidDataRelaysNothing() throws {
        let fixture = try start()
        do {
            let client = try connect(fixture)
            XCTAssertEqual(client.command("MAIL FROM:<a@example.org>")?.code, 250)
            XCTAssertEqual(client.command("RCPT TO:<b@example.org>")?.code, 250)
            XCTAssertEqual(client.command("DATA")?.code, 354)
            client.send("Subject: cut\r\n\r\nhalf a message\r\n")
        }
        usleep(300_000)
        XCTAssertEqual(fixture.deliveredMessages().count, 0)
    }

    // MARK: Upstreams

    func testUpstreamDownGives451AtMAIL() throws {
        let closed = try closedPort()
        let fixture = try start { $0.upstreams = [UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: closed))] }
        let client = try connect(fixture)
        let reply = try XCTUnwrap(client.command("MAIL FROM:<a@example.org>"))
        XCTAssertEqual(reply.code, 451)
        XCTAssertTrue(reply.text.hasPrefix("4.4.1"))
        XCTAssertFalse(reply.text.contains("127.0.0.1"), "internals never reach the client")
    }

    func testFailoverToTheSecondUpstream() throws {
        let closed = try closedPort()
        let fixture = try start { configuration in
            configuration.upstreams.insert(UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: closed)), at: 0)
        }
        let client = try connect(fixture)
        XCTAssertEqual(deliver(client, "Subject: failover\r\n\r\nbody\r\n."), 250)
        XCTAssertEqual(fixture.waitForMessages(1).count, 1)
    }

    // MARK: PROXY protocol

    func testProxyV1AddressIsTheClientAddress() throws {
        let fixture = try start(listeners: [proxyListener()])
        let client = try RawSMTPClient(port: fixture.port)
        client.send("PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n")
        try deliverOne(client)
        let message = try XCTUnwrap(fixture.waitForMessages(1).first)
        XCTAssertTrue(message.contains("Received: from client.example (unknown [192.0.2.7])"), message)
    }

    // MARK: TLS and shutdown

    func testRequireTLSRefusesMailInPlaintext() throws {
        var listener = PosternConfiguration.Listener(host: "127.0.0.1", port: 0)
        listener.requireTLS = true
        let fixture = try start(listeners: [listener])
        let client = try connect(fixture)
        let reply = try XCTUnwrap(client.command("MAIL FROM:<a@example.org>"))
        XCTAssertEqual(reply.code, 530)
        XCTAssertTrue(reply.text.hasPrefix("5.7.0"))
    }

    func testShutdownSays421ToIdleSessionsAndLetsTransactionsFinish() throws {
        let fixture = try start()
        let idle = try connect(fixture)
        let busy = try connect(fixture)
        XCTAssertEqual(busy.command("MAIL FROM:<a@example.org>")?.code, 250)
        XCTAssertEqual(busy.command("RCPT TO:<b@example.org>")?.code, 250)
        XCTAssertEqual(busy.command("DATA")?.code, 354)
        busy.send("Subject: in flight\r\n\r\n")
        let stopped = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            fixture.stop()
            stopped.signal()
        }
        let idleReply = try XCTUnwrap(idle.readReply())
        XCTAssertEqual(idleReply.code, 421)
        XCTAssertTrue(idleReply.text.hasPrefix("4.3.2"))
        busy.send("finished\r\n.\r\n")
        XCTAssertEqual(busy.readReply()?.code, 250, "the transaction in flight completes")
        XCTAssertEqual(busy.readReply()?.code, 421, "then the session is closed")
        XCTAssertEqual(stopped.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(fixture.deliveredMessages().count, 1)
        fixtures.removeAll()
    }

    // MARK: Decision records

    func testDecisionRecordsForAcceptedRejectedAndAbortedTransactions() throws {
        let fixture = try start { $0.decisionLog = NSTemporaryDirectory() + "postern-decisions-\(UUID().uuidString).log" }
        let path = try XCTUnwrap(fixture.decisionLogPath)
        let client = try connect(fixture)
        XCTAssertEqual(client.command("MAIL FROM:<alice@example.org>")?.code, 250)
        XCTAssertEqual(client.command("RCPT TO:<bob@example.net>")?.code, 250)
        XCTAssertEqual(client.command("DATA")?.code, 354)
        XCTAssertEqual(client.command("Message-ID: <m1@example.org>\r\nSubject: ok\r\n\r\nbody\r\n.")?.code, 250)
        XCTAssertEqual(client.command("MAIL FROM:<>")?.code, 250)
        XCTAssertEqual(client.command("RCPT TO:<bob@example.net>")?.code, 250)
        XCTAssertEqual(client.command("DATA")?.code, 354)
        client.send("Subject: smuggle\r\n\r\nbody\n.\n")
        // `<LF>.<CR><LF>` is no end either: only CRLF "." CRLF is.
        XCTAssertEqual(client.command("\r\n.")?.code, 550, "the first reply comes only after the real end")
        XCTAssertEqual(client.command("MAIL FROM:<carol@example.org>")?.code, 250)
        XCTAssertEqual(client.command("RSET")?.code, 250)
        XCTAssertEqual(client.command("QUIT")?.code, 221)
        fixture.stop()
        let records = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { line in
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
        XCTAssertEqual(records.count, 3)
        XCTAssertEqual(records.map { $0["decision"] as? String }, ["accepted", "rejected", "aborted"])
        XCTAssertEqual(records.map { $0["stage"] as? String }, ["data", "data", "mail"])
        XCTAssertEqual(records[0]["message_id"] as? String, "<m1@example.org>")
        XCTAssertEqual(records[0]["mail_from"] as? String, "alice@example.org")
        XCTAssertEqual((records[0]["upstream"] as? [String: Any])?["host"] as? String, "maildir:\(fixture.maildir)")
        XCTAssertEqual(records[1]["mail_from"] as? String, "")
        XCTAssertEqual(records[1]["reason"] as? String, "bare LF in message content")
        XCTAssertEqual((records[1]["reply"] as? [String: Any])?["code"] as? Int, 550)
        XCTAssertNil((records[1]["upstream"] as? [String: Any])?["reply"] as? String, "the upstream never saw the message")
        XCTAssertEqual((records[0]["client"] as? [String: Any])?["helo"] as? String, "client.example")
        fixtures.removeAll()
        try? FileManager.default.removeItem(atPath: path)
    }

    // MARK: Policy

    private func writePolicy(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "postern-policy-\(UUID().uuidString).yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    private func proxied(_ fixture: ServerFixture, from address: String) throws -> RawSMTPClient {
        let client = try RawSMTPClient(port: fixture.port)
        client.send("PROXY TCP4 \(address) 198.51.100.1 40000 25\r\n")
        return client
    }

    func testTagSubjectAndQuarantine() throws {
        let policy = try writePolicy("""
            rules:
              - { id: hold, stage: data, if: { subject: { regex: 'invoice' } }, then: quarantine, reply: "250 2.0.0 Held for review (ref {id})" }
              - { id: tag, stage: data, if: { body: { regex: 'viagra' } }, then: tag_subject, tag: "[SPAM?]" }
            """)
        let quarantine = NSTemporaryDirectory() + "postern-quarantine-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: quarantine) }
        let fixture = try start { configuration in
            configuration.policy = policy
            configuration.quarantine = quarantine
        }
        let client = try connect(fixture)
        for (subject, body) in [("Your invoice", "pay"), ("Offer", "cheap viagra"), (nil, "viagra again")] {
            XCTAssertEqual(client.command("MAIL FROM:<a@example.org>")?.code, 250)
            XCTAssertEqual(client.command("RCPT TO:<b@example.org>")?.code, 250)
            XCTAssertEqual(client.command("DATA")?.code, 354)
            let reply = try XCTUnwrap(client.command((subject.map { "Subject: \($0)\r\n" } ?? "X-No-Subject: 1\r\n") + "\r\n\(body)\r\n."))
            XCTAssertEqual(reply.code, 250)
            if subject == "Your invoice" { XCTAssertTrue(reply.text.contains("Held for review"), reply.text) }
        }
        let delivered = fixture.waitForMessages(2)
        XCTAssertEqual(delivered.count, 2, "the quarantined message is not relayed")
        XCTAssertTrue(delivered.contains { $0.contains("\nSubject: [SPAM?] Offer\n") }, "\(delivered)")
        XCTAssertTrue(delivered.contains { $0.contains("\nSubject: [SPAM?]\n") && $0.contains("X-No-Subject: 1") }, "\(delivered)")
        let held = (try? FileManager.default.contentsOfDirectory(atPath: quarantine + "/new")) ?? []
        XCTAssertEqual(held.count, 1)
        let kept = try String(contentsOfFile: quarantine + "/new/" + held[0], encoding: .utf8)
        XCTAssertTrue(kept.contains("X-Postern-Quarantine: rule=hold;") && kept.contains("Subject: Your invoice"), kept)
    }

    func testPolicyFileChangesAreReloadedAndABrokenOneIsRefused() throws {
        let policy = try writePolicy("rules:\n  - { id: old, stage: mail, if: { sender: nobody@example.org }, then: reject }\n")
        let fixture = try start { $0.policy = policy }
        func mailReply() throws -> Int? {
            let client = try connect(fixture)
            defer { _ = client.command("QUIT") }
            return client.command("MAIL FROM:<spammer@example.org>")?.code
        }
        XCTAssertEqual(try mailReply(), 250)
        // An in-flight session keeps the policy it started with.
        let inFlight = try connect(fixture)
        try "rules:\n  - { id: new, stage: mail, if: { sender: spammer@example.org }, then: reject }\n"
            .write(toFile: policy, atomically: true, encoding: .utf8)
        var reloaded = false
        for _ in 0..<40 where !reloaded {
            usleep(250_000)
            reloaded = try mailReply() == 550
        }
        XCTAssertTrue(reloaded, "the changed file was picked up")
        XCTAssertEqual(inFlight.command("MAIL FROM:<spammer@example.org>")?.code, 250, "the old session keeps its policy")
        try "rules:\n  - { id: broken, stage: mail, if: { frob: 1 }, then: reject }\n".write(toFile: policy, atomically: true, encoding: .utf8)
        sleep(6)
        XCTAssertEqual(try mailReply(), 550, "a broken reload keeps the policy in force")
    }

    func testQuarantineRulesNeedAQuarantineMaildir() throws {
        let policy = try writePolicy("rules:\n  - { id: q, stage: data, if: { subject: { regex: x } }, then: quarantine }\n")
        XCTAssertThrowsError(try ServerFixture { $0.policy = policy }) { error in
            XCTAssertTrue("\(error)".contains("no quarantine: Maildir is configured"), "\(error)")
        }
    }

    func testABrokenPolicyStopsTheServerFromStarting() throws {
        let policy = try writePolicy("rules:\n  - { id: x, stage: mail, if: { frob: 1 }, then: reject }\n")
        XCTAssertThrowsError(try ServerFixture { $0.policy = policy }) { error in
            XCTAssertTrue("\(error)".contains("unknown condition 'frob'"), "\(error)")
        }
    }

    func testADecisionLogOnAFullDiskDoesNotStopMail() throws {
        guard FileManager.default.fileExists(atPath: "/dev/full") else { throw XCTSkip("no /dev/full") }
        let fixture = try start { configuration in
            configuration.decisionLog = "/dev/full"
            configuration.metrics = PosternConfiguration.Listener(host: "127.0.0.1", port: 0)
        }
        let client = try connect(fixture)
        for _ in 0..<3 {
            XCTAssertEqual(deliver(client, "Subject: full disk\r\n\r\nstill delivered\r\n."), 250)
        }
        XCTAssertEqual(fixture.waitForMessages(3).count, 3)
        var counted = false
        for _ in 0..<20 where !counted {
            let (_, metrics) = try httpGet(try XCTUnwrap(fixture.statusPort), "/metrics")
            counted = metrics.contains("postern_decision_log_write_errors_total 3")
            if !counted { usleep(50_000) }
        }
        XCTAssertTrue(counted, "every failed write is counted")
    }

    // MARK: Metrics and health

    private func httpGet(_ port: Int, _ path: String) throws -> (status: Int, body: String) {
        let client = try RawSMTPClient(port: port)
        client.send("GET \(path) HTTP/1.0\r\nHost: localhost\r\n\r\n")
        let response = client.readToEnd()
        let status = Int(response.split(separator: " ").dropFirst().first ?? "") ?? 0
        let body = response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        return (status, body)
    }

    func testMetricsCountWhatHappened() throws {
        let closed = try closedPort()
        let fixture = try start { configuration in
            configuration.metrics = PosternConfiguration.Listener(host: "127.0.0.1", port: 0)
            configuration.upstreams.append(UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: closed)))
            configuration.limits.maxConnectionsPerIP = 2
        }
        let statusPort = try XCTUnwrap(fixture.statusPort)
        let client = try connect(fixture)
        XCTAssertEqual(deliver(client, "Subject: m\r\n\r\nbody\r\n."), 250)
        XCTAssertEqual(deliver(client, "Subject: m\r\n\r\nbare\nLF\r\n."), 550)
        let second = try connect(fixture)
        let third = try RawSMTPClient(port: fixture.port)
        XCTAssertEqual(third.readReply()?.code, 421)
        let (status, metrics) = try httpGet(statusPort, "/metrics")
        XCTAssertEqual(status, 200)
        let lines = Set(metrics.split(separator: "\n").map(String.init))
        XCTAssertTrue(lines.contains("postern_transactions_total{decision=\"accepted\"} 1"), metrics)
        XCTAssertTrue(lines.contains("postern_transactions_total{decision=\"rejected\"} 1"), metrics)
        XCTAssertTrue(lines.contains("postern_connections_refused_total{reason=\"max_connections_per_ip\"} 1"), metrics)
        XCTAssertTrue(lines.contains("postern_sessions_current 2.0"), metrics)
        XCTAssertTrue(lines.contains("postern_sessions_total 2"), metrics)
        XCTAssertTrue(lines.contains("postern_upstream_up{upstream=\"maildir:\(fixture.maildir)\"} 1.0"), metrics)
        XCTAssertTrue(lines.contains("postern_upstream_up{upstream=\"127.0.0.1:\(closed)\"} 1.0"), metrics)
        XCTAssertTrue(lines.contains("postern_upstream_replies_total{upstream=\"maildir:\(fixture.maildir)\",class=\"2xx\"} 5"), metrics)
        _ = second
    }

    func testFilterDurationsAndRateLimitRefusalsAreMeasured() throws {
        let policy = try writePolicy("""
            limits:
              per_sender: { key: sender, count: messages, rate: 1/1h }
            rules:
              - { id: block, stage: mail, if: { sender: { domain: spam.example } }, then: reject }
              - { id: throttle, stage: rcpt, if: { limit: per_sender }, then: tempfail }
            """)
        let fixture = try start { configuration in
            configuration.policy = policy
            configuration.metrics = PosternConfiguration.Listener(host: "127.0.0.1", port: 0)
        }
        let client = try connect(fixture)
        for expected in [250, 450] {
            XCTAssertEqual(client.command("MAIL FROM:<a@example.org>")?.code, 250)
            XCTAssertEqual(client.command("RCPT TO:<b@example.org>")?.code, expected)
            XCTAssertEqual(client.command("RSET")?.code, 250)
        }
        let (_, metrics) = try httpGet(try XCTUnwrap(fixture.statusPort), "/metrics")
        let lines = Set(metrics.split(separator: "\n").map(String.init))
        XCTAssertTrue(lines.contains("postern_rate_limit_refusals_total{limit=\"per_sender\"} 1"), metrics)
        XCTAssertTrue(lines.contains("postern_filter_duration_seconds_count{filter=\"sender\"} 2"), metrics)
        XCTAssertTrue(lines.contains("postern_filter_duration_seconds_count{filter=\"limit\"} 2"), metrics)
        XCTAssertTrue(lines.contains("postern_rule_hits_total{rule=\"throttle\",mode=\"enforce\",stage=\"rcpt\"} 1"), metrics)
    }

    func testHealthAndReadiness() throws {
        let closed = try closedPort()
        let fixture = try start { configuration in
            configuration.metrics = PosternConfiguration.Listener(host: "127.0.0.1", port: 0)
            configuration.upstreams = [UpstreamConfiguration(target: .smtp(host: "127.0.0.1", port: closed))]
        }
        let statusPort = try XCTUnwrap(fixture.statusPort)
        XCTAssertEqual(try httpGet(statusPort, "/healthz").status, 200)
        XCTAssertEqual(try httpGet(statusPort, "/readyz").status, 200, "not yet known to be down")
        let client = try connect(fixture)
        XCTAssertEqual(client.command("MAIL FROM:<a@example.org>")?.code, 451)
        let ready = try httpGet(statusPort, "/readyz")
        XCTAssertEqual(ready.status, 503)
        XCTAssertTrue(ready.body.contains("every upstream is marked down"), ready.body)
        XCTAssertEqual(try httpGet(statusPort, "/nothing").status, 404)
        let (_, metrics) = try httpGet(statusPort, "/metrics")
        XCTAssertTrue(metrics.contains("postern_upstream_up{upstream=\"127.0.0.1:\(closed)\"} 0.0"), metrics)
    }

    // MARK: Helpers

    /// MAIL FROM:<a@example.org>, RCPT TO:<b@example.org>, DATA (each asserted), then `content`
    /// ending in the final dot: the code of the final reply.
    private func deliver(_ client: RawSMTPClient, _ content: String, file: StaticString = #filePath, line: UInt = #line) -> Int? {
        XCTAssertEqual(client.command("MAIL FROM:<a@example.org>")?.code, 250, file: file, line: line)
        XCTAssertEqual(client.command("RCPT TO:<b@example.org>")?.code, 250, file: file, line: line)
        XCTAssertEqual(client.command("DATA")?.code, 354, file: file, line: line)
        return client.command(content)?.code
    }

    private func proxyListener() -> PosternConfiguration.Listener {
        var listener = PosternConfiguration.Listener(host: "127.0.0.1", port: 0)
        listener.proxyProtocol = true
        return listener
    }

    private func deliverOne(_ client: RawSMTPClient) throws {
        XCTAssertEqual(client.readReply()?.code, 220)
        XCTAssertEqual(client.command("EHLO client.example")?.code, 250)
        XCTAssertEqual(deliver(client, "Subject: t\r\n\r\nbody\r\n."), 250)
    }

    /// A loopback port with nothing listening.
    private func closedPort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
