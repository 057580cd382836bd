import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// One command on its way to the server, and where its reply goes.
struct RedisRequest: Sendable {
    var encoded: ByteBuffer
    var promise: EventLoopPromise<RESPValue>
    /// When the reply must have arrived; nil for no limit.
    var deadline: NIODeadline?
}

/// Frames the byte stream into RESP values.
struct RESPDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = RESPValue
    let parser: RESPParser

    mutating func decode(buffer: inout ByteBuffer) throws -> RESPValue? {
        try parser.next(&buffer)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> RESPValue? {
        try decode(buffer: &buffer)
    }
}

/// Pipelining: many commands in flight on one connection, replies matched to requests in
/// order (Redis answers in order). A request past its deadline fails with
/// ``RedisError/timeout`` and closes the connection: a late reply would otherwise be
/// taken as the answer to the next request.
final class RedisCommandHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = RedisRequest
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        var promise: EventLoopPromise<RESPValue>
        var timer: Scheduled<Void>?
    }

    private var pending = CircularBuffer<Pending>()
    private var closedError: RedisError?

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if let closedError {
            request.promise.fail(closedError)
            promise?.fail(closedError)
            return
        }
        var timer: Scheduled<Void>?
        if let deadline = request.deadline {
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            timer = context.eventLoop.scheduleTask(deadline: deadline) {
                let (handler, context) = loopBound.value
                handler.failAll(.timeout, context: context)
            }
        }
        pending.append(Pending(promise: request.promise, timer: timer))
        context.write(wrapOutboundOut(request.encoded), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        if case .push = value { return }  // out-of-band (RESP3 only): never a reply
        guard let next = pending.popFirst() else {
            failAll(.protocolError("a reply nobody asked for"), context: context)
            return
        }
        next.timer?.cancel()
        next.promise.succeed(value)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let redisError: RedisError
        if let parse = error as? RESPParseError {
            redisError = .protocolError(parse.description)
        } else if let known = error as? RedisError {
            redisError = known
        } else {
            redisError = .connectionFailed("\(error)")
        }
        failAll(redisError, context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(.connectionFailed("connection closed"), context: context, close: false)
        context.fireChannelInactive()
    }

    /// Fails every request in flight and closes the connection (the order is lost).
    private func failAll(_ error: RedisError, context: ChannelHandlerContext, close: Bool = true) {
        if closedError == nil { closedError = error }
        while let next = pending.popFirst() {
            next.timer?.cancel()
            next.promise.fail(error)
        }
        if close { context.close(promise: nil) }
    }
}

/// Where a Redis server is and how to log in (`redis://[user:pass@]host:port/db`,
/// `rediss://…` for TLS).
public struct RedisEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var database: Int
    public var tls: Bool

    public init(host: String, port: Int = 6379, username: String? = nil, password: String? = nil, database: Int = 0, tls: Bool = false) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// Parses `redis://[[user]:password@]host[:port][/db]` or `rediss://…`. IPv6 hosts in
    /// brackets. User and password are percent-decoded. Throws a message for any other text.
    public init(url: String) throws(RedisEndpointError) {
        let tls: Bool
        var rest: Substring
        if url.hasPrefix("redis://") {
            tls = false
            rest = url.dropFirst("redis://".count)
        } else if url.hasPrefix("rediss://") {
            tls = true
            rest = url.dropFirst("rediss://".count)
        } else {
            throw RedisEndpointError("must start with redis:// or rediss://")
        }
        var username: String?, password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let user = credentials[..<colon]
                username = user.isEmpty ? nil : try Self.percentDecoded(user)
                password = try Self.percentDecoded(credentials[credentials.index(after: colon)...])
            } else if !credentials.isEmpty {
                password = try Self.percentDecoded(credentials)  // redis://secret@host: a password alone
            }
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !path.isEmpty {
                guard path.allSatisfy(\.isASCIIDigitCharacter), path.count <= 5, let number = Int(path) else {
                    throw RedisEndpointError("database '\(path)' is not a number")
                }
                database = number
            }
        }
        var host = rest, portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw RedisEndpointError("unclosed '[' in the host") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":" else { throw RedisEndpointError("unexpected text after ']'") }
                portText = after.dropFirst()
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        }
        guard !host.isEmpty else { throw RedisEndpointError("no host") }
        var port = 6379
        if let portText {
            guard portText.allSatisfy(\.isASCIIDigitCharacter), let number = Int(portText), (1...65535).contains(number) else {
                throw RedisEndpointError("port '\(portText)' is not a number from 1 to 65535")
            }
            port = number
        }
        self.init(host: String(host), port: port, username: username, password: password, database: database, tls: tls)
    }

    /// The URL with the password hidden, for logs.
    public var description: String {
        let credentials = password == nil ? "" : "\(username ?? ""):***@"
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "\(tls ? "rediss" : "redis")://\(credentials)\(host):\(port)/\(database)"
    }

    private static func percentDecoded(_ text: Substring) throws(RedisEndpointError) -> String {
        var bytes: [UInt8] = []
        var utf8 = text.utf8[...]
        while let byte = utf8.popFirst() {
            guard byte == UInt8(ascii: "%") else { bytes.append(byte); continue }
            guard utf8.count >= 2, let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) else {
                throw RedisEndpointError("bad percent escape in the credentials")
            }
            bytes.append(value)
            utf8 = utf8.dropFirst(2)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A `limits_store` URL that cannot be used; the message never contains the password.
public struct RedisEndpointError: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Character {
    fileprivate var isASCIIDigitCharacter: Bool { self >= "0" && self <= "9" }
}

/// One connection to Redis: commands are pipelined (see ``RedisCommandHandler``).
public final class RedisConnection: Sendable {
    let channel: any Channel

    init(channel: any Channel) { self.channel = channel }

    /// False once the connection is closed (by either side, or after a timeout).
    public var isActive: Bool { channel.isActive }

    /// Completes when the connection is closed.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    /// Sends a command; the reply (which may be `.error`) comes back in order.
    public func send(_ arguments: [String], deadline: NIODeadline?) -> EventLoopFuture<RESPValue> {
        var buffer = channel.allocator.buffer(capacity: 64)
        RESPEncoder.writeCommand(arguments, into: &buffer)
        let promise = channel.eventLoop.makePromise(of: RESPValue.self)
        // A write that never reaches the handler (the channel closed meanwhile) fails the
        // request here; a second completion of the promise is ignored.
        channel.writeAndFlush(RedisRequest(encoded: buffer, promise: promise, deadline: deadline)).whenFailure { error in
            promise.fail(error as? RedisError ?? RedisError.connectionFailed("\(error)"))
        }
        return promise.futureResult
    }

    /// Sends a command and turns an error reply into ``RedisError/server(_:)``.
    public func command(_ arguments: [String], deadline: NIODeadline?) async throws(RedisError) -> RESPValue {
        do {
            let reply = try await send(arguments, deadline: deadline).get()
            if case .error(let message) = reply { throw RedisError.server(message) }
            return reply
        } catch let error as RedisError {
            throw error
        } catch {
            throw RedisError.connectionFailed("\(error)")
        }
    }

    public func close() {
        channel.close(promise: nil)
    }

    /// Connects, sets up TLS when the endpoint asks for it, then sends `AUTH` and `SELECT`
    /// pipelined and checks both replies. Fails when anything is not ready by `deadline`.
    public static func connect(to endpoint: RedisEndpoint, tlsConfiguration: TLSConfiguration? = nil,
                               on eventLoop: any EventLoop, deadline: NIODeadline,
                               parserLimits: RESPParser.Limits = .init()) -> EventLoopFuture<RedisConnection> {
        let sslContext: NIOSSLContext?
        if endpoint.tls {
            do {
                sslContext = try NIOSSLContext(configuration: tlsConfiguration ?? .makeClientConfiguration())
            } catch {
                return eventLoop.makeFailedFuture(RedisError.connectionFailed("TLS: \(error)"))
            }
        } else {
            sslContext = nil
        }
        let connectTimeout = TimeAmount.nanoseconds(max(1, (deadline - .now()).nanoseconds))
        let serverHostname = endpoint.host.isIPAddressLiteral ? nil : endpoint.host
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let sslContext {
                        try sync.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: serverHostname))
                    }
                    try sync.addHandler(ByteToMessageHandler(RESPDecoder(parser: RESPParser(limits: parserLimits))))
                    try sync.addHandler(RedisCommandHandler())
                }
            }
        return bootstrap.connect(host: endpoint.host, port: endpoint.port)
            .flatMapErrorThrowing { error in throw RedisError.connectionFailed("\(error)") }
            .flatMap { channel in
                let connection = RedisConnection(channel: channel)
                var replies: [EventLoopFuture<RESPValue>] = []
                if let password = endpoint.password {
                    replies.append(connection.send(["AUTH"] + (endpoint.username.map { [$0] } ?? []) + [password], deadline: deadline))
                }
                if endpoint.database != 0 {
                    replies.append(connection.send(["SELECT", String(endpoint.database)], deadline: deadline))
                }
                return EventLoopFuture.whenAllComplete(replies, on: channel.eventLoop).flatMapThrowing { results in
                    for result in results {
                        switch result {
                        case .success(.error(let message)):
                            throw RedisError.server(message)
                        case .success:
                            continue
                        case .failure(let error):
                            throw error
                        }
                    }
                    return connection
                }.flatMapErrorThrowing { error in
                    connection.close()
                    throw error
                }
            }
    }
}

extension String {
    fileprivate var isIPAddressLiteral: Bool {
        (try? SocketAddress(ipAddress: self, port: 0)) != nil
    }
}
