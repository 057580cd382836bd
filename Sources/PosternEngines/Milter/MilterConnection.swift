import NIOCore
import NIOPosix
import PosternPolicy
import SMTPNIO

/// Why a filter could not be used: what its default action is taken for.
public struct MilterError: Error, Hashable, Sendable, CustomStringConvertible, CheckError {
    public enum Kind: String, Hashable, Sendable {
        /// It could not be reached.
        case connect
        /// It did not answer in time.
        case timeout
        /// It closed the connection.
        case closed
        /// It broke the protocol (garbage, an oversize packet, an answer out of place).
        case protocolError = "protocol"
        /// It asked for something Postern did not offer.
        case negotiation
        /// It failed earlier in this session (the failure lasts for the session, as Postfix's).
        case failedBefore = "failed_before"
    }

    public var kindOfFailure: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kindOfFailure = kind
        self.detail = detail
    }

    public var kind: String { kindOfFailure.rawValue }
    public var description: String { detail }
}

/// One connection to a filter: packets out, packets in, each read with its own deadline (a
/// PROGRESS answer starts the next read's deadline afresh). A deadline that passes closes the
/// connection, so a late answer can never be read as the next one's.
final class MilterConnection: Sendable {
    private let channel: Channel
    private let inbound: MilterInboundHandler

    private init(channel: Channel, inbound: MilterInboundHandler) {
        self.channel = channel
        self.inbound = inbound
    }

    static func open(_ address: PolicyServiceConfiguration.Address, timeout: Duration, group: EventLoopGroup) async throws(MilterError) -> MilterConnection {
        let inbound = MilterInboundHandler()
        let bootstrap = ClientBootstrap(group: group).connectTimeout(TimeAmount(timeout))
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(inbound) }
            }
        do {
            switch address {
            case .inet(let host, let port):
                return MilterConnection(channel: try await bootstrap.connect(host: host, port: port).get(), inbound: inbound)
            case .unix(let path):
                return MilterConnection(channel: try await bootstrap.connect(unixDomainSocketPath: path).get(), inbound: inbound)
            case .spawn:
                throw MilterError(.connect, "a milter is reached by inet: or unix:, not spawned")
            }
        } catch let error as MilterError {
            throw error
        } catch {
            throw MilterError(.connect, "cannot reach \(address): \(describeConnectionError(error))")
        }
    }

    /// Writes the packets and flushes them.
    func send(_ packets: [ByteBuffer]) async throws(MilterError) {
        guard let last = packets.last else { return }
        let channel = self.channel
        do {
            try await channel.eventLoop.flatSubmit {
                for packet in packets.dropLast() { channel.write(packet, promise: nil) }
                return channel.writeAndFlush(last)
            }.get()
        } catch {
            throw MilterError(.closed, "the filter closed the connection: \(describeConnectionError(error))")
        }
    }

    /// The next packet from the filter, or an error once `timeout` has passed.
    func receive(timeout: Duration, waitingFor what: String) async throws(MilterError) -> MilterPacket {
        let channel = self.channel
        let inbound = self.inbound
        let promise = channel.eventLoop.makePromise(of: MilterPacket.self)
        channel.eventLoop.execute {
            let timer = channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
                inbound.giveUp(promise, MilterError(.timeout, "no answer to \(what) within \(timeout)"))
                channel.close(promise: nil)
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            inbound.next(promise)
        }
        do {
            return try await promise.futureResult.get()
        } catch let error as MilterError {
            throw error
        } catch {
            throw MilterError(.closed, "the filter closed the connection: \(describeConnectionError(error))")
        }
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Frames what the filter sends into packets and hands them out one read at a time. Its
/// state is touched on the channel's event loop only.
final class MilterInboundHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    private var framer = MilterFramer()
    private var ready: [MilterPacket] = []
    private var waiting: EventLoopPromise<MilterPacket>?
    private var failure: MilterError?

    func next(_ promise: EventLoopPromise<MilterPacket>) {
        if !ready.isEmpty {
            promise.succeed(ready.removeFirst())
        } else if let failure {
            promise.fail(failure)
        } else {
            waiting = promise
        }
    }

    /// The read's deadline passed: `promise` fails, and nothing will complete it again.
    func giveUp(_ promise: EventLoopPromise<MilterPacket>, _ error: MilterError) {
        guard waiting?.futureResult === promise.futureResult else { return }
        waiting = nil
        if failure == nil { failure = error }
        promise.fail(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard failure == nil else { return }
        framer.append(unwrapInboundIn(data))
        do {
            while let packet = try framer.next() { ready.append(packet) }
        } catch {
            fail(MilterError(.protocolError, error.detail))
            context.close(promise: nil)
        }
        if let waiting, !ready.isEmpty {
            self.waiting = nil
            waiting.succeed(ready.removeFirst())
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(MilterError(.closed, "the filter closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(MilterError(.closed, "the connection failed: \(describeConnectionError(error))"))
        context.close(promise: nil)
    }

    private func fail(_ error: MilterError) {
        if failure == nil { failure = error }
        if let waiting, ready.isEmpty {
            self.waiting = nil
            waiting.fail(failure!)
        }
    }
}
