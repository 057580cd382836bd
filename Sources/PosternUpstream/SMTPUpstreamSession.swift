import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import SMTPCore
import SMTPNIO

/// An SMTP client session to one upstream (RFC 5321 as client; RFC 3207, 4954, 3030, 2920).
/// Opened at the client's first MAIL and reused for its later transactions.
public final class SMTPUpstreamSession: UpstreamConnection {
    public let configuration: UpstreamConfiguration
    public let upstreamName: String
    /// EHLO keywords, upper-cased, with their parameters.
    public private(set) var capabilities: [String: String] = [:]
    public private(set) var isTLSActive = false
    private let channel: Channel
    private let logger: Logger
    private var broken = false
    /// XFORWARD attributes to send before each MAIL (Postfix resets them after a transaction).
    private var xforward: String?
    /// The XFORWARD attribute names the upstream offered, to describe a later client.
    private var xforwardNames: Set<String>?
    public private(set) var isReused = false
    /// Opened for a client identity (XCLIENT/XFORWARD considered), or for none.
    private var openedForClient = false
    /// How the real client was passed on: "xclient", "xforward" or nil.
    public private(set) var forwardedWith: String?

    private init(channel: Channel, configuration: UpstreamConfiguration, name: String, logger: Logger) {
        self.channel = channel
        self.configuration = configuration
        self.upstreamName = name
        self.logger = logger
    }

    public var isUsable: Bool { !broken && channel.isActive }

    /// The event loop the connection lives on.
    public var eventLoop: EventLoop { channel.eventLoop }

    /// Connects, reads the greeting, says EHLO, upgrades to TLS and authenticates as configured.
    /// Any failure here means this upstream cannot take mail now.
    public static func open(
        _ configuration: UpstreamConfiguration, host: String, port: Int, heloName: String,
        group: EventLoopGroup, logger: Logger, client: ClientIdentity? = nil
    ) async throws(UpstreamError) -> SMTPUpstreamSession {
        let name = configuration.target.name
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(configuration.timeouts.connect)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(SMTPClientHandler())
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            let timedOut = if case ChannelError.connectTimeout = error { true } else { false }
            throw UpstreamError(.unavailable, "cannot connect to \(name): \(describeConnectionError(error))",
                                failure: timedOut ? .timeout : .refused)
        }
        let session = SMTPUpstreamSession(channel: channel, configuration: configuration, name: name, logger: logger)
        do {
            try await session.handshake(host: host, heloName: heloName)
            if let client {
                try await session.forward(client, heloName: heloName)
                session.openedForClient = true
            }
        } catch {
            await session.close()
            // Whatever went wrong before the session was ready, this upstream cannot take mail now.
            throw UpstreamError(.unavailable, error.detail, failure: error.failure)
        }
        return session
    }

    private func handshake(host: String, heloName: String) async throws(UpstreamError) {
        let timeouts = configuration.timeouts
        let greeting = try await exchange(nil, timeout: timeouts.greeting, stage: "greeting")
        guard greeting.code == 220 else {
            throw UpstreamError(.unavailable, "\(upstreamName) greeted with \(greeting)", failure: .greetingRefused)
        }
        try await hello(heloName)
        if configuration.tls != .off {
            if capabilities["STARTTLS"] != nil {
                let reply = try await exchange(SMTPCommand.starttls.encoded, timeout: timeouts.ehlo, stage: "STARTTLS")
                guard reply.code == 220 else {
                    if configuration.tls == .require {
                        throw UpstreamError(.unavailable, "\(upstreamName) refused STARTTLS: \(reply)", failure: .tls)
                    }
                    return try await authenticate()
                }
                try await startTLS(host: host)
                do {
                    try await hello(heloName)
                } catch {
                    // A failed handshake shows as the connection closing under the first command.
                    throw UpstreamError(error.kind, "TLS with \(upstreamName): \(error.detail)", failure: .tls)
                }
            } else if configuration.tls == .require {
                throw UpstreamError(.unavailable, "\(upstreamName) does not offer STARTTLS and tls is require", failure: .tls)
            }
        }
        try await authenticate()
    }

    /// Tells the upstream who the real client is. XCLIENT replaces the session's client and
    /// the upstream greets again, so EHLO follows; XFORWARD is sent before each MAIL.
    private func forward(_ client: ClientIdentity, heloName: String) async throws(UpstreamError) {
        let mode = configuration.forwardClient
        func offered(_ keyword: String) -> Set<String>? {
            capabilities[keyword].map { Set($0.uppercased().split(separator: " ").map(String.init)) }
        }
        // Without ADDR the extension cannot carry what matters: the client's address.
        if mode == .auto || mode == .xclient, let names = offered("XCLIENT"), names.contains("ADDR") {
            var command = ByteBuffer()
            command.writeString("XCLIENT " + client.attributes(offered: names) + "\r\n")
            let reply = try await exchange(command, timeout: configuration.timeouts.ehlo, stage: "XCLIENT")
            guard reply.isPositive else {
                throw UpstreamError(.unavailable, "\(upstreamName) refused XCLIENT: \(reply) (is Postern in smtpd_authorized_xclient_hosts?)",
                                    failure: .forwardRefused)
            }
            // Postfix starts a new session and greets again (220): EHLO anew, with the
            // client's own name, as XCLIENT_README's proxy does.
            if reply.code == 220 { try await hello(client.helo ?? heloName) }
            forwardedWith = "xclient"
            return
        }
        if mode == .auto || mode == .xforward, let names = offered("XFORWARD"), names.contains("ADDR") {
            xforward = client.attributes(offered: names)
            xforwardNames = names
            forwardedWith = "xforward"
            return
        }
        if mode == .xclient || mode == .xforward {
            throw UpstreamError(.unavailable, "\(upstreamName) does not offer \(mode.rawValue.uppercased()) and forward_client is \(mode.rawValue)",
                                failure: .forwardRefused)
        }
    }

    private func hello(_ heloName: String) async throws(UpstreamError) {
        let reply = try await exchange(SMTPCommand.ehlo(heloName).encoded, timeout: configuration.timeouts.ehlo, stage: "EHLO")
        guard reply.code == 250 else {
            // RFC 5321 §3.2: fall back to HELO when EHLO is not understood.
            let helo = try await exchange(SMTPCommand.helo(heloName).encoded, timeout: configuration.timeouts.ehlo, stage: "HELO")
            guard helo.code == 250 else { throw UpstreamError(.unavailable, "\(upstreamName) refused EHLO and HELO: \(helo)", failure: .ehloRefused) }
            capabilities = [:]
            return
        }
        var keywords: [String: String] = [:]
        for line in reply.lines.dropFirst() {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard let keyword = parts.first else { continue }
            keywords[keyword.uppercased()] = parts.count > 1 ? String(parts[1]) : ""
        }
        capabilities = keywords
    }

    private func startTLS(host: String) async throws(UpstreamError) {
        var tls = TLSConfiguration.makeClientConfiguration()
        configuration.tlsPolicy.apply(to: &tls)
        if !configuration.verifyCertificate { tls.certificateVerification = .none }
        do {
            let context = try NIOSSLContext(configuration: tls)
            let serverName = IPAddress(host) == nil ? host : nil
            let channel = self.channel
            try await channel.eventLoop.submit {
                let handler = try NIOSSLClientHandler(context: context, serverHostname: serverName)
                try channel.pipeline.syncOperations.addHandler(handler, position: .first)
            }.get()
            isTLSActive = true
        } catch {
            throw UpstreamError(.unavailable, "TLS with \(upstreamName) failed: \(error)", failure: .tls)
        }
    }

    private func authenticate() async throws(UpstreamError) {
        guard let credentials = configuration.credentials else { return }
        guard let mechanisms = capabilities["AUTH"], mechanisms.uppercased().split(separator: " ").contains("PLAIN") else {
            throw UpstreamError(.unavailable, "\(upstreamName) does not offer AUTH PLAIN", failure: .auth)
        }
        // RFC 4616: authzid NUL authcid NUL passwd
        let token = Data(("\0" + credentials.username + "\0" + credentials.password).utf8).base64EncodedString()
        var command = ByteBuffer()
        command.writeString("AUTH PLAIN \(token)\r\n")
        let reply = try await exchange(command, timeout: configuration.timeouts.ehlo, stage: "AUTH")
        guard reply.code == 235 else { throw UpstreamError(.unavailable, "\(upstreamName) refused authentication: \(reply.code)", failure: .auth) }
    }

    // MARK: Transactions

    public func mail(_ path: ReversePath, _ parameters: MailParameters) async throws(UpstreamError) -> SMTPReply {
        // Not a failure of the connection: it stays usable for another transaction.
        let needsUTF8 = parameters.smtpUTF8 || !(path.mailbox?.isASCII ?? true)
        if needsUTF8 && capabilities["SMTPUTF8"] == nil {
            throw UpstreamError(.unsupported(.smtpUTF8), "\(upstreamName) does not offer SMTPUTF8")
        }
        if parameters.body == .eightBitMIME && capabilities["8BITMIME"] == nil {
            throw UpstreamError(.unsupported(.eightBitMIME), "\(upstreamName) does not offer 8BITMIME")
        }
        var command = ByteBuffer()
        SMTPCommand.mail(path, parameters).encode(
            into: &command, includeDSN: capabilities["DSN"] != nil, includeSize: capabilities["SIZE"] != nil,
            include8BitMIME: capabilities["8BITMIME"] != nil)
        guard let xforward else { return try await exchange(command, timeout: configuration.timeouts.mail, stage: "MAIL") }
        var forwardCommand = ByteBuffer()
        forwardCommand.writeString("XFORWARD \(xforward)\r\n")
        let forwardReply: SMTPReply
        let reply: SMTPReply
        if capabilities["PIPELINING"] != nil {
            // RFC 2920: XFORWARD and MAIL in one write, as Postfix's own client sends them.
            forwardCommand.writeImmutableBuffer(command)
            (forwardReply, reply) = try await exchangeTwo(forwardCommand, timeout: configuration.timeouts.mail, stage: "XFORWARD and MAIL")
        } else {
            forwardReply = try await exchange(forwardCommand, timeout: configuration.timeouts.mail, stage: "XFORWARD")
            reply = try await exchange(command, timeout: configuration.timeouts.mail, stage: "MAIL")
        }
        if forwardReply.code != 250 { logger.warning("upstream refused XFORWARD", metadata: ["upstream": "\(upstreamName)", "reply": "\(forwardReply)"]) }
        return reply
    }

    public func recipient(_ path: ForwardPath, _ parameters: RecipientParameters) async throws(UpstreamError) -> SMTPReply {
        var command = ByteBuffer()
        SMTPCommand.rcpt(path, parameters).encode(into: &command, includeDSN: capabilities["DSN"] != nil)
        return try await exchange(command, timeout: configuration.timeouts.rcpt, stage: "RCPT")
    }

    public func message(_ message: OutgoingMessage) async throws(UpstreamError) -> SMTPReply {
        let timeouts = configuration.timeouts
        if message.chunked && capabilities["CHUNKING"] != nil {
            // RFC 3030: one BDAT LAST chunk carrying prefix and content, no stuffing.
            var command = ByteBuffer()
            SMTPCommand.bdat(size: message.size, last: true).encode(into: &command)
            try await send(command, stage: "BDAT")
            try await send(message.prefix, stage: "BDAT")
            do {
                try await message.content.forEachChunk(from: message.skipping) { chunk in try await self.send(chunk, stage: "BDAT") }
            } catch let error as UpstreamError { throw error } catch { throw UpstreamError(.localError, "\(error)") }
            return try await exchange(nil, timeout: timeouts.dataTermination, stage: "end of BDAT")
        }
        let start = try await exchange(SMTPCommand.data.encoded, timeout: timeouts.dataInitiation, stage: "DATA")
        guard start.code == 354 else { return start }
        var stuffer = DotStuffer()
        var output = ByteBuffer()
        stuffer.stuff(message.prefix, into: &output)
        do {
            try await message.content.forEachChunk(from: message.skipping) { chunk in
                stuffer.stuff(chunk, into: &output)
                if output.readableBytes >= 64 * 1024 {
                    try await self.send(output, stage: "DATA content")
                    output = ByteBuffer()
                }
            }
        } catch let error as UpstreamError { throw error } catch { throw UpstreamError(.localError, "\(error)") }
        stuffer.finish(into: &output)
        return try await exchange(output, timeout: timeouts.dataTermination, stage: "end of DATA")
    }

    /// Whether this session may serve another client session: usable, and not bound to
    /// one client by XCLIENT.
    var isReusable: Bool { isUsable && forwardedWith != "xclient" }

    var keepable: SMTPUpstreamSession? { isReusable ? self : nil }

    /// Takes the session out of the idle pool for a new client: XFORWARD (when used) now
    /// describes that client. False when the session cannot serve it.
    func adopt(for client: ClientIdentity?) -> Bool {
        guard isReusable, (client != nil) == openedForClient else { return false }
        if let names = xforwardNames, let client {
            xforward = client.attributes(offered: names)
        }
        isReused = true
        return true
    }

    /// A command was answered: the connection is known to be alive again.
    private func markAnswered() { isReused = false }

    public func etrn(_ node: String) async throws(UpstreamError) -> SMTPReply {
        try await exchange(SMTPCommand.etrn(node).encoded, timeout: configuration.timeouts.mail, stage: "ETRN")
    }

    public func reset() async {
        guard isUsable else { return }
        do {
            let reply = try await exchange(SMTPCommand.rset.encoded, timeout: configuration.timeouts.mail, stage: "RSET")
            if reply.code != 250 { broken = true }
        } catch {
            broken = true
        }
    }

    public func close() async {
        if channel.isActive && !broken {
            _ = try? await exchange(SMTPCommand.quit.encoded, timeout: .seconds(5), stage: "QUIT")
        }
        try? await channel.close().get()
    }

    // MARK: Wire

    /// Sends `bytes` (if any) and waits for one reply.
    private func exchange(_ bytes: ByteBuffer?, timeout: TimeAmount, stage: String) async throws(UpstreamError) -> SMTPReply {
        let replies = try await request(bytes, replies: 1, timeout: timeout, stage: stage)
        guard let reply = replies.first else { throw UpstreamError(.connectionLost, "no reply to \(stage)") }
        if reply.code == 421 { broken = true } else { markAnswered() }
        return reply
    }

    /// Sends two pipelined commands and waits for both replies.
    private func exchangeTwo(_ bytes: ByteBuffer, timeout: TimeAmount, stage: String) async throws(UpstreamError) -> (SMTPReply, SMTPReply) {
        let replies = try await request(bytes, replies: 2, timeout: timeout, stage: stage)
        guard replies.count == 2 else { throw UpstreamError(.connectionLost, "no reply to \(stage)") }
        if replies.contains(where: { $0.code == 421 }) { broken = true } else { markAnswered() }
        return (replies[0], replies[1])
    }

    private func request(_ bytes: ByteBuffer?, replies: Int, timeout: TimeAmount, stage: String) async throws(UpstreamError) -> [SMTPReply] {
        guard !broken, channel.isActive else {
            throw UpstreamError(.connectionLost, "\(upstreamName) \(stage): connection already closed")
        }
        let promise = channel.eventLoop.makePromise(of: [SMTPReply].self)
        let request = SMTPClientRequest(bytes: bytes, expectedReplies: replies, timeout: timeout, stage: stage, promise: promise)
        // A write that cannot reach the handler (the channel closed meanwhile) must still
        // complete the reply promise, or the caller waits forever.
        channel.writeAndFlush(request).whenFailure { error in promise.fail(error) }
        do {
            return try await promise.futureResult.get()
        } catch let error as SMTPClientError {
            broken = true
            logger.warning("upstream exchange failed", metadata: ["upstream": "\(upstreamName)", "stage": "\(stage)", "error": "\(error)"])
            throw UpstreamError(error.kind == .timedOut ? .timedOut : .connectionLost, "\(upstreamName) \(stage): \(error)")
        } catch {
            broken = true
            throw UpstreamError(.connectionLost, "\(upstreamName) \(stage): \(error)")
        }
    }

    /// Writes content with back-pressure: returns once the bytes are handed to the socket.
    private func send(_ bytes: ByteBuffer, stage: String) async throws(UpstreamError) {
        let request = SMTPClientRequest(bytes: bytes, expectedReplies: 0, timeout: configuration.timeouts.dataBlock, stage: stage, promise: nil)
        // An upstream that stops reading would stall the write forever: close it after the
        // data block timeout (RFC 5321 §4.5.3.2.5), which fails the write.
        let channel = self.channel
        let watchdog = channel.eventLoop.scheduleTask(in: configuration.timeouts.dataBlock) { channel.close(promise: nil) }
        defer { watchdog.cancel() }
        do {
            try await channel.writeAndFlush(request).get()
        } catch {
            broken = true
            throw UpstreamError(.connectionLost, "\(upstreamName) \(stage): \(error)")
        }
    }
}
