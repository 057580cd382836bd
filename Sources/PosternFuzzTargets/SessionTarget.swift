import NIOCore
import SMTPCore

/// Plays `input` as one client's byte stream into `SMTPServerStateMachine`, carrying out
/// its actions the way `SMTPSession` does, with a simulated upstream.
///
/// Input layout: byte 0 holds option flags, byte 1 more options and the size of each
/// simulated read (see `SessionOptions`); the rest is what the client sends.
///
/// Invariants: no command is delivered after the session closed (the machine itself traps
/// on that); an action that ends the session leaves the machine closed; every reply code
/// is 2xx–5xx, with an enhanced code exactly when the session began with EHLO (RFC 2034)
/// and of the reply's class; recipient and error limits hold; while reading commands, at
/// most one line's worth of bytes is buffered; normalised content has CRLF line ends only.
public func fuzzSession(_ input: [UInt8]) {
    guard input.count >= 2, input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let options = SessionOptions(flags: input[0], more: input[1])
    var driver = SessionDriver(options: options, pieceSize: options.pieceSize, stream: Array(input[2...]))
    driver.run()
}

/// What bytes 0 and 1 of a `session` input select.
struct SessionOptions {
    /// Bytes per simulated read; 0: the whole stream in one read.
    var pieceSize: Int
    /// ETRN is allowed (a trusted client) rather than refused.
    var etrnTrusted: Bool
    var configuration: SMTPServerConfiguration
    var bareLineEndings: SMTPInputFramer.BareLineEndingPolicy
    /// The simulated upstream refuses every MAIL.
    var upstreamRefusesMail: Bool
    /// The simulated upstream refuses RCPT for local parts of odd length.
    var upstreamRefusesSomeRecipients: Bool

    init(flags: UInt8, more: UInt8) {
        pieceSize = Int(more & 0x3F)
        etrnTrusted = more & 0xC0 == 0xC0
        let authentication: AuthenticationOffer = switch more >> 6 {
        case 0: .off
        case 1: .afterTLS
        default: .always
        }
        configuration = SMTPServerConfiguration(
            hostname: "mx.fuzz.test",
            maximumMessageSize: flags & 0x80 != 0 ? 64 : 25 * 1024 * 1024,
            maximumRecipients: flags & 0x40 != 0 ? 2 : 100,
            maximumErrors: flags & 0x20 != 0 ? 3 : 10,
            maximumCommandLineLength: 512,
            maximumTextLineLength: flags & 0x80 != 0 ? 40 : 1000,
            tlsAvailable: flags & 0x01 != 0,
            requireTLS: flags & 0x02 != 0,
            authentication: authentication,
            maximumJunkCommands: flags & 0x20 != 0 ? 5 : 100)
        bareLineEndings = flags & 0x04 != 0 ? .normalise : .reject
        upstreamRefusesMail = flags & 0x08 != 0
        upstreamRefusesSomeRecipients = flags & 0x10 != 0
    }
}

struct SessionDriver {
    let options: SessionOptions
    var machine: SMTPServerStateMachine
    let parser: SMTPCommandParser
    var framer = SMTPInputFramer()
    let pieceSize: Int
    let stream: [UInt8]
    var offset = 0
    var closed = false
    /// The command being answered is EHLO or HELO, whose reply carries no enhanced code.
    var answeringHello = false
    /// Every reply sent, for tests that replay a session.
    var replies: [SMTPReply] = []

    init(options: SessionOptions, pieceSize: Int, stream: [UInt8]) {
        self.options = options
        self.machine = SMTPServerStateMachine(configuration: options.configuration)
        self.parser = machine.parser
        self.pieceSize = pieceSize
        self.stream = stream
    }

    var configuration: SMTPServerConfiguration { options.configuration }

    /// The next simulated read into the framer; false when the client has closed.
    mutating func readMore() -> Bool {
        guard offset < stream.count else { return false }
        let end = pieceSize == 0 ? stream.count : min(stream.count, offset + pieceSize)
        framer.append(ByteBuffer(bytes: stream[offset..<end]))
        offset = end
        return true
    }

    mutating func run() {
        send(machine.greeting)
        while !closed {
            while !closed, let event = framer.nextCommandLine(maximumLength: configuration.maximumCommandLineLength) {
                precondition(machine.phase != .closed, "command framed after the session closed")
                let action: SMTPServerStateMachine.Action
                switch event {
                case .line(let line):
                    do {
                        let command = try parser.parse(line.readableBytesView)
                        switch command {
                        case .ehlo, .helo: answeringHello = true
                        default: answeringHello = false
                        }
                        action = machine.receive(command)
                    } catch {
                        answeringHello = false
                        action = machine.receive(error)
                    }
                case .failure(let error):
                    answeringHello = false
                    action = machine.receive(error)
                }
                perform(action)
                precondition(machine.errorCount <= configuration.maximumErrors + 1, "error count past the limit")
                precondition((machine.transaction?.recipients.count ?? 0) <= configuration.maximumRecipients, "too many recipients")
            }
            if closed { break }
            precondition(framer.bufferedBytes < configuration.maximumCommandLineLength,
                         "\(framer.bufferedBytes) bytes buffered between commands")
            if !readMore() { clientClosed() }
        }
    }

    /// The client went away: the session closes, nothing more is delivered.
    mutating func clientClosed() {
        machine.close()
        closed = true
        precondition(machine.phase == .closed && machine.transaction == nil, "close left a transaction")
    }

    mutating func send(_ reply: SMTPReply) {
        precondition((200...599).contains(reply.code), "reply code \(reply.code)")
        if let enhanced = reply.enhanced {
            precondition(enhanced.codeClass == (reply.code >= 500 ? 5 : reply.code >= 400 ? 4 : 2),
                         "\(reply) has an enhanced code of another class")
        }
        replies.append(reply)
    }

    /// A reply the machine prepared: enhanced codes after EHLO, none otherwise (RFC 2034).
    /// The reply to EHLO itself (the extension list) has none.
    mutating func sendPrepared(_ reply: SMTPReply) {
        if answeringHello && reply.code == 250 {
            precondition(reply.enhanced == nil && reply.lines.first == configuration.hostname, "hello answered \(reply)")
        } else {
            precondition((reply.enhanced != nil) == machine.isExtended, "\(reply) after \(machine.isExtended ? "EHLO" : "no EHLO")")
        }
        send(reply)
    }

    mutating func perform(_ action: SMTPServerStateMachine.Action) {
        switch action {
        case .reply(let reply), .reset(let reply):
            precondition(machine.phase != .closed, "a plain reply closed the session")
            sendPrepared(reply)
        case .close(let reply), .quit(let reply):
            precondition(machine.phase == .closed, "\(reply) did not close the session")
            sendPrepared(reply)
            // As `SMTPSession.close()`: the machine is closed, whatever transaction was open ends.
            machine.close()
            closed = true
        case .startTLS(let reply):
            precondition(reply.code == 220 && machine.phase == .negotiatingTLS, "STARTTLS answered \(reply)")
            sendPrepared(reply)
            // RFC 3207 §4.2: what was pipelined after STARTTLS is dropped, then the handshake.
            framer.discardBufferedInput()
            machine.tlsEstablished()
            precondition(machine.isTLSActive && machine.phase == .awaitingHello && machine.helloName == nil, "TLS did not restart the session")
        case .mail(let path, let parameters):
            precondition(machine.phase == .mailPending, "MAIL action outside mailPending")
            let answer = options.upstreamRefusesMail
                ? SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Sender refused")
                : SMTPReply(250, EnhancedStatusCode(2, 1, 0), "Ok")
            let reply = machine.mailReplied(answer, path: path, parameters: parameters)
            precondition((machine.transaction != nil) == reply.isPositive, "MAIL reply and transaction disagree")
            precondition(machine.phase == (reply.isPositive ? .transaction : .ready), "MAIL left phase \(machine.phase)")
            sendPrepared(reply)
        case .recipient(let path, let parameters):
            precondition(machine.phase == .transaction, "RCPT action outside a transaction")
            let refuse = options.upstreamRefusesSomeRecipients && (path.mailbox?.localPart.utf8.count ?? 0) % 2 == 1
            let answer = refuse ? SMTPReply(550, EnhancedStatusCode(5, 1, 1), "No such user") : SMTPReply(250, EnhancedStatusCode(2, 1, 5), "Ok")
            let before = machine.transaction?.recipients.count ?? 0
            let reply = machine.recipientReplied(answer, path: path, parameters: parameters)
            precondition((machine.transaction?.recipients.count ?? 0) == before + (refuse ? 0 : 1), "recipient not counted")
            sendPrepared(reply)
        case .receiveData(let reply):
            precondition(reply.code == 354 && machine.phase == .receivingData, "DATA answered \(reply) in \(machine.phase)")
            precondition(!(machine.transaction?.recipients.isEmpty ?? true), "DATA without recipients")
            send(reply)
            receiveMessage()
        case .authenticate(let mechanism, let initialResponse):
            precondition(configuration.authentication != .off && machine.offersAuthentication, "AUTH exchange while AUTH is not offered")
            precondition(machine.authenticatedUser == nil && machine.transaction == nil, "AUTH exchange when not allowed")
            authenticate(mechanism, initialResponse: initialResponse)
        case .etrn(let node):
            precondition(!node.isEmpty && machine.transaction == nil, "ETRN action in a transaction")
            if options.etrnTrusted {
                sendPrepared(machine.prepare(SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Queuing started")))
            } else {
                perform(machine.refuse(SMTPReply(502, EnhancedStatusCode(5, 5, 1), "Error: command not implemented")))
            }
        case .receiveChunk(let size, let last, let accept, let refusal):
            precondition(size >= 0, "negative chunk size")
            precondition(accept == (refusal == nil), "chunk accepted with a refusal, or refused without one")
            receiveChunk(size: size, last: last, accept: accept, refusal: refusal)
        }
    }

    /// A simulated SASL exchange (RFC 4954 §4), as `SMTPSession.authenticate`: a response of
    /// `*` cancels, an even-length response is a valid credential, anything else fails.
    mutating func authenticate(_ mechanism: SASLMechanism, initialResponse: String?) {
        let rounds = mechanism == .login ? 2 : 1
        var valid = true
        for round in 0..<rounds {
            let response: String
            if round == 0, let initialResponse {
                response = initialResponse
            } else {
                send(SMTPReply(334, nil, ""))
                guard let line = saslLine() else { return }
                response = line
            }
            if response == "*" {
                return perform(machine.authenticationFailed(SMTPReply(501, EnhancedStatusCode(5, 0, 0), "Authentication cancelled")))
            }
            valid = valid && response.utf8.count % 2 == 0
        }
        if valid {
            sendPrepared(machine.authenticationSucceeded(user: "fuzz"))
            precondition(machine.authenticatedUser == "fuzz", "AUTH success not recorded")
        } else {
            perform(machine.authenticationFailed(SMTPReply(535, EnhancedStatusCode(5, 7, 8), "Authentication credentials invalid")))
        }
    }

    /// One SASL response line (up to 12288 octets, RFC 4954 §4); nil when the exchange ended.
    mutating func saslLine() -> String? {
        while !closed {
            if let event = framer.nextCommandLine(maximumLength: 12_288) {
                switch event {
                case .line(let line):
                    return String(decoding: line.readableBytesView, as: UTF8.self)
                case .failure:
                    perform(machine.authenticationFailed(SMTPReply(500, EnhancedStatusCode(5, 5, 6), "Authentication exchange line is too long")))
                    return nil
                }
            }
            if !readMore() { clientClosed() }
        }
        return nil
    }

    /// DATA content up to the end of the message, as `SMTPSession.receiveMessage`.
    mutating func receiveMessage() {
        framer.beginData()
        var size = 0
        var lastWasCR = false
        while true {
            while let event = framer.nextDataEvent(maximumLineLength: configuration.maximumTextLineLength, bareLineEndings: options.bareLineEndings) {
                switch event {
                case .content(let bytes):
                    precondition(bytes.readableBytes > 0, "empty content event")
                    size += bytes.readableBytes
                    if options.bareLineEndings == .normalise {
                        for byte in bytes.readableBytesView {
                            precondition(lastWasCR == (byte == 10), "normalised content has a bare CR or LF")
                            lastWasCR = byte == 13
                        }
                    }
                case .end(let findings):
                    precondition(!lastWasCR, "content ended inside CRLF")
                    finishMessage(size: size, findings: findings)
                    return
                }
            }
            guard readMore() else { return clientClosed() }
        }
    }

    mutating func receiveChunk(size: Int, last: Bool, accept: Bool, refusal: SMTPReply?) {
        var remaining = size
        var inspector = LineEndingInspector(maximumLineLength: configuration.maximumTextLineLength)
        while remaining > 0 {
            if let bytes = framer.nextChunkBytes(maximum: remaining) {
                precondition(bytes.readableBytes > 0 && bytes.readableBytes <= remaining, "chunk read outside its size")
                remaining -= bytes.readableBytes
                inspector.inspect(bytes)
                continue
            }
            guard readMore() else { return clientClosed() }
        }
        guard accept else {
            let refusal = refusal!
            sendPrepared(refusal)
            if refusal.code == 421 {
                precondition(machine.phase == .closed, "421 to BDAT left the session open")
                closed = true
            }
            return
        }
        precondition(machine.transaction?.usesChunking == true, "accepted chunk outside a chunked transaction")
        guard last else { return sendPrepared(machine.chunkAccepted(size: size)) }
        finishMessage(size: machine.transaction?.chunkedOctets ?? 0, findings: inspector.finish())
    }

    /// The reply to a complete message, as `SMTPSession.finishMessage` chooses it, minus policy.
    mutating func finishMessage(size: Int, findings: SMTPInputFramer.DataFindings) {
        let reply: SMTPReply
        if findings.hasBareLineEnding && options.bareLineEndings == .reject {
            reply = SMTPReply(550, EnhancedStatusCode(5, 6, 0), "Message contains bare CR or LF")
        } else if findings.overlongLine {
            reply = SMTPReply(550, EnhancedStatusCode(5, 6, 0), "Line too long")
        } else if size > configuration.maximumMessageSize {
            reply = SMTPReply(552, EnhancedStatusCode(5, 3, 4), "Message too big")
        } else {
            reply = SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok: queued")
        }
        sendPrepared(machine.prepare(reply))
        machine.messageFinished()
        precondition(machine.transaction == nil && machine.phase == .ready, "message finished in \(machine.phase)")
    }
}
