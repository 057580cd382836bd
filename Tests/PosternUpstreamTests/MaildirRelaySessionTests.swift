import Foundation
import NIOCore
@testable import PosternUpstream
import SMTPCore
import XCTest

final class MaildirRelaySessionTests: XCTestCase {
    private var directory: String!
    private var maildir: String { directory + "/Maildir" }

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory()
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func mailbox(_ address: String) -> Mailbox {
        let parts = address.split(separator: "@", maxSplits: 1)
        return Mailbox(localPart: String(parts[0]), domain: String(parts[1]))
    }

    private func spool(_ text: String, threshold: Int = 1 << 20) throws -> MessageSpool {
        try spool(Array(text.utf8), threshold: threshold)
    }

    private func spool(_ bytes: [UInt8], threshold: Int = 1 << 20) throws -> MessageSpool {
        let spool = MessageSpool(memoryThreshold: threshold, directory: directory)
        try spool.append(ByteBuffer(bytes: bytes))
        return spool
    }

    /// The messages in `new`, as text, in name order.
    private func deliveredMessages() throws -> [String] {
        try directoryEntries(maildir + "/new").map { name in
            try String(contentsOfFile: maildir + "/new/" + name, encoding: .utf8)
        }
    }

    func testPrepareCreatesTheMaildirLayout() throws {
        _ = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        XCTAssertEqual(directoryEntries(maildir), ["cur", "new", "tmp"])
    }

    func testMessageLandsInNewWithTheEnvelopeInHeaders() async throws {
        let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        XCTAssertEqual(session.upstreamName, "maildir:\(maildir)")
        XCTAssertTrue(session.isUsable)
        let mail = try await session.mail(.mailbox(mailbox("alice@example.org")), MailParameters())
        XCTAssertEqual(mail.code, 250)
        _ = try await session.recipient(.mailbox(mailbox("bob@example.net")), RecipientParameters())
        let rcpt = try await session.recipient(.mailbox(mailbox("carol@example.com")), RecipientParameters())
        XCTAssertEqual(rcpt.code, 250)
        let reply = try await session.message(OutgoingMessage(
            prefix: ByteBuffer(string: "Received: from client by gw.example\r\n"),
            content: try spool("Subject: hello\r\n\r\nline one\r\nline two\r\n"), chunked: false))
        XCTAssertEqual(reply.code, 250)
        XCTAssertEqual(reply.enhanced, EnhancedStatusCode(2, 0, 0))
        XCTAssertEqual(directoryEntries(maildir + "/tmp"), [])
        XCTAssertEqual(directoryEntries(maildir + "/new").count, 1)
        let name = try XCTUnwrap(directoryEntries(maildir + "/new").first)
        XCTAssertTrue(name.hasSuffix(".gw.example"), name)
        XCTAssertTrue(reply.text.contains(name), reply.text)
        XCTAssertEqual(try deliveredMessages(), [
            "Return-Path: <alice@example.org>\n" + "Delivered-To: bob@example.net\n" + "Delivered-To: carol@example.com\n"
                + "Received: from client by gw.example\n" + "Subject: hello\n\nline one\nline two\n",
        ])
    }

    func testNullSenderAndPostmaster() async throws {
        let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        _ = try await session.mail(.null, MailParameters())
        _ = try await session.recipient(.postmaster, RecipientParameters())
        _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool("Subject: bounce\r\n\r\n"), chunked: false))
        XCTAssertEqual(try deliveredMessages(), ["Return-Path: <>\nDelivered-To: postmaster\nSubject: bounce\n\n"])
    }

    func testCRLFSplitBetweenHeaderAndContentIsConverted() async throws {
        let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        _ = try await session.mail(.null, MailParameters())
        _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(string: "X-Trace: 1\r"), content: try spool("\nSubject: s\r\n\r\nbody\r\n"), chunked: true))
        XCTAssertEqual(try deliveredMessages(), ["Return-Path: <>\nX-Trace: 1\nSubject: s\n\nbody\n"])
    }

    func testCRLFSplitAcrossSpoolChunksIsConverted() async throws {
        // The spool hands content out in 64 KiB chunks; put a CR at the end of the first.
        let chunkSize = 64 * 1024
        var content = Array("Subject: big\r\n\r\n".utf8)
        while content.count < chunkSize - 1 { content.append(UInt8(ascii: "a")) }
        content.append(contentsOf: Array("\r\nsecond line\r\n".utf8))
        XCTAssertEqual(content[chunkSize - 1], UInt8(ascii: "\r"))
        XCTAssertEqual(content[chunkSize], UInt8(ascii: "\n"))
        for threshold in [1 << 20, 1024] {
            try? FileManager.default.removeItem(atPath: maildir)
            let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
            _ = try await session.mail(.null, MailParameters())
            let spool = try spool(content, threshold: threshold)
            XCTAssertEqual(spool.isOnDisk, threshold == 1024)
            _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: spool, chunked: false))
            let expected = "Return-Path: <>\nSubject: big\n\n" + String(repeating: "a", count: chunkSize - 1 - 16) + "\nsecond line\n"
            let delivered = try deliveredMessages()
            XCTAssertEqual(delivered.count, 1)
            XCTAssertTrue(delivered.first == expected, "threshold \(threshold): CRLF across the chunk boundary")
        }
    }

    func testLoneCRAndLFAreKept() async throws {
        let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        _ = try await session.mail(.null, MailParameters())
        _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool("a\rb\nc\r\n\rd\r"), chunked: false))
        XCTAssertEqual(try deliveredMessages(), ["Return-Path: <>\na\rb\nc\n\rd\r"])
    }

    func testEnvelopeIsResetBetweenTransactions() async throws {
        let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        _ = try await session.mail(.mailbox(mailbox("a@example.org")), MailParameters())
        _ = try await session.recipient(.mailbox(mailbox("one@example.net")), RecipientParameters())
        _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool("X: 1\r\n"), chunked: false))
        _ = try await session.mail(.mailbox(mailbox("b@example.org")), MailParameters())
        _ = try await session.recipient(.mailbox(mailbox("two@example.net")), RecipientParameters())
        _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool("X: 2\r\n"), chunked: false))
        XCTAssertEqual(Set(try deliveredMessages()), [
            "Return-Path: <a@example.org>\nDelivered-To: one@example.net\nX: 1\n",
            "Return-Path: <b@example.org>\nDelivered-To: two@example.net\nX: 2\n",
        ])
        XCTAssertEqual(Set(directoryEntries(maildir + "/new")).count, 2, "each message gets its own name")
    }

    func testResetDropsTheEnvelope() async throws {
        let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        _ = try await session.mail(.mailbox(mailbox("a@example.org")), MailParameters())
        _ = try await session.recipient(.mailbox(mailbox("one@example.net")), RecipientParameters())
        await session.reset()
        _ = try await session.recipient(.mailbox(mailbox("two@example.net")), RecipientParameters())
        _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: try spool("X: 1\r\n"), chunked: false))
        XCTAssertEqual(try deliveredMessages(), ["Return-Path: <>\nDelivered-To: two@example.net\nX: 1\n"])
    }

    func testMaildirUnderAFileCannotBePrepared() throws {
        let file = directory + "/file"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        XCTAssertThrowsError(try MaildirRelaySession(path: file + "/Maildir", hostname: "gw.example")) { error in
            XCTAssertEqual((error as? UpstreamError)?.kind, .localError, "\(error)")
        }
    }

    func testMissingTmpFailsWithLocalError() async throws {
        let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        try FileManager.default.removeItem(atPath: maildir + "/tmp")
        _ = try await session.mail(.null, MailParameters())
        let content = try spool("X: 1\r\n")
        do {
            _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: content, chunked: false))
            XCTFail("delivery without a tmp directory succeeded")
        } catch {
            XCTAssertEqual(error.kind, .localError)
        }
        XCTAssertEqual(directoryEntries(maildir + "/new"), [])
    }

    func testUnwritableNewFailsWithLocalErrorAndCleansTmp() async throws {
        let session = try MaildirRelaySession(path: maildir, hostname: "gw.example")
        // A file where `new` should be: the rename into it fails.
        try FileManager.default.removeItem(atPath: maildir + "/new")
        XCTAssertTrue(FileManager.default.createFile(atPath: maildir + "/new", contents: Data()))
        _ = try await session.mail(.null, MailParameters())
        let content = try spool("X: 1\r\n")
        do {
            _ = try await session.message(OutgoingMessage(prefix: ByteBuffer(), content: content, chunked: false))
            XCTFail("delivery into a file named new succeeded")
        } catch {
            XCTAssertEqual(error.kind, .localError)
        }
        XCTAssertEqual(directoryEntries(maildir + "/tmp"), [], "the temporary file is removed")
    }
}
