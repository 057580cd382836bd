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
        restartTimer(context: context)
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

    private func restartTimer(context: ChannelHandlerContext) {
        timer?.cancel()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            handler.timer = nil
            handler.deliver(.timedOut, context: context)
        }
    }

    /// An event that is not a socket read still needs a read-complete: NIOAsyncChannel hands
    /// reads to the stream only then.
    private func deliver(_ event: SMTPInboundEvent, context: ChannelHandlerContext) {
        context.fireChannelRead(wrapInboundOut(event))
        context.fireChannelReadComplete()
    }
}
