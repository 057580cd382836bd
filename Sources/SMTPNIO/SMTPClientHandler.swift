import NIOCore
import NIOSSL
import SMTPCore

/// Why an exchange with an SMTP server failed.
public struct SMTPClientError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// No complete reply within the stage's timeout (RFC 5321 §4.5.3.2).
        case timedOut
        /// The server closed the connection.
        case connectionClosed
        /// The server sent something that is not an SMTP reply.
        case protocolViolation
        /// TLS could not be set up or broke.
        case tls
    }

    public var kind: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { "\(kind): \(detail)" }
}

/// One thing to send to the server, and how many replies it expects back.
public struct SMTPClientRequest: Sendable {
    public var bytes: ByteBuffer?
    public var expectedReplies: Int
    public var timeout: TimeAmount
    public var stage: String
    public var promise: EventLoopPromise<[SMTPReply]>?

    /// Bytes that expect `expectedReplies` replies (0 for message content).
    public init(bytes: ByteBuffer?, expectedReplies: Int, timeout: TimeAmount, stage: String, promise: EventLoopPromise<[SMTPReply]>?) {
        self.bytes = bytes
        self.expectedReplies = expectedReplies
        self.timeout = timeout
        self.stage = stage
        self.promise = promise
    }
}

/// The client side's request/reply matching: replies are handed to requests in the order the
/// requests were written, which is what makes pipelining (RFC 2920) safe. Every wait has a
/// timeout; a timeout or a closed connection fails everything outstanding.
public final class SMTPClientHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = SMTPClientRequest
    public typealias OutboundOut = ByteBuffer

    private struct Pending {
        var remaining: Int
        var replies: [SMTPReply] = []
        var timeout: TimeAmount
        var stage: String
        var promise: EventLoopPromise<[SMTPReply]>?
    }

    private var parser = SMTPReplyParser()
    private var buffer = ByteBuffer()
    private var pending: CircularBuffer<Pending> = []
    /// Replies nobody asked for yet (the greeting; a 421 before shutdown). Bounded.
    private var unsolicited: [SMTPReply] = []
    /// When the oldest outstanding request times out.
    private var timer = DeadlineTimer()
    private var failure: SMTPClientError?

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if let failure {
            request.promise?.fail(failure)
            promise?.fail(failure)
            return
        }
        if request.expectedReplies > 0 {
            pending.append(Pending(remaining: request.expectedReplies, timeout: request.timeout, stage: request.stage, promise: request.promise))
            if pending.count == 1 { restartTimer(context: context) }
            deliverUnsolicited(context: context)
        } else {
            request.promise?.succeed([])
        }
        if let bytes = request.bytes {
            context.write(wrapOutboundOut(bytes), promise: promise)
        } else {
            promise?.succeed()
        }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        do {
            while let reply = try parser.parse(&buffer) {
                deliver(reply, context: context)
            }
            buffer.discardReadBytes()
        } catch {
            fail(SMTPClientError(.protocolViolation, error.description), context: context)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        fail(SMTPClientError(.connectionClosed, "connection closed by server"), context: context)
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        let kind: SMTPClientError.Kind = error is NIOSSLError || error is BoringSSLError ? .tls : .connectionClosed
        fail(SMTPClientError(kind, "\(error)"), context: context)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer.cancel()
    }

    private func deliver(_ reply: SMTPReply, context: ChannelHandlerContext) {
        guard !pending.isEmpty else {
            if unsolicited.count < 8 { unsolicited.append(reply) }
            return
        }
        pending[pending.startIndex].replies.append(reply)
        pending[pending.startIndex].remaining -= 1
        if pending[pending.startIndex].remaining == 0 {
            let done = pending.removeFirst()
            done.promise?.succeed(done.replies)
        }
        restartTimer(context: context)
    }

    private func deliverUnsolicited(context: ChannelHandlerContext) {
        while !unsolicited.isEmpty && !pending.isEmpty {
            deliver(unsolicited.removeFirst(), context: context)
        }
    }

    /// The oldest outstanding request's timeout starts now (a reply came, or it is the first).
    private func restartTimer(context: ChannelHandlerContext) {
        guard let head = pending.first else {
            _ = timer.move(to: .distantFuture)
            return
        }
        if let when = timer.move(to: context.eventLoop.now + head.timeout) { schedule(at: when, context: context) }
    }

    private func schedule(at when: NIODeadline, context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let task = context.eventLoop.scheduleTask(deadline: when) {
            let (handler, context) = bound.value
            handler.timerFired(context: context)
        }
        timer.armed(task, at: when)
    }

    private func timerFired(context: ChannelHandlerContext) {
        switch timer.fired(now: context.eventLoop.now) {
        case .rearm(let when):
            schedule(at: when, context: context)
        case .expired:
            guard let head = pending.first else { return }
            fail(SMTPClientError(.timedOut, "no reply to \(head.stage) within \(head.timeout.nanoseconds / 1_000_000) ms"), context: context)
        case .idle:
            break
        }
    }

    private func fail(_ error: SMTPClientError, context: ChannelHandlerContext) {
        if failure == nil { failure = error }
        timer.cancel()
        let outstanding = pending
        pending.removeAll()
        for request in outstanding { request.promise?.fail(error) }
        if context.channel.isActive { context.close(promise: nil) }
    }
}
