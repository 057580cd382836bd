import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import PosternUpstream
import ServiceLifecycle
import Synchronization

/// The HTTP endpoint for operators: `/metrics` (Prometheus), `/healthz` (the process is
/// serving) and `/readyz` (at least one upstream is believed reachable).
final class StatusServer: Service, Sendable {
    private let host: String
    private let port: Int
    private let metrics: PosternMetrics
    private let pool: UpstreamPool
    private let logger: Logger
    private let group: EventLoopGroup
    private let channel = Mutex<Channel?>(nil)

    init(host: String, port: Int, metrics: PosternMetrics, pool: UpstreamPool, group: EventLoopGroup, logger: Logger) {
        self.host = host
        self.port = port
        self.metrics = metrics
        self.pool = pool
        self.group = group
        self.logger = logger
    }

    /// Binds the listening socket; returns the address bound.
    func bind() async throws -> SocketAddress? {
        let metrics = self.metrics
        let pool = self.pool
        let bound = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(StatusHandler(metrics: metrics, pool: pool))
                }
            }
            .bind(host: host, port: port).get()
        channel.withLock { $0 = bound }
        logger.notice("metrics and health on http://\(host.contains(":") ? "[\(host)]" : host):\(bound.localAddress?.port ?? port)/metrics")
        return bound.localAddress
    }

    /// Stops listening (the server is cancelled).
    func close() {
        channel.withLock { $0 }?.close(promise: nil)
    }

    /// Serves until graceful shutdown.
    func run() async throws {
        guard let channel = channel.withLock({ $0 }) else { return }
        try await withGracefulShutdownHandler {
            try await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
    }
}

private final class StatusHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let metrics: PosternMetrics
    private let pool: UpstreamPool
    private var head: HTTPRequestHead?

    init(metrics: PosternMetrics, pool: UpstreamPool) {
        self.metrics = metrics
        self.pool = pool
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to request: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        var status = HTTPResponseStatus.ok
        var contentType = "text/plain; charset=utf-8"
        var body: [UInt8]
        if request.method != .GET && request.method != .HEAD {
            status = .methodNotAllowed
            body = Array("method not allowed\n".utf8)
        } else {
            switch path {
            case "/metrics":
                metrics.upstreamHealth(pool.health)
                contentType = "text/plain; version=0.0.4; charset=utf-8"
                body = metrics.render()
            case "/healthz":
                body = Array("ok\n".utf8)
            case "/readyz":
                let live = pool.liveUpstreams
                if live.isEmpty {
                    status = .serviceUnavailable
                    body = Array("not ready: every upstream is marked down\n".utf8)
                } else {
                    body = Array("ready: \(live.joined(separator: ", "))\n".utf8)
                }
            default:
                status = .notFound
                body = Array("not found\n".utf8)
            }
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { loopBound.value.close(promise: nil) }
        }
    }
}
