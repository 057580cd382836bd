import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import PosternLog
import PosternUpstream
import ServiceLifecycle
import Synchronization

/// The HTTP endpoint for operators: `/metrics` (Prometheus), `/healthz` (the process is
/// serving), `/readyz` (at least one upstream is believed reachable), and the dashboard:
/// `/` (the page), `/api/summary` (its numbers) and `/events` (each decision record as it is
/// made, as Server-Sent Events); `/api/configuration` says what a reload would change
/// (`postern check` asks it).
final class StatusServer: Service, Sendable {
    private let host: String
    private let port: Int
    private let metrics: PosternMetrics
    /// The pool in force (a configuration reload may replace it).
    private let pool: @Sendable () -> UpstreamPool
    private let policy: PolicyStore
    private let feed: DecisionFeed
    /// What a reload would change, as JSON (read from the file when asked, off the event loop).
    private let pendingReload: @Sendable () -> [UInt8]
    private let logger: Logger
    private let group: EventLoopGroup
    private let channel = Mutex<Channel?>(nil)

    init(host: String, port: Int, metrics: PosternMetrics, pool: @escaping @Sendable () -> UpstreamPool, policy: PolicyStore, feed: DecisionFeed,
         pendingReload: @escaping @Sendable () -> [UInt8] = { Array(#"{"error":"no configuration file to reload"}"#.utf8) },
         group: EventLoopGroup, logger: Logger) {
        self.pendingReload = pendingReload
        self.host = host
        self.port = port
        self.metrics = metrics
        self.pool = pool
        self.policy = policy
        self.feed = feed
        self.group = group
        self.logger = logger
    }

    /// Binds the listening socket; returns the address bound.
    func bind() async throws -> SocketAddress? {
        let metrics = self.metrics
        let pool = self.pool
        let policy = self.policy
        let feed = self.feed
        let pendingReload = self.pendingReload
        let bound = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(StatusHandler(metrics: metrics, pool: pool(), policy: policy, feed: feed,
                                                                                pendingReload: pendingReload))
                }
            }
            .bind(host: host, port: port).get()
        channel.withLock { $0 = bound }
        let base = "http://\(host.contains(":") ? "[\(host)]" : host):\(bound.localAddress?.port ?? port)"
        logger.notice("dashboard on \(base)/, metrics and health on \(base)/metrics")
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
    private let policy: PolicyStore
    private let feed: DecisionFeed
    private let pendingReload: @Sendable () -> [UInt8]
    private var head: HTTPRequestHead?
    /// Event streams open at once, at most (each page holds one).
    static let maximumStreams = 32
    /// While this connection is an event stream: its subscription and keep-alive timer.
    private var subscription: Int?
    private var keepAlive: RepeatedTask?

    init(metrics: PosternMetrics, pool: UpstreamPool, policy: PolicyStore, feed: DecisionFeed, pendingReload: @escaping @Sendable () -> [UInt8]) {
        self.pendingReload = pendingReload
        self.metrics = metrics
        self.pool = pool
        self.policy = policy
        self.feed = feed
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let subscription { feed.unsubscribe(subscription) }
        subscription = nil
        keepAlive?.cancel()
        keepAlive = nil
        context.fireChannelInactive()
    }

    /// `/events`: the latest records, then each new one, as `data:` events; a comment every
    /// 15 s keeps proxies from closing an idle stream.
    private func stream(_ request: HTTPRequestHead, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/event-stream; charset=utf-8")
        headers.add(name: "Cache-Control", value: "no-cache")
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: eventLoop)
        subscription = feed.subscribe { line in
            eventLoop.execute {
                guard handler.value.subscription != nil else { return }
                let context = loopBound.value
                // A reader that does not keep up misses events rather than grow Postern's memory.
                guard context.channel.isWritable else { return }
                context.writeAndFlush(handler.value.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "data: \(line)\n\n")))), promise: nil)
            }
        }
        // Subscribed before the client hears 200: a stream it sees open is counted against
        // the limit (another connection may be handled on another event loop at once).
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: .ok, headers: headers))), promise: nil)
        keepAlive = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(15), delay: .seconds(15)) { _ in
            let context = loopBound.value
            context.writeAndFlush(handler.value.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: ": keep-alive\n\n")))), promise: nil)
        }
    }

    /// `/api/summary`: the feed's counts, the policy, each upstream's health.
    private func summary() -> [UInt8] {
        var object = feed.summary()
        let load = policy.lastLoad
        object["policy"] = ["version": policy.policy.version, "rules": policy.policy.rules.count, "path": policy.path ?? NSNull(),
                            "last_load": ["result": load.result, "at": DecisionRecord.rfc3339(milliseconds: load.milliseconds), "errors": load.errors]] as [String: Any]
        object["upstreams"] = pool.health.map { ["name": $0.name, "up": $0.alive, "seconds_since_success": ($0.secondsSinceSuccess * 10).rounded() / 10] as [String: Any] }
        object["subscribers"] = feed.subscriberCount
        return Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8))
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
            case "/", "/index.html":
                contentType = "text/html; charset=utf-8"
                body = DashboardPage.html
            case "/api/summary":
                contentType = "application/json"
                body = summary()
            case "/events" where request.method == .GET && feed.subscriberCount >= Self.maximumStreams:
                status = .serviceUnavailable
                body = Array("too many event streams open (at most \(Self.maximumStreams))\n".utf8)
            case "/events" where request.method == .GET:
                return stream(request, context: context)
            case "/api/configuration":
                // Reads and parses the configuration file: on the thread pool, not the loop.
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                let pendingReload = self.pendingReload
                NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { pendingReload() }.whenComplete { result in
                    let (handler, context) = loopBound.value
                    let body = (try? result.get()) ?? Array(#"{"error":"not available while shutting down"}"#.utf8)
                    handler.send(body, status: .ok, contentType: "application/json", to: request, context: context)
                }
                return
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
        send(body, status: status, contentType: contentType, to: request, context: context)
    }

    private func send(_ body: [UInt8], status: HTTPResponseStatus, contentType: String, to request: HTTPRequestHead, context: ChannelHandlerContext) {
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
