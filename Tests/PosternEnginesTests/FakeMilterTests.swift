import Foundation
import NIOCore
import NIOPosix
import PosternEngines
import SMTPCore
import XCTest

/// The fake milter itself, driven with raw packets from `MilterEncoder` and answers decoded with
/// `MilterFramer`/`MilterResponse`: so that client tests can trust what it does.
final class FakeMilterTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    private func milter(_ configure: (inout FakeMilter.Script) -> Void = { _ in }) async throws -> FakeMilter {
        var script = FakeMilter.Script()
        configure(&script)
        return try await FakeMilter(group: group, script: script)
    }

    private func connect(_ milter: FakeMilter) async throws -> RawMilterClient {
        try await RawMilterClient(group: group, port: milter.port)
    }

    /// OPTNEG with Postfix's offer, then the negotiation answer.
    private func negotiate(_ client: RawMilterClient, actions: Milter.Actions = .all, flags: Milter.ProtocolFlags = .all) async throws -> Milter.Negotiation {
        client.send(MilterEncoder.optionNegotiation(actions: actions, flags: flags))
        guard case .negotiation(let negotiation)? = try await client.response() else {
            throw MilterProtocolError("no negotiation answer")
        }
        return negotiation
    }

    /// CONNECT … EOH, as Postfix sends them (with their macros), each answered when `answered`.
    private func envelope(_ client: RawMilterClient, recipients: [String] = ["<b@example.org>"], headers: [(String, String)] = [("Subject", " hello")],
                          answered: Bool = true) async throws -> [MilterResponse] {
        var packets: [ByteBuffer] = [
            MilterEncoder.macros(for: .connect, [("j", "mx.example"), ("{daemon_name}", "mx.example")]),
            MilterEncoder.connect(hostname: "[192.0.2.1]", family: .inet, port: 2525, address: "192.0.2.1"),
            MilterEncoder.helo("client.example"),
            MilterEncoder.macros(for: .mail, [("{mail_addr}", "a@example.com")]),
            MilterEncoder.envelope(.mail, path: "<a@example.com>", parameters: ["SIZE=100"]),
        ]
        for recipient in recipients { packets.append(MilterEncoder.envelope(.recipient, path: recipient, parameters: [])) }
        packets.append(MilterEncoder.macros(for: .data, [("i", "QUEUE1")]))
        packets.append(MilterEncoder.packet(.data))
        for (name, value) in headers { packets.append(MilterEncoder.header(name: name, value: value, leadingSpace: false)) }
        packets.append(MilterEncoder.packet(.endOfHeaders))
        var responses: [MilterResponse] = []
        for packet in packets {
            client.send(packet)
            guard answered, packet.getInteger(at: 4, as: UInt8.self) != Milter.Command.macro.rawValue else { continue }
            // Progress packets come before the answer.
            while let response = try await client.response() {
                responses.append(response)
                if response != .progress { break }
            }
        }
        return responses
    }

    private func isFinal(_ response: MilterResponse) -> Bool {
        if case .quarantine = response { return false }
        return !response.isModification && response != .progress
    }

    /// BODY chunks and EOM, then every answer up to the final one.
    private func finish(_ client: RawMilterClient, body: String = "hello\r\n", bodyAnswered: Bool = true) async throws -> [MilterResponse] {
        for packet in MilterEncoder.body(ByteBuffer(string: body)) {
            client.send(packet)
            if bodyAnswered { _ = try await client.response() }
        }
        client.send(MilterEncoder.packet(.endOfMessage))
        var responses: [MilterResponse] = []
        while let response = try await client.response() {
            responses.append(response)
            if isFinal(response) { break }
        }
        return responses
    }

    // MARK: Negotiation

    func testNegotiationEchoesTheOfferLikeLibmilter() async throws {
        let milter = try await milter()
        let client = try await connect(milter)
        let full = try await negotiate(client)
        XCTAssertEqual(full, Milter.Negotiation(version: 6, actions: .all, flags: .skip))
        client.close()
        // A smaller offer gets a smaller answer: never more than offered.
        let second = try await connect(milter)
        let small = try await negotiate(second, actions: [.addHeaders, .quarantine], flags: [.noConnect])
        XCTAssertEqual(small, Milter.Negotiation(version: 6, actions: [.addHeaders, .quarantine], flags: []))
        second.close()
        XCTAssertEqual(milter.received[0].first?.fields, ["6", "511", "2097151"])
        await milter.stop()
    }

    func testRspamdLikeFlagsAreSentAsIsAndOnlyEndOfMessageIsAnswered() async throws {
        let milter = try await milter {
            $0.negotiate.flags = FakeMilter.rspamdFlags
            $0.negotiate.actions = [.addHeaders, .changeBody, .addRecipients, .deleteRecipients, .changeHeaders, .quarantine]
        }
        let client = try await connect(milter)
        // Offered: no "no reply" bit at all. rspamd answers with all of them anyway.
        let negotiation = try await negotiate(client, actions: .all, flags: [.skip])
        XCTAssertEqual(negotiation.flags.rawValue, 0xFF080)
        let early = try await envelope(client, answered: false)
        XCTAssertEqual(early, [])
        // Nothing came back for CONNECT…EOH: the first answer is the one to end of message.
        let last = try await finish(client, bodyAnswered: false)
        XCTAssertEqual(last, [.continue])
        let received = milter.received[0]
        XCTAssertEqual(received.filter { $0.command == .endOfMessage }.map(\.sent), [["c"]])
        XCTAssertTrue(received.filter { $0.command != .optionNegotiation && $0.command != .endOfMessage }.allSatisfy { $0.sent.isEmpty })
        client.close()
        await milter.stop()
    }

    func testMacroListsAndWhatWasReceived() async throws {
        let milter = try await milter { $0.negotiate.macros = [.helo: "{tls_version} {cipher}", .endOfMessage: "i"] }
        let client = try await connect(milter)
        let negotiation = try await negotiate(client)
        XCTAssertEqual(negotiation.macros, [.helo: ["{tls_version}", "{cipher}"], .endOfMessage: ["i"]])
        _ = try await envelope(client, recipients: ["<b@example.org>", "<c@example.org>"], headers: [("Subject", " hi"), ("X-Two", "  two")])
        client.send(MilterEncoder.packet(.abort))
        client.send(MilterEncoder.packet(.quit))
        let ended = await milter.wait { _ in milter.endings.first == .quit }
        XCTAssertTrue(ended)
        let received = milter.received[0]
        XCTAssertEqual(String(received.map(\.letter)), "ODCHDMRRDTLLNAQ")
        let connectMacros = received[1]
        XCTAssertEqual(connectMacros.macroStage, .connect)
        XCTAssertEqual(connectMacros.macro("j"), "mx.example")
        XCTAssertEqual(received[2].fields, ["[192.0.2.1]", "4", "2525", "192.0.2.1"])
        XCTAssertEqual(received[5].fields, ["<a@example.com>", "SIZE=100"])
        // One leading space was dropped by the encoder (no HDR_LEADSPC): the second stays, as sent.
        XCTAssertEqual(received.filter { $0.command == .header }.map(\.fields), [["Subject", "hi"], ["X-Two", " two"]])
        await milter.stop()
    }

    // MARK: End of message

    func testEndOfMessageModificationsComeInOrderBeforeTheFinalReply() async throws {
        let milter = try await milter {
            $0.eomActions = [
                .addHeader("X-Subject-Was", "$header:Subject from $mail to $rcpts, queue $macro:{i}"),
                .insertHeader(1, "X-Inserted", "one"),
                .changeHeader(1, "Subject", ""),
                .replaceBody("0123456789", repeat: 10_000),
                .addRecipient("<new@example.org>"),
                .addRecipientWithParameters("<par@example.org>", "NOTIFY=NEVER"),
                .deleteRecipient("<b@example.org>"),
                .changeFrom("<bounce@example.com>", "RET=HDRS"),
                .addHeaderIfSeen("X-Saw-First", seen: "X-First"),
            ]
            $0.replies[.endOfMessage] = .ifBodyContains("GTUBE", then: .reply("554 5.7.1 spam"), else: .accept)
        }
        let client = try await connect(milter)
        _ = try await negotiate(client)
        _ = try await envelope(client, headers: [("Subject", " hello"), ("X-First", " 1")])
        let responses = try await finish(client, body: "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")
        let expected: [MilterResponse] = [
            .addHeader(name: "X-Subject-Was", value: "hello from <a@example.com> to <b@example.org>, queue QUEUE1"),
            .insertHeader(index: 1, name: "X-Inserted", value: "one"),
            .changeHeader(index: 1, name: "Subject", value: ""),
            .replaceBody(ByteBuffer(string: String(String(repeating: "0123456789", count: 10_000).prefix(65_535)))),
            .replaceBody(ByteBuffer(string: String(String(repeating: "0123456789", count: 10_000).dropFirst(65_535)))),
            .addRecipient("<new@example.org>", parameters: nil),
            .addRecipient("<par@example.org>", parameters: "NOTIFY=NEVER"),
            .deleteRecipient("<b@example.org>"),
            .changeSender("<bounce@example.com>", parameters: "RET=HDRS"),
            .addHeader(name: "X-Saw-First", value: "yes"),
            .reply(SMTPReply(554, EnhancedStatusCode(5, 7, 1), "spam")),
        ]
        XCTAssertEqual(responses, expected)
        XCTAssertEqual(milter.received[0].last?.sent, Array("himbb+2-ehy"))
        // The next message (after ABORT) starts afresh: no X-First seen, no GTUBE.
        client.send(MilterEncoder.packet(.abort))
        _ = try await envelope(client, headers: [("Subject", " again")])
        let second = try await finish(client)
        XCTAssertEqual(second.last, .accept)
        XCTAssertEqual(second.dropLast().last, .addHeader(name: "X-Saw-First", value: "no"))
        client.close()
        await milter.stop()
    }

    func testRepliesConditionsProgressAndQuarantine() async throws {
        let milter = try await milter {
            $0.replies[.recipient] = .ifRecipientEquals("<bad@example.org>", then: .reply("550-5.7.1 first\r\n550 5.7.1 second"))
            $0.replies[.data] = .progressThenContinue(2)
            $0.replies[.endOfHeaders] = .ifHeaderPresent("x-flag", then: .tempfail, else: .continue)
            $0.replies[.endOfMessage] = .quarantine("held")
            $0.progressInterval = 0.05
        }
        let client = try await connect(milter)
        _ = try await negotiate(client)
        var responses = try await envelope(client, recipients: ["<good@example.org>", "<bad@example.org>"], headers: [("X-Flag", " 1")])
        // C H M R R, then DATA's two progress packets and its continue, then the header and EOH.
        XCTAssertEqual(responses.count, 10)
        XCTAssertEqual(responses[3], .continue)
        XCTAssertEqual(responses[4], .reply(SMTPReply(code: 550, enhanced: EnhancedStatusCode(5, 7, 1), lines: ["first", "second"])))
        XCTAssertEqual(Array(responses[5...7]), [.progress, .progress, .continue])
        XCTAssertEqual(responses[9], .tempfail)
        responses = try await finish(client)
        XCTAssertEqual(responses, [.quarantine(reason: "held"), .continue])
        client.close()
        await milter.stop()
    }

    // MARK: Faults

    func testNeverAnswerKeepsReadingButAnswersNothing() async throws {
        let milter = try await milter { $0.neverAnswerAt = .mail }
        let client = try await connect(milter)
        _ = try await negotiate(client)
        client.send(MilterEncoder.connect(hostname: "h", family: .unknown, port: 0, address: ""))
        let connected = try await client.response()
        XCTAssertEqual(connected, .continue)
        client.send(MilterEncoder.envelope(.mail, path: "<a@b>", parameters: []))
        client.send(MilterEncoder.envelope(.recipient, path: "<c@d>", parameters: []))
        let silence = try await client.response(timeout: .milliseconds(400))
        XCTAssertNil(silence)
        XCTAssertEqual(String(milter.received[0].map(\.letter)), "OCMR")
        XCTAssertFalse(client.closed)
        client.close()
        await milter.stop()
    }

    func testCloseAtBodyHangsUpOnTheFirstChunk() async throws {
        let milter = try await milter { $0.closeAt = .body }
        let client = try await connect(milter)
        _ = try await negotiate(client)
        _ = try await envelope(client)
        client.send(MilterEncoder.body(ByteBuffer(string: "x\r\n"))[0])
        let nothing = try await client.response(timeout: .seconds(2))
        XCTAssertNil(nothing)
        XCTAssertTrue(client.closed)
        XCTAssertEqual(milter.endings, [.closedByFake])
        XCTAssertEqual(milter.received[0].last?.command, .body)
        XCTAssertEqual(milter.received[0].last?.closedHere, true)
        await milter.stop()
    }

    func testGarbageKinds() async throws {
        // A whole packet with an unknown code.
        let framed = try await milter { $0.garbageAt = .mail }
        var client = try await connect(framed)
        _ = try await negotiate(client)
        client.send(MilterEncoder.envelope(.mail, path: "<a@b>", parameters: []))
        do {
            _ = try await client.response()
            XCTFail("an unknown response code is an error")
        } catch {
            XCTAssertEqual("\(error)", "an unknown response code 0x1")
        }
        client.close()
        await framed.stop()
        // Text: its first four octets ("HTTP") are an absurd length.
        let text = try await milter { $0.garbageAt = .helo; $0.garbageKind = .text }
        client = try await connect(text)
        _ = try await negotiate(client)
        client.send(MilterEncoder.helo("x"))
        let bytes = await client.waitForBytes(17 + 28)
        XCTAssertEqual(Array(bytes.suffix(28)), Array("HTTP/1.1 400 Bad Request\r\n\r\n".utf8))
        var framer = MilterFramer()
        framer.append(ByteBuffer(bytes: bytes.dropFirst(17)))
        XCTAssertThrowsError(try framer.next())
        client.close()
        await text.stop()
        // Random: 64 octets, whatever they are.
        let random = try await milter { $0.garbageAt = .helo; $0.garbageKind = .random }
        client = try await connect(random)
        _ = try await negotiate(client)
        client.send(MilterEncoder.helo("x"))
        let randomBytes = await client.waitForBytes(17 + 64)
        XCTAssertEqual(randomBytes.count, 17 + 64)
        XCTAssertEqual(random.received[0].last?.sent, ["?"])
        client.close()
        await random.stop()
    }

    func testOversizeHeaderAndOversizePacket() async throws {
        let header = try await milter { $0.oversizeAt = .endOfMessage }
        var client = try await connect(header)
        _ = try await negotiate(client)
        _ = try await envelope(client)
        client.send(MilterEncoder.packet(.endOfMessage))
        let bytes = await client.waitForUnconsumedBytes(5)
        XCTAssertEqual(Array(bytes.prefix(5)), [0x7F, 0xFF, 0xFF, 0xFF, UInt8(ascii: "c")])
        var framer = MilterFramer()
        framer.append(ByteBuffer(bytes: bytes.prefix(5)))
        XCTAssertThrowsError(try framer.next()) { XCTAssertEqual("\($0)", "a packet of 2147483646 data octets (at most 1048576)") }
        client.close()
        await header.stop()

        let packet = try await milter { $0.oversizeAt = .endOfMessage; $0.oversizeKind = .packet }
        client = try await connect(packet)
        _ = try await negotiate(client)
        _ = try await envelope(client)
        client.send(MilterEncoder.packet(.endOfMessage))
        // A real 16 MiB REPLBODY, then the final reply: too big for Postern's framer, fine for Postfix's.
        let big = try await client.response(timeout: .seconds(10))
        guard case .replaceBody(let body)? = big else { return XCTFail("\(String(describing: big))") }
        XCTAssertEqual(body.readableBytes, 16 << 20)
        let final = try await client.response()
        XCTAssertEqual(final, .continue)
        var strict = MilterFramer()
        strict.append(ByteBuffer(bytes: [0x01, 0x00, 0x00, 0x01, UInt8(ascii: "b")]))
        XCTAssertThrowsError(try strict.next())
        client.close()
        await packet.stop()
    }

    func testUnofferedActionsAndTooNewVersion() async throws {
        let milter = try await milter { $0.unofferedActions = true; $0.negotiate.version = 7 }
        let client = try await connect(milter)
        let negotiation = try await negotiate(client, actions: [.addHeaders], flags: .all)
        XCTAssertEqual(negotiation.version, 7)
        XCTAssertEqual(negotiation.actions.rawValue, 0x3FF)
        XCTAssertFalse(Milter.Actions([.addHeaders]).isSuperset(of: negotiation.actions))
        client.close()
        await milter.stop()
    }

    func testSlowDelaysTheReplyAndHoldsBackWhatFollows() async throws {
        let milter = try await milter { $0.slow = [.helo: 0.4] }
        let client = try await connect(milter)
        _ = try await negotiate(client)
        let start = ContinuousClock.now
        client.send(MilterEncoder.helo("x"))
        client.send(MilterEncoder.envelope(.mail, path: "<a@b>", parameters: []))
        let helo = try await client.response()
        let mail = try await client.response()
        XCTAssertEqual([helo, mail], [.continue, .continue])
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(400))
        client.close()
        await milter.stop()
    }

    func testFaultsOnlyOnTheNamedConnectionsAndTooBigFromTheMTA() async throws {
        let milter = try await milter { $0.faultsOn = [2]; $0.closeAt = .helo }
        let first = try await connect(milter)
        _ = try await negotiate(first)
        first.send(MilterEncoder.helo("x"))
        let answered = try await first.response()
        XCTAssertEqual(answered, .continue)
        let second = try await connect(milter)
        _ = try await negotiate(second)
        second.send(MilterEncoder.helo("x"))
        let closed = try await second.response(timeout: .seconds(2))
        XCTAssertNil(closed)
        XCTAssertTrue(second.closed)
        // A packet over 65535 data octets: libmilter's SMFIC_TOOBIG, the connection is closed.
        first.send(MilterEncoder.packet(.body) { $0.writeRepeatingByte(0x78, count: 70_000) })
        let tooBig = try await first.response(timeout: .seconds(2))
        XCTAssertNil(tooBig)
        XCTAssertEqual(milter.received[0].last?.tooBig, true)
        XCTAssertEqual(milter.received[0].last?.size, 70_000)
        XCTAssertEqual(milter.endings, [.closedByFake, .closedByFake])
        await milter.stop()
    }

    func testTheMTAHangingUpIsRecorded() async throws {
        let milter = try await milter()
        let client = try await connect(milter)
        _ = try await negotiate(client)
        client.close()
        let ended = await milter.wait { _ in milter.endings == [.closedByMTA] }
        XCTAssertTrue(ended)
        await milter.stop()
    }
}

/// The MTA side for these tests: sends raw packets, collects every octet that comes back.
final class RawMilterClient: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    private var consumed = 0
    private var _closed = false
    private let channel: Channel

    var closed: Bool { lock.withLock { _closed } }

    init(group: EventLoopGroup, port: Int) async throws {
        let box = Box()
        channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler(box: box)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        box.client = self
    }

    func send(_ packet: ByteBuffer) { channel.writeAndFlush(packet, promise: nil) }
    func close() { channel.close(promise: nil) }

    /// Waits until at least `count` octets have arrived (or 5 s), and returns all of them.
    func waitForBytes(_ count: Int) async -> [UInt8] {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            let snapshot = lock.withLock { bytes }
            if snapshot.count >= count { return snapshot }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return lock.withLock { bytes }
    }

    /// What arrived after the packets `response` has decoded, once at least `count` octets did (or after 5 s).
    func waitForUnconsumedBytes(_ count: Int) async -> [UInt8] {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            let unconsumed = lock.withLock { Array(bytes[consumed...]) }
            if unconsumed.count >= count { return unconsumed }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return lock.withLock { Array(bytes[consumed...]) }
    }

    /// The next whole packet, decoded; nil when none arrives within `timeout` or the connection closed.
    func response(timeout: Duration = .seconds(3)) async throws -> MilterResponse? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (packet, isClosed) = try lock.withLock { () throws -> (MilterPacket?, Bool) in
                let available = bytes.count - consumed
                guard available >= 4 else { return (nil, _closed) }
                let length = bytes[consumed..<consumed + 4].reduce(0) { $0 << 8 | Int($1) }
                // Frame only a whole packet (or a length the framer refuses at once): no copying 16 MiB per poll.
                guard available >= 4 + length || length == 0 || length > 32 << 20 else { return (nil, _closed) }
                var framer = MilterFramer(maximumData: 32 << 20)
                framer.append(ByteBuffer(bytes: bytes[consumed..<min(bytes.count, consumed + 4 + max(length, 1))]))
                guard let packet = try framer.next() else { return (nil, _closed) }
                consumed += 5 + packet.data.readableBytes
                return (packet, _closed)
            }
            if let packet { return try MilterResponse(packet) }
            if isClosed || ContinuousClock.now >= deadline { return nil }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    fileprivate func received(_ buffer: ByteBuffer) { lock.withLock { bytes += buffer.readableBytesView } }
    fileprivate func ended() { lock.withLock { _closed = true } }

    fileprivate final class Box: @unchecked Sendable {
        weak var client: RawMilterClient?
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        private let box: Box
        init(box: Box) { self.box = box }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            box.client?.received(unwrapInboundIn(data))
        }

        func channelInactive(context: ChannelHandlerContext) {
            box.client?.ended()
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
    }
}
