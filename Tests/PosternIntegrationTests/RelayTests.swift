import Foundation
import XCTest

/// Clients → postern → recording sink: content fidelity, envelopes, per-recipient replies.
final class RelayTests: IntegrationTestCase, @unchecked Sendable {
    /// Checks the contract's trace header shape and returns the client's bytes.
    private func clientBytes(_ message: RecordedMessage, file: StaticString = #filePath, line: UInt = #line) -> [UInt8]? {
        guard let split = message.split else {
            XCTFail("\(message.name) does not start with \"Received: from \": \(message.text.prefix(200))", file: file, line: line)
            return nil
        }
        let lines = String(decoding: split.received, as: UTF8.self).components(separatedBy: "\r\n").dropLast()
        for l in lines.dropFirst() where !l.hasPrefix("\t") {
            XCTFail("Received continuation line does not start with TAB: \(l.debugDescription)", file: file, line: line)
        }
        return split.body
    }

    private func testSeq(_ bytes: [UInt8]) -> Int? {
        let text = String(decoding: bytes.prefix(2000), as: UTF8.self)
        guard let r = text.range(of: "X-Test-Seq: ") else { return nil }
        return Int(text[r.upperBound...].prefix { $0.isNumber })
    }

    func testTwoHundredMessagesArriveByteExactExactlyOnce() throws {
        let (postern, sink) = try startPosternWithSink()
        let sent = try makeDirectory("sent")
        let rcpts = ["first@example.test", "second@example.test", "third@example.org"]

        // 180 messages with smtplib over 6 concurrent connections, three recipients each.
        let bulk = try runPython(script: "send_bulk.py", [
            "--port", "\(postern.port)", "--count", "180", "--first", "1", "--connections", "6",
            "--out", sent.path, "--to", rcpts.joined(separator: ","),
        ], timeout: 120)
        XCTAssertEqual(bulk.status, 0, bulk.description)

        // 20 messages with swaks (it converts LF to CRLF, dot-stuffs, and appends CRLF).
        var rng = SeededRandom(seed: 20240601)
        for seq in 181...200 {
            var lines: [[UInt8]] = [Array("Subject: swaks \(seq)".utf8), Array("X-Test-Seq: \(seq)".utf8), []]
            for _ in 0..<Int.random(in: 5...40, using: &rng) {
                switch Int.random(in: 0..<10, using: &rng) {
                case 0...2: lines.append(Array([".", "..", ".x", "...", ". "].randomElement(using: &rng)!.utf8))
                case 3: lines.append([0x2E] + randomLine(length: Int.random(in: 0...80, using: &rng), excluding: [0x25], using: &rng))
                default: lines.append(randomLine(length: Int.random(in: 0...200, using: &rng), excluding: [0x25], using: &rng))
                }
            }
            let file = sent.appendingPathComponent("swaks-\(seq).txt")
            try Data(Array(lines.joined(separator: [0x0A]))).write(to: file)
            try Data(Array(lines.joined(separator: [0x0D, 0x0A])) + [0x0D, 0x0A])
                .write(to: sent.appendingPathComponent("sent-\(seq).eml"))
            let result = try runSwaks(port: postern.port, ["--from", "swaks@client.test", "--to", rcpts.joined(separator: ","),
                                                           "--data", file.path])
            XCTAssertEqual(result.status, 0, result.description)
        }

        let messages = sink.waitForMessages(200, timeout: 30)
        XCTAssertEqual(messages.count, 200, "sink received \(messages.count) messages")
        var seen: [Int: Int] = [:]
        var mismatches: [String] = []
        for message in messages {
            guard let body = clientBytes(message) else { continue }
            guard let seq = testSeq(body) else {
                mismatches.append("\(message.name): no X-Test-Seq")
                continue
            }
            seen[seq, default: 0] += 1
            let expected = try [UInt8](Data(contentsOf: sent.appendingPathComponent("sent-\(seq).eml")))
            if expected != body {
                let at = zip(expected, body).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(expected.count, body.count)
                mismatches.append("seq \(seq) (\(message.name)): differs at byte \(at); sent \(expected.count) bytes, got \(body.count)")
            }
            XCTAssertEqual(message.rcpts, rcpts, "\(message.name) recipients")
        }
        XCTAssertEqual(mismatches, [])
        XCTAssertEqual(Set(seen.keys), Set(1...200), "missing: \(Set(1...200).subtracting(seen.keys).sorted())")
        XCTAssertEqual(seen.filter { $0.value != 1 }, [:], "delivered more than once")
    }

    func testNullSenderAndSeveralRecipients() throws {
        let (postern, sink) = try startPosternWithSink()
        let code = """
        import smtplib, sys
        s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='py.client.test')
        msg = b'Subject: bounce\\r\\nX-Null: yes\\r\\n\\r\\nDelivery failed.\\r\\n.\\r\\n..\\r\\n'
        refused = s.sendmail('', ['a@example.test', 'b@example.test', 'c@example.org', 'd@example.net'], msg)
        print(refused)
        s.quit()
        """
        let result = try runPython(code: code, ["\(postern.port)"])
        XCTAssertEqual(result.status, 0, result.description)
        let messages = sink.waitForMessages(1)
        XCTAssertEqual(messages.count, 1)
        guard let m = messages.first else { return }
        XCTAssertEqual(m.mailFrom, "")
        XCTAssertEqual(m.rcpts, ["a@example.test", "b@example.test", "c@example.org", "d@example.net"])
        XCTAssertEqual(clientBytes(m).map { String(decoding: $0, as: UTF8.self) },
                       "Subject: bounce\r\nX-Null: yes\r\n\r\nDelivery failed.\r\n.\r\n..\r\n")
    }

    func testSMTPUTF8AddressesWithSmtplib() throws {
        let (postern, sink) = try startPosternWithSink()
        let code = """
        import smtplib, sys
        s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='py.client.test')
        s.ehlo('py.client.test')
        assert s.has_extn('smtputf8'), s.esmtp_features
        msg = 'From: ünïcödé@bücher.test\\r\\nTo: δοκιμή@παράδειγμα.test\\r\\nSubject: 日本語\\r\\n\\r\\nGrüße — .\\r\\n.Ω\\r\\n'.encode('utf-8')
        refused = s.sendmail('ünïcödé@bücher.test', ['δοκιμή@παράδειγμα.test', 'plain@example.test'], msg,
                             mail_options=['SMTPUTF8', 'BODY=8BITMIME'])
        assert not refused, refused
        s.quit()
        """
        let result = try runPython(code: code, ["\(postern.port)"])
        XCTAssertEqual(result.status, 0, result.description)
        let messages = sink.waitForMessages(1)
        XCTAssertEqual(messages.count, 1)
        guard let m = messages.first else { return }
        XCTAssertEqual(m.mailFrom, "ünïcödé@bücher.test")
        XCTAssertEqual(m.rcpts, ["δοκιμή@παράδειγμα.test", "plain@example.test"])
        XCTAssertTrue(m.mailParams.contains { $0.uppercased() == "SMTPUTF8" },
                      "upstream MAIL lacks SMTPUTF8: \(m.mailParams)")
        XCTAssertEqual(clientBytes(m).map { String(decoding: $0, as: UTF8.self) },
                       "From: ünïcödé@bücher.test\r\nTo: δοκιμή@παράδειγμα.test\r\nSubject: 日本語\r\n\r\nGrüße — .\r\n.Ω\r\n")
    }

    func testUpstreamRecipientRepliesReachTheClient() throws {
        let (postern, sink) = try startPosternWithSink(sinkOptions: [
            "--reject-rcpt", "^unknown@=550 5.1.1 <unknown@example.test>: Recipient address rejected",
            "--reject-rcpt", "^busy@=452 4.2.2 Mailbox full, try later",
        ])
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<good1@example.test>").code, 250)
        let unknown = try client.command("RCPT TO:<unknown@example.test>")
        XCTAssertEqual(unknown.code, 550, unknown.text)
        XCTAssertEqual(unknown.enhancedCode, "5.1.1", unknown.text)
        let busy = try client.command("RCPT TO:<busy@example.test>")
        XCTAssertEqual(busy.code, 452, busy.text)
        XCTAssertEqual(try client.command("RCPT TO:<good2@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: partial\r\n\r\nfor the good ones\r\n.\r\n")
        let final = try client.readReply()
        XCTAssertEqual(final.code, 250, final.text)
        XCTAssertEqual(try client.command("QUIT").code, 221)

        // And through swaks: the refused recipient shows the upstream's code.
        let result = try runSwaks(port: postern.port, ["--from", "s@client.test",
                                                       "--to", "good3@example.test,unknown@example.test"])
        XCTAssertTrue(result.swaksReplies.contains { $0.hasPrefix("550 5.1.1") }, result.description)

        let messages = sink.waitForMessages(2)
        XCTAssertEqual(messages.count, 2)
        XCTAssertEqual(messages.first?.rcpts, ["good1@example.test", "good2@example.test"])
        XCTAssertEqual(messages.last?.rcpts, ["good3@example.test"])
    }

    func testUpstreamFinalDataReplyIsRelayed() throws {
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--data-reply", "554 5.7.1 Upstream content rejection"])
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<rcpt@example.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        try client.send("Subject: no\r\n\r\nno\r\n.\r\n")
        let final = try client.readReply()
        XCTAssertEqual(final.code, 554, final.text)
        XCTAssertEqual(final.enhancedCode, "5.7.1", final.text)
        XCTAssertEqual(sink.messageCount, 0)
    }
}

/// The same fidelity checks against an upstream without CHUNKING and PIPELINING (plain DATA).
final class PlainUpstreamRelayTests: IntegrationTestCase, @unchecked Sendable {
    func testByteExactWithoutChunkingOrPipelining() throws {
        let (postern, sink) = try startPosternWithSink(sinkOptions: ["--no-chunking", "--no-pipelining"])
        let sent = try makeDirectory("sent")
        let bulk = try runPython(script: "send_bulk.py", ["--port", "\(postern.port)", "--count", "30",
                                                          "--connections", "3", "--out", sent.path, "--seed", "99"])
        XCTAssertEqual(bulk.status, 0, bulk.description)
        let messages = sink.waitForMessages(30)
        XCTAssertEqual(messages.count, 30)
        var seqs: [Int] = []
        for m in messages {
            XCTAssertEqual(m.via, "DATA")
            guard let body = m.split?.body else {
                XCTFail("\(m.name) lacks the Received header")
                continue
            }
            let text = String(decoding: body.prefix(2000), as: UTF8.self)
            guard let r = text.range(of: "X-Test-Seq: "), let seq = Int(text[r.upperBound...].prefix { $0.isNumber })
            else { XCTFail("no X-Test-Seq in \(m.name)"); continue }
            seqs.append(seq)
            let expected = try [UInt8](Data(contentsOf: sent.appendingPathComponent("sent-\(seq).eml")))
            XCTAssertTrue(expected == body, "seq \(seq) differs (sent \(expected.count) bytes, got \(body.count))")
        }
        XCTAssertEqual(seqs.sorted(), Array(1...30))
    }
}
