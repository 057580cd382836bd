import Foundation
import Logging
import NIOCore
import NIOPosix
import SMTPNIO
import Synchronization

/// Why a request to a policy server failed.
public struct PolicyServiceError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Hashable, Sendable {
        case connect, timeout, closed, protocolError = "protocol"
    }

    public var kind: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { detail }
}

/// The connections to one policy server: persistent, reused request after request, at most
/// `maximumConnections` at once (requests beyond wait for one), closed after `maximumIdle`.
/// A request that fails on a connection that was reused is tried once more on a new one
/// (the server may have closed it meanwhile); a timeout closes the connection, so a late
/// answer can never be read as the next request's.
public final class PolicyServiceClient: Sendable {
    public let configuration: PolicyServiceConfiguration
    private let group: EventLoopGroup
    private let logger: Logger
    private let state = Mutex(State())

    private struct State {
        var idle: [(connection: PolicyServiceConnection, since: ContinuousClock.Instant)] = []
        var open = 0
        var waiters: [CheckedContinuation<PolicyServiceConnection?, Never>] = []
        var closed = false
        /// Failures since the last success: logged once per streak.
        var failing = false
    }

    public init(configuration: PolicyServiceConfiguration, group: EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        var logger = logger
        logger[metadataKey: "policy_service"] = "\(configuration.name)"
        self.logger = logger
    }

    /// Sends one request and returns the server's action text.
    public func ask(_ request: ByteBuffer) async throws(PolicyServiceError) -> String {
        let deadline = NIODeadline.now() + TimeAmount(configuration.timeout)
        var lastError = PolicyServiceError(.closed, "no attempt")
        for attempt in 0..<2 {
            let connection: PolicyServiceConnection
            let reused: Bool
            do {
                (connection, reused) = try await take(deadline: deadline)
            } catch {
                lastError = error
                break
            }
            do {
                let action = try await connection.ask(request, deadline: deadline)
                give(connection)
                streak(ended: true, nil)
                return action
            } catch {
                discard(connection)
                lastError = error
                // A reused connection may have been closed by the server while idle: once more.
                guard attempt == 0, reused, error.kind == .closed else { break }
            }
        }
        streak(ended: false, lastError)
        throw lastError
    }

    /// Opens one connection (starts the program, for spawn) and closes it again: `postern check --engines`.
    public func probe() async throws(PolicyServiceError) {
        let connection = try await PolicyServiceConnection.open(configuration, group: group, logger: logger)
        connection.close()
    }

    /// Closes every connection (shutdown, reload); later requests fail.
    public func close() {
        let (idle, waiters) = state.withLock { state in
            state.closed = true
            defer { state.idle = []; state.waiters = [] }
            return (state.idle.map(\.connection), state.waiters)
        }
        for connection in idle { connection.close() }
        for waiter in waiters { waiter.resume(returning: nil) }
    }

    /// The processes of idle spawned connections (for tests and diagnostics).
    var spawnedProcesses: [pid_t] { state.withLock { $0.idle.compactMap { $0.connection.process?.pid } } }

    /// Connections open now (idle or in use).
    public var openConnections: Int { state.withLock { $0.open } }

    // MARK: The pool

    /// An idle connection, a new one, or (at the limit) the next one given back.
    private func take(deadline: NIODeadline) async throws(PolicyServiceError) -> (PolicyServiceConnection, reused: Bool) {
        enum Next { case idle(PolicyServiceConnection), open, wait, closed }
        let now = ContinuousClock.now
        let limit = configuration.maximumIdle
        var expired: [PolicyServiceConnection] = []
        let next = state.withLock { state -> Next in
            guard !state.closed else { return .closed }
            while let (connection, since) = state.idle.popLast() {
                if now - since < limit, connection.isActive { return .idle(connection) }
                expired.append(connection)
                state.open -= 1
            }
            guard state.open < configuration.maximumConnections else { return .wait }
            state.open += 1
            return .open
        }
        for connection in expired { connection.close() }
        switch next {
        case .closed:
            throw PolicyServiceError(.closed, "the policy service \(configuration.name) is shut down")
        case .idle(let connection):
            return (connection, true)
        case .open:
            return (try await openCounted(), false)
        case .wait:
            let given = await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if state.closed { return true }
                    state.waiters.append(continuation)
                    return false
                }
                if ready { continuation.resume(returning: nil) }
            }
            guard let given else {
                // Either shut down, or a slot was freed for this request to open.
                if state.withLock({ $0.closed }) { throw PolicyServiceError(.closed, "the policy service \(configuration.name) is shut down") }
                return (try await openCounted(), false)
            }
            return (given, true)
        }
    }

    /// Opens a connection whose slot is already counted in `open`; a failure gives the slot back.
    private func openCounted() async throws(PolicyServiceError) -> PolicyServiceConnection {
        do {
            return try await PolicyServiceConnection.open(configuration, group: group, logger: logger)
        } catch {
            state.withLock { $0.open -= 1 }
            wakeOne()
            throw error
        }
    }

    /// A connection that served its request: to a waiting request, or kept idle.
    private func give(_ connection: PolicyServiceConnection) {
        let waiter = state.withLock { state -> CheckedContinuation<PolicyServiceConnection?, Never>? in
            if state.closed { return nil }
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.idle.append((connection, ContinuousClock.now))
            return nil
        }
        if let waiter { waiter.resume(returning: connection) } else if state.withLock({ $0.closed }) { connection.close() }
    }

    /// A broken connection: closed; its slot goes to a waiting request, which opens its own.
    private func discard(_ connection: PolicyServiceConnection) {
        connection.close()
        state.withLock { $0.open -= 1 }
        wakeOne()
    }

    private func wakeOne() {
        let waiter = state.withLock { state -> CheckedContinuation<PolicyServiceConnection?, Never>? in
            guard !state.waiters.isEmpty, state.open < configuration.maximumConnections else { return nil }
            state.open += 1
            return state.waiters.removeFirst()
        }
        waiter?.resume(returning: nil)
    }

    /// One log line when requests start failing, one when they work again.
    private func streak(ended success: Bool, _ error: PolicyServiceError?) {
        let changed = state.withLock { state -> Bool in
            defer { state.failing = !success }
            return state.failing == success
        }
        guard changed else { return }
        if let error {
            logger.warning("policy service failing; its default action applies", metadata: [
                "address": "\(configuration.address)", "kind": "\(error.kind.rawValue)", "error": "\(error.detail)",
            ])
        } else {
            logger.notice("policy service answering again", metadata: ["address": "\(configuration.address)"])
        }
    }
}

/// One connection to a policy server: a socket, or the pipes of a spawned process.
final class PolicyServiceConnection: Sendable {
    private let channel: Channel
    let process: ProcessHandle?

    private init(channel: Channel, process: ProcessHandle?) {
        self.channel = channel
        self.process = process
    }

    var isActive: Bool { channel.isActive }

    static func open(_ configuration: PolicyServiceConfiguration, group: EventLoopGroup, logger: Logger) async throws(PolicyServiceError) -> PolicyServiceConnection {
        let timeout = TimeAmount(configuration.timeout)
        do {
            let socket = ClientBootstrap(group: group).connectTimeout(timeout)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(PolicyServiceHandler()) }
                }
            switch configuration.address {
            case .inet(let host, let port):
                return PolicyServiceConnection(channel: try await socket.connect(host: host, port: port).get(), process: nil)
            case .unix(let path):
                return PolicyServiceConnection(channel: try await socket.connect(unixDomainSocketPath: path).get(), process: nil)
            case .spawn(let argv):
                let process = try ProcessHandle.spawn(argv)
                do {
                    let channel = try await NIOPipeBootstrap(group: group)
                        .channelInitializer { channel in
                            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(PolicyServiceHandler()) }
                        }
                        .takingOwnershipOfDescriptors(input: process.output, output: process.input).get()
                    return PolicyServiceConnection(channel: channel, process: process)
                } catch {
                    process.stop()
                    throw error
                }
            }
        } catch let error as PolicyServiceError {
            throw error
        } catch {
            throw PolicyServiceError(.connect, "cannot reach \(configuration.address): \(describeConnectionError(error))")
        }
    }

    /// Sends the request; the answer's action, or an error by `deadline` (which closes the connection).
    func ask(_ request: ByteBuffer, deadline: NIODeadline) async throws(PolicyServiceError) -> String {
        let promise = channel.eventLoop.makePromise(of: String.self)
        let channel = self.channel
        let timer = channel.eventLoop.scheduleTask(deadline: deadline) {
            promise.fail(PolicyServiceError(.timeout, "no answer in time"))
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        channel.writeAndFlush(PolicyServiceHandler.Request(bytes: request, promise: promise)).whenFailure { error in
            promise.fail(PolicyServiceError(.closed, "the connection closed: \(describeConnectionError(error))"))
        }
        do {
            return try await promise.futureResult.get()
        } catch let error as PolicyServiceError {
            throw error
        } catch {
            throw PolicyServiceError(.closed, "the connection closed: \(describeConnectionError(error))")
        }
    }

    func close() {
        channel.close(promise: nil)
        process?.stop()
    }
}

/// Requests out, answers in, matched in order.
final class PolicyServiceHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Request
    typealias OutboundOut = ByteBuffer

    struct Request {
        var bytes: ByteBuffer
        var promise: EventLoopPromise<String>
    }

    private var reader = PolicyResponseReader()
    private var waiting: [EventLoopPromise<String>] = []

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        waiting.append(request.promise)
        context.write(wrapOutboundOut(request.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reader.append(unwrapInboundIn(data))
        do {
            while let action = try reader.next() {
                guard !waiting.isEmpty else {
                    return fail(PolicyServiceError(.protocolError, "an answer nobody asked for"), context: context)
                }
                waiting.removeFirst().succeed(action)
            }
        } catch {
            fail(PolicyServiceError(.protocolError, error.detail), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let pending = waiting
        waiting = []
        for promise in pending { promise.fail(PolicyServiceError(.closed, "the server closed the connection")) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(PolicyServiceError(.closed, "\(describeConnectionError(error))"), context: context)
    }

    private func fail(_ error: PolicyServiceError, context: ChannelHandlerContext) {
        let pending = waiting
        waiting = []
        for promise in pending { promise.fail(error) }
        context.close(promise: nil)
    }
}

/// A spawned policy server: its pipes (handed to NIO) and its process (stopped with the connection).
final class ProcessHandle: Sendable {
    let input: CInt
    let output: CInt
    let pid: pid_t
    private let process: Mutex<Process?>

    private init(process: Process, input: CInt, output: CInt) {
        self.process = Mutex(process)
        self.input = input
        self.output = output
        self.pid = process.processIdentifier
    }

    static func spawn(_ argv: [String]) throws(PolicyServiceError) -> ProcessHandle {
        guard let executable = argv.first else { throw PolicyServiceError(.connect, "spawn needs a program") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(argv.dropFirst())
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = FileHandle.standardError
        do {
            try process.run()
        } catch {
            throw PolicyServiceError(.connect, "cannot start \(executable): \(error.localizedDescription)")
        }
        // NIO owns copies of our ends; the child keeps its own.
        let input = dup(stdin.fileHandleForWriting.fileDescriptor)
        let output = dup(stdout.fileHandleForReading.fileDescriptor)
        try? stdin.fileHandleForWriting.close()
        try? stdout.fileHandleForReading.close()
        return ProcessHandle(process: process, input: input, output: output)
    }

    /// The child gets end-of-file on its input when NIO closes the pipe; a child that is still
    /// there two seconds later is terminated. Either way it is waited for, so none is left a zombie.
    func stop() {
        guard let process = self.process.withLock({ process -> Process? in defer { process = nil }; return process }) else { return }
        DispatchQueue.global().asyncAfter(deadline: .now() + 2) {
            if process.isRunning { process.terminate() }
        }
        DispatchQueue.global().async { process.waitUntilExit() }
    }
}
