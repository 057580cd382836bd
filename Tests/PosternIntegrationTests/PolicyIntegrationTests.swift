import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The policy language end to end: the real `postern serve` with a policy file, a
/// `proxy_protocol` listener (so clients present documentation addresses instead of
/// 127.0.0.1), a decision log, and the recording sink as the upstream.
final class PolicyIntegrationTests: IntegrationTestCase, @unchecked Sendable {
    // MARK: - Setup

    /// One running Postern with its policy, decision log, quarantine and recording sink.
    struct PolicyServer {
        var postern: PosternServer
        var sink: RecordingSink
        var policyURL: URL
        var decisionLog: URL
        var quarantine: URL
        /// The PROXY-protocol listener (clients present the address they choose).
        var proxyPort: Int { postern.port }
        /// A plain listener, when one was asked for (smtp-source cannot send PROXY headers).
        var plainPort: Int?
    }

    /// Writes `policy` to `<work>/policy.yaml` and starts Postern relaying to a recording
    /// sink, listening with `proxy_protocol: true` (and on a plain port when `plainListener`).
    private func startPolicyServer(policy: String, plainListener: Bool = false, extra: String = "")
        throws -> PolicyServer {
        let sink = try startRecordingSink()
        let policyURL = workDir.appendingPathComponent("policy.yaml")
        try policy.write(to: policyURL, atomically: true, encoding: .utf8)
        let decisionLog = workDir.appendingPathComponent("decisions.log")
        let quarantine = workDir.appendingPathComponent("quarantine")
        let proxyPort = try Net.freePort()
        var plainPort: Int?
        var yaml = "hostname: postern.test\nlisten:\n  - address: 127.0.0.1:\(proxyPort)\n    proxy_protocol: true\n"
        if plainListener {
            var port = try Net.freePort()
            while port == proxyPort { port = try Net.freePort() }
            plainPort = port
            yaml += "  - address: 127.0.0.1:\(port)\n"
        }
        yaml += """
        upstreams:
          - url: "smtp://127.0.0.1:\(sink.port)"
        policy: \(policyURL.path)
        decision_log: \(decisionLog.path)
        quarantine: \(quarantine.path)
        log_level: debug
        # The PROXY clients are documentation addresses, not trusted: mail for these only.
        relay_domains: [example.test, client.test]

        """
        yaml += extra
        let configURL = try writeConfig(yaml, name: "postern.yaml")
        let postern = try startPostern(arguments: ["serve", "--config", configURL.path], port: proxyPort,
                                       configURL: configURL)
        if let plainPort { try postern.process.waitForPort(plainPort, timeout: 10) }
        return PolicyServer(postern: postern, sink: sink, policyURL: policyURL, decisionLog: decisionLog,
                            quarantine: quarantine, plainPort: plainPort)
    }

    /// swaks through the PROXY listener, claiming to be `client` (PROXY v1, TCP4).
    private func swaks(_ server: PolicyServer, from client: String, _ arguments: [String]) throws -> CommandResult {
        try runSwaks(port: server.proxyPort, [
            "--proxy-version", "1", "--proxy-family", "TCP4",
            "--proxy-source", client, "--proxy-source-port", "40000",
            "--proxy-dest", "127.0.0.1", "--proxy-dest-port", "25",
        ] + arguments)
    }

    /// A raw client that has sent a PROXY v1 header for `client` (the greeting is not read yet).
    private func rawClient(_ server: PolicyServer, from client: String, port: Int = 40001) throws -> RawSMTPClient {
        let raw = try RawSMTPClient(port: server.proxyPort)
        try raw.send("PROXY TCP4 \(client) 127.0.0.1 \(port) 25\r\n")
        return raw
    }

    // MARK: - Decision log

    private func records(_ url: URL) -> [[String: Any]] {
        guard let data = try? Data(contentsOf: url) else { return [] }
        return data.split(separator: 0x0A).compactMap {
            try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any]
        }
    }

    /// Waits for the decision record matching `predicate` (records are written by a thread of
    /// their own, a moment after the reply).
    private func waitForRecord(_ url: URL, timeout: Double = 10,
                               file: StaticString = #filePath, line: UInt = #line,
                               where predicate: ([String: Any]) -> Bool) -> [String: Any]? {
        var found: [String: Any]?
        waitUntil(timeout: timeout) {
            found = records(url).first(where: predicate)
            return found != nil
        }
        if found == nil {
            XCTFail("no matching decision record in:\n\(records(url).map { "\($0)" }.joined(separator: "\n"))",
                    file: file, line: line)
        }
        return found
    }

    private func client(_ record: [String: Any]) -> [String: Any] { record["client"] as? [String: Any] ?? [:] }
    private func reply(_ record: [String: Any]) -> [String: Any] { record["reply"] as? [String: Any] ?? [:] }
    private func shadow(_ record: [String: Any]) -> [[String: String]] {
        (record["shadow"] as? [[String: Any]] ?? []).map { $0.compactMapValues { $0 as? String } }
    }
    private func rcptReplies(_ record: [String: Any]) -> [String: String] {
        var out: [String: String] = [:]
        for r in record["rcpts"] as? [[String: Any]] ?? [] {
            if let a = r["address"] as? String { out[a] = r["reply"] as? String ?? "" }
        }
        return out
    }

    /// "ABC123" from "550 5.7.1 … (ref ABC123)".
    private func referenceID(in text: String) -> String? {
        guard let r = text.range(of: #"\(ref ([A-Z0-9]+)\)"#, options: .regularExpression) else { return nil }
        return String(text[r].dropFirst(5).dropLast())
    }

    // MARK: - The policy most tests share

    /// 198.51.100.0/24 are partners, 203.0.113.66 is refused at connect, senders at
    /// spam.example are refused at MAIL, busy@example.test is tempfailed, and content rules
    /// discard, quarantine, tag and add headers.
    private let actionsPolicy = #"""
    version: 1
    lists:
      partner_nets:    { items: [198.51.100.0/24] }
      blocked_senders: { items: ["*@spam.example", "@blocked.example"] }
    rules:
      - id: refuse-host
        stage: connect
        if: { client_ip: 203.0.113.66 }
        then: reject
      - id: partners
        stage: connect
        if: { client_ip: { in: partner_nets } }
        then: accept
      - id: helo-shadow
        stage: helo
        if: { helo: { regex: '^shadow\.' } }
        then: reject
        mode: shadow
      - id: blocked-sender
        stage: mail
        if: { sender: { in: blocked_senders } }
        then: reject
        reply: "550 5.7.1 Sender not accepted here (ref {id})"
      - id: sender-shadow
        stage: mail
        if: { sender: { domain: shadow.example } }
        then: reject
        mode: shadow
      - id: busy-recipient
        stage: rcpt
        if: { recipient: busy@example.test }
        then: tempfail
        reply: "451 4.7.1 {recipient} is busy, try later (ref {id})"
      - id: discard-it
        stage: data
        if: { subject: { regex: 'please discard me' } }
        then: discard
      - id: quarantine-it
        stage: data
        if: { subject: { regex: 'please quarantine me' } }
        then: quarantine
      - id: suspect-tag
        stage: data
        if: { header.X-Test-Suspect: { regex: '^yes$' } }
        then: tag_subject
        tag: "[SUSPECT]"
      - id: suspect-header
        stage: data
        if: { header.X-Test-Suspect: { regex: '^yes$' } }
        then: add_header
        header: "X-Postern-Verdict: suspect"

    """#

    // MARK: - 1. Actions

    func testPartnerAcceptedAtConnectAndBlockedSenderRejectedWithReferenceID() throws {
        let server = try startPolicyServer(policy: actionsPolicy)

        // A partner address: `accept` at connect ends policy for the session, so even a
        // blocked sender is relayed.
        let partner = try swaks(server, from: "198.51.100.5", ["--from", "x@spam.example", "--to", "a@example.test",
                                                               "--header", "Subject: from a partner"])
        XCTAssertEqual(partner.status, 0, partner.description)
        let relayed = server.sink.waitForMessages(1)
        XCTAssertEqual(relayed.map(\.mailFrom), ["x@spam.example"])
        if let received = relayed.first?.split.map({ String(decoding: $0.received, as: UTF8.self) }) {
            XCTAssertTrue(received.contains("[198.51.100.5]"), "Received does not name the PROXY address: \(received)")
        }
        if let record = waitForRecord(server.decisionLog, where: { client($0)["ip"] as? String == "198.51.100.5" }) {
            XCTAssertEqual(record["decision"] as? String, "accepted")
            XCTAssertEqual(record["mail_from"] as? String, "x@spam.example")
            XCTAssertNotNil(record["policy_version"] as? String, "policy_version is null with a policy")
        }

        // The same sender from elsewhere: refused at MAIL with the rule's own reply, whose
        // reference is the decision record's id.
        let blocked = try swaks(server, from: "192.0.2.5", ["--from", "x@spam.example", "--to", "a@example.test"])
        XCTAssertNotEqual(blocked.status, 0, blocked.description)
        guard let line = blocked.swaksReplies.first(where: { $0.hasPrefix("550 ") }) else {
            return XCTFail("no 550 reply to MAIL:\n\(blocked.description)")
        }
        XCTAssertTrue(line.hasPrefix("550 5.7.1 Sender not accepted here (ref "), line)
        guard let id = referenceID(in: line) else { return XCTFail("no (ref ID) in \(line)") }
        XCTAssertFalse(line.contains("{id}"), line)
        if let record = waitForRecord(server.decisionLog, where: { $0["id"] as? String == id }) {
            XCTAssertEqual(record["decision"] as? String, "rejected")
            XCTAssertEqual(record["stage"] as? String, "mail")
            XCTAssertEqual(record["rule"] as? String, "blocked-sender")
            XCTAssertEqual(client(record)["ip"] as? String, "192.0.2.5")
            XCTAssertEqual(reply(record)["code"] as? Int, 550)
            XCTAssertEqual(reply(record)["enhanced"] as? String, "5.7.1")
            XCTAssertEqual(reply(record)["text"] as? String, "Sender not accepted here (ref \(id))")
            XCTAssertTrue((record["reason"] as? String ?? "").contains("blocked_senders"), "\(record)")
            XCTAssertTrue(record["upstream"] is NSNull, "a refusal at MAIL reached the upstream: \(record)")
        }

        // A list entry "@domain", and nothing of either refusal reached the sink.
        let domain = try swaks(server, from: "192.0.2.6", ["--from", "Someone@BLOCKED.example", "--to", "a@example.test"])
        XCTAssertTrue(domain.swaksReplies.contains { $0.hasPrefix("550 5.7.1 Sender not accepted here") }, domain.description)
        sleep(seconds: 0.3)
        XCTAssertEqual(server.sink.messageCount, 1)
    }

    func testTempfailOneRecipientWhileAnotherGoesThrough() throws {
        let server = try startPolicyServer(policy: actionsPolicy)
        let result = try swaks(server, from: "192.0.2.7", ["--from", "alice@client.test",
                                                           "--to", "busy@example.test,bob@example.test",
                                                           "--header", "Subject: two recipients"])
        XCTAssertEqual(result.status, 0, result.description)
        let replies = result.swaksReplies
        guard let refused = replies.first(where: { $0.hasPrefix("451 ") }) else {
            return XCTFail("no 451 for busy@example.test:\n\(result.description)")
        }
        XCTAssertTrue(refused.hasPrefix("451 4.7.1 busy@example.test is busy, try later (ref "), refused)
        let messages = server.sink.waitForMessages(1)
        XCTAssertEqual(messages.count, 1)
        XCTAssertEqual(messages.first?.rcpts, ["bob@example.test"], "the tempfailed recipient reached the upstream")
        XCTAssertFalse(server.sink.transcript.contains("busy@example.test"), "the upstream saw RCPT busy@example.test")

        let id = referenceID(in: refused)
        if let record = waitForRecord(server.decisionLog, where: { $0["mail_from"] as? String == "alice@client.test" }) {
            XCTAssertEqual(record["id"] as? String, id, "the {id} in a RCPT reply is the transaction's id")
            XCTAssertEqual(record["decision"] as? String, "accepted")
            XCTAssertEqual(record["stage"] as? String, "data")
            let rcpts = rcptReplies(record)
            XCTAssertEqual(rcpts["busy@example.test"], refused, "\(record)")
            XCTAssertTrue(rcpts["bob@example.test"]?.hasPrefix("250") ?? false, "\(record)")
        }
    }

    func testDiscardAndQuarantine() throws {
        let server = try startPolicyServer(policy: actionsPolicy)

        let discard = try swaks(server, from: "192.0.2.8", ["--from", "d@client.test", "--to", "a@example.test",
                                                            "--header", "Subject: please discard me"])
        XCTAssertEqual(discard.status, 0, "discard answers 250\n\(discard.description)")
        let discardReply = discard.swaksReplies.last(where: { $0.hasPrefix("250 ") }) ?? ""
        let quarantine = try swaks(server, from: "192.0.2.8", ["--from", "q@client.test", "--to", "a@example.test",
                                                               "--header", "Subject: please quarantine me"])
        XCTAssertEqual(quarantine.status, 0, "quarantine answers 250 by default\n\(quarantine.description)")
        // A normal message after both, so that "the sink got nothing" is not a race.
        let normal = try swaks(server, from: "192.0.2.8", ["--from", "n@client.test", "--to", "a@example.test",
                                                           "--header", "Subject: an ordinary message"])
        XCTAssertEqual(normal.status, 0, normal.description)

        let messages = server.sink.waitForMessages(1)
        sleep(seconds: 0.3)
        XCTAssertEqual(server.sink.messages().map(\.mailFrom), ["n@client.test"],
                       "only the ordinary message may reach the upstream")
        XCTAssertFalse(messages.contains { $0.text.contains("please discard me") || $0.text.contains("please quarantine me") })

        if let record = waitForRecord(server.decisionLog, where: { $0["mail_from"] as? String == "d@client.test" }) {
            XCTAssertEqual(record["decision"] as? String, "discarded")
            XCTAssertEqual(record["stage"] as? String, "data")
            XCTAssertEqual(record["rule"] as? String, "discard-it")
            XCTAssertEqual(reply(record)["code"] as? Int, 250)
            XCTAssertTrue(discardReply.contains(record["id"] as? String ?? "?"), "discard reply \(discardReply) vs \(record)")
        }

        // The quarantined message is in the quarantine Maildir, named by rule and id.
        let newDir = server.quarantine.appendingPathComponent("new")
        XCTAssertTrue(waitUntil(timeout: 10) {
            ((try? FileManager.default.contentsOfDirectory(atPath: newDir.path)) ?? []).count == 1
        }, "nothing in \(newDir.path)")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: newDir.path)) ?? []
        XCTAssertEqual(files.count, 1, "quarantine holds \(files)")
        guard let name = files.first else { return }
        let kept = String(decoding: try Data(contentsOf: newDir.appendingPathComponent(name)), as: UTF8.self)
        XCTAssertTrue(kept.contains("Subject: please quarantine me"), kept)
        XCTAssertTrue(kept.hasPrefix("Return-Path: <q@client.test>"), kept)
        XCTAssertTrue(kept.contains("Delivered-To: a@example.test"), kept)
        XCTAssertTrue(kept.contains("[192.0.2.8]"), "the quarantined copy's Received header names the client: \(kept)")
        guard let record = waitForRecord(server.decisionLog, where: { $0["mail_from"] as? String == "q@client.test" }) else { return }
        let id = record["id"] as? String ?? "?"
        XCTAssertTrue(kept.contains("X-Postern-Quarantine: rule=quarantine-it; id=\(id)"), kept)
        // README's decision table lists no "quarantined"; the server records it as its own decision.
        XCTAssertEqual(record["decision"] as? String, "quarantined")
        XCTAssertEqual(record["rule"] as? String, "quarantine-it")
        XCTAssertEqual(reply(record)["code"] as? Int, 250)
    }

    func testAddHeaderAndTagSubjectModifyTheRelayedMessage() throws {
        let server = try startPolicyServer(policy: actionsPolicy)
        let tagged = try swaks(server, from: "192.0.2.9", ["--from", "t@client.test", "--to", "a@example.test",
                                                           "--header", "Subject: quarterly figures",
                                                           "--add-header", "X-Test-Suspect: yes"])
        XCTAssertEqual(tagged.status, 0, tagged.description)

        // No Subject at all: tag_subject adds one.
        let raw = try rawClient(server, from: "192.0.2.9")
        XCTAssertEqual(try raw.readReply().code, 220)
        XCTAssertEqual(try raw.command("EHLO raw.client.test").code, 250)
        XCTAssertEqual(try raw.command("MAIL FROM:<nosubject@client.test>").code, 250)
        XCTAssertEqual(try raw.command("RCPT TO:<a@example.test>").code, 250)
        XCTAssertEqual(try raw.command("DATA").code, 354)
        try raw.send("From: nosubject@client.test\r\nX-Test-Suspect: yes\r\n\r\nno subject here\r\n.\r\n")
        XCTAssertEqual(try raw.readReply().code, 250)
        // And an unsuspicious one stays as it was.
        XCTAssertEqual(try raw.command("MAIL FROM:<plain@client.test>").code, 250)
        XCTAssertEqual(try raw.command("RCPT TO:<a@example.test>").code, 250)
        XCTAssertEqual(try raw.command("DATA").code, 354)
        try raw.send("Subject: nothing to see\r\nX-Test-Suspect: no\r\n\r\nplain\r\n.\r\n")
        XCTAssertEqual(try raw.readReply().code, 250)
        _ = try? raw.command("QUIT")

        let messages = server.sink.waitForMessages(3)
        XCTAssertEqual(messages.count, 3)
        let byFrom = Dictionary(messages.map { ($0.mailFrom ?? "", $0) }, uniquingKeysWith: { a, _ in a })

        if let m = byFrom["t@client.test"], let split = m.split {
            let headers = String(decoding: split.body, as: UTF8.self).components(separatedBy: "\r\n\r\n")[0]
                .components(separatedBy: "\r\n")
            XCTAssertEqual(headers.first, "X-Postern-Verdict: suspect", "added header right after Received: \(headers)")
            XCTAssertTrue(headers.contains("Subject: [SUSPECT] quarterly figures"), "\(headers)")
            XCTAssertFalse(headers.contains("Subject: quarterly figures"), "\(headers)")
            XCTAssertEqual(headers.filter { $0.lowercased().hasPrefix("subject:") }.count, 1, "\(headers)")
        } else {
            XCTFail("tagged message missing or without a Received header: \(messages.map(\.text))")
        }
        if let m = byFrom["nosubject@client.test"] {
            XCTAssertNotNil(m.text.range(of: #"\r\nSubject: \[SUSPECT\]\s*\r\n"#, options: .regularExpression),
                            "no Subject added to a message without one:\n\(m.text)")
            XCTAssertTrue(m.text.contains("X-Postern-Verdict: suspect\r\n"), m.text)
        } else {
            XCTFail("message without Subject not relayed")
        }
        if let m = byFrom["plain@client.test"] {
            XCTAssertTrue(m.text.contains("\r\nSubject: nothing to see\r\n"), m.text)
            XCTAssertFalse(m.text.contains("X-Postern-Verdict"), m.text)
            XCTAssertFalse(m.text.contains("[SUSPECT]"), m.text)
        } else {
            XCTFail("plain message not relayed")
        }
        if let record = waitForRecord(server.decisionLog, where: { $0["mail_from"] as? String == "t@client.test" }) {
            XCTAssertEqual(record["decision"] as? String, "accepted")
        }
    }

    func testShadowRuleIsRecordedAndChangesNothing() throws {
        let server = try startPolicyServer(policy: actionsPolicy)
        let result = try swaks(server, from: "192.0.2.10", ["--from", "carol@shadow.example", "--to", "a@example.test",
                                                            "--header", "Subject: shadowed"])
        XCTAssertEqual(result.status, 0, "a shadow reject refused the message:\n\(result.description)")
        XCTAssertEqual(server.sink.waitForMessages(1).map(\.mailFrom), ["carol@shadow.example"])
        if let record = waitForRecord(server.decisionLog, where: { $0["mail_from"] as? String == "carol@shadow.example" }) {
            XCTAssertEqual(record["decision"] as? String, "accepted")
            XCTAssertTrue(record["rule"] is NSNull, "a shadow rule decided: \(record)")
            XCTAssertEqual(shadow(record), [["rule": "sender-shadow", "action": "reject"]])
            XCTAssertEqual(reply(record)["code"] as? Int, 250)
        }
        XCTAssertTrue(server.postern.log.contains("shadow rule matched"), "no log line for the shadow hit")
    }

    /// HELO rules are evaluated at the first MAIL; a shadow hit there belongs in that
    /// transaction's record.
    func testShadowHeloRuleIsRecordedInTheFirstTransaction() throws {
        let server = try startPolicyServer(policy: actionsPolicy)
        let raw = try rawClient(server, from: "192.0.2.11")
        XCTAssertEqual(try raw.readReply().code, 220)
        XCTAssertEqual(try raw.command("EHLO shadow.client.test").code, 250)
        for from in ["first@client.test", "second@client.test"] {
            XCTAssertEqual(try raw.command("MAIL FROM:<\(from)>").code, 250, "a shadow HELO rule refused MAIL")
            XCTAssertEqual(try raw.command("RCPT TO:<a@example.test>").code, 250)
            XCTAssertEqual(try raw.command("DATA").code, 354)
            try raw.send("Subject: \(from)\r\n\r\nbody\r\n.\r\n")
            XCTAssertEqual(try raw.readReply().code, 250)
        }
        _ = try? raw.command("QUIT")
        XCTAssertEqual(server.sink.waitForMessages(2).count, 2)
        for from in ["first@client.test", "second@client.test"] {
            if let record = waitForRecord(server.decisionLog, where: { $0["mail_from"] as? String == from }) {
                XCTAssertEqual(record["decision"] as? String, "accepted")
                XCTAssertEqual(shadow(record), [["rule": "helo-shadow", "action": "reject"]],
                               "shadow list of the transaction from \(from): \(record)")
            }
        }
    }

    func testConnectStageRejectReplacesTheGreeting() throws {
        let server = try startPolicyServer(policy: actionsPolicy)
        let result = try swaks(server, from: "203.0.113.66", ["--from", "a@client.test", "--to", "a@example.test"])
        XCTAssertNotEqual(result.status, 0, result.description)
        XCTAssertEqual(result.swaksReplies.first.map { String($0.prefix(10)) }, "554 5.7.1 ", result.description)
        XCTAssertFalse(result.swaksReplies.contains { $0.hasPrefix("220") }, "greeted after all:\n\(result.description)")

        // By hand: 554 instead of 220, then only QUIT is served.
        let raw = try rawClient(server, from: "203.0.113.66")
        let greeting = try raw.readReply()
        XCTAssertEqual(greeting.code, 554, greeting.text)
        XCTAssertEqual(greeting.enhancedCode, "5.7.1", greeting.text)
        let id = referenceID(in: greeting.text)
        let ehlo = try raw.command("EHLO refused.client.test", timeout: 5)
        XCTAssertEqual(ehlo.code, 503, "EHLO after a connect refusal: \(ehlo)")
        let mail = try raw.command("MAIL FROM:<a@client.test>", timeout: 5)
        XCTAssertEqual(mail.code, 503, "MAIL after a connect refusal: \(mail)")
        XCTAssertEqual(try raw.command("QUIT", timeout: 5).code, 221)
        XCTAssertTrue(raw.waitForClose(timeout: 5), "connection left open after QUIT")
        raw.close()

        // Another address is greeted normally.
        let other = try rawClient(server, from: "203.0.113.67")
        XCTAssertEqual(try other.readReply().code, 220)
        _ = try? other.command("QUIT")

        XCTAssertEqual(server.sink.messageCount, 0)
        let refusals = { (r: [String: Any]) in
            self.client(r)["ip"] as? String == "203.0.113.66" && r["stage"] as? String == "connect"
        }
        waitUntil(timeout: 10) { records(server.decisionLog).filter(refusals).count >= 2 }
        let connectRecords = records(server.decisionLog).filter(refusals)
        XCTAssertEqual(connectRecords.count, 2, "one record per refused connection: \(connectRecords)")
        if let id, let record = connectRecords.first(where: { $0["id"] as? String == id }) {
            XCTAssertEqual(record["decision"] as? String, "rejected")
            XCTAssertEqual(record["rule"] as? String, "refuse-host")
            XCTAssertEqual(reply(record)["code"] as? Int, 554)
            XCTAssertEqual(client(record)["port"] as? Int, 40001)
            XCTAssertTrue(record["mail_from"] is NSNull, "\(record)")
        } else {
            XCTFail("no connect record with the greeting's ref \(id ?? "nil"): \(connectRecords)")
        }
        XCTAssertFalse(records(server.decisionLog).contains { client($0)["ip"] as? String == "203.0.113.67" },
                       "a connection without a transaction was recorded")
    }

    // MARK: - 2. GeoIP with PROXY addresses

    func testGeoIPCountryOfTheProxyAddress() throws {
        let mmdb = Paths.packageRoot.appendingPathComponent("Tests/PosternNativeTests/Fixtures/postern-country.mmdb")
        guard FileManager.default.fileExists(atPath: mmdb.path) else { throw XCTSkip("no \(mmdb.path)") }
        // make-fixtures.pl: 192.0.2.0/24 → GB (EU), 198.51.100.0/25 → SE, 198.51.100.128/25 → US;
        // 100.64.0.0/10 is not in it.
        let server = try startPolicyServer(policy: """
        version: 1
        geoip: { country: \(mmdb.path) }
        rules:
          - id: no-gb
            stage: connect
            if: { country: [GB] }
            then: reject
          - id: mark-unknown
            stage: data
            if: { country: [unknown] }
            then: add_header
            header: "X-Test-Country: unknown"
          - id: mark-europe
            stage: data
            if: { continent: EU }
            then: add_header
            header: "X-Test-Continent: EU"

        """)

        let gb = try swaks(server, from: "192.0.2.44", ["--from", "uk@client.test", "--to", "a@example.test"])
        XCTAssertNotEqual(gb.status, 0, gb.description)
        XCTAssertTrue(gb.swaksReplies.first?.hasPrefix("554 ") ?? false, "GB client greeted:\n\(gb.description)")
        if let record = waitForRecord(server.decisionLog, where: { client($0)["ip"] as? String == "192.0.2.44" }) {
            XCTAssertEqual(record["stage"] as? String, "connect")
            XCTAssertEqual(record["rule"] as? String, "no-gb")
            XCTAssertEqual(client(record)["country"] as? String, "GB")
            XCTAssertEqual(record["decision"] as? String, "rejected")
            XCTAssertTrue((record["reason"] as? String ?? "").contains("GB"), "reason: \(record["reason"] ?? "nil")")
        }

        let unknown = try swaks(server, from: "100.64.1.2", ["--from", "unknown@client.test", "--to", "a@example.test",
                                                             "--header", "Subject: from nowhere in particular"])
        XCTAssertEqual(unknown.status, 0, "a client of unknown country was refused:\n\(unknown.description)")
        let sweden = try swaks(server, from: "198.51.100.20", ["--from", "se@client.test", "--to", "a@example.test",
                                                               "--header", "Subject: from SE"])
        XCTAssertEqual(sweden.status, 0, "an SE client was refused:\n\(sweden.description)")

        let messages = server.sink.waitForMessages(2)
        XCTAssertEqual(Set(messages.compactMap(\.mailFrom)), ["unknown@client.test", "se@client.test"])
        for m in messages {
            if m.mailFrom == "unknown@client.test" {
                XCTAssertTrue(m.text.contains("X-Test-Country: unknown\r\n"), m.text)
                XCTAssertFalse(m.text.contains("X-Test-Continent"), m.text)
                XCTAssertTrue(m.text.contains("[100.64.1.2]"), m.text)
            } else {
                XCTAssertTrue(m.text.contains("X-Test-Continent: EU\r\n"), m.text)
                XCTAssertFalse(m.text.contains("X-Test-Country"), m.text)
            }
        }
    }

    // MARK: - 3. Rate limit

    func testPerSenderMessageRateLimit() throws {
        let server = try startPolicyServer(policy: """
        version: 1
        limits:
          per_sender: { key: sender, count: messages, rate: 3/1h }
        rules:
          - id: throttle-sender
            stage: rcpt
            if: { limit: per_sender }
            then: tempfail

        """)
        // Three messages pass (the third with two recipients: `messages` counts it once).
        for (i, to) in ["a@example.test", "b@example.test", "c@example.test,d@example.test"].enumerated() {
            let r = try swaks(server, from: "192.0.2.\(20 + i)", ["--from", "bulk@client.test", "--to", to,
                                                                  "--header", "Subject: message \(i + 1)"])
            XCTAssertEqual(r.status, 0, "message \(i + 1) of 3 refused:\n\(r.description)")
        }
        let fourth = try swaks(server, from: "192.0.2.30", ["--from", "bulk@client.test", "--to", "e@example.test",
                                                            "--header", "Subject: message 4"])
        XCTAssertNotEqual(fourth.status, 0, fourth.description)
        let refusal = fourth.swaksReplies.first { $0.hasPrefix("4") } ?? ""
        XCTAssertTrue(refusal.hasPrefix("450 4.7.1 "), "the 4th message's RCPT: \(refusal)\n\(fourth.description)")
        // The key is the sender: another sender is not limited.
        let other = try swaks(server, from: "192.0.2.30", ["--from", "other@client.test", "--to", "e@example.test"])
        XCTAssertEqual(other.status, 0, other.description)

        let messages = server.sink.waitForMessages(4)
        sleep(seconds: 0.3)
        XCTAssertEqual(server.sink.messageCount, 4)
        XCTAssertEqual(messages.filter { $0.mailFrom == "bulk@client.test" }.count, 3)
        XCTAssertFalse(messages.contains { $0.mailFrom == "bulk@client.test" && $0.rcpts.contains("e@example.test") },
                       "the throttled message reached the upstream")
        if let record = waitForRecord(server.decisionLog, where: {
            $0["mail_from"] as? String == "bulk@client.test" && self.rcptReplies($0)["e@example.test"] != nil
        }) {
            XCTAssertTrue(rcptReplies(record)["e@example.test"]?.hasPrefix("450 4.7.1") ?? false, "\(record)")
            XCTAssertNotEqual(record["decision"] as? String, "accepted", "\(record)")
            if let id = referenceID(in: refusal) { XCTAssertEqual(record["id"] as? String, id) }
        }
    }

    // MARK: - 4. Reloading

    private func reloadPolicy(blocking domain: String) -> String {
        """
        version: 1
        lists:
          blocked: { items: ["@\(domain)"] }
        rules:
          - id: blocked-domain
            stage: mail
            if: { sender: { in: blocked } }
            then: reject
            reply: "550 5.7.1 \(domain) is blocked (ref {id})"

        """
    }

    /// MAIL's reply code for `sender` through the plain listener.
    private func mailCode(_ port: Int, sender: String) throws -> Int {
        let raw = try RawSMTPClient.greeted(port: port, ehlo: "check.client.test")
        defer { _ = try? raw.command("QUIT", timeout: 2); raw.close() }
        let reply = try raw.command("MAIL FROM:<\(sender)>")
        return reply.code
    }

    func testReloadUnderLoadThenABrokenPolicyKeepsTheOldOne() throws {
        let source = try requireTool("smtp-source")
        let server = try startPolicyServer(policy: reloadPolicy(blocking: "old-blocked.test"), plainListener: true,
                                           extra: "limits:\n  max_connections_per_ip: 200\n")
        let port = try XCTUnwrap(server.plainPort)
        let pid = server.postern.process.pid

        // The first policy is in force (and the SIGHUP handler installed: we have been served).
        XCTAssertEqual(try mailCode(port, sender: "x@old-blocked.test"), 550)
        XCTAssertEqual(try mailCode(port, sender: "x@new-blocked.test"), 250)

        // 300 messages over 10 parallel sessions while the policy is reloaded 5 times and
        // rewritten once.
        let messages = 300
        let load = try launch("smtp-source", source, [
            "-s", "10", "-m", "\(messages)", "-l", "40000", "-c", "-M", "source.client.test",
            "-f", "load@client.test", "-t", "sink@example.test", "-S", "reload under load",
            "127.0.0.1:\(port)",
        ])
        let loadStart = Date()
        var runningAtEachSignal: [Bool] = []
        sleep(seconds: 0.05)
        for i in 1...5 {
            if i == 3 {
                try reloadPolicy(blocking: "new-blocked.test").write(to: server.policyURL, atomically: true, encoding: .utf8)
            }
            runningAtEachSignal.append(load.isRunning)
            XCTAssertEqual(kill(pid, SIGHUP), 0, "kill(SIGHUP) errno \(errno)")
            sleep(seconds: 0.08)
        }
        let status = load.waitForExit(timeout: 40)
        print("[integration] \(messages) messages with 5 reloads in \(String(format: "%.2f", Date().timeIntervalSince(loadStart)))s")
        XCTAssertEqual(status, 0, "smtp-source failed or timed out:\n\(load.tail())")
        XCTAssertTrue(server.postern.process.isRunning, "postern died under SIGHUP:\n\(server.postern.process.tail())")
        XCTAssertTrue(runningAtEachSignal.allSatisfy { $0 },
                      "the load ended before the reloads (make it longer): running at each SIGHUP \(runningAtEachSignal)")
        XCTAssertTrue(waitUntil(timeout: 15) { server.sink.messageCount >= messages },
                      "the sink counted \(server.sink.messageCount) of \(messages) messages")
        sleep(seconds: 0.3)
        XCTAssertEqual(server.sink.messages().filter { $0.mailFrom == "load@client.test" }.count, messages)
        // Signals that arrive while the previous one is being handled may be coalesced, so
        // 5 SIGHUPs are at least 3 reloads, not necessarily 5.
        let sighupReloads = { server.postern.process.stderr.components(separatedBy: "SIGHUP: reloading ").count - 1 }
        XCTAssertTrue(waitUntil(timeout: 5) { sighupReloads() >= 3 }, "only \(sighupReloads()) SIGHUP reloads logged for 5 signals")
        XCTAssertFalse(server.postern.process.stderr.contains("policy reload failed"))

        // New transactions follow the new policy.
        XCTAssertTrue(waitUntil(timeout: 10, interval: 0.2) {
            (try? mailCode(port, sender: "x@new-blocked.test")) == 550
        }, "the rewritten policy is not in force")
        XCTAssertEqual(try mailCode(port, sender: "x@old-blocked.test"), 250)
        let proxied = try swaks(server, from: "192.0.2.99", ["--from", "y@new-blocked.test", "--to", "a@example.test"])
        XCTAssertTrue(proxied.swaksReplies.contains { $0.hasPrefix("550 5.7.1 new-blocked.test is blocked (ref ") },
                      "the PROXY listener does not follow the new policy:\n\(proxied.description)")

        // Each record names the policy version that decided it: both versions served the load.
        let all = records(server.decisionLog)
        let oldVersion = all.first { $0["mail_from"] as? String == "x@old-blocked.test" }?["policy_version"] as? String
        let newVersion = all.last { $0["mail_from"] as? String == "x@new-blocked.test" }?["policy_version"] as? String
        XCTAssertNotNil(oldVersion)
        XCTAssertNotNil(newVersion)
        XCTAssertNotEqual(oldVersion, newVersion)
        let loadRecords = all.filter { $0["mail_from"] as? String == "load@client.test" }
        XCTAssertEqual(loadRecords.count, messages)
        XCTAssertTrue(loadRecords.allSatisfy { $0["decision"] as? String == "accepted" })
        let loadVersions = Set(loadRecords.compactMap { $0["policy_version"] as? String })
        XCTAssertTrue(loadVersions.isSubset(of: Set([oldVersion, newVersion].compactMap { $0 })), "\(loadVersions)")
        if runningAtEachSignal.allSatisfy({ $0 }) {
            XCTAssertEqual(loadVersions.count, 2, "the load was not served by both policies: \(loadVersions)")
        }

        // A broken policy: SIGHUP keeps the one in force and logs file:line:column.
        let failuresBefore = server.postern.process.stderr.components(separatedBy: "policy reload failed").count - 1
        try """
        version: 1
        rules:
          - id: broken
            stage: mail
            if: { sender: { in: nosuchlist } }
            then: reject

        """.write(to: server.policyURL, atomically: true, encoding: .utf8)
        XCTAssertEqual(kill(pid, SIGHUP), 0)
        XCTAssertTrue(waitUntil(timeout: 10) {
            server.postern.process.stderr.components(separatedBy: "policy reload failed").count - 1 > failuresBefore
        }, "no reload failure logged:\n\(server.postern.process.tail())")
        let stderr = server.postern.process.stderr
        let position = NSRegularExpression.escapedPattern(for: server.policyURL.lastPathComponent) + #":5:\d+: "#
        XCTAssertNotNil(stderr.range(of: position, options: .regularExpression),
                        "the error does not name policy.yaml:5:<column>:\n\(server.postern.process.tail())")
        XCTAssertTrue(stderr.contains("nosuchlist"), "the error does not name the list")
        XCTAssertTrue(server.postern.process.isRunning)
        XCTAssertEqual(try mailCode(port, sender: "x@new-blocked.test"), 550, "the old policy is no longer in force")
        XCTAssertEqual(try mailCode(port, sender: "x@old-blocked.test"), 250)
        let after = try swaks(server, from: "192.0.2.100", ["--from", "still@client.test", "--to", "a@example.test"])
        XCTAssertEqual(after.status, 0, "not serving after a failed reload:\n\(after.description)")
        if let record = waitForRecord(server.decisionLog, where: { $0["mail_from"] as? String == "still@client.test" }) {
            XCTAssertEqual(record["policy_version"] as? String, newVersion)
        }
    }
}
