import NIOCore
import NIOTLS

/// What a session's read loop receives: bytes, plus the events that must be ordered with them.
public enum SMTPInboundEvent: Sendable {
    case bytes(ByteBuffer)
    /// The TLS handshake finished; bytes after this one were encrypted on the wire.
    case tlsEstablished
    /// No byte arrived within the read timeout in force.
    case timedOut
    /// The server is shutting down and asks the session to finish.
    case drain
}

/// Sent down the pipeline (`triggerUserOutboundEvent`) to change the read timeout.
public struct SMTPReadTimeout: Sendable {
    public var timeout: TimeAmount
    public init(_ timeout: TimeAmount) { self.timeout = timeout }
}

/// Fired into the pipeline (`fireUserInboundEventTriggered`) to ask a session to drain.
public struct SMTPDrainRequest: Sendable {
    public init() {}
}

/// Turns bytes and the events a session must see in order (TLS handshake done, read
/// timeout, drain) into one stream of `SMTPInboundEvent`s. The read timeout restarts with
/// every read.
public final class SMTPInboundEventHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = SMTPInboundEvent
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private var timeout: TimeAmount
    private var timer: Scheduled<Void>?
    /// When the read timeout expires. A read only moves the deadline; the timer, when it
    /// fires early, re-arms itself for what is left. One scheduled task per timeout instead
    /// of a cancel and a schedule per read.
    private var deadline = NIODeadline.distantFuture
    /// When the armed timer fires.
    private var timerDeadline = NIODeadline.distantFuture

    public init(readTimeout: TimeAmount) {
        self.timeout = readTimeout
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { restartTimer(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        restartTimer(context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        deadline = context.eventLoop.now + timeout
        if timer == nil { arm(at: deadline, context: context) }
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
        if let change = event as? SMTPReadTimeout {
            timeout = change.timeout
            restartTimer(context: context)
            promise?.succeed()
            return
        }
        context.triggerUserOutboundEvent(event, promise: promise)
    }

    /// Starts the read timeout afresh (a new timeout value, or the channel became active).
    private func restartTimer(context: ChannelHandlerContext) {
        deadline = context.eventLoop.now + timeout
        // A timer due no later than the new deadline re-arms itself when it fires; a
        // shorter timeout needs an earlier timer.
        if timer == nil || timerDeadline > deadline { arm(at: deadline, context: context) }
    }

    private func arm(at when: NIODeadline, context: ChannelHandlerContext) {
        timer?.cancel()
        timerDeadline = when
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: when) {
            let (handler, context) = bound.value
            handler.timer = nil
            handler.timerFired(context: context)
        }
    }

    private func timerFired(context: ChannelHandlerContext) {
        if context.eventLoop.now < deadline {
            arm(at: deadline, context: context)  // reads came in meanwhile
        } else {
            deadline = .distantFuture
            deliver(.timedOut, context: context)
        }
    }

    /// An event that is not a socket read still needs a read-complete: NIOAsyncChannel hands
    /// reads to the stream only then.
    private func deliver(_ event: SMTPInboundEvent, context: ChannelHandlerContext) {
        context.fireChannelRead(wrapInboundOut(event))
        context.fireChannelReadComplete()
    }
}
