import Foundation
import XCTest

/// Checks the fixtures themselves (no postern involved): if these fail, the other
/// integration tests' failures say nothing about Postern.
final class HarnessSelfTests: IntegrationTestCase, @unchecked Sendable {
    func testRecordingSinkRecordsDotUnstuffedBytesAndEnvelope() throws {
        let sink = try startRecordingSink(["--reject-rcpt", "^bad@=550 5.1.1 No such user"])
        let client = try RawSMTPClient(port: sink.port)
        XCTAssertEqual(try client.readReply().code, 220)
        let ehlo = try client.command("EHLO raw.test")
        XCTAssertEqual(ehlo.code, 250)
        for ext in ["PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN"] {
            XCTAssertTrue(ehlo.lines.contains { $0.dropFirst(4).hasPrefix(ext) }, "EHLO lacks \(ext): \(ehlo)")
        }
        XCTAssertEqual(try client.command("MAIL FROM:<> BODY=8BITMIME").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<bad@x.test>").lines, ["550 5.1.1 No such user"])
        XCTAssertEqual(try client.command("RCPT TO:<good@x.test> NOTIFY=NEVER").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send(Array("Subject: x\r\n\r\n..one\r\n...\r\nbare\nlf\r\n.\r\n".utf8))
        let final = try client.readReply()
        XCTAssertEqual(final.code, 250)
        XCTAssertTrue(final.text.hasPrefix("250 2.0.0 Ok: queued as "), final.text)
        // BDAT, pipelined with its chunks
        try client.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 4\r\n.ab\nBDAT 2 LAST\r\n\r\n")
        XCTAssertEqual((0..<4).map { _ in (try? client.readReply().code) ?? -1 }, [250, 250, 250, 250])
        XCTAssertEqual(try client.command("QUIT").code, 221)

        let messages = sink.waitForMessages(2)
        XCTAssertEqual(messages.count, 2)
        XCTAssertEqual(messages.first?.text, "Subject: x\r\n\r\n.one\r\n..\r\nbare\nlf\r\n")
        XCTAssertEqual(messages.first?.mailFrom, "")
        XCTAssertEqual(messages.first?.rcpts, ["good@x.test"])
        XCTAssertEqual(messages.first?.rcptParams, [["NOTIFY=NEVER"]])
        XCTAssertEqual(messages.first?.via, "DATA")
        XCTAssertEqual(messages.last?.text, ".ab\n\r\n")
        XCTAssertEqual(messages.last?.via, "BDAT")
    }

    func testRecordingSinkWithSwaksAndSmtplib() throws {
        let sink = try startRecordingSink()
        let swaks = try runSwaks(port: sink.port, ["--from", "s@client.test", "--to", "a@x.test,b@x.test",
                                                "--body", "hello\n.dot"])
        XCTAssertEqual(swaks.status, 0, swaks.description)
        let out = workDir.appendingPathComponent("sent")
        let bulk = try runPython(script: "send_bulk.py", ["--port", "\(sink.port)", "--count", "20",
                                                          "--out", out.path, "--smtputf8",
                                                          "--from", "ünï@client.test"])
        XCTAssertEqual(bulk.status, 0, bulk.description)
        let messages = sink.waitForMessages(21)
        XCTAssertEqual(messages.count, 21)
        XCTAssertEqual(messages.first?.rcpts, ["a@x.test", "b@x.test"])
        XCTAssertEqual(messages.dropFirst().first?.mailFrom, "ünï@client.test")
        var exact = 0
        for m in messages.dropFirst() {
            let seq = m.text.components(separatedBy: "X-Test-Seq: ").dropFirst().first?.prefix { $0.isNumber } ?? ""
            let sent = try Data(contentsOf: out.appendingPathComponent("sent-\(seq).eml"))
            if sent == m.data { exact += 1 }
        }
        XCTAssertEqual(exact, 20)
    }

    func testRecordingSinkFailureModes() throws {
        let refusing = try startRecordingSink(["--greeting-code", "421"], name: "refusing")
        let c1 = try RawSMTPClient(port: refusing.port)
        XCTAssertEqual(try c1.readReply().code, 421)
        XCTAssertTrue(c1.waitForClose(timeout: 3))

        let dropping = try startRecordingSink(["--drop-after-rcpt"], name: "dropping")
        let c2 = try RawSMTPClient(port: dropping.port)
        _ = try c2.readReply()
        _ = try c2.command("EHLO x.test")
        XCTAssertEqual(try c2.command("MAIL FROM:<a@b.test>").code, 250)
        XCTAssertEqual(try c2.command("RCPT TO:<c@d.test>").code, 250)
        try c2.send("DATA\r\n")
        XCTAssertTrue(c2.waitForClose(timeout: 3))
        XCTAssertEqual(dropping.messageCount, 0)

        let plain = try startRecordingSink(["--no-chunking", "--no-smtputf8", "--no-dsn", "--no-8bitmime"], name: "plain")
        let c3 = try RawSMTPClient(port: plain.port)
        _ = try c3.readReply()
        let ehlo = try c3.command("EHLO x.test")
        for ext in ["CHUNKING", "SMTPUTF8", "DSN", "8BITMIME"] {
            XCTAssertFalse(ehlo.text.contains(ext), ehlo.text)
        }
        XCTAssertEqual(try c3.command("MAIL FROM:<a@b.test> SMTPUTF8").code, 555)
    }

    func testProcessesAreStoppedBySIGTERM() throws {
        let sink = try startRecordingSink()
        XCTAssertTrue(sink.process.isRunning)
        XCTAssertEqual(sink.process.stop(grace: 5), 0)
        XCTAssertFalse(Net.canConnect(port: sink.port))
    }

    func testSMTPSourceIntoSMTPSink() throws {
        let sink = try startSMTPSink()
        let source = try requireTool("smtp-source")
        let result = try Command.run(source, ["-s", "10", "-m", "200", "-f", "a@client.test", "-t", "b@x.test",
                                              "127.0.0.1:\(sink.port)"], timeout: 60)
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertTrue(waitUntil(timeout: 5) { sink.messageCount == 200 }, "smtp-sink counted \(sink.messageCount)")
    }

    func testSelfSignedCertificateAndSTARTTLSProbe() throws {
        let (cert, key) = try makeSelfSignedCertificate()
        let sink = try startRecordingSink(["--tls-cert", cert.path, "--tls-key", key.path])
        let swaks = try runSwaks(port: sink.port, ["--tls", "--from", "s@client.test", "--to", "a@x.test"])
        XCTAssertEqual(swaks.status, 0, swaks.description)
        XCTAssertTrue(sink.waitForMessages(1).first?.tls ?? false)

        let probe = try runPython(script: "starttls_injection.py", ["--port", "\(sink.port)", "--quiet", "0.5"])
        let json = try JSONSerialization.jsonObject(with: probe.stdoutData) as? [String: Any]
        XCTAssertEqual(json?["handshake"] as? String, "ok", probe.description)
        XCTAssertEqual(json?["injected_noop_answered"] as? Bool, false, probe.description)

        // Negative control: a server that keeps the plaintext must be caught by the probe.
        let bad = try startRecordingSink(["--tls-cert", cert.path, "--tls-key", key.path, "--vulnerable-starttls"],
                                         name: "vulnerable")
        let probe2 = try runPython(script: "starttls_injection.py", ["--port", "\(bad.port)", "--quiet", "0.5"])
        let json2 = try JSONSerialization.jsonObject(with: probe2.stdoutData) as? [String: Any]
        XCTAssertEqual(json2?["injected_noop_answered"] as? Bool, true, probe2.description)
    }

    func testPrivatePostfixDeliversToMaildir() throws {
        let postfix = try startPostfix()
        let swaks = try runSwaks(port: postfix.port, ["--from", "s@client.test", "--to", "alice@postfix.test",
                                                   "--header", "Subject: harness check"])
        XCTAssertEqual(swaks.status, 0, swaks.description)
        let unknown = try runSwaks(port: postfix.port, ["--from", "s@client.test", "--to", "nobody@postfix.test"])
        XCTAssertTrue(unknown.swaksReplies.contains { $0.hasPrefix("550 5.1.1") }, unknown.description)
        XCTAssertTrue(waitUntil(timeout: 15) { postfix.deliveredMessages(user: "alice").count == 1 },
                      "not delivered; maillog:\n\(postfix.maillog)")
        XCTAssertTrue(String(decoding: postfix.deliveredMessages(user: "alice").first ?? Data(), as: UTF8.self)
            .contains("Subject: harness check"))
        XCTAssertTrue(postfix.maillog.contains("status=sent (delivered to maildir)"), postfix.maillog)
    }

    func testReceivedHeaderSplitting() {
        let msg = Array("Received: from a (b [127.0.0.1])\r\n\tby c with ESMTP id X;\r\n\tMon, 1 Jan 2024\r\nSubject: s\r\n\r\nbody\r\n".utf8)
        let split = splitReceivedHeader(msg)
        XCTAssertEqual(split.map { String(decoding: $0.body, as: UTF8.self) }, "Subject: s\r\n\r\nbody\r\n")
        XCTAssertNil(splitReceivedHeader(Array("Subject: s\r\n\r\n".utf8)))
    }
}
