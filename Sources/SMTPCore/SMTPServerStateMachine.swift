/// What a server session offers and enforces. Every limit is a named default.
public struct SMTPServerConfiguration: Sendable {
    /// The name in the greeting, the EHLO reply and Received headers.
    public var hostname: String
    /// `SIZE` (RFC 1870): larger messages are refused with 552 5.3.4. Default 25 MiB.
    public var maximumMessageSize: Int
    /// Recipients per message; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 asks for at least 100).
    public var maximumRecipients: Int
    /// Client errors tolerated per session; the next one is answered 421 4.7.0 and the session ends.
    public var maximumErrors: Int
    /// Command line limit including CRLF (RFC 5321 §4.5.3.1.4: 512).
    public var maximumCommandLineLength: Int
    /// Text line limit including CRLF (RFC 5321 §4.5.3.1.6: 1000).
    public var maximumTextLineLength: Int
    /// Offer STARTTLS (a certificate is configured).
    public var tlsAvailable: Bool
    /// Refuse MAIL before STARTTLS with 530 5.7.0 (RFC 3207 §4).
    public var requireTLS: Bool
    /// When AUTH (RFC 4954) is offered.
    public var authentication: AuthenticationOffer = .off
    /// NOOP, RSET, VRFY, EXPN, HELP and ETRN tolerated since the last message; the next one
    /// is answered 421 4.7.0 and the session ends.
    public var maximumJunkCommands: Int = 100

    public init(
        hostname: String,
        maximumMessageSize: Int = 25 * 1024 * 1024,
        maximumRecipients: Int = 100,
        maximumErrors: Int = 10,
        maximumCommandLineLength: Int = 512,
        maximumTextLineLength: Int = 1000,
        tlsAvailable: Bool = false,
        requireTLS: Bool = false,
        authentication: AuthenticationOffer = .off,
        maximumJunkCommands: Int = 100
    ) {
        self.hostname = hostname
        self.maximumMessageSize = maximumMessageSize
        self.maximumRecipients = maximumRecipients
        self.maximumErrors = maximumErrors
        self.maximumCommandLineLength = maximumCommandLineLength
        self.maximumTextLineLength = maximumTextLineLength
        self.tlsAvailable = tlsAvailable
        self.requireTLS = requireTLS
        self.authentication = authentication
        self.maximumJunkCommands = maximumJunkCommands
    }
}

/// When a listener offers AUTH.
public enum AuthenticationOffer: String, Hashable, Sendable {
    /// Never: AUTH is 502.
    case off
    /// Only once TLS is active (RFC 4954 §4: plaintext passwords only over an encrypted
    /// channel); before that AUTH is not advertised and is answered 538 5.7.11.
    case afterTLS = "tls"
    /// With or without TLS (a loopback or otherwise protected listener).
    case always
}

/// The SASL mechanisms Postern serves.
public enum SASLMechanism: String, Hashable, Sendable, CaseIterable {
    case plain = "PLAIN"
    case login = "LOGIN"
}

/// The server side of one SMTP session (RFC 5321 §3, §4.1.4), with no I/O.
///
/// Each input returns an `Action` for the session to carry out. Decisions that need the
/// upstream (MAIL, RCPT, the message itself) come back as actions; the session reports the
/// outcome through `mailReplied`, `recipientReplied` and `messageFinished`.
public struct SMTPServerStateMachine: Sendable {
    public enum Phase: Hashable, Sendable {
        /// Greeting sent; waiting for EHLO or HELO.
        case awaitingHello
        /// Hello done, no transaction.
        case ready
        /// MAIL sent to the upstream, its reply awaited.
        case mailPending
        /// In a transaction (MAIL accepted).
        case transaction
        /// After 354: message content is being read.
        case receivingData
        /// 220 to STARTTLS sent; the TLS handshake is under way.
        case negotiatingTLS
        /// QUIT, or a reply that ends the session, was sent.
        case closed
    }

    /// The envelope of the transaction in progress.
    public struct Transaction: Sendable {
        public var reversePath: ReversePath
        public var parameters: MailParameters
        public var recipients: [(path: ForwardPath, parameters: RecipientParameters)] = []
        /// RCPT commands refused (by Postern or the upstream).
        public var refusedRecipients = 0
        /// Set once BDAT is used: DATA is then out of sequence (RFC 3030 §3).
        public var usesChunking = false
        /// Octets announced by BDAT commands so far.
        public var chunkedOctets = 0
    }

    public enum Action: Sendable {
        case reply(SMTPReply)
        /// Send the reply, then close the connection.
        case close(SMTPReply)
        /// Send the reply (220), discard anything pipelined after STARTTLS, start TLS,
        /// then call `tlsEstablished()`.
        case startTLS(SMTPReply)
        /// Open or reuse the upstream and send MAIL; then call `mailReplied(_:)`.
        case mail(ReversePath, MailParameters)
        /// Send RCPT upstream; then call `recipientReplied(_:path:parameters:)`.
        case recipient(ForwardPath, RecipientParameters)
        /// Send the 354 reply, read the message (`SMTPInputFramer.beginData()`), relay it;
        /// then call `messageFinished()`.
        case receiveData(SMTPReply)
        /// Read a BDAT chunk of `size` octets (RFC 3030). When `accept` is false, read and
        /// drop it, then send `refusal`; when `last` is true, relay the message and call
        /// `messageFinished()`; otherwise reply `chunkAccepted(size:)`.
        case receiveChunk(size: Int, last: Bool, accept: Bool, refusal: SMTPReply?)
        /// Abandon the upstream transaction, then send the reply.
        case reset(SMTPReply)
        /// Send the reply and close.
        case quit(SMTPReply)
        /// Run the SASL exchange (RFC 4954 §4), then call `authenticationSucceeded(user:)`
        /// or `authenticationFailed(_:)`. `initialResponse` is the base64 text after the
        /// mechanism (`=` for an empty one), when the client sent one.
        case authenticate(SASLMechanism, initialResponse: String?)
        /// ETRN (RFC 1985) in sequence from a client it is offered to (`offersETRN`): pass it
        /// to the upstream and send its reply.
        case etrn(String)
    }

    public let configuration: SMTPServerConfiguration
    public private(set) var phase: Phase = .awaitingHello
    /// The argument of the last EHLO or HELO.
    public private(set) var helloName: String?
    /// EHLO (not HELO) was used: extensions and enhanced status codes are in force.
    public private(set) var isExtended = false
    public private(set) var isTLSActive = false
    public private(set) var errorCount = 0
    public private(set) var transaction: Transaction?
    /// The user a successful AUTH named.
    public private(set) var authenticatedUser: String?
    /// Junk commands (NOOP, RSET, VRFY, EXPN, HELP, ETRN) since the last message.
    public private(set) var junkCount = 0
    /// ETRN is served to this client (RFC 1985; Postern: clients in `trusted_networks`).
    /// Others get 502 5.5.1, and HELP does not list it.
    public var offersETRN = false

    public init(configuration: SMTPServerConfiguration) {
        self.configuration = configuration
    }

    /// The command parser for what this session offers.
    public var parser: SMTPCommandParser {
        var parser = SMTPCommandParser()
        parser.maximumLineLength = configuration.maximumCommandLineLength
        parser.offersAuth = configuration.authentication != .off
        return parser
    }

    /// Makes a reply fit the session: enhanced codes after EHLO (RFC 2034), none after HELO.
    public func prepare(_ reply: SMTPReply) -> SMTPReply {
        isExtended ? reply.withEnhancedDefault() : reply.withoutEnhanced()
    }

    /// The 220 greeting (RFC 5321 §4.3.1); never carries an enhanced code.
    public var greeting: SMTPReply {
        SMTPReply(220, nil, "\(configuration.hostname) ESMTP Postern")
    }

    // MARK: Inputs

    public mutating func receive(_ command: SMTPCommand) -> Action {
        precondition(phase != .receivingData && phase != .negotiatingTLS && phase != .closed && phase != .mailPending,
                     "command delivered in phase \(phase)")
        switch command {
        case .noop, .rset, .vrfy, .expn, .help, .etrn:
            junkCount += 1
            if junkCount > configuration.maximumJunkCommands {
                phase = .closed
                transaction = nil
                return .close(prepare(SMTPReply(421, EnhancedStatusCode(4, 7, 0), "\(configuration.hostname) Error: too many commands without a transaction")))
            }
        default:
            break
        }
        switch command {
        case .ehlo(let name), .helo(let name):
            transaction = nil
            helloName = name
            isExtended = { if case .ehlo = command { return true } else { return false } }()
            phase = .ready
            return .reply(helloReply(name: name))
        case .mail(let path, let parameters):
            return mail(path, parameters)
        case .rcpt(let path, let parameters):
            return recipient(path, parameters)
        case .data:
            return data()
        case .bdat(let size, let last):
            return bdat(size: size, last: last)
        case .rset:
            transaction = nil
            if phase != .awaitingHello { phase = .ready }
            return .reset(prepare(SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok")))
        case .noop:
            return .reply(prepare(SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok")))
        case .quit:
            phase = .closed
            return .quit(prepare(SMTPReply(221, EnhancedStatusCode(2, 0, 0), "Bye")))
        case .vrfy:
            // RFC 5321 §3.5.3: 252 when the server will not verify but would accept.
            return .reply(prepare(SMTPReply(252, EnhancedStatusCode(2, 5, 0), "Cannot VRFY user, but will accept message and attempt delivery")))
        case .expn:
            return error(SMTPReply(502, EnhancedStatusCode(5, 5, 1), "EXPN not available"))
        case .help:
            return .reply(prepare(SMTPReply(214, EnhancedStatusCode(2, 0, 0), helpText)))
        case .starttls:
            return startTLS()
        case .auth(let arguments):
            return auth(arguments)
        case .etrn(let node):
            guard offersETRN else { return error(SMTPReply(502, EnhancedStatusCode(5, 5, 1), "Error: command not implemented")) }
            guard phase != .awaitingHello else { return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: send HELO/EHLO first")) }
            guard transaction == nil else { return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: ETRN not allowed in a mail transaction")) }
            return .etrn(node)
        case .notImplemented:
            return error(SMTPReply(502, EnhancedStatusCode(5, 5, 1), "Error: command not implemented"))
        }
    }

    /// A line that did not parse.
    public mutating func receive(_ syntaxError: SMTPSyntaxError) -> Action {
        error(syntaxError.reply)
    }

    /// The upstream's (or the policy's) reply to MAIL.
    public mutating func mailReplied(_ reply: SMTPReply, path: ReversePath, parameters: MailParameters) -> SMTPReply {
        precondition(phase == .mailPending)
        if reply.isPositive {
            transaction = Transaction(reversePath: path, parameters: parameters)
            phase = .transaction
        } else {
            phase = .ready
        }
        return prepare(reply)
    }

    /// The upstream's (or the policy's) reply to RCPT.
    public mutating func recipientReplied(_ reply: SMTPReply, path: ForwardPath, parameters: RecipientParameters) -> SMTPReply {
        guard phase == .transaction, transaction != nil else { return prepare(reply) }
        if reply.isPositive {
            transaction!.recipients.append((path, parameters))
        } else {
            transaction!.refusedRecipients += 1
        }
        return prepare(reply)
    }

    /// The reply to a BDAT chunk that was stored and is not the last.
    public mutating func chunkAccepted(size: Int) -> SMTPReply {
        prepare(SMTPReply(250, EnhancedStatusCode(2, 0, 0), "\(size) octets received"))
    }

    /// The message was relayed, refused or abandoned: the transaction is over (RFC 5321 §4.1.1.4).
    public mutating func messageFinished() {
        transaction = nil
        junkCount = 0
        if phase != .closed { phase = .ready }
    }

    /// A BDAT chunk was refused: the transaction is abandoned and later chunks are out of sequence.
    public mutating func chunkRefused() {
        transaction = nil
        if phase != .closed { phase = .ready }
    }

    /// A command the session refuses for reasons of its own (ETRN from an untrusted client):
    /// counted as a client error, like the machine's own refusals.
    public mutating func refuse(_ reply: SMTPReply) -> Action {
        error(reply)
    }

    /// The SASL exchange succeeded: 235 2.7.0 (RFC 4954 §6).
    public mutating func authenticationSucceeded(user: String) -> SMTPReply {
        authenticatedUser = user
        return prepare(SMTPReply(235, EnhancedStatusCode(2, 7, 0), "Authentication successful"))
    }

    /// The SASL exchange failed or was cancelled: the reply is counted as a client error.
    public mutating func authenticationFailed(_ reply: SMTPReply) -> Action {
        error(reply)
    }

    /// Whether EHLO advertises AUTH right now.
    public var offersAuthentication: Bool {
        switch configuration.authentication {
        case .off: return false
        case .afterTLS: return isTLSActive
        case .always: return true
        }
    }

    /// The TLS handshake completed: the session starts over (RFC 3207 §4.2).
    public mutating func tlsEstablished() {
        precondition(phase == .negotiatingTLS)
        isTLSActive = true
        authenticatedUser = nil
        helloName = nil
        isExtended = false
        transaction = nil
        phase = .awaitingHello
    }

    /// The session is being closed by Postern (timeout, shutdown, limit).
    public mutating func close() {
        phase = .closed
        transaction = nil
    }

    // MARK: Commands

    /// HELP (RFC 5321 §4.1.1.8): the commands this session offers now.
    private var helpText: String {
        var commands = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP"]
        if configuration.tlsAvailable && !isTLSActive { commands.append("STARTTLS") }
        if offersAuthentication { commands.append("AUTH") }
        if offersETRN { commands.append("ETRN") }
        return "Commands: " + commands.joined(separator: " ")
    }

    private func helloReply(name: String) -> SMTPReply {
        guard isExtended else { return SMTPReply(250, nil, configuration.hostname) }
        var lines = ["\(configuration.hostname)"]
        lines.append("SIZE \(configuration.maximumMessageSize)")
        lines.append("PIPELINING")
        lines.append("8BITMIME")
        lines.append("ENHANCEDSTATUSCODES")
        lines.append("SMTPUTF8")
        lines.append("CHUNKING")
        lines.append("DSN")
        if configuration.tlsAvailable && !isTLSActive { lines.append("STARTTLS") }
        if offersAuthentication { lines.append("AUTH " + SASLMechanism.allCases.map(\.rawValue).joined(separator: " ")) }
        return SMTPReply(code: 250, enhanced: nil, lines: lines)
    }

    private mutating func mail(_ path: ReversePath, _ parameters: MailParameters) -> Action {
        guard phase != .awaitingHello else { return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: send HELO/EHLO first")) }
        guard transaction == nil else { return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: nested MAIL command")) }
        if configuration.requireTLS && !isTLSActive {
            return error(SMTPReply(530, EnhancedStatusCode(5, 7, 0), "Must issue a STARTTLS command first"))
        }
        if let size = parameters.size, size > configuration.maximumMessageSize {
            return error(SMTPReply(552, EnhancedStatusCode(5, 3, 4), "Message size exceeds fixed limit of \(configuration.maximumMessageSize) octets"))
        }
        if !isExtended && (parameters != MailParameters()) {
            return error(SMTPReply(555, EnhancedStatusCode(5, 5, 4), "Parameters not allowed after HELO"))
        }
        phase = .mailPending
        return .mail(path, parameters)
    }

    private mutating func recipient(_ path: ForwardPath, _ parameters: RecipientParameters) -> Action {
        guard let transaction, phase == .transaction else {
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: need MAIL command"))
        }
        guard !transaction.usesChunking else {
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: RCPT after BDAT"))
        }
        guard transaction.recipients.count < configuration.maximumRecipients else {
            return .reply(prepare(SMTPReply(452, EnhancedStatusCode(4, 5, 3), "Error: too many recipients")))
        }
        if let mailbox = path.mailbox, !mailbox.isASCII, !transaction.parameters.smtpUTF8 {
            return error(SMTPReply(553, EnhancedStatusCode(5, 6, 7), "Non-ASCII address requires MAIL FROM with SMTPUTF8"))
        }
        if !isExtended && parameters != RecipientParameters() {
            return error(SMTPReply(555, EnhancedStatusCode(5, 5, 4), "Parameters not allowed after HELO"))
        }
        return .recipient(path, parameters)
    }

    private mutating func data() -> Action {
        guard let transaction, phase == .transaction else {
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: need MAIL command"))
        }
        guard !transaction.usesChunking else {
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: DATA after BDAT"))
        }
        guard !transaction.recipients.isEmpty else {
            if transaction.refusedRecipients > 0 {
                return error(SMTPReply(554, EnhancedStatusCode(5, 5, 1), "Error: no valid recipients"))
            }
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: need RCPT command"))
        }
        phase = .receivingData
        // Intermediate replies carry no enhanced code, as deployed servers send them.
        return .receiveData(SMTPReply(354, nil, "End data with <CR><LF>.<CR><LF>"))
    }

    private mutating func bdat(size: Int, last: Bool) -> Action {
        // RFC 3030 §2: the chunk is always read, even when the command is refused.
        guard isExtended else {
            return refuseChunk(size: size, last: last, SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: BDAT requires EHLO"))
        }
        guard var current = transaction, phase == .transaction else {
            return refuseChunk(size: size, last: last, SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: need MAIL command"))
        }
        guard !current.recipients.isEmpty else {
            transaction = nil
            phase = .ready
            return refuseChunk(size: size, last: last, SMTPReply(554, EnhancedStatusCode(5, 5, 1), "Error: no valid recipients"))
        }
        current.usesChunking = true
        current.chunkedOctets += size
        if current.chunkedOctets > configuration.maximumMessageSize {
            transaction = nil
            phase = .ready
            return .receiveChunk(size: size, last: last, accept: false, refusal: prepare(
                SMTPReply(552, EnhancedStatusCode(5, 3, 4), "Message size exceeds fixed limit of \(configuration.maximumMessageSize) octets")))
        }
        transaction = current
        return .receiveChunk(size: size, last: last, accept: true, refusal: nil)
    }

    private mutating func refuseChunk(size: Int, last: Bool, _ reply: SMTPReply) -> Action {
        switch error(reply) {
        case .close(let closing): return .receiveChunk(size: size, last: last, accept: false, refusal: closing)
        case .reply(let refusal): return .receiveChunk(size: size, last: last, accept: false, refusal: refusal)
        default: preconditionFailure("error() returns reply or close")
        }
    }

    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    private mutating func auth(_ arguments: String) -> Action {
        guard configuration.authentication != .off else {
            return error(SMTPReply(502, EnhancedStatusCode(5, 5, 1), "Error: authentication not enabled"))
        }
        guard phase != .awaitingHello, isExtended else {
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: send EHLO first"))
        }
        guard authenticatedUser == nil else {
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: already authenticated"))
        }
        guard transaction == nil else {
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: AUTH not allowed in a mail transaction"))
        }
        guard offersAuthentication else {
            return error(SMTPReply(538, EnhancedStatusCode(5, 7, 11), "Encryption required for requested authentication mechanism"))
        }
        let words = arguments.split(separator: " ", omittingEmptySubsequences: true)
        guard (1...2).contains(words.count) else {
            return error(SMTPReply(501, EnhancedStatusCode(5, 5, 4), "Syntax: AUTH mechanism [initial-response]"))
        }
        guard let mechanism = SASLMechanism(rawValue: words[0].uppercased()) else {
            return error(SMTPReply(504, EnhancedStatusCode(5, 5, 4), "Unrecognized authentication type"))
        }
        return .authenticate(mechanism, initialResponse: words.count == 2 ? String(words[1]) : nil)
    }

    private mutating func startTLS() -> Action {
        guard configuration.tlsAvailable else {
            return error(SMTPReply(502, EnhancedStatusCode(5, 5, 1), "Error: command not implemented"))
        }
        guard !isTLSActive else { return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), "Error: TLS already active")) }
        guard phase == .ready, isExtended else {
            return error(SMTPReply(503, EnhancedStatusCode(5, 5, 1), phase == .ready || phase == .awaitingHello ? "Error: send EHLO first" : "Error: STARTTLS not allowed in a transaction"))
        }
        phase = .negotiatingTLS
        return .startTLS(prepare(SMTPReply(220, EnhancedStatusCode(2, 0, 0), "Ready to start TLS")))
    }

    /// A client error: counted; past the limit the session ends with 421 4.7.0.
    private mutating func error(_ reply: SMTPReply) -> Action {
        errorCount += 1
        if errorCount > configuration.maximumErrors {
            phase = .closed
            transaction = nil
            return .close(prepare(SMTPReply(421, EnhancedStatusCode(4, 7, 0), "\(configuration.hostname) Error: too many errors, closing connection")))
        }
        return .reply(prepare(reply))
    }
}
