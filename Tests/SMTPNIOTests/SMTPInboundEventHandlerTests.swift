import NIOCore
import NIOEmbedded
import NIOTLS
import SMTPNIO
import XCTest

/// Records what `SMTPInboundEventHandler` passes on, read-completes included, in order.
private final class InboundRecorder: ChannelInboundHandler {
    typealias InboundIn = SMTPInboundEvent

    var log: [String] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .bytes(let bytes): log.append("bytes(\(bytes.text))")
        case .tlsEstablished: log.append("tlsEstablished")
        case .timedOut: log.append("timedOut")
        case .drain: log.append("drain")
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        log.append("readComplete")
    }

    var timeouts: Int { log.filter { $0 == "timedOut" }.count }
}

final class SMTPInboundEventHandlerTests: XCTestCase {
    private var channel: EmbeddedChannel!
    private var recorder: InboundRecorder!

    override func setUp() {
        recorder = InboundRecorder()
        channel = EmbeddedChannel(handlers: [SMTPInboundEventHandler(readTimeout: .seconds(30)), recorder])
        activate(channel)
    }

    override func tearDown() {
        _ = try? channel.finish()
        channel = nil
        recorder = nil
    }

    /// A socket read without the read-complete that `writeInbound` adds.
    private func read(_ text: String) {
        channel.pipeline.fireChannelRead(ByteBuffer(string: text))
    }

    func testBytesBecomeBytesEventsWithoutAnExtraReadComplete() {
        read("EHLO a\r\n")
        read("MAIL")
        XCTAssertEqual(recorder.log, ["bytes(EHLO a\r\n)", "bytes(MAIL)"])
    }

    func testReadCompleteFromTheSocketIsPassedOnOnce() {
        read("x")
        channel.pipeline.fireChannelReadComplete()
        XCTAssertEqual(recorder.log, ["bytes(x)", "readComplete"])
    }

    func testTimeoutFiresAfterTheConfiguredTimeAndNotBefore() {
        channel.embeddedEventLoop.advanceTime(by: .seconds(30) - .nanoseconds(1))
        XCTAssertEqual(recorder.log, [])
        channel.embeddedEventLoop.advanceTime(by: .nanoseconds(1))
        XCTAssertEqual(recorder.log, ["timedOut", "readComplete"])
    }

    func testTimeoutFiresOnce() {
        channel.embeddedEventLoop.advanceTime(by: .minutes(5))
        XCTAssertEqual(recorder.timeouts, 1)
    }

    func testEveryReadRestartsTheTimeout() throws {
        for _ in 0..<5 {
            channel.embeddedEventLoop.advanceTime(by: .seconds(20))
            read(".")
        }
        XCTAssertEqual(recorder.timeouts, 0, "100 s passed, but never 30 s without a read")
        channel.embeddedEventLoop.advanceTime(by: .seconds(29))
        XCTAssertEqual(recorder.timeouts, 0)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(recorder.timeouts, 1)
    }

    func testReadTimeoutEventShortensTheTimeout() throws {
        let done = FutureOutcome(channel.pipeline.triggerUserOutboundEvent(SMTPReadTimeout(.seconds(5))))
        XCTAssertNotNil(done.value, "the handler completes the event itself")
        channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        XCTAssertEqual(recorder.timeouts, 0)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(recorder.timeouts, 1)
    }

    func testReadTimeoutEventLengthensTheTimeoutAndAppliesToLaterReads() throws {
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        channel.pipeline.triggerUserOutboundEvent(SMTPReadTimeout(.minutes(10)), promise: nil)
        // Counted from the change, not from the last read.
        channel.embeddedEventLoop.advanceTime(by: .minutes(10) - .seconds(1))
        XCTAssertEqual(recorder.timeouts, 0)
        read("DATA\r\n")
        channel.embeddedEventLoop.advanceTime(by: .minutes(10) - .seconds(1))
        XCTAssertEqual(recorder.timeouts, 0, "the new timeout stays in force after a read")
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(recorder.timeouts, 1)
    }

    func testDrainRequestBecomesDrainFollowedByReadComplete() {
        channel.pipeline.fireUserInboundEventTriggered(SMTPDrainRequest())
        XCTAssertEqual(recorder.log, ["drain", "readComplete"])
    }

    func testTLSHandshakeCompletedBecomesTLSEstablishedFollowedByReadComplete() {
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
        XCTAssertEqual(recorder.log, ["tlsEstablished", "readComplete"])
    }

    func testEventsStayOrderedWithBytes() throws {
        read("STARTTLS\r\n")
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "smtp"))
        read("EHLO b\r\n")
        XCTAssertEqual(recorder.log, ["bytes(STARTTLS\r\n)", "tlsEstablished", "readComplete", "bytes(EHLO b\r\n)"])
    }

    func testOtherUserEventsAreNotTranslated() {
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.shutdownCompleted)
        channel.pipeline.fireUserInboundEventTriggered("something else")
        XCTAssertEqual(recorder.log, [])
    }

    func testInactiveChannelCancelsTheTimer() {
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        channel.pipeline.fireChannelInactive()
        channel.embeddedEventLoop.advanceTime(by: .minutes(5))
        XCTAssertEqual(recorder.timeouts, 0)
    }

    func testClosingTheChannelCancelsTheTimer() throws {
        try channel.close().wait()
        channel.embeddedEventLoop.advanceTime(by: .minutes(5))
        XCTAssertEqual(recorder.log, [])
    }

    func testTimerStartsWhenAddedToAnActiveChannel() throws {
        let recorder = InboundRecorder()
        let channel = EmbeddedChannel()
        activate(channel)
        try channel.pipeline.syncOperations.addHandlers([SMTPInboundEventHandler(readTimeout: .seconds(3)), recorder])
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        XCTAssertEqual(recorder.log, ["timedOut", "readComplete"])
        _ = try? channel.finish()
    }

    func testNoTimerBeforeTheChannelIsActive() throws {
        let recorder = InboundRecorder()
        let channel = EmbeddedChannel(handlers: [SMTPInboundEventHandler(readTimeout: .seconds(3)), recorder])
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        XCTAssertEqual(recorder.log, [])
        activate(channel)
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        XCTAssertEqual(recorder.log, ["timedOut", "readComplete"])
        _ = try? channel.finish()
    }

    func testRemovingTheHandlerCancelsTheTimer() throws {
        let handler = SMTPInboundEventHandler(readTimeout: .seconds(3))
        let recorder = InboundRecorder()
        let channel = EmbeddedChannel(handlers: [handler, recorder])
        activate(channel)
        try channel.pipeline.syncOperations.removeHandler(handler).wait()
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        XCTAssertEqual(recorder.log, [])
        _ = try? channel.finish()
    }
}
