import Foundation
import NIOCore
import NIOPosix

/// A policy server on 127.0.0.1 for client tests: reads requests (name=value lines ended by
/// an empty line), records them, and answers each with what `answer` returns for it
/// (nil: never answer; "CLOSE": hang up without an answer; other text is sent as is).
final class FakePolicyServer: @unchecked Sendable {
    private let lock = NSLock()
    private var _requests: [[String: String]] = []
    private var _connections = 0
    let port: Int
    private let channel: Channel

    var requests: [[String: String]] { lock.withLock { _requests } }
    /// Connections accepted so far.
    var connections: Int { lock.withLock { _connections } }

    init(group: EventLoopGroup, answer: @escaping @Sendable ([String: String]) -> String?) async throws {
        let recorder = Recorder()
        channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(recorder: recorder, answer: answer))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress!.port!
        recorder.server = self
    }

    func stop() async { try? await channel.close().get() }

    fileprivate func record(_ request: [String: String]) { lock.withLock { _requests.append(request) } }
    fileprivate func connected() { lock.withLock { _connections += 1 } }

    fileprivate final class Recorder: @unchecked Sendable {
        weak var server: FakePolicyServer?
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        private let recorder: Recorder
        private let answer: @Sendable ([String: String]) -> String?
        private var buffer = ByteBuffer()
        private var current: [String: String] = [:]

        init(recorder: Recorder, answer: @escaping @Sendable ([String: String]) -> String?) {
            self.recorder = recorder
            self.answer = answer
        }

        func channelActive(context: ChannelHandlerContext) {
            recorder.server?.connected()
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            buffer.writeBuffer(&bytes)
            while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let line = buffer.readString(length: newline - buffer.readerIndex)!
                buffer.moveReaderIndex(forwardBy: 1)
                if line.isEmpty {
                    let request = current
                    current = [:]
                    recorder.server?.record(request)
                    switch answer(request) {
                    case nil: break
                    case "CLOSE"?: context.close(promise: nil); return
                    case let text?: context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
                    }
                } else if let equals = line.firstIndex(of: "=") {
                    current[String(line[..<equals])] = String(line[line.index(after: equals)...])
                }
            }
        }
    }
}
