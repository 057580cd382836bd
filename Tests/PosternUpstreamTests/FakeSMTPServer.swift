import Foundation
import NIOCore
import NIOPosix

/// A scripted SMTP server on 127.0.0.1 for client tests: answers every command with a fixed
/// reply and records what it received, message bytes exactly as they came over the wire.
final class FakeSMTPServer: Sendable {
    struct Script: Sendable {
        var greeting = "220 fake.example ESMTP\r\n"
        /// EHLO keywords after the first line; nil answers EHLO with 500.
        var capabilities: [String]? = ["PIPELINING"]
        /// Closes the connection without a reply when a command with this verb arrives.
        var hangUpOn: String?
        /// Replies 421 and closes when a command with this verb arrives (RFC 5321 §3.8).
        var shutDownOn: String?
        /// Refuses HELO too (with EHLO refused by `capabilities: nil`: no way to say hello).
        var refusesHELO = false
        /// Answers XFORWARD only once the next command has arrived: a client that waits for
        /// the XFORWARD reply before sending MAIL waits forever, one that pipelines does not.
        var answersXFORWARDWithTheNextCommand = false
    }

    /// What the server received.
    final class Transcript: @unchecked Sendable {
        private let lock = NSLock()
        private var _commands: [String] = []
        private var _messages: [[UInt8]] = []

        var commands: [String] { lock.withLock { _commands } }
        /// DATA content up to and including `.CRLF`, and BDAT payloads.
        var messages: [[UInt8]] { lock.withLock { _messages } }

        func record(command: String) { lock.withLock { _commands.append(command) } }
        func record(message: [UInt8]) { lock.withLock { _messages.append(message) } }
    }

    let transcript = Transcript()
    let port: Int
    private let channel: Channel

    /// `port`: 0 for any free port, or a given one (to bring an upstream back where it was).
    init(script: Script, group: EventLoopGroup, port: Int = 0) async throws {
        let transcript = self.transcript
        channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FakeSMTPHandler(script: script, transcript: transcript))
                }
            }
            .bind(host: "127.0.0.1", port: port).get()
        self.port = channel.localAddress!.port!
    }

    func stop() async {
        try? await channel.close().get()
    }
}

private final class FakeSMTPHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Mode {
        case command
        case data
        case bdat(remaining: Int)
    }

    private let script: FakeSMTPServer.Script
    private let transcript: FakeSMTPServer.Transcript
    private var mode = Mode.command
    private var buffer = ByteBuffer()
    /// A reply held back for `answersXFORWARDWithTheNextCommand`.
    private var heldReply: String?

    init(script: FakeSMTPServer.Script, transcript: FakeSMTPServer.Transcript) {
        self.script = script
        self.transcript = transcript
    }

    func channelActive(context: ChannelHandlerContext) {
        reply(script.greeting, context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        while step(context: context) {}
        buffer.discardReadBytes()
    }

    /// Handles one command or message; false when more bytes are needed.
    private func step(context: ChannelHandlerContext) -> Bool {
        switch mode {
        case .command:
            let view = buffer.readableBytesView
            guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else { return false }
            var line = buffer.readString(length: newline - buffer.readerIndex + 1)!
            line.removeLast()
            if line.hasSuffix("\r") { line.removeLast() }
            transcript.record(command: line)
            if let held = heldReply {
                heldReply = nil
                reply(held, context: context)
            }
            return command(line, context: context)
        case .data:
            let bytes = Array(buffer.readableBytesView)
            let end: Int?
            if bytes.starts(with: Array(".\r\n".utf8)) {
                end = 3
            } else if let range = bytes.firstRange(of: Array("\r\n.\r\n".utf8)) {
                end = range.upperBound
            } else {
                end = nil
            }
            guard let end else { return false }
            transcript.record(message: Array(bytes.prefix(end)))
            buffer.moveReaderIndex(forwardBy: end)
            mode = .command
            reply("250 2.0.0 queued\r\n", context: context)
            return true
        case .bdat(let remaining):
            guard buffer.readableBytes >= remaining else { return false }
            transcript.record(message: buffer.readBytes(length: remaining)!)
            mode = .command
            reply("250 2.0.0 queued\r\n", context: context)
            return true
        }
    }

    private func command(_ line: String, context: ChannelHandlerContext) -> Bool {
        let verb = line.split(separator: " ").first.map { $0.uppercased() } ?? ""
        if verb == script.hangUpOn?.uppercased() {
            context.close(promise: nil)
            return false
        }
        if verb == script.shutDownOn?.uppercased() {
            reply("421 4.3.2 fake.example shutting down\r\n", context: context)
            context.close(promise: nil)
            return false
        }
        switch verb {
        case "EHLO":
            guard let capabilities = script.capabilities else {
                reply("500 5.5.1 EHLO not understood\r\n", context: context)
                return true
            }
            let lines = ["fake.example greets you"] + capabilities
            let text = lines.enumerated().map { index, line in "250\(index == lines.count - 1 ? " " : "-")\(line)\r\n" }.joined()
            reply(text, context: context)
        case "HELO": reply(script.refusesHELO ? "550 5.7.1 go away\r\n" : "250 fake.example\r\n", context: context)
        case "XFORWARD" where script.answersXFORWARDWithTheNextCommand: heldReply = "250 2.0.0 ok\r\n"
        case "MAIL", "RCPT", "RSET", "NOOP", "XFORWARD": reply("250 2.1.0 ok\r\n", context: context)
        case "XCLIENT": reply("220 fake.example ESMTP\r\n", context: context)
        case "AUTH": reply("235 2.7.0 authenticated\r\n", context: context)
        case "DATA":
            mode = .data
            reply("354 end with <CRLF>.<CRLF>\r\n", context: context)
        case "BDAT":
            let words = line.split(separator: " ")
            mode = .bdat(remaining: words.count > 1 ? Int(words[1]) ?? 0 : 0)
        case "QUIT":
            reply("221 2.0.0 bye\r\n", context: context)
            context.close(promise: nil)
            return false
        default: reply("500 5.5.2 unknown command\r\n", context: context)
        }
        return true
    }

    private func reply(_ text: String, context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
    }
}
