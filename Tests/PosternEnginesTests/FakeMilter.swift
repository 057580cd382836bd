import Foundation
import NIOCore
import NIOPosix
import PosternEngines

/// A milter *filter* on 127.0.0.1 for client tests: it speaks the filter side of protocol v6 as
/// a libmilter filter does, follows a `Script`, can misbehave on purpose, and records every packet
/// it receives, per connection. The Swift twin of `PosternIntegrationTests/Fixtures/fake_milter.py`
/// (same behaviour; the script format documented there maps one to one onto `Script`).
///
///     var script = FakeMilter.Script()
///     script.replies[.recipient] = .reply("550 5.7.1 no")
///     let milter = try await FakeMilter(group: group, script: script)
///     … connect a client to milter.port …
///     _ = await milter.wait { $0.first?.last?.command == .quit }
///     XCTAssertEqual(milter.received[0].map(\.letter), ["O", "D", "C", …])
///     await milter.stop()
///
/// Each connection is one session: OPTNEG, then events until QUIT (the fake then closes, as
/// libmilter does) or until the MTA hangs up. Packets are handled one at a time in arrival order;
/// a "slow" or "progress" reply holds back the packets behind it, as a blocking filter would.
final class FakeMilter: @unchecked Sendable {
    // MARK: Script

    struct Script: Sendable {
        /// The answer to OPTNEG.
        struct Negotiation: Sendable, Hashable {
            /// nil: min(offered, 6). Anything may be sent (7 is too new for Postfix).
            var version: UInt32? = nil
            /// nil: `.all` ∩ offered, as a libmilter filter asks.
            var actions: Milter.Actions? = nil
            /// Sent as is, even bits that were not offered (rspamd: `FakeMilter.rspamdFlags`).
            /// nil: offered ∩ `.skip`: every event, every reply.
            var flags: Milter.ProtocolFlags? = nil
            /// Macro names asked for per stage (secondary negotiation), e.g. `[.helo: "{tls_version} {cipher}"]`.
            var macros: [Milter.MacroStage: String] = [:]
        }

        /// What the fake answers to one command.
        indirect enum Reply: Sendable, Hashable {
            case `continue`, accept, reject, tempfail, discard, skip, shutdown
            /// SMFIR_CONN_FAIL ('f'), which Postfix does not know.
            case connectionFailure
            /// `count` PROGRESS packets, `progressInterval` apart, then CONTINUE.
            case progressThenContinue(Int = 3)
            /// SMFIR_REPLYCODE, sent verbatim ("550-a\r\n550 b" for several lines).
            case reply(String)
            /// SMFIR_QUARANTINE; at end of message CONTINUE follows (quarantine is not final).
            case quarantine(String)
            case ifBodyContains(String, then: Reply, else: Reply = .continue)
            /// Header name compared case-insensitively.
            case ifHeaderPresent(String, then: Reply, else: Reply = .continue)
            /// At RCPT: this recipient (as sent, e.g. "<a@b.example>"); later: any recipient of the message.
            case ifRecipientEquals(String, then: Reply, else: Reply = .continue)
        }

        /// A modification sent at end of message, before the final reply. Strings may hold
        /// `$header:Name`, `$macro:{i}`, `$mail`, `$rcpts`, `$helo`, `$client`, `$conn`.
        enum Modification: Sendable, Hashable {
            case addHeader(String, String)
            case insertHeader(UInt32, String, String)
            /// An empty value deletes.
            case changeHeader(UInt32, String, String)
            /// 'b' packets of at most 65535 octets; the text `repeat` times.
            case replaceBody(String, repeat: Int = 1)
            case addRecipient(String)
            case addRecipientWithParameters(String, String)
            case deleteRecipient(String)
            case changeFrom(String, String? = nil)
            case quarantine(String)
            /// ADDHEADER `name: yes|no`: was a header named `seen` among those received?
            /// (With HDR_LEADSPC negotiated the value gets its leading space.)
            case addHeaderIfSeen(String, seen: String)
        }

        enum Garbage: Sendable, Hashable {
            /// A whole packet with code 0x01 and 16 random octets.
            case frame
            /// 64 random octets.
            case random
            /// "HTTP/1.1 400 Bad Request\r\n\r\n" (its first four octets read as a length of 1.2 GB).
            case text
        }

        enum Oversize: Sendable, Hashable {
            /// Only a length of 2^31-1 and one code octet, then silence.
            case header
            /// A real 16 MiB packet: 'b' at end of message (then the final reply), 'O' at OPTNEG,
            /// 'y' otherwise (it is the reply).
            case packet
        }

        var negotiate = Negotiation()
        /// Per command; missing ones continue.
        var replies: [Milter.Command: Reply] = [:]
        var eomActions: [Modification] = []
        /// Seconds between PROGRESS packets.
        var progressInterval: Double = 0.2
        /// Answer events whose NR flag was negotiated anyway (a misbehaving filter).
        var replyDespiteNoReply = false
        // Faults, per connection.
        /// The connections (1-based) the faults and `slow` apply to; nil: all.
        var faultsOn: Set<Int>? = nil
        /// From that command on: read and record everything, answer nothing.
        var neverAnswerAt: Milter.Command? = nil
        /// Close the connection when that command arrives (it is recorded first).
        var closeAt: Milter.Command? = nil
        /// Send `garbageKind` instead of the reply to that command.
        var garbageAt: Milter.Command? = nil
        var garbageKind: Garbage = .frame
        /// Send `oversizeKind` instead of the reply to that command.
        var oversizeAt: Milter.Command? = nil
        var oversizeKind: Oversize = .header
        /// Ask for actions 0x3FF at OPTNEG: more than anyone offers.
        var unofferedActions = false
        /// Seconds to wait before answering that command (each time).
        var slow: [Milter.Command: Double] = [:]
        /// As libmilter: a packet announcing more data is recorded (`tooBig`) and the connection closed.
        var maximumPacket = Milter.maximumChunk

        init() {}
    }

    /// The NR bits rspamd 3.4 returns whatever was offered: every "no reply" flag, NR_HDR included (0xFF080).
    static let rspamdFlags = Milter.ProtocolFlags([
        .noConnectReply, .noHeloReply, .noMailReply, .noRecipientReply, .noDataReply, .noUnknownReply,
        .noHeaderReply, .noEndOfHeadersReply, .noBodyReply,
    ])

    // MARK: What was received

    /// One packet from the MTA, decoded.
    struct Received: Sendable, Hashable, CustomStringConvertible {
        var code: UInt8
        /// C: [host, family ("4" "6" "L" "U"), port, address]; H: [helo]; M, R: the argv; L: [name, value]
        /// exactly as received (a leading space shows); U: [line]; O: [version, actions, protocol] in decimal.
        var fields: [String] = []
        /// D: the command these macros are for.
        var macroStage: Milter.Command? = nil
        /// D: the macros, in the order sent.
        var macros: [(name: String, value: String)] = []
        /// The data after the command octet (empty for `tooBig`).
        var data: [UInt8] = []
        /// Data octets, as announced.
        var size = 0
        /// An event this filter excluded with a NO* flag.
        var unwanted = false
        /// Announced more than `maximumPacket`: not read, the connection was closed.
        var tooBig = false
        /// `closeAt` closed the connection on this packet.
        var closedHere = false
        /// The codes of what the fake sent in answer, modifications included ("?" for garbage/oversize).
        var sent: [Character] = []

        var command: Milter.Command? { Milter.Command(rawValue: code) }
        var letter: Character { Character(Unicode.Scalar(code)) }
        var text: String { String(decoding: data, as: UTF8.self) }
        /// D: one macro's value.
        func macro(_ name: String) -> String? { macros.first { $0.name == name }?.value }

        var description: String {
            var text = "\(letter)"
            if let stage = macroStage { text += "(\(Character(Unicode.Scalar(stage.rawValue))))" + macros.map { "\($0.name)=\($0.value)" }.description }
            if !fields.isEmpty { text += fields.description }
            if code == UInt8(ascii: "B") { text += "[\(size) octets]" }
            if !sent.isEmpty { text += "→" + String(sent) }
            return text
        }

        static func == (a: Received, b: Received) -> Bool {
            a.code == b.code && a.fields == b.fields && a.macroStage == b.macroStage && a.macros.map(\.name) == b.macros.map(\.name)
                && a.macros.map(\.value) == b.macros.map(\.value) && a.data == b.data && a.size == b.size && a.unwanted == b.unwanted
                && a.tooBig == b.tooBig && a.closedHere == b.closedHere && a.sent == b.sent
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(code)
            hasher.combine(fields)
            hasher.combine(data)
        }
    }

    /// How a connection ended.
    enum Ending: Sendable, Hashable {
        /// QUIT arrived; the fake closed.
        case quit
        /// The MTA closed (or reset) the connection without QUIT.
        case closedByMTA
        /// The fake closed it (`closeAt`, `tooBig`, a bad length).
        case closedByFake
    }

    // MARK: Server

    let port: Int
    let script: Script
    private let channel: Channel
    private let lock = NSLock()
    private var _received: [[Received]] = []
    private var _endings: [Ending?] = []

    /// Per connection (in the order accepted), the packets received so far.
    var received: [[Received]] { lock.withLock { _received } }
    /// Per connection, how it ended (nil: still open).
    var endings: [Ending?] { lock.withLock { _endings } }
    /// Connections accepted so far.
    var connections: Int { lock.withLock { _received.count } }

    init(group: EventLoopGroup, script: Script = Script()) async throws {
        self.script = script
        let box = Box()
        channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Session(box: box, script: script))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress!.port!
        box.server = self
    }

    /// Stops listening. Open sessions are not cut (close the client side); they end with the group.
    func stop() async { try? await channel.close().get() }

    /// Polls until `condition` holds for what was received (true), or `timeout` passes (false).
    func wait(timeout: Duration = .seconds(5), until condition: ([[Received]]) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(received) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition(received)
    }

    fileprivate func connected() -> Int {
        lock.withLock {
            _received.append([])
            _endings.append(nil)
            return _received.count - 1
        }
    }

    fileprivate func record(_ packet: Received, connection: Int) -> Int {
        lock.withLock {
            _received[connection].append(packet)
            return _received[connection].count - 1
        }
    }

    fileprivate func sent(_ code: Character, connection: Int, index: Int) {
        lock.withLock { _received[connection][index].sent.append(code) }
    }

    fileprivate func ended(_ ending: Ending, connection: Int) {
        lock.withLock { if _endings[connection] == nil { _endings[connection] = ending } }
    }

    fileprivate final class Box: @unchecked Sendable {
        weak var server: FakeMilter?
    }

    // MARK: One session

    /// One step of an answer: the answers are computed when a packet's turn comes, then played.
    private enum Step {
        case write(ByteBuffer, Character)
        case sleep(Double)
        case close(Ending)
    }

    private final class Session: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        private let box: Box
        private let script: Script
        private var connection = 0
        private var faulty = true
        private var buffer = ByteBuffer()
        private var queue: [(code: UInt8, data: ByteBuffer)] = []
        private var busy = false
        private var finished = false
        private var silent = false
        // Negotiated.
        private var flags = Milter.ProtocolFlags()
        // Seen.
        private var macros: [UInt8: [(name: String, value: String)]] = [:]
        private var client: [String] = []
        private var helo = ""
        private var mail: [String] = []
        private var recipients: [String] = []
        private var currentRecipient: String?
        private var headers: [(name: String, value: String)] = []
        private var body: [UInt8] = []

        init(box: Box, script: Script) {
            self.box = box
            self.script = script
        }

        func channelActive(context: ChannelHandlerContext) {
            connection = box.server?.connected() ?? 0
            faulty = script.faultsOn.map { $0.contains(connection + 1) } ?? true
            context.fireChannelActive()
        }

        func channelInactive(context: ChannelHandlerContext) {
            if !finished { box.server?.ended(.closedByMTA, connection: connection) }
            finished = true
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            context.close(promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !finished else { return }
            var bytes = unwrapInboundIn(data)
            buffer.writeBuffer(&bytes)
            while let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) {
                if length == 0 {
                    record(Received(code: 0), context: context)
                    finish(.closedByFake, context: context)
                    return
                }
                if Int(length) - 1 > script.maximumPacket {
                    guard let code = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self) else { return }
                    record(Received(code: code, size: Int(length) - 1, tooBig: true), context: context)
                    finish(.closedByFake, context: context)
                    return
                }
                guard buffer.readableBytes >= 4 + Int(length) else { break }
                buffer.moveReaderIndex(forwardBy: 4)
                let code: UInt8 = buffer.readInteger()!
                queue.append((code, buffer.readSlice(length: Int(length) - 1)!))
            }
            buffer.discardReadBytes()
            pump(context: context)
        }

        // MARK: Handling

        private func pump(context: ChannelHandlerContext) {
            while !busy, !finished, !queue.isEmpty {
                let (code, data) = queue.removeFirst()
                let (index, steps) = handle(code: code, data: data)
                play(steps[...], index: index, context: context)
            }
        }

        private func play(_ steps: ArraySlice<Step>, index: Int, context: ChannelHandlerContext) {
            var steps = steps
            while let step = steps.popFirst() {
                guard !finished else { return }
                switch step {
                case .write(let bytes, let code):
                    context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
                    box.server?.sent(code, connection: connection, index: index)
                case .close(let ending):
                    finish(ending, context: context)
                    return
                case .sleep(let seconds):
                    busy = true
                    let bound = NIOLoopBound((self, context, steps), eventLoop: context.eventLoop)
                    context.eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) {
                        let (session, context, rest) = bound.value
                        session.busy = false
                        session.play(rest, index: index, context: context)
                        session.pump(context: context)
                    }
                    return
                }
            }
        }

        private func finish(_ ending: Ending, context: ChannelHandlerContext) {
            guard !finished else { return }
            finished = true
            box.server?.ended(ending, connection: connection)
            context.close(promise: nil)
        }

        @discardableResult
        private func record(_ packet: Received, context: ChannelHandlerContext) -> Int {
            box.server?.record(packet, connection: connection) ?? 0
        }

        private func handle(code: UInt8, data: ByteBuffer) -> (Int, [Step]) {
            let packet = decode(code: code, data: data)
            let command = Milter.Command(rawValue: code)
            if command != .recipient { currentRecipient = nil }
            switch command {
            case .macro?: macros[packet.macroStage?.rawValue ?? 0] = packet.macros
            case .connect?: client = packet.fields
            case .helo?: helo = packet.fields.first ?? ""
            case .mail?:
                resetMessage()
                mail = packet.fields
            case .recipient?:
                currentRecipient = packet.fields.first ?? ""
                recipients.append(currentRecipient!)
            case .header?:
                headers.append((packet.fields.first ?? "", packet.fields.count > 1 ? packet.fields[1] : ""))
            case .body?: body += packet.data
            default: break
            }
            var recorded = packet
            let closing = faulty && command != nil && script.closeAt == command
            recorded.closedHere = closing
            guard let server = box.server else { return (0, []) }
            let index = server.record(recorded, connection: connection)
            if closing { return (index, [.close(.closedByFake)]) }
            if faulty, let command, script.neverAnswerAt == command { silent = true }
            // Macro, abort, quit, quit-new-connection: no reply.
            if silent || [UInt8(ascii: "D"), UInt8(ascii: "A"), UInt8(ascii: "Q"), UInt8(ascii: "K")].contains(code) {
                if code == UInt8(ascii: "A") { resetMessage() }
                if code == UInt8(ascii: "K") {
                    resetMessage()
                    macros = [:]
                }
                if code == UInt8(ascii: "Q") {
                    return (index, [.close(.quit)])  // as libmilter: the session is over
                }
                return (index, [])
            }
            guard let command else { return (index, []) }  // an unknown command: libmilter ignores it
            var steps: [Step] = []
            if faulty, let seconds = script.slow[command] { steps.append(.sleep(seconds)) }
            if faulty, script.garbageAt == command {
                steps.append(.write(garbage(), "?"))
            } else if faulty, script.oversizeAt == command {
                steps.append(.write(oversize(command), "?"))
                if script.oversizeKind == .header {
                    silent = true
                } else if command == .endOfMessage {
                    steps += reply(to: command)
                    resetMessage()
                }
            } else if command == .optionNegotiation {
                steps.append(negotiate(data))
            } else if command == .endOfMessage {
                for modification in script.eomActions {
                    for packet in self.modification(modification) { steps.append(.write(packet, Character(Unicode.Scalar(packet.getInteger(at: 4, as: UInt8.self)!)))) }
                }
                steps += reply(to: command)
                resetMessage()
            } else if let noReply = Milter.ProtocolFlags.noReply(to: command), flags.contains(noReply), !script.replyDespiteNoReply {
                // Negotiated "no reply".
            } else {
                steps += reply(to: command)
            }
            return (index, steps)
        }

        private func resetMessage() {
            mail = []
            recipients = []
            headers = []
            body = []
            currentRecipient = nil
        }

        private func decode(code: UInt8, data: ByteBuffer) -> Received {
            var packet = Received(code: code, data: Array(data.readableBytesView), size: data.readableBytes)
            let bytes = packet.data
            switch Milter.Command(rawValue: code) {
            case .optionNegotiation?:
                var data = data
                if let version: UInt32 = data.readInteger(), let actions: UInt32 = data.readInteger(), let flags: UInt32 = data.readInteger() {
                    packet.fields = [String(version), String(actions), String(flags)]
                }
            case .macro?:
                packet.macroStage = bytes.first.flatMap(Milter.Command.init(rawValue:))
                let strings = Self.strings(bytes.dropFirst())
                packet.macros = stride(from: 0, to: strings.count, by: 2).map { (strings[$0], $0 + 1 < strings.count ? strings[$0 + 1] : "") }
            case .connect?:
                let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
                packet.fields = [String(decoding: bytes[..<end], as: UTF8.self)]
                if end + 1 < bytes.count {
                    let family = bytes[end + 1]
                    packet.fields.append(String(Character(Unicode.Scalar(family))))
                    if family != UInt8(ascii: "U"), end + 4 <= bytes.count {
                        packet.fields.append(String(UInt16(bytes[end + 2]) << 8 | UInt16(bytes[end + 3])))
                        packet.fields += Self.strings(bytes[(end + 4)...])
                    }
                }
            case .helo?, .mail?, .recipient?, .header?, .unknown?:
                packet.fields = Self.strings(bytes[...])
            default:
                if Milter.Command(rawValue: code) == nil, !bytes.isEmpty {
                    packet.fields = [bytes.map { String(format: "%02x", $0) }.joined()]
                }
            }
            if let command = Milter.Command(rawValue: code), let omit = Milter.ProtocolFlags.omit(command), flags.contains(omit) {
                packet.unwanted = true
            }
            return packet
        }

        /// NUL-terminated strings (a last one without its NUL counts too).
        private static func strings(_ bytes: ArraySlice<UInt8>) -> [String] {
            var parts = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            if bytes.last == 0 || bytes.isEmpty { parts.removeLast() }
            return parts
        }

        // MARK: Answers

        private static func packet(_ code: UInt8, _ write: (inout ByteBuffer) -> Void = { _ in }) -> ByteBuffer {
            var buffer = ByteBuffer()
            buffer.writeInteger(UInt32(0))
            buffer.writeInteger(code)
            write(&buffer)
            buffer.setInteger(UInt32(buffer.writerIndex - 4), at: 0)
            return buffer
        }

        private static func z(_ text: String, _ buffer: inout ByteBuffer) {
            buffer.writeString(text)
            buffer.writeInteger(UInt8(0))
        }

        private static func simple(_ letter: Character) -> Step {
            .write(packet(letter.asciiValue!), letter)
        }

        private func negotiate(_ data: ByteBuffer) -> Step {
            var data = data
            let offeredVersion: UInt32 = data.readInteger() ?? 6
            let offeredActions = Milter.Actions(rawValue: data.readInteger() ?? 0)
            let offeredFlags = Milter.ProtocolFlags(rawValue: data.readInteger() ?? 0)
            let n = script.negotiate
            let version = n.version ?? min(offeredVersion, 6)
            var actions = n.actions ?? offeredActions.intersection(.all)
            if faulty && script.unofferedActions { actions = Milter.Actions(rawValue: 0x3FF) }
            flags = n.flags ?? offeredFlags.intersection(.skip)
            let flags = self.flags
            return .write(Self.packet(UInt8(ascii: "O")) { buffer in
                buffer.writeInteger(version)
                buffer.writeInteger(actions.rawValue)
                buffer.writeInteger(flags.rawValue)
                for (stage, names) in n.macros.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                    buffer.writeInteger(stage.rawValue)
                    Self.z(names, &buffer)
                }
            }, "O")
        }

        private func choose(_ reply: Script.Reply) -> Script.Reply {
            switch reply {
            case .ifBodyContains(let needle, let then, let otherwise):
                let hit = needle.isEmpty || body.firstRange(of: Array(needle.utf8)) != nil
                return choose(hit ? then : otherwise)
            case .ifHeaderPresent(let name, let then, let otherwise):
                return choose(headers.contains { $0.name.lowercased() == name.lowercased() } ? then : otherwise)
            case .ifRecipientEquals(let address, let then, let otherwise):
                let hit = currentRecipient.map { $0 == address } ?? recipients.contains(address)
                return choose(hit ? then : otherwise)
            default:
                return reply
            }
        }

        private func reply(to command: Milter.Command) -> [Step] {
            let final = command == .endOfMessage
            switch choose(script.replies[command] ?? .continue) {
            case .continue: return [Self.simple("c")]
            case .accept: return [Self.simple("a")]
            case .reject: return [Self.simple("r")]
            case .tempfail: return [Self.simple("t")]
            case .discard: return [Self.simple("d")]
            case .skip: return [Self.simple("s")]
            case .shutdown: return [Self.simple("4")]
            case .connectionFailure: return [Self.simple("f")]
            case .progressThenContinue(let count):
                return (0..<max(count, 0)).flatMap { _ in [Self.simple("p"), .sleep(script.progressInterval)] } + [Self.simple("c")]
            case .reply(let text):
                return [.write(Self.packet(UInt8(ascii: "y")) { Self.z(text, &$0) }, "y")]
            case .quarantine(let reason):
                let q = Step.write(Self.packet(UInt8(ascii: "q")) { Self.z(reason, &$0) }, "q")
                return final ? [q, Self.simple("c")] : [q]
            case .ifBodyContains, .ifHeaderPresent, .ifRecipientEquals:
                return [Self.simple("c")]  // not reached: choose resolves conditions
            }
        }

        private func modification(_ modification: Script.Modification) -> [ByteBuffer] {
            let e = expand
            func code(_ letter: Character) -> UInt8 { letter.asciiValue! }
            switch modification {
            case .addHeader(let name, let value):
                return [Self.packet(code("h")) { Self.z(e(name), &$0); Self.z(e(value), &$0) }]
            case .insertHeader(let index, let name, let value):
                return [Self.packet(code("i")) { $0.writeInteger(index); Self.z(e(name), &$0); Self.z(e(value), &$0) }]
            case .changeHeader(let index, let name, let value):
                return [Self.packet(code("m")) { $0.writeInteger(index); Self.z(e(name), &$0); Self.z(e(value), &$0) }]
            case .replaceBody(let text, let times):
                let bytes = Array(e(text).utf8)
                let body = Array((0..<max(times, 1)).map { _ in bytes }.joined())
                guard !body.isEmpty else { return [Self.packet(code("b"))] }
                return stride(from: 0, to: body.count, by: Milter.maximumChunk).map { start in
                    Self.packet(code("b")) { $0.writeBytes(body[start..<min(start + Milter.maximumChunk, body.count)]) }
                }
            case .addRecipient(let address):
                return [Self.packet(code("+")) { Self.z(e(address), &$0) }]
            case .addRecipientWithParameters(let address, let parameters):
                return [Self.packet(code("2")) { Self.z(e(address), &$0); Self.z(e(parameters), &$0) }]
            case .deleteRecipient(let address):
                return [Self.packet(code("-")) { Self.z(e(address), &$0) }]
            case .changeFrom(let address, let parameters):
                return [Self.packet(code("e")) { buffer in
                    Self.z(e(address), &buffer)
                    if let parameters { Self.z(e(parameters), &buffer) }
                }]
            case .quarantine(let reason):
                return [Self.packet(code("q")) { Self.z(e(reason), &$0) }]
            case .addHeaderIfSeen(let name, let seen):
                let present = headers.contains { $0.name.lowercased() == seen.lowercased() }
                let value = (flags.contains(.headerLeadingSpace) ? " " : "") + (present ? "yes" : "no")
                return [Self.packet(code("h")) { Self.z(name, &$0); Self.z(value, &$0) }]
            }
        }

        /// `$header:Name`, `$macro:{name}` / `$macro:name`, `$mail`, `$rcpts`, `$helo`, `$client`, `$conn`.
        private func expand(_ text: String) -> String {
            guard text.contains("$") else { return text }
            var result = ""
            var rest = Substring(text)
            let nameCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
            while let dollar = rest.firstIndex(of: "$") {
                result += rest[..<dollar]
                rest = rest[rest.index(after: dollar)...]
                if rest.hasPrefix("header:") {
                    let name = rest.dropFirst(7).prefix { nameCharacters.contains($0) }
                    rest = rest.dropFirst(7 + name.count)
                    result += headers.first { $0.name.lowercased() == name.lowercased() }?.value ?? ""
                } else if rest.hasPrefix("macro:") {
                    var name = rest.dropFirst(6)
                    if name.first == "{", let close = name.firstIndex(of: "}") {
                        name = name[...close]
                    } else {
                        name = name.prefix { nameCharacters.contains($0) }
                    }
                    rest = rest.dropFirst(6 + name.count)
                    result += macro(String(name))
                } else if let word = ["mail", "rcpts", "helo", "client", "conn"].first(where: { word in
                    rest.hasPrefix(word) && !(rest.dropFirst(word.count).first.map { $0.isLetter || $0.isNumber || $0 == "_" } ?? false)
                }) {
                    rest = rest.dropFirst(word.count)
                    switch word {
                    case "mail": result += mail.first ?? ""
                    case "rcpts": result += recipients.joined(separator: ",")
                    case "helo": result += helo
                    case "client": result += client.count > 3 ? client[3] : ""
                    default: result += String(connection + 1)
                    }
                } else {
                    result += "$"
                }
            }
            return result + rest
        }

        /// The newest value of a macro over the stages so far (`{i}` and `i` are the same).
        private func macro(_ name: String) -> String {
            let bare = name.hasPrefix("{") && name.hasSuffix("}") ? String(name.dropFirst().dropLast()) : name
            for stage in "EBNLTRMHC" {
                for pair in macros[stage.asciiValue!] ?? [] where pair.name == bare || pair.name == "{\(bare)}" {
                    return pair.value
                }
            }
            return ""
        }

        private func garbage() -> ByteBuffer {
            switch script.garbageKind {
            case .random: return ByteBuffer(bytes: (0..<64).map { _ in UInt8.random(in: 0...255) })
            case .text: return ByteBuffer(string: "HTTP/1.1 400 Bad Request\r\n\r\n")
            case .frame: return Self.packet(0x01) { $0.writeBytes((0..<16).map { _ in UInt8.random(in: 0...255) }) }
            }
        }

        private func oversize(_ command: Milter.Command) -> ByteBuffer {
            switch script.oversizeKind {
            case .header:
                var buffer = ByteBuffer()
                buffer.writeInteger(UInt32(0x7FFF_FFFF))
                buffer.writeInteger(UInt8(ascii: "c"))
                return buffer
            case .packet:
                let size = 16 << 20
                let code: Character = command == .endOfMessage ? "b" : command == .optionNegotiation ? "O" : "y"
                var buffer = ByteBuffer()
                buffer.reserveCapacity(size + 5)
                buffer.writeInteger(UInt32(size + 1))
                buffer.writeInteger(code.asciiValue!)
                buffer.writeRepeatingByte(UInt8(ascii: "x"), count: size)
                return buffer
            }
        }
    }
}
