import NIOCore
import NIOEmbedded
import SMTPCore
import SMTPNIO
import XCTest

/// Sits between the handler and the socket and keeps closes from reaching it, so the test can
/// see what the handler does with requests that arrive after it failed (a real channel closes
/// asynchronously; requests written in the meantime still reach the handler).
private final class CloseInterceptor: ChannelOutboundHandler {
    typealias OutboundIn = Any

    var closes = 0

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        closes += 1
        promise?.succeed()
    }
}

final class SMTPClientHandlerTests: XCTestCase {
    private var channel: EmbeddedChannel!
    private var interceptor: CloseInterceptor?

    override func setUp() {
        channel = EmbeddedChannel(handler: SMTPClientHandler())
        activate(channel)
    }

    /// Replaces the channel with one whose closes are intercepted.
    private func interceptCloses() {
        _ = try? channel.finish()
        let interceptor = CloseInterceptor()
        self.interceptor = interceptor
        channel = EmbeddedChannel(handlers: [interceptor, SMTPClientHandler()])
        activate(channel)
    }

    override func tearDown() {
        interceptor = nil
        _ = try? channel.finish()
        channel = nil
    }

    /// Writes a request and returns the outcome of its reply promise.
    @discardableResult
    private func send(
        _ text: String?, expecting replies: Int = 1, timeout: TimeAmount = .seconds(60), stage: String = "test"
    ) -> FutureOutcome<[SMTPReply]> {
        let promise = channel.eventLoop.makePromise(of: [SMTPReply].self)
        let request = SMTPClientRequest(
            bytes: text.map { ByteBuffer(string: $0) }, expectedReplies: replies, timeout: timeout, stage: stage, promise: promise)
        channel.writeAndFlush(request, promise: nil)
        return FutureOutcome(promise.futureResult)
    }

    private func receive(_ text: String) throws {
        try channel.writeInbound(ByteBuffer(string: text))
    }

    private func written() throws -> [String] {
        var lines: [String] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { lines.append(buffer.text) }
        return lines
    }

    private func assertFailed(
        _ outcome: FutureOutcome<[SMTPReply]>, with kind: SMTPClientError.Kind, file: StaticString = #filePath, line: UInt = #line
    ) {
        guard let error = outcome.error else {
            return XCTFail("expected a failure, got \(String(describing: outcome.result))", file: file, line: line)
        }
        XCTAssertEqual((error as? SMTPClientError)?.kind, kind, "\(error)", file: file, line: line)
    }

    // MARK: Matching replies to requests

    func testGreetingBeforeAnyRequestGoesToTheFirstRequestExpectingAReply() throws {
        try receive("220 mx.example ESMTP\r\n")
        let greeting = send(nil)
        XCTAssertEqual(greeting.value, [SMTPReply(220, nil, "mx.example ESMTP")])
        XCTAssertEqual(try written(), [])
    }

    func testGreetingWaitsPastARequestExpectingNoReply() throws {
        try receive("220 mx.example\r\n")
        let content = send("content", expecting: 0)
        XCTAssertEqual(content.value, [])
        let ehlo = send("EHLO c\r\n")
        XCTAssertEqual(ehlo.value?.first?.code, 220)
    }

    func testRequestWaitsForItsReply() throws {
        let ehlo = send("EHLO client.example\r\n")
        XCTAssertEqual(try written(), ["EHLO client.example\r\n"])
        XCTAssertFalse(ehlo.isComplete)
        try receive("250 ok\r\n")
        XCTAssertEqual(ehlo.value?.map(\.code), [250])
    }

    func testPipelinedRepliesInOneBufferGoToTheirRequestsInOrder() throws {
        let mail = send("MAIL FROM:<a@example.org>\r\n")
        let rcpt = send("RCPT TO:<b@example.net>\r\n")
        let data = send("DATA\r\n")
        XCTAssertEqual(try written(), ["MAIL FROM:<a@example.org>\r\n", "RCPT TO:<b@example.net>\r\n", "DATA\r\n"])
        try receive("250 2.1.0 sender ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n")
        XCTAssertEqual(mail.value, [SMTPReply(250, EnhancedStatusCode(2, 1, 0), "sender ok")])
        XCTAssertEqual(rcpt.value, [SMTPReply(550, EnhancedStatusCode(5, 1, 1), "no such user")])
        XCTAssertEqual(data.value, [SMTPReply(354, nil, "go ahead")])
    }

    func testPipelinedRepliesByteByByteGoToTheirRequestsInOrder() throws {
        let first = send("A\r\n")
        let second = send("B\r\n")
        let third = send("C\r\n")
        let replies = "250-first\r\n250 still first\r\n451 second\r\n252 third\r\n"
        for byte in replies.utf8 {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
        }
        XCTAssertEqual(first.value, [SMTPReply(code: 250, enhanced: nil, lines: ["first", "still first"])])
        XCTAssertEqual(second.value?.map(\.code), [451])
        XCTAssertEqual(third.value?.map(\.code), [252])
    }

    func testOnlyTheHeadRequestCompletesWhenOneReplyArrives() throws {
        let first = send("A\r\n")
        let second = send("B\r\n")
        try receive("250 a\r\n")
        XCTAssertNotNil(first.value)
        XCTAssertFalse(second.isComplete)
    }

    func testMultiLineEHLOReply() throws {
        let ehlo = send("EHLO c\r\n")
        try receive("250-mx.example greets c\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n")
        XCTAssertFalse(ehlo.isComplete, "the reply is not over before its last line")
        try receive("250 8BITMIME\r\n")
        XCTAssertEqual(ehlo.value?.first?.lines, ["mx.example greets c", "PIPELINING", "SIZE 10240000", "8BITMIME"])
    }

    func testRequestExpectingSeveralRepliesGetsThemAll() throws {
        let pipelined = send("MAIL\r\nRCPT\r\n", expecting: 2)
        let after = send("DATA\r\n")
        try receive("250 a\r\n")
        XCTAssertFalse(pipelined.isComplete)
        try receive("250 b\r\n354 c\r\n")
        XCTAssertEqual(pipelined.value?.map(\.lines), [["a"], ["b"]])
        XCTAssertEqual(after.value?.map(\.code), [354])
    }

    func testRequestExpectingNoReplySucceedsAtOnceAndWritesItsBytes() throws {
        let content = send("Subject: x\r\n\r\nbody\r\n", expecting: 0)
        XCTAssertEqual(content.value, [])
        XCTAssertEqual(try written(), ["Subject: x\r\n\r\nbody\r\n"])
    }

    func testWritePromiseCompletesWhenTheBytesAreWritten() throws {
        let request = SMTPClientRequest(bytes: ByteBuffer(string: "x"), expectedReplies: 0, timeout: .seconds(1), stage: "content", promise: nil)
        let write = FutureOutcome(channel.writeAndFlush(request))
        XCTAssertNotNil(write.value)
        let noBytes = SMTPClientRequest(bytes: nil, expectedReplies: 1, timeout: .seconds(1), stage: "greeting", promise: nil)
        XCTAssertNotNil(FutureOutcome(channel.writeAndFlush(noBytes)).value)
    }

    func testUnsolicitedRepliesAreKeptInOrder() throws {
        try receive("220 one\r\n")
        try receive("421 two\r\n")
        let first = send(nil)
        let second = send(nil)
        XCTAssertEqual(first.value?.first?.lines, ["one"])
        XCTAssertEqual(second.value?.first?.lines, ["two"])
    }

    // MARK: Timeouts

    func testTimeoutFailsThePendingRequestAndClosesTheChannel() throws {
        let greeting = send(nil, timeout: .seconds(10), stage: "greeting")
        channel.embeddedEventLoop.advanceTime(by: .seconds(10) - .nanoseconds(1))
        XCTAssertFalse(greeting.isComplete)
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .nanoseconds(1))
        assertFailed(greeting, with: .timedOut)
        XCTAssertFalse(channel.isActive)
    }

    func testTimeoutFailsEveryOutstandingRequest() throws {
        let first = send("A\r\n", timeout: .seconds(10))
        let second = send("B\r\n", timeout: .seconds(10))
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        assertFailed(first, with: .timedOut)
        assertFailed(second, with: .timedOut)
    }

    func testEachReplyRestartsTheTimeoutForTheNextRequest() throws {
        let first = send("A\r\n", timeout: .seconds(10))
        let second = send("B\r\n", timeout: .seconds(10))
        channel.embeddedEventLoop.advanceTime(by: .seconds(8))
        try receive("250 a\r\n")
        XCTAssertNotNil(first.value)
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        XCTAssertFalse(second.isComplete, "second has waited only 9 s since the first reply")
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        assertFailed(second, with: .timedOut)
    }

    func testTimeoutUsesTheHeadRequestsTimeout() throws {
        let data = send("DATA\r\n", timeout: .seconds(120))
        let next = send(".\r\n", timeout: .seconds(600))
        try receive("354 go\r\n")
        XCTAssertNotNil(data.value)
        channel.embeddedEventLoop.advanceTime(by: .seconds(599))
        XCTAssertFalse(next.isComplete)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        assertFailed(next, with: .timedOut)
    }

    func testNoTimeoutWhileNothingIsPending() throws {
        let ehlo = send("EHLO c\r\n", timeout: .seconds(10))
        try receive("250 ok\r\n")
        XCTAssertNotNil(ehlo.value)
        channel.embeddedEventLoop.advanceTime(by: .minutes(30))
        XCTAssertTrue(channel.isActive)
        let noop = send("NOOP\r\n")
        try receive("250 ok\r\n")
        XCTAssertEqual(noop.value?.map(\.code), [250])
    }

    // MARK: Failures

    func testClosingTheChannelFailsPendingRequestsWithConnectionClosed() throws {
        let first = send("A\r\n")
        let second = send("B\r\n")
        try channel.close().wait()
        assertFailed(first, with: .connectionClosed)
        assertFailed(second, with: .connectionClosed)
    }

    func testMalformedReplyFailsWithProtocolViolationAndCloses() throws {
        let ehlo = send("EHLO c\r\n")
        try receive("hello there\r\n")
        assertFailed(ehlo, with: .protocolViolation)
        XCTAssertFalse(channel.isActive)
    }

    func testReplyCodeChangingWithinAMultiLineReplyIsAProtocolViolation() throws {
        let ehlo = send("EHLO c\r\n")
        try receive("250-first\r\n251 second\r\n")
        assertFailed(ehlo, with: .protocolViolation)
    }

    func testRequestsAfterAFailureFailImmediatelyWithTheFirstError() throws {
        interceptCloses()
        let greeting = send(nil, timeout: .seconds(1))
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        assertFailed(greeting, with: .timedOut)
        let later = send("EHLO c\r\n")
        assertFailed(later, with: .timedOut)
        let content = send("bytes", expecting: 0)
        assertFailed(content, with: .timedOut)
        let request = SMTPClientRequest(bytes: ByteBuffer(string: "x"), expectedReplies: 0, timeout: .seconds(1), stage: "content", promise: nil)
        XCTAssertNotNil(FutureOutcome(channel.writeAndFlush(request)).error)
        XCTAssertEqual(try written(), [], "nothing is written after a failure")
        XCTAssertEqual(interceptor?.closes, 1)
    }

    func testRequestsAfterAProtocolViolationFailImmediately() throws {
        interceptCloses()
        try receive("garbage\r\n")
        XCTAssertEqual(interceptor?.closes, 1)
        assertFailed(send("EHLO c\r\n"), with: .protocolViolation)
        try receive("250 a reply that comes too late\r\n")
        assertFailed(send("NOOP\r\n"), with: .protocolViolation)
    }

    func testLaterFailuresDoNotReplaceTheFirst() throws {
        interceptCloses()
        let first = send("A\r\n", timeout: .seconds(1))
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        assertFailed(first, with: .timedOut)
        channel.pipeline.fireChannelInactive()
        assertFailed(send("B\r\n"), with: .timedOut)
    }

    func testErrorCaughtFailsPendingRequests() throws {
        struct Reset: Error {}
        let pending = send("A\r\n")
        channel.pipeline.fireErrorCaught(Reset())
        assertFailed(pending, with: .connectionClosed)
        XCTAssertFalse(channel.isActive)
    }
}
