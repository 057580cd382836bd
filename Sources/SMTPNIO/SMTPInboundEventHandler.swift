import NIOCore
import NIOTLS

/// What a session's read loop receives: bytes, plus the events that must be ordered with them.
public enum SMTPInboundEvent: Sendable {
    case bytes(ByteBuffer)
    /// The TLS handshake finished; bytes after this one were encrypted on the wire.
    case tlsEstablished
    /// The session's deadline passed.
    case timedOut
    /// The server is shutting down and asks the session to finish.
    case drain
}

/// Sent down the pipeline (`triggerUserOutboundEvent`) to set the session's deadline: at it,
/// `.timedOut` arrives in the stream. `.distantFuture`: no deadline.
public struct SMTPSessionDeadline: Sendable {
    public var deadline: NIODeadline
    public init(_ deadline: NIODeadline) { self.deadline = deadline }
}

/// Fired into the pipeline (`fireUserInboundEventTriggered`) to ask a session to drain.
public struct SMTPDrainRequest: Sendable {
    public init() {}
}

/// Turns bytes and the events a session must see in order (TLS handshake done, the
/// session's deadline, drain) into one stream of `SMTPInboundEvent`s. The session machine
/// computes its deadline (command, data, session, data rate…); this handler only keeps the
/// one timer for it.
public final class SMTPInboundEventHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = SMTPInboundEvent
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private var timer = DeadlineTimer()

    public init() {}

    public func channelInactive(context: ChannelHandlerContext) {
        timer.cancel()
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer.cancel()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(wrapInboundOut(.bytes(unwrapInboundIn(data))))
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            deliver(.tlsEstablished, context: context)
        } else if event is SMTPDrainRequest {
            deliver(.drain, context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let change = event as? SMTPSessionDeadline {
            if let when = timer.move(to: change.deadline) { schedule(at: when, context: context) }
            promise?.succeed()
            return
        }
        context.triggerUserOutboundEvent(event, promise: promise)
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
        case .expired: deliver(.timedOut, context: context)
        case .rearm(let when): schedule(at: when, context: context)
        case .idle: break
        }
    }

    /// An event that is not a socket read ends like one, with a read-complete: a handler that
    /// batches per read (an `NIOAsyncChannel` hands reads to its stream only then) sees it at once.
    private func deliver(_ event: SMTPInboundEvent, context: ChannelHandlerContext) {
        context.fireChannelRead(wrapInboundOut(event))
        context.fireChannelReadComplete()
    }
}
