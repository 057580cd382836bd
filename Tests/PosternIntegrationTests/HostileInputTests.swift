import Foundation
import XCTest

/// Hostile input over raw sockets: NUL bytes, invalid UTF-8, oversized EHLO arguments,
/// floods of pipelined commands, a huge DATA stream. Each gets a precise reply, memory stays
/// bounded, the process survives and other clients are served meanwhile.
final class HostileInputTests: IntegrationTestCase, @unchecked Sendable {
    private func start(_ extra: String = "") throws -> (server: TrustServer, sink: RecordingSink) {
        let sink = try startRecordingSink()
        let server = try startTrustServer(listeners: [try .plain()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
                                          extra: "relay_domains: [local.test]\n" + extra, logLevel: "info")
        return (server, sink)
    }

    /// A complete transaction on a fresh connection; true when the message was accepted.
    private func bystanderDelivers(_ port: Int, subject: String) throws -> Bool {
        let client = try RawSMTPClient.greeted(port: port)
        defer { _ = try? client.command("QUIT"); client.close() }
        guard try client.command("MAIL FROM:<bystander@client.test>").code == 250,
              try client.command("RCPT TO:<user@local.test>").code == 250 else { return false }
        return try client.sendMessage("Subject: \(subject)\r\n\r\nstill served\r\n", timeout: 30).code == 250
    }

    // MARK: - Bytes that do not belong in a command

    func testNULBytesInCommands() throws {
        let (server, sink) = try start()
        let client = try RawSMTPClient.greeted(port: server.port)
        for line in ["NOOP\0", "EHLO nul\0host.test", "MAIL FROM:<a\0b@client.test>", "\0\0\0"] {
            try client.send(Array(line.utf8) + [0x0D, 0x0A])
            let reply = try client.readReply()
            XCTAssertTrue((500..<600).contains(reply.code), "\(line.debugDescription): \(reply)")
            print("[hostile] \(line.debugDescription) -> \(reply.text)")
        }
        // The session is still usable and no NUL reached the upstream.
        XCTAssertEqual(try client.command("MAIL FROM:<clean@client.test>").code, 250)
        let rcpt = Array("RCPT TO:<us\0er@local.test>\r\n".utf8)
        try client.send(rcpt)
        XCTAssertTrue((500..<600).contains(try client.readReply().code))
        XCTAssertEqual(try client.command("RCPT TO:<user@local.test>").code, 250)
        XCTAssertEqual(try client.sendMessage("Subject: after NUL\r\n\r\nx\r\n").code, 250)
        XCTAssertEqual(sink.waitForMessages(1).first?.rcpts, ["user@local.test"])
        XCTAssertFalse(sink.transcript.contains("\0"))
    }

    func testInvalidUTF8InSMTPUTF8Paths() throws {
        let (server, sink) = try start()
        let client = try RawSMTPClient.greeted(port: server.port)
        let badSenders: [[UInt8]] = [
            Array("MAIL FROM:<".utf8) + [0xFF, 0xFE] + Array("@client.test> SMTPUTF8\r\n".utf8),
            Array("MAIL FROM:<a@".utf8) + [0xC3, 0x28] + Array(".test> SMTPUTF8\r\n".utf8),      // bad continuation
            Array("MAIL FROM:<".utf8) + [0xC0, 0xAF] + Array("@client.test> SMTPUTF8\r\n".utf8), // overlong "/"
            Array("MAIL FROM:<".utf8) + [0xED, 0xA0, 0x80] + Array("@client.test> SMTPUTF8\r\n".utf8), // surrogate
        ]
        for bytes in badSenders {
            try client.send(bytes)
            let reply = try client.readReply()
            XCTAssertTrue((500..<600).contains(reply.code), "\(bytes): \(reply)")
            print("[hostile] invalid UTF-8 sender -> \(reply.text)")
        }
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test> SMTPUTF8").code, 250)
        try client.send(Array("RCPT TO:<us".utf8) + [0xC3] + Array("er@local.test>\r\n".utf8))
        let rcpt = try client.readReply()
        XCTAssertTrue((500..<600).contains(rcpt.code), "\(rcpt)")
        print("[hostile] invalid UTF-8 recipient -> \(rcpt.text)")
        // Valid UTF-8 is fine.
        XCTAssertEqual(try client.command("RCPT TO:<jörg@local.test>").code, 250)
        XCTAssertEqual(try client.sendMessage("Subject: utf8\r\n\r\nx\r\n").code, 250)
        XCTAssertEqual(sink.waitForMessages(1).first?.rcpts, ["jörg@local.test"])
        XCTAssertTrue(server.postern.process.isRunning)
    }

    func testOversizedEHLOArguments() throws {
        let (server, _) = try start()
        let client = try RawSMTPClient.greeted(port: server.port)
        // 300 octets: within the line limit, but not a domain (labels ≤ 63, names ≤ 255).
        let label300 = try client.command("EHLO " + String(repeating: "a", count: 300))
        XCTAssertTrue((500..<600).contains(label300.code), label300.text)
        let dotted300 = try client.command("EHLO " + Array(repeating: "abcdefghi", count: 30).joined(separator: "."))
        XCTAssertTrue((500..<600).contains(dotted300.code), dotted300.text)
        print("[hostile] 300-octet EHLO -> \(label300.text) / \(dotted300.text)")
        XCTAssertEqual(try client.command("EHLO fine.client.test").code, 250, "session unusable after a long EHLO")

        // 100 KB: far over the 512-octet line limit; one reply, then the session goes on.
        let huge = "EHLO " + String(repeating: "b", count: 100 * 1024) + "\r\nNOOP\r\n"
        try client.send(huge)
        let replies = client.drainReplies(quiet: 1.5)
        XCTAssertFalse(replies.isEmpty, "no reply to a 100 KB EHLO")
        XCTAssertEqual(replies.first?.code, 500, "\(replies)")
        XCTAssertEqual(replies.first?.enhancedCode, "5.5.2", "\(replies)")
        XCTAssertLessThanOrEqual(replies.count, 2, "one 100 KB line answered many times: \(replies.map(\.text))")
        if replies.count == 2 {
            XCTAssertTrue([250, 421].contains(replies[1].code), "\(replies)")
        }
        XCTAssertTrue(try bystanderDelivers(server.port, subject: "after huge EHLO"))
    }

    // MARK: - Floods

    func testFiveThousandPipelinedCommandsInOneSend() throws {
        let (server, _) = try start()
        for verb in ["NOOP", "RSET"] {
            let client = try RawSMTPClient.greeted(port: server.port)
            let flood = String(repeating: "\(verb)\r\n", count: 5000)
            let writer = client.inBackground { _ = try? $0.send(flood) }
            // Another client is served while the flood is answered.
            let bystander = BackgroundTask { [port = server.port, self] in
                guard try self.bystanderDelivers(port, subject: "during \(verb) flood") else {
                    throw HarnessError.failed("bystander not served during the \(verb) flood")
                }
            }
            var replies: [SMTPReply] = []
            while let reply = try? client.readReply(timeout: 5) {
                replies.append(reply)
            }
            try? writer.wait(timeout: 10)
            try bystander.wait(timeout: 30)
            // The junk limit (100 by default) ends it: 100 answers, then 421, then close.
            XCTAssertEqual(replies.count, 101, "\(verb): \(replies.count) replies, last \(replies.last?.text ?? "")")
            XCTAssertEqual(replies.prefix(100).filter { $0.code == 250 }.count, 100, verb)
            XCTAssertEqual(replies.last?.code, 421, replies.last?.text ?? "")
            XCTAssertEqual(replies.last?.enhancedCode, "4.7.0", replies.last?.text ?? "")
        }
        // Unknown commands: the error limit (10) ends it sooner.
        let errors = try RawSMTPClient.greeted(port: server.port)
        let writer = errors.inBackground { _ = try? $0.send(String(repeating: "XYZZY\r\n", count: 5000)) }
        var codes: [Int] = []
        while let reply = try? errors.readReply(timeout: 5) { codes.append(reply.code) }
        try? writer.wait(timeout: 10)
        XCTAssertEqual(codes.count, 11, "\(codes)")
        XCTAssertEqual(codes.last, 421)
        XCTAssertTrue(server.postern.process.isRunning)
        XCTAssertTrue(try bystanderDelivers(server.port, subject: "after floods"))
    }

    func testTwentyThousandPipelinedRecipientsInOnePacket() throws {
        let (server, sink) = try start()
        let baseline = ProcessMemory.residentKiB(pid: server.pid)
        let client = try RawSMTPClient.greeted(port: server.port)
        var flood = "MAIL FROM:<flood@client.test>\r\n"
        for i in 0..<20_000 { flood += "RCPT TO:<r\(i)@local.test>\r\n" }
        flood += "DATA\r\nSubject: flood\r\n\r\nmany recipients\r\n.\r\nQUIT\r\n"
        let writer = client.inBackground { _ = try? $0.send(flood) }
        // A bystander is served while the flood is answered.
        let bystander = BackgroundTask { [port = server.port] in
            let c = try RawSMTPClient.greeted(port: port)
            guard try c.command("MAIL FROM:<bystander@client.test>").code == 250,
                  try c.command("RCPT TO:<user@local.test>").code == 250,
                  try c.sendMessage("Subject: bystander\r\n\r\nx\r\n", timeout: 30).code == 250
            else { throw HarnessError.failed("bystander not served during the RCPT flood") }
        }
        var replies: [SMTPReply] = []
        var peak = baseline ?? 0
        while let reply = try? client.readReply(timeout: 20) {
            replies.append(reply)
            if replies.count % 1000 == 0 { peak = max(peak, ProcessMemory.residentKiB(pid: server.pid) ?? 0) }
            if reply.code == 221 { break }
        }
        try? writer.wait(timeout: 30)
        try bystander.wait(timeout: 60)
        let codes = Dictionary(grouping: replies.map(\.code), by: { $0 }).mapValues(\.count)
        print("[hostile] 20,000 RCPTs: \(replies.count) replies \(codes), RSS \(baseline ?? -1) → peak \(peak) KiB")
        XCTAssertTrue(server.postern.process.isRunning)
        // Every reply is one of: MAIL/RCPT ok, too many recipients, the DATA outcome, or a cut-off.
        let allowed: Set<Int> = [250, 354, 421, 451, 452, 503, 552, 554, 221]
        XCTAssertTrue(codes.keys.allSatisfy(allowed.contains), "\(codes)")
        let accepted = replies.dropFirst().filter { $0.code == 250 }.count
        XCTAssertLessThanOrEqual(accepted, 1000, "far more recipients accepted than a sane limit: \(codes)")
        if let baseline, peak > 0 {
            XCTAssertLessThan(peak - baseline, 64 * 1024, "RSS grew \((peak - baseline) / 1024) MB during the flood")
        }
        // At most one message, with at most recipients_per_message recipients, reached the upstream (plus the bystander).
        let messages = sink.waitForMessages(1)
        let flooded = messages.filter { $0.mailFrom == "flood@client.test" }
        XCTAssertLessThanOrEqual(flooded.count, 1)
        XCTAssertLessThanOrEqual(flooded.first?.rcpts.count ?? 0, 1000)
        XCTAssertTrue(messages.contains { $0.mailFrom == "bystander@client.test" })
    }

    // MARK: - A huge DATA stream

    /// 1 GiB by default; POSTERN_HOSTILE_DATA_MB overrides it.
    private var streamMegabytes: Int {
        Int(ProcessInfo.processInfo.environment["POSTERN_HOSTILE_DATA_MB"] ?? "") ?? 1024
    }

    func testOneGigabyteDATAStreamIsRefusedWithBoundedMemory() throws {
        let (server, sink) = try start()
        let client = try RawSMTPClient.greeted(port: server.port)
        XCTAssertEqual(try client.command("MAIL FROM:<huge@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<user@local.test>").code, 250)
        XCTAssertEqual(try client.command("DATA").code, 354)
        let baseline = ProcessMemory.residentKiB(pid: server.pid)

        // 1 MiB blocks of 1000-octet lines (within the 1000-octet text line limit).
        let line = Array(repeating: UInt8(ascii: "x"), count: 998) + [0x0D, 0x0A]
        var block: [UInt8] = Array("Subject: huge\r\n\r\n".utf8)
        while block.count + line.count <= 1 << 20 { block += line }
        let blocks = streamMegabytes
        let started = Date()
        let writer = client.inBackground { c in
            for _ in 0..<blocks { try c.send(block) }
            try c.send(".\r\n")
        }
        // Meanwhile: sample the RSS and serve a bystander.
        var peak = baseline ?? 0
        var bystanderServed = false
        var bystanderTried = false
        while true {
            do { try writer.wait(timeout: 0.2); break } catch HarnessError.timeout(_) { } catch { throw error }
            peak = max(peak, ProcessMemory.residentKiB(pid: server.pid) ?? 0)
            if !bystanderTried && Date().timeIntervalSince(started) > 1 {
                bystanderTried = true
                bystanderServed = try bystanderDelivers(server.port, subject: "during the stream")
            }
            if Date().timeIntervalSince(started) > 120 { XCTFail("stream still running after 120 s"); break }
        }
        let final = try client.readReply(timeout: 60)
        let seconds = Date().timeIntervalSince(started)
        peak = max(peak, ProcessMemory.residentKiB(pid: server.pid) ?? 0)
        print("[hostile] \(blocks) MiB DATA in \(String(format: "%.1f", seconds)) s "
              + "(\(String(format: "%.0f", Double(blocks) / seconds)) MiB/s): \(final.text); "
              + "RSS \(baseline ?? -1) → peak \(peak) KiB")
        XCTAssertEqual(final.code, 552, final.text)
        XCTAssertEqual(final.enhancedCode, "5.3.4", final.text)
        XCTAssertTrue(bystanderTried && bystanderServed, "another client was not served during the stream")
        if let baseline {
            XCTAssertLessThan(peak - baseline, 64 * 1024, "RSS grew \((peak - baseline) / 1024) MB during the stream")
        }
        // The session goes on, and nothing of the huge message reached the upstream.
        XCTAssertEqual(try client.command("NOOP").code, 250)
        XCTAssertEqual(try client.command("QUIT").code, 221)
        XCTAssertFalse(sink.messages().contains { $0.mailFrom == "huge@client.test" })
        XCTAssertTrue(sink.messages().contains { $0.mailFrom == "bystander@client.test" })
    }
}
