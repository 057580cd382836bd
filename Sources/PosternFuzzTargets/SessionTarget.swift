import Dispatch
import NIOCore
import PosternPolicy
import PosternSession
import SMTPCore

/// Plays `input` as one client's byte stream into the real `SessionMachine` (through
/// `SessionSimulator`, as the server's driver runs it) with a simulated upstream, then checks
/// what came out.
///
/// Input layout: byte 0 holds option flags, byte 1 more options and the size of each
/// simulated read (see `SessionOptions`); the rest is what the client sends.
///
/// Invariants: every reply is 2xx–5xx with an enhanced code of its own class, and one
/// exactly when the session is under EHLO (RFC 2034) or the reply is one made before the
/// greeting; nothing is written after the session closed; the upstream sees MAIL before
/// RCPT, RCPT before the message, never more recipients than the limit, and only messages
/// without a bare CR or LF or NUL (CRLF only when normalising); every transaction leaves
/// exactly one decision record.
public func fuzzSession(_ input: [UInt8]) {
    guard input.count >= 2, input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let options = SessionOptions(flags: input[0], more: input[1])
    let stream = Array(input[2...])
    // The simulator is async; its responders never suspend. Run it to the end here.
    let done = DispatchSemaphore(value: 0)
    let result = SimulationResult()
    Task {
        result.store(await simulate(stream, options: options))
        done.signal()
    }
    done.wait()
    guard let simulator = result.value else { return }
    checkSession(simulator, options: options)
}

/// What bytes 0 and 1 of a `session` input select.
struct SessionOptions: Sendable {
    /// Bytes per simulated read; 0: the whole stream in one read.
    var pieceSize: Int
    /// The client is in `trusted_networks` (ETRN, relaying anywhere).
    var trusted: Bool
    var configuration: SessionConfiguration
    /// The simulated upstream refuses every MAIL.
    var upstreamRefusesMail: Bool
    /// The simulated upstream refuses RCPT for local parts of odd length.
    var upstreamRefusesSomeRecipients: Bool

    init(flags: UInt8, more: UInt8) {
        pieceSize = Int(more & 0x3F)
        trusted = more & 0xC0 == 0xC0
        let authentication: AuthenticationOffer = switch more >> 6 {
        case 0: .off
        case 1: .afterTLS
        default: .always
        }
        let server = SMTPServerConfiguration(
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
        configuration = SessionConfiguration(
            server: server, bareLineEndings: flags & 0x04 != 0 ? .normalise : .reject,
            relayControl: RelayControl(relayDomains: ["fuzz.test", ".fuzz.test"], trustedNetworks: [IPNetwork("127.0.0.0/8")!]),
            authFailureDelay: .zero, forbidImproperPipelining: flags & 0x08 != 0 && flags & 0x10 != 0)
        upstreamRefusesMail = flags & 0x08 != 0 && flags & 0x10 == 0
        upstreamRefusesSomeRecipients = flags & 0x10 != 0
    }
}

private func simulate(_ stream: [UInt8], options: SessionOptions) async -> SessionSimulator {
    var responders = SessionSimulator.Responders()
    let refusesMail = options.upstreamRefusesMail
    let refusesSome = options.upstreamRefusesSomeRecipients
    responders.upstream = { request in
        switch request {
        case .begin:
            return .success(UpstreamReply(refusesMail ? SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Sender refused")
                                                      : SMTPReply(250, EnhancedStatusCode(2, 1, 0), "Ok"), upstream: "fuzz:25"))
        case .addRecipient(let path, _):
            let refuse = refusesSome && (path.mailbox?.localPart.utf8.count ?? 0) % 2 == 1
            return .success(UpstreamReply(refuse ? SMTPReply(550, EnhancedStatusCode(5, 1, 1), "No such user")
                                                 : SMTPReply(250, EnhancedStatusCode(2, 1, 5), "Ok"), upstream: "fuzz:25"))
        case .commit:
            return .success(UpstreamReply(SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok: queued"), upstream: "fuzz:25"))
        case .etrn:
            return .success(UpstreamReply(SMTPReply(250, nil, "Queuing started"), upstream: "fuzz:25"))
        case .abort:
            return .success(UpstreamReply(SMTPReply(250, nil, "Ok"), upstream: "fuzz:25"))
        }
    }
    // A password of even length is right.
    responders.credentials = { request in request.password.utf8.count % 2 == 0 ? .success : .failure(nowLockedOut: false) }
    let peer = ClientEndpoint(address: options.trusted ? IPAddress("127.0.0.1")! : IPAddress("192.0.2.1")!, port: 1)
    var simulator = SessionSimulator(configuration: options.configuration, peer: peer, responders: responders)
    await simulator.connect()
    if options.pieceSize == 0 {
        await simulator.send(stream)
    } else {
        await simulator.trickle(stream, pieceSize: options.pieceSize)
    }
    await simulator.advance(by: .seconds(1))
    await simulator.disconnect()
    return simulator
}

private func checkSession(_ simulator: SessionSimulator, options: SessionOptions) {
    var simulator = simulator
    let server = options.configuration.server
    var extended = false
    var greeted = false
    for reply in simulator.replies() {
        expect((200...599).contains(reply.code), "reply code \(reply.code)")
        if let enhanced = reply.enhanced {
            expect(enhanced.codeClass == (reply.code >= 500 ? 5 : reply.code >= 400 ? 4 : 2), "\(reply) has an enhanced code of another class")
        }
        if reply.code == 220 {
            // The greeting; or STARTTLS's 220, after which the session starts over (RFC 3207 §4.2).
            if greeted { extended = false }
            greeted = true
            continue
        }
        if reply.code == 250, reply.lines.first == server.hostname {
            extended = reply.lines.count > 1  // the EHLO reply lists extensions; the HELO reply does not
            continue
        }
        if greeted && !reply.isIntermediate && reply.code != 220 {
            expect((reply.enhanced != nil) == extended, "\(reply) after \(extended ? "EHLO" : "no EHLO")")
        }
    }
    // What reached the upstream.
    var transactionOpen = false
    var recipients = 0
    for request in simulator.upstreamRequests {
        switch request {
        case .begin:
            transactionOpen = !options.upstreamRefusesMail
            recipients = 0
        case .addRecipient:
            expect(transactionOpen, "RCPT upstream without a transaction")
            recipients += 1
            expect(recipients <= server.maximumRecipients, "more recipients upstream than the limit")
        case .commit:
            expect(transactionOpen && recipients > 0, "a message upstream without an open transaction and a recipient")
            transactionOpen = false
        case .abort:
            transactionOpen = false
        case .etrn:
            expect(options.trusted, "ETRN upstream from an untrusted client")
        }
    }
    for message in simulator.relayed {
        expect(!message.bytes.contains(0), "a message with NUL was relayed")
        var previous: UInt8 = 0
        for byte in message.bytes {
            if byte == 10 { expect(previous == 13, "a relayed message has a bare LF") }
            if previous == 13 { expect(byte == 10, "a relayed message has a bare CR") }
            previous = byte
        }
    }
    expect(simulator.closed != nil, "the session did not end when the client left")
    let transactionRecords = simulator.records.filter { $0.mailFrom != nil }.count
    expect(transactionRecords == simulator.machine.transactionsStarted, "\(simulator.machine.transactionsStarted) transactions, \(transactionRecords) records")
    expect(Set(simulator.records.map(\.id)).count == simulator.records.count, "two records with one id")
}

/// Carries the simulation out of its task.
private final class SimulationResult: @unchecked Sendable {
    // Written once by the task before it signals, read after the wait: the semaphore orders them.
    private(set) var value: SessionSimulator?
    func store(_ simulator: SessionSimulator) { value = simulator }
}
