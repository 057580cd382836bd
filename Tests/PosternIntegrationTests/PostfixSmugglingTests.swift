import Foundation
import XCTest

/// SmugglingTests' payloads again, through Postern to a real Postfix: Postfix delivers
/// exactly the messages Postern accepted, and never a second, smuggled one. The smuggled
/// envelope names a real Postfix mailbox (bob@postfix.test) and a marker, so a split message
/// would be delivered and found.
final class PostfixSmugglingTests: IntegrationTestCase, @unchecked Sendable {
    static let marker = "SMUGGLED-MARKER-7d41"

    static func payload(_ sequence: String) -> String {
        "From: <sender@client.test>\r\nSubject: innocent\r\n\r\nhello" + sequence
            + "MAIL FROM:<ceo@victim.test>\r\nRCPT TO:<bob@postfix.test>\r\nDATA\r\n"
            + "From: <ceo@victim.test>\r\nSubject: \(marker)\r\n\r\nsmuggled body \(marker)\r\n.\r\n"
    }

    private func start(_ extra: String = "") throws -> (postern: PosternServer, postfix: PostfixInstance) {
        let postfix = try startPostfix()
        let postern = try startPostern(PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(postfix.port)"],
                                                     extra: extra))
        return (postern, postfix)
    }

    /// Waits until Postfix has delivered `expected` messages, then a moment more, so that an
    /// extra (smuggled) one would have arrived too.
    private func settle(_ postfix: PostfixInstance, expected: Int) {
        waitUntil(timeout: 20, interval: 0.2) { postfix.allDeliveredMessages().count >= expected }
        sleep(seconds: 1.5)
    }

    private func assertNothingSmuggled(_ postfix: PostfixInstance, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(postfix.deliveredMessages(user: "bob").count, 0, "bob got a message: smuggled", file: file, line: line)
        for (user, data) in postfix.allDeliveredMessages() {
            // The smuggled Subject may be body text (normalise mode), never a message's header.
            let text = String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\r\n", with: "\n")
            let header = text.components(separatedBy: "\n\n").first ?? text
            XCTAssertFalse(header.contains(Self.marker), "\(user) got the smuggled message as a message:\n\(text)",
                           file: file, line: line)
            XCTAssertFalse(header.contains("ceo@victim.test"), "\(user): the smuggled sender in a header:\n\(text)",
                           file: file, line: line)
        }
        XCTAssertFalse(postfix.maillog.contains("from=<ceo@victim.test>"), "Postfix saw the smuggled envelope:\n\(postfix.maillog)",
                       file: file, line: line)
        XCTAssertFalse(postfix.maillog.contains("to=<bob@postfix.test>"), "Postfix delivered to bob:\n\(postfix.maillog)",
                       file: file, line: line)
    }

    func testSmugglingSequencesNeverReachPostfix() throws {
        let (postern, postfix) = try start()
        for (name, sequence) in SmugglingTests.sequences {
            let (client, final) = try SmugglingTests.attempt(port: postern.port, recipient: "alice@postfix.test", content: Self.payload(sequence), name: name)
            XCTAssertEqual(final.code, 550, "\(name): \(final.text)")
            XCTAssertEqual(final.enhancedCode, "5.6.0", "\(name): \(final.text)")
            XCTAssertEqual(client.drainReplies(quiet: 0.5).map(\.text), [], "\(name): extra replies")
            XCTAssertEqual(try? client.command("QUIT").code, 221, name)
        }
        // The whole transaction, smuggling attempt included, in a single write.
        let pipelined = try RawSMTPClient.greeted(port: postern.port)
        try pipelined.send("MAIL FROM:<sender@client.test>\r\nRCPT TO:<alice@postfix.test>\r\nDATA\r\n"
            + Self.payload("\n.\r\n") + "QUIT\r\n")
        var codes: [Int] = []
        while let reply = try? pipelined.readReply(timeout: 20) {
            codes.append(reply.code)
            if reply.code == 221 { break }
        }
        XCTAssertEqual(codes, [250, 250, 354, 550, 221], "pipelined in one segment")

        // A clean message afterwards is delivered: Postfix is reachable and delivering.
        let client = try RawSMTPClient.greeted(port: postern.port)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<alice@postfix.test>").code, 250)
        XCTAssertEqual(try client.sendMessage("Subject: clean\r\n\r\nclean\r\n", timeout: 20).code, 250)
        settle(postfix, expected: 1)
        let delivered = postfix.allDeliveredMessages()
        XCTAssertEqual(delivered.count, 1, "Postfix delivered \(delivered.count) messages; Postern accepted 1\n\(postfix.maillog)")
        XCTAssertEqual(delivered.first?.user, "alice")
        XCTAssertTrue(delivered.first.map { String(decoding: $0.data, as: UTF8.self).contains("Subject: clean") } ?? false)
        assertNothingSmuggled(postfix)
    }

    func testNormaliseModeDeliversExactlyTheAcceptedMessages() throws {
        let (postern, postfix) = try start("bare_line_endings: normalise\n")
        var accepted = 0
        for (name, sequence) in SmugglingTests.sequences {
            let (client, final) = try SmugglingTests.attempt(port: postern.port, recipient: "alice@postfix.test", content: Self.payload(sequence), name: name)
            if final.code == 250 { accepted += 1 }
            XCTAssertEqual(client.drainReplies(quiet: 0.5).map(\.text), [], "\(name): extra replies")
            _ = try? client.command("QUIT")
        }
        settle(postfix, expected: accepted)
        let delivered = postfix.allDeliveredMessages()
        XCTAssertEqual(delivered.count, accepted, "Postern accepted \(accepted), Postfix delivered \(delivered.count)\n\(postfix.maillog)")
        for (user, data) in delivered {
            XCTAssertEqual(user, "alice")
            // The smuggled text stays inside the one message, as content.
            let text = String(decoding: data, as: UTF8.self)
            XCTAssertTrue(text.contains("Subject: innocent"), text)
        }
        assertNothingSmuggled(postfix)
    }
}
