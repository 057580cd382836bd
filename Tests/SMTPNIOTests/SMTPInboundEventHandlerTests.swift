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
        channel = EmbeddedChannel(handlers: [SMTPInboundEventHandler(), recorder])
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

    /// Sets the session's deadline `amount` from the loop's now.
    private func deadline(in amount: TimeAmount) {
        let done = FutureOutcome(channel.pipeline.triggerUserOutboundEvent(SMTPSessionDeadline(channel.embeddedEventLoop.now + amount)))
        XCTAssertNotNil(done.value, "the handler completes the event itself")
    }

    func testNoDeadlineNoTimeout() {
        channel.embeddedEventLoop.advanceTime(by: .hours(2))
        XCTAssertEqual(recorder.log, [])
    }

    func testTimeoutFiresAtTheDeadlineAndNotBefore() {
        deadline(in: .seconds(30))
        channel.embeddedEventLoop.advanceTime(by: .seconds(30) - .nanoseconds(1))
        XCTAssertEqual(recorder.log, [])
        channel.embeddedEventLoop.advanceTime(by: .nanoseconds(1))
        XCTAssertEqual(recorder.log, ["timedOut", "readComplete"])
    }

    func testTimeoutFiresOnceUntilANewDeadlineIsSet() {
        deadline(in: .seconds(30))
        channel.embeddedEventLoop.advanceTime(by: .minutes(5))
        XCTAssertEqual(recorder.timeouts, 1)
        deadline(in: .seconds(1))
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(recorder.timeouts, 2)
    }

    func testReadsDoNotMoveTheDeadline() {
        // The session machine decides what a read means for its deadline.
        deadline(in: .seconds(30))
        channel.embeddedEventLoop.advanceTime(by: .seconds(20))
        read(".")
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        XCTAssertEqual(recorder.timeouts, 1)
    }

    func testMovingTheDeadlineLaterDefersTheTimeout() {
        deadline(in: .seconds(30))
        for _ in 0..<5 {
            channel.embeddedEventLoop.advanceTime(by: .seconds(20))
            deadline(in: .seconds(30))
        }
        XCTAssertEqual(recorder.timeouts, 0, "100 s passed, but the deadline was always 30 s ahead")
        channel.embeddedEventLoop.advanceTime(by: .seconds(29))
        XCTAssertEqual(recorder.timeouts, 0)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(recorder.timeouts, 1)
    }

    func testMovingTheDeadlineEarlierBringsTheTimeoutForward() {
        deadline(in: .minutes(10))
        deadline(in: .seconds(5))
        channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        XCTAssertEqual(recorder.timeouts, 0)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        XCTAssertEqual(recorder.timeouts, 1)
    }

    func testNoDeadlineCancelsAPendingOne() {
        deadline(in: .seconds(5))
        channel.pipeline.triggerUserOutboundEvent(SMTPSessionDeadline(.distantFuture), promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .minutes(5))
        XCTAssertEqual(recorder.timeouts, 0)
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
        deadline(in: .seconds(30))
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        channel.pipeline.fireChannelInactive()
        channel.embeddedEventLoop.advanceTime(by: .minutes(5))
        XCTAssertEqual(recorder.timeouts, 0)
    }

    func testClosingTheChannelCancelsTheTimer() throws {
        deadline(in: .seconds(30))
        try channel.close().wait()
        channel.embeddedEventLoop.advanceTime(by: .minutes(5))
        XCTAssertEqual(recorder.log, [])
    }

    func testRemovingTheHandlerCancelsTheTimer() throws {
        let handler = SMTPInboundEventHandler()
        let recorder = InboundRecorder()
        let channel = EmbeddedChannel(handlers: [handler, recorder])
        activate(channel)
        channel.pipeline.triggerUserOutboundEvent(SMTPSessionDeadline(channel.embeddedEventLoop.now + .seconds(3)), promise: nil)
        try channel.pipeline.syncOperations.removeHandler(handler).wait()
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        XCTAssertEqual(recorder.log, [])
        _ = try? channel.finish()
    }
}
