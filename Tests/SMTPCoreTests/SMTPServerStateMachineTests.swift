import NIOCore
import XCTest

@testable import SMTPCore

final class SMTPServerStateMachineTests: XCTestCase {
    typealias Machine = SMTPServerStateMachine
    typealias Phase = SMTPServerStateMachine.Phase

    // MARK: Helpers

    enum Kind: Equatable {
        case reply, close, startTLS, mail, recipient, receiveData, reset, quit, authenticate, etrn
        case receiveChunk(accept: Bool)
    }

    func kind(_ action: Machine.Action) -> Kind {
        switch action {
        case .reply: return .reply
        case .close: return .close
        case .startTLS: return .startTLS
        case .mail: return .mail
        case .recipient: return .recipient
        case .receiveData: return .receiveData
        case .receiveChunk(_, _, let accept, _): return .receiveChunk(accept: accept)
        case .reset: return .reset
        case .quit: return .quit
        case .authenticate: return .authenticate
        case .etrn: return .etrn
        }
    }

    /// The reply an action sends, if it sends one now.
    func reply(_ action: Machine.Action) -> SMTPReply? {
        switch action {
        case .reply(let reply), .close(let reply), .startTLS(let reply), .receiveData(let reply), .reset(let reply), .quit(let reply):
            return reply
        case .receiveChunk(_, _, _, let refusal):
            return refusal
        case .mail, .recipient, .authenticate, .etrn:
            return nil
        }
    }

    /// Fails when the action sends no reply, so a missing reply never passes silently.
    func assertReply(
        _ action: Machine.Action, code: Int, enhanced: EnhancedStatusCode?, file: StaticString = #filePath, line: UInt = #line
    ) {
        guard let reply = reply(action) else { return XCTFail("no reply in \(action)", file: file, line: line) }
        reply.assert(code: code, enhanced: enhanced, file: file, line: line)
    }

    func configuration(
        maximumMessageSize: Int = 1000, maximumRecipients: Int = 3, maximumErrors: Int = 5,
        tlsAvailable: Bool = false, requireTLS: Bool = false
    ) -> SMTPServerConfiguration {
        SMTPServerConfiguration(
            hostname: "mx.example", maximumMessageSize: maximumMessageSize, maximumRecipients: maximumRecipients,
            maximumErrors: maximumErrors, tlsAvailable: tlsAvailable, requireTLS: requireTLS)
    }

    let sender = ReversePath.mailbox(Mailbox(localPart: "a", domain: "b.example"))
    func recipient(_ n: Int = 1) -> ForwardPath { .mailbox(Mailbox(localPart: "r\(n)", domain: "d.example")) }

    func hello(_ machine: inout Machine, extended: Bool = true, file: StaticString = #filePath, line: UInt = #line) {
        let action = machine.receive(extended ? .ehlo("client.example") : .helo("client.example"))
        XCTAssertEqual(kind(action), .reply, file: file, line: line)
        XCTAssertEqual(machine.phase, .ready, file: file, line: line)
    }

    func startMail(
        _ machine: inout Machine, _ parameters: MailParameters = MailParameters(), file: StaticString = #filePath, line: UInt = #line
    ) {
        let action = machine.receive(.mail(sender, parameters))
        guard case .mail(let path, let sent) = action else { return XCTFail("MAIL gave \(action)", file: file, line: line) }
        XCTAssertEqual(path, sender, file: file, line: line)
        XCTAssertEqual(sent, parameters, file: file, line: line)
        XCTAssertEqual(machine.phase, .mailPending, file: file, line: line)
        let reply = machine.mailReplied(SMTPReply(250, nil, "Ok"), path: sender, parameters: parameters)
        XCTAssertEqual(reply.code, 250, file: file, line: line)
        XCTAssertEqual(machine.phase, .transaction, file: file, line: line)
    }

    func addRecipient(_ machine: inout Machine, _ n: Int = 1, file: StaticString = #filePath, line: UInt = #line) {
        let action = machine.receive(.rcpt(recipient(n), RecipientParameters()))
        guard case .recipient(let path, _) = action else { return XCTFail("RCPT gave \(action)", file: file, line: line) }
        XCTAssertEqual(path, recipient(n), file: file, line: line)
        _ = machine.recipientReplied(SMTPReply(250, nil, "Ok"), path: path, parameters: RecipientParameters())
    }

    // MARK: Transition table

    struct Row {
        var command: SMTPCommand
        var kind: Kind?
        var code: Int?
        var enhanced: EnhancedStatusCode?
        var phase: Phase
        var checkEnhanced = true

        init(_ command: SMTPCommand, _ kind: Kind?, _ code: Int?, _ enhanced: EnhancedStatusCode?, _ phase: Phase, checkEnhanced: Bool = true) {
            self.command = command
            self.kind = kind
            self.code = code
            self.enhanced = enhanced
            self.phase = phase
            self.checkEnhanced = checkEnhanced
        }
    }

    let mailCommand = SMTPCommand.mail(.mailbox(Mailbox(localPart: "a", domain: "b.example")), MailParameters())
    var rcptCommand: SMTPCommand { .rcpt(recipient(9), RecipientParameters()) }

    /// Runs every row on a fresh machine brought to the phase by `setUp`.
    func run(_ rows: [Row], phaseName: String, setUp: (inout Machine) -> Void, file: StaticString = #filePath, line: UInt = #line) {
        for row in rows {
            var machine = Machine(configuration: configuration())
            machine.offersETRN = true  // a trusted client's session; refusal elsewhere is tested apart
            setUp(&machine)
            let errorsBefore = machine.errorCount
            let action = machine.receive(row.command)
            let label = "\(phaseName): \(row.command.verb)"
            if let kind = row.kind { XCTAssertEqual(self.kind(action), kind, label, file: file, line: line) }
            if let code = row.code {
                XCTAssertEqual(reply(action)?.code, code, label, file: file, line: line)
                if row.checkEnhanced { XCTAssertEqual(reply(action)?.enhanced, row.enhanced, label, file: file, line: line) }
                if code >= 500 && row.kind != .quit {
                    XCTAssertEqual(machine.errorCount, errorsBefore + 1, "\(label) counts as an error", file: file, line: line)
                }
            } else {
                XCTAssertNil(reply(action), label, file: file, line: line)
            }
            XCTAssertEqual(machine.phase, row.phase, label, file: file, line: line)
        }
    }

    func testAwaitingHello() {
        let none: EnhancedStatusCode? = nil  // no EHLO yet: no enhanced codes (RFC 2034)
        run([
            Row(.ehlo("c.example"), .reply, 250, none, .ready),
            Row(.helo("c.example"), .reply, 250, none, .ready),
            Row(mailCommand, .reply, 503, none, .awaitingHello),
            Row(rcptCommand, .reply, 503, none, .awaitingHello),
            Row(.data, .reply, 503, none, .awaitingHello),
            Row(.bdat(size: 10, last: false), .receiveChunk(accept: false), 503, none, .awaitingHello),
            Row(.rset, .reset, 250, none, .awaitingHello),
            Row(.noop, .reply, 250, none, .awaitingHello),
            Row(.quit, .quit, 221, none, .closed),
            Row(.vrfy("x"), .reply, 252, none, .awaitingHello),
            Row(.expn("x"), .reply, 502, none, .awaitingHello),
            Row(.help(nil), .reply, 214, none, .awaitingHello),
            Row(.starttls, .reply, 502, none, .awaitingHello),
            Row(.auth("PLAIN"), .reply, 502, none, .awaitingHello),
            Row(.notImplemented("ATRN"), .reply, 502, none, .awaitingHello),
            Row(.etrn("example.org"), .reply, 503, none, .awaitingHello),
        ], phaseName: "awaitingHello", setUp: { _ in })
    }

    func readyRows(extended: Bool) -> [Row] {
        func e(_ a: Int, _ b: Int, _ c: Int) -> EnhancedStatusCode? { extended ? esc(a, b, c) : nil }
        return [
            Row(.ehlo("c.example"), .reply, 250, nil, .ready),
            Row(.helo("c.example"), .reply, 250, nil, .ready),
            Row(mailCommand, .mail, nil, nil, .mailPending),
            Row(rcptCommand, .reply, 503, e(5, 5, 1), .ready),
            Row(.data, .reply, 503, e(5, 5, 1), .ready),
            Row(.rset, .reset, 250, e(2, 0, 0), .ready),
            Row(.noop, .reply, 250, e(2, 0, 0), .ready),
            Row(.quit, .quit, 221, e(2, 0, 0), .closed),
            Row(.vrfy("x"), .reply, 252, e(2, 5, 0), .ready),
            Row(.expn("x"), .reply, 502, e(5, 5, 1), .ready),
            Row(.help("MAIL"), .reply, 214, e(2, 0, 0), .ready),
            Row(.starttls, .reply, 502, e(5, 5, 1), .ready),
            Row(.auth("LOGIN"), .reply, 502, e(5, 5, 1), .ready),
            Row(.notImplemented("TURN"), .reply, 502, e(5, 5, 1), .ready),
            Row(.etrn("example.org"), .etrn, nil, nil, .ready),
            Row(.bdat(size: 10, last: true), .receiveChunk(accept: false), 503, e(5, 5, 1), .ready),
        ]
    }

    func testReadyAfterEHLO() {
        run(readyRows(extended: true), phaseName: "ready (EHLO)", setUp: { hello(&$0) })
    }

    func testReadyAfterHELO() {
        run(readyRows(extended: false), phaseName: "ready (HELO)", setUp: { hello(&$0, extended: false) })
    }

    func testReadyAfterRSET() {
        run(readyRows(extended: true), phaseName: "after RSET", setUp: { machine in
            hello(&machine)
            startMail(&machine)
            addRecipient(&machine)
            _ = machine.receive(.rset)
        })
    }

    func testReadyAfterMessage() {
        run(readyRows(extended: true), phaseName: "after a message", setUp: { machine in
            hello(&machine)
            startMail(&machine)
            addRecipient(&machine)
            _ = machine.receive(.data)
            machine.messageFinished()
        })
    }

    func testReadyAfterRefusedMail() {
        run(readyRows(extended: true), phaseName: "after MAIL refused", setUp: { machine in
            hello(&machine)
            _ = machine.receive(.mail(sender, MailParameters()))
            _ = machine.mailReplied(SMTPReply(550, esc(5, 7, 1), "No"), path: sender, parameters: MailParameters())
        })
    }

    func testTransactionWithoutRecipients() {
        run([
            // EHLO in a transaction starts over (RFC 5321 §4.1.4).
            Row(.ehlo("c.example"), nil, 250, nil, .ready),
            Row(mailCommand, .reply, 503, esc(5, 5, 1), .transaction),
            Row(rcptCommand, .recipient, nil, nil, .transaction),
            Row(.data, .reply, 503, esc(5, 5, 1), .transaction),
            Row(.bdat(size: 10, last: false), .receiveChunk(accept: false), 554, esc(5, 5, 1), .ready),
            Row(.rset, .reset, 250, esc(2, 0, 0), .ready),
            Row(.noop, .reply, 250, esc(2, 0, 0), .transaction),
            Row(.quit, .quit, 221, esc(2, 0, 0), .closed),
            Row(.vrfy("x"), .reply, 252, esc(2, 5, 0), .transaction),
            Row(.expn("x"), .reply, 502, esc(5, 5, 1), .transaction),
            Row(.help(nil), .reply, 214, esc(2, 0, 0), .transaction),
            Row(.starttls, .reply, 502, esc(5, 5, 1), .transaction),
            Row(.auth("PLAIN"), .reply, 502, esc(5, 5, 1), .transaction),
            Row(.notImplemented("SAML"), .reply, 502, esc(5, 5, 1), .transaction),
        ], phaseName: "transaction", setUp: { machine in
            hello(&machine)
            startMail(&machine)
        })
    }

    func testTransactionWithRecipients() {
        run([
            Row(mailCommand, .reply, 503, esc(5, 5, 1), .transaction),
            Row(rcptCommand, .recipient, nil, nil, .transaction),
            // Intermediate replies carry no enhanced code (RFC 3463 has no class 3).
            Row(.data, .receiveData, 354, nil, .receivingData),
            Row(.bdat(size: 10, last: false), .receiveChunk(accept: true), nil, nil, .transaction),
            Row(.bdat(size: 10, last: true), .receiveChunk(accept: true), nil, nil, .transaction),
            Row(.rset, .reset, 250, esc(2, 0, 0), .ready),
            Row(.quit, .quit, 221, esc(2, 0, 0), .closed),
            Row(.noop, .reply, 250, esc(2, 0, 0), .transaction),
        ], phaseName: "transaction with recipients", setUp: { machine in
            hello(&machine)
            startMail(&machine)
            addRecipient(&machine)
        })
    }

    func testAfterBDAT() {
        run([
            Row(.data, .reply, 503, esc(5, 5, 1), .transaction),
            Row(rcptCommand, .reply, 503, esc(5, 5, 1), .transaction),
            Row(mailCommand, .reply, 503, esc(5, 5, 1), .transaction),
            Row(.bdat(size: 10, last: true), .receiveChunk(accept: true), nil, nil, .transaction),
            Row(.rset, .reset, 250, esc(2, 0, 0), .ready),
        ], phaseName: "after BDAT", setUp: { machine in
            hello(&machine)
            startMail(&machine)
            addRecipient(&machine)
            _ = machine.receive(.bdat(size: 10, last: false))
        })
    }

    func testAfterTLS() {
        let none: EnhancedStatusCode? = nil
        var rows = [
            Row(.ehlo("c.example"), .reply, 250, nil, .ready),
            Row(mailCommand, .reply, 503, none, .awaitingHello),
            Row(.starttls, .reply, 503, none, .awaitingHello),
            Row(.quit, .quit, 221, none, .closed),
        ]
        rows.append(Row(.noop, .reply, 250, none, .awaitingHello))
        for row in rows {
            var machine = Machine(configuration: configuration(tlsAvailable: true))
            hello(&machine)
            guard case .startTLS = machine.receive(.starttls) else { return XCTFail() }
            machine.tlsEstablished()
            let action = machine.receive(row.command)
            XCTAssertEqual(kind(action), row.kind, row.command.verb)
            XCTAssertEqual(reply(action)?.code, row.code, row.command.verb)
            XCTAssertEqual(reply(action)?.enhanced, row.enhanced, row.command.verb)
            XCTAssertEqual(machine.phase, row.phase, row.command.verb)
        }
    }

    // MARK: Sequencing

    func testMailBeforeHello() {
        var machine = Machine(configuration: configuration())
        let action = machine.receive(mailCommand)
        XCTAssertEqual(kind(action), .reply)
        XCTAssertEqual(reply(action)?.code, 503)
        XCTAssertNil(reply(action)?.enhanced, "before EHLO, replies carry no enhanced code")
        XCTAssertEqual(reply(action)?.text, "Error: send HELO/EHLO first")
        XCTAssertEqual(machine.errorCount, 1)
        XCTAssertEqual(machine.phase, .awaitingHello)
    }

    func testNestedMail() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        let action = machine.receive(mailCommand)
        assertReply(action, code: 503, enhanced: esc(5, 5, 1))
        XCTAssertEqual(machine.transaction?.reversePath, sender, "the first transaction is kept")
    }

    func testRecipientWithoutMail() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        assertReply(machine.receive(rcptCommand), code: 503, enhanced: esc(5, 5, 1))
        XCTAssertNil(machine.transaction)
    }

    func testDataWithoutRecipientsAndAllRefused() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        assertReply(machine.receive(.data), code: 503, enhanced: esc(5, 5, 1))
        _ = machine.receive(rcptCommand)
        let refused = machine.recipientReplied(SMTPReply(550, esc(5, 1, 1), "No such user"), path: recipient(9), parameters: RecipientParameters())
        refused.assert(code: 550, enhanced: esc(5, 1, 1))
        XCTAssertEqual(machine.transaction?.refusedRecipients, 1)
        XCTAssertEqual(machine.transaction?.recipients.count, 0)
        let action = machine.receive(.data)
        XCTAssertEqual(kind(action), .reply)
        assertReply(action, code: 554, enhanced: esc(5, 5, 1))
        XCTAssertEqual(machine.phase, .transaction)
        // One good recipient is enough.
        addRecipient(&machine)
        XCTAssertEqual(kind(machine.receive(.data)), .receiveData)
        XCTAssertEqual(machine.phase, .receivingData)
    }

    func testDataReply() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        addRecipient(&machine)
        let action = machine.receive(.data)
        guard case .receiveData(let reply) = action else { return XCTFail("\(action)") }
        reply.assert(code: 354, enhanced: nil)
        XCTAssertTrue(reply.isIntermediate)
        XCTAssertEqual(reply.encoded.text, "354 End data with <CR><LF>.<CR><LF>\r\n")
        XCTAssertEqual(machine.phase, .receivingData)
        machine.messageFinished()
        XCTAssertEqual(machine.phase, .ready)
        XCTAssertNil(machine.transaction)
        // HELO session: no enhanced code.
        var plain = Machine(configuration: configuration())
        hello(&plain, extended: false)
        startMail(&plain)
        addRecipient(&plain)
        guard case .receiveData(let plainReply) = plain.receive(.data) else { return XCTFail() }
        plainReply.assert(code: 354, enhanced: nil)
    }

    func testTransactionRecordsTheEnvelope() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        let parameters = MailParameters(size: 100, body: .eightBitMIME, ret: "HDRS")
        startMail(&machine, parameters)
        XCTAssertEqual(machine.transaction?.reversePath, sender)
        XCTAssertEqual(machine.transaction?.parameters, parameters)
        let rcptParameters = RecipientParameters(notify: "NEVER")
        guard case .recipient(let path, let sent) = machine.receive(.rcpt(.postmaster, rcptParameters)) else { return XCTFail() }
        XCTAssertEqual(path, .postmaster)
        XCTAssertEqual(sent, rcptParameters)
        _ = machine.recipientReplied(SMTPReply(250, nil, "Ok"), path: path, parameters: sent)
        addRecipient(&machine, 2)
        XCTAssertEqual(machine.transaction?.recipients.map(\.path), [.postmaster, recipient(2)])
        XCTAssertEqual(machine.transaction?.recipients.first?.parameters, rcptParameters)
    }

    func testMailRefusedByUpstream() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        _ = machine.receive(mailCommand)
        let reply = machine.mailReplied(SMTPReply(451, nil, "Try later"), path: sender, parameters: MailParameters())
        reply.assert(code: 451, enhanced: esc(4, 0, 0))
        XCTAssertEqual(machine.phase, .ready)
        XCTAssertNil(machine.transaction)
        assertReply(machine.receive(rcptCommand), code: 503, enhanced: esc(5, 5, 1))
        startMail(&machine)
    }

    func testRSETEndsTheTransaction() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        addRecipient(&machine)
        let action = machine.receive(.rset)
        XCTAssertEqual(kind(action), .reset)
        assertReply(action, code: 250, enhanced: esc(2, 0, 0))
        XCTAssertNil(machine.transaction)
        XCTAssertEqual(machine.phase, .ready)
        XCTAssertEqual(machine.helloName, "client.example", "RSET keeps the hello")
        startMail(&machine)
    }

    func testEHLOInATransactionClearsIt() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        addRecipient(&machine)
        _ = machine.receive(.ehlo("other.example"))
        XCTAssertNil(machine.transaction)
        XCTAssertEqual(machine.phase, .ready)
        XCTAssertEqual(machine.helloName, "other.example")
        startMail(&machine)
    }

    func testQuitAndClose() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        let action = machine.receive(.quit)
        XCTAssertEqual(kind(action), .quit)
        assertReply(action, code: 221, enhanced: esc(2, 0, 0))
        XCTAssertEqual(machine.phase, .closed)
        // messageFinished after close leaves the session closed.
        machine.messageFinished()
        XCTAssertEqual(machine.phase, .closed)

        var other = Machine(configuration: configuration())
        hello(&other)
        startMail(&other)
        other.close()
        XCTAssertEqual(other.phase, .closed)
        XCTAssertNil(other.transaction)
    }

    // MARK: Limits

    func testSizeLimit() {
        var machine = Machine(configuration: configuration(maximumMessageSize: 1000))
        hello(&machine)
        let action = machine.receive(.mail(sender, MailParameters(size: 1001)))
        XCTAssertEqual(kind(action), .reply)
        assertReply(action, code: 552, enhanced: esc(5, 3, 4))
        XCTAssertEqual(machine.phase, .ready)
        XCTAssertEqual(machine.errorCount, 1)
        startMail(&machine, MailParameters(size: 1000))
        var huge = Machine(configuration: configuration(maximumMessageSize: 1000))
        hello(&huge)
        assertReply(huge.receive(.mail(sender, MailParameters(size: Int.max))), code: 552, enhanced: esc(5, 3, 4))
    }

    func testTooManyRecipients() {
        var machine = Machine(configuration: configuration(maximumRecipients: 3))
        hello(&machine)
        startMail(&machine)
        for n in 1...3 { addRecipient(&machine, n) }
        let errors = machine.errorCount
        let action = machine.receive(.rcpt(recipient(4), RecipientParameters()))
        XCTAssertEqual(kind(action), .reply)
        assertReply(action, code: 452, enhanced: esc(4, 5, 3))
        XCTAssertEqual(machine.transaction?.recipients.count, 3)
        XCTAssertEqual(machine.errorCount, errors, "452 is not a client error")
        XCTAssertEqual(machine.phase, .transaction)
        XCTAssertEqual(kind(machine.receive(.data)), .receiveData, "the accepted recipients still get the message")
    }

    func testRefusedRecipientsDoNotCountTowardsTheLimit() {
        var machine = Machine(configuration: configuration(maximumRecipients: 2))
        hello(&machine)
        startMail(&machine)
        for n in 1...5 {
            guard case .recipient(let path, let parameters) = machine.receive(.rcpt(recipient(n), RecipientParameters())) else {
                return XCTFail("recipient \(n)")
            }
            _ = machine.recipientReplied(SMTPReply(550, nil, "No"), path: path, parameters: parameters)
        }
        XCTAssertEqual(machine.transaction?.refusedRecipients, 5)
        addRecipient(&machine, 6)
        addRecipient(&machine, 7)
        assertReply(machine.receive(.rcpt(recipient(8), RecipientParameters())), code: 452, enhanced: esc(4, 5, 3))
    }

    func testErrorLimitClosesTheSession() {
        for extended in [true, false] {
            var machine = Machine(configuration: configuration(maximumErrors: 3))
            hello(&machine, extended: extended)
            let errors: [(inout Machine) -> Machine.Action] = [
                { $0.receive(SMTPSyntaxError(.unknownCommand, "FOO")) },
                { $0.receive(.expn("x")) },
                { $0.receive(SMTPSyntaxError(.syntax, "x")) },
            ]
            for (index, makeError) in errors.enumerated() {
                let action = makeError(&machine)
                XCTAssertEqual(kind(action), .reply, "error \(index + 1) of 3 is answered")
                XCTAssertEqual(machine.errorCount, index + 1)
                XCTAssertEqual(machine.phase, .ready)
            }
            let action = machine.receive(SMTPSyntaxError(.badAddress, "x"))
            XCTAssertEqual(kind(action), .close)
            assertReply(action, code: 421, enhanced: extended ? esc(4, 7, 0) : nil)
            XCTAssertTrue(reply(action)?.text.hasPrefix("mx.example ") ?? false)
            XCTAssertEqual(machine.phase, .closed)
        }
    }

    func testErrorLimitInATransactionDropsIt() {
        var machine = Machine(configuration: configuration(maximumErrors: 1))
        hello(&machine)
        startMail(&machine)
        XCTAssertEqual(kind(machine.receive(.data)), .reply)
        XCTAssertEqual(kind(machine.receive(.data)), .close)
        XCTAssertNil(machine.transaction)
    }

    func testErrorLimitStress() {
        // The default limit: errors up to it are answered, the next one closes.
        var machine = Machine(configuration: SMTPServerConfiguration(hostname: "mx.example"))
        XCTAssertEqual(machine.configuration.maximumErrors, 10)
        hello(&machine)
        for _ in 0..<10 { XCTAssertEqual(kind(machine.receive(SMTPSyntaxError(.unknownCommand, "X"))), .reply) }
        XCTAssertEqual(kind(machine.receive(SMTPSyntaxError(.unknownCommand, "X"))), .close)
    }

    func testSyntaxErrorsBecomeReplies() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        let table: [(SMTPSyntaxError.Kind, Int, EnhancedStatusCode)] = [
            (.unknownCommand, 500, esc(5, 5, 1)), (.syntax, 501, esc(5, 5, 4)), (.badAddress, 501, esc(5, 1, 3)),
            (.unknownParameter, 555, esc(5, 5, 4)), (.lineTooLong, 500, esc(5, 5, 2)),
        ]
        for (kind, code, enhanced) in table {
            let action = machine.receive(SMTPSyntaxError(kind, "x"))
            XCTAssertEqual(self.kind(action), .reply)
            assertReply(action, code: code, enhanced: enhanced)
        }
        var plain = Machine(configuration: configuration())
        hello(&plain, extended: false)
        assertReply(plain.receive(SMTPSyntaxError(.unknownCommand, "x")), code: 500, enhanced: nil)
    }

    // MARK: TLS

    func testSTARTTLS() {
        var machine = Machine(configuration: configuration(tlsAvailable: true))
        // Before EHLO: refused.
        assertReply(machine.receive(.starttls), code: 503, enhanced: nil)
        hello(&machine)
        let ehlo = reply(machine.receive(.ehlo("client.example")))
        XCTAssertEqual(ehlo?.lines.last, "STARTTLS")
        let action = machine.receive(.starttls)
        XCTAssertEqual(kind(action), .startTLS)
        assertReply(action, code: 220, enhanced: esc(2, 0, 0))
        XCTAssertEqual(machine.phase, .negotiatingTLS)
        machine.tlsEstablished()
        XCTAssertEqual(machine.phase, .awaitingHello)
        XCTAssertTrue(machine.isTLSActive)
        XCTAssertNil(machine.helloName)
        XCTAssertFalse(machine.isExtended)
        let second = reply(machine.receive(.ehlo("client.example")))
        XCTAssertEqual(second?.code, 250)
        XCTAssertFalse(second?.lines.contains("STARTTLS") ?? true, "STARTTLS is not offered twice")
        assertReply(machine.receive(.starttls), code: 503, enhanced: esc(5, 5, 1))
        startMail(&machine)
    }

    func testSTARTTLSUnavailableOrOutOfPlace() {
        var unavailable = Machine(configuration: configuration(tlsAvailable: false))
        hello(&unavailable)
        XCTAssertFalse(reply(unavailable.receive(.ehlo("c")))?.lines.contains("STARTTLS") ?? true)
        assertReply(unavailable.receive(.starttls), code: 502, enhanced: esc(5, 5, 1))

        var afterHELO = Machine(configuration: configuration(tlsAvailable: true))
        hello(&afterHELO, extended: false)
        XCTAssertEqual(kind(afterHELO.receive(.starttls)), .reply)
        XCTAssertEqual(afterHELO.phase, .ready)

        var inTransaction = Machine(configuration: configuration(tlsAvailable: true))
        hello(&inTransaction)
        startMail(&inTransaction)
        assertReply(inTransaction.receive(.starttls), code: 503, enhanced: esc(5, 5, 1))
        XCTAssertEqual(inTransaction.phase, .transaction)
    }

    func testRequireTLS() {
        var machine = Machine(configuration: configuration(tlsAvailable: true, requireTLS: true))
        hello(&machine)
        let action = machine.receive(mailCommand)
        XCTAssertEqual(kind(action), .reply)
        assertReply(action, code: 530, enhanced: esc(5, 7, 0))
        XCTAssertEqual(machine.phase, .ready)
        _ = machine.receive(.starttls)
        machine.tlsEstablished()
        hello(&machine)
        startMail(&machine)
    }

    // MARK: BDAT

    func testBDATFlow() {
        var machine = Machine(configuration: configuration(maximumMessageSize: 1000))
        hello(&machine)
        startMail(&machine)
        addRecipient(&machine)
        guard case .receiveChunk(let size, let last, let accept, let refusal) = machine.receive(.bdat(size: 400, last: false)) else {
            return XCTFail()
        }
        XCTAssertEqual(size, 400)
        XCTAssertFalse(last)
        XCTAssertTrue(accept)
        XCTAssertNil(refusal)
        XCTAssertEqual(machine.transaction?.usesChunking, true)
        XCTAssertEqual(machine.transaction?.chunkedOctets, 400)
        let accepted = machine.chunkAccepted(size: 400)
        accepted.assert(code: 250, enhanced: esc(2, 0, 0))
        XCTAssertEqual(accepted.text, "400 octets received")
        guard case .receiveChunk(600, true, true, nil) = machine.receive(.bdat(size: 600, last: true)) else { return XCTFail() }
        XCTAssertEqual(machine.transaction?.chunkedOctets, 1000, "exactly the limit is allowed")
        machine.messageFinished()
        XCTAssertEqual(machine.phase, .ready)
        XCTAssertNil(machine.transaction)
        // A new transaction can use DATA again.
        startMail(&machine)
        addRecipient(&machine)
        XCTAssertEqual(kind(machine.receive(.data)), .receiveData)
    }

    func testBDATZeroLast() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        addRecipient(&machine)
        guard case .receiveChunk(0, true, true, nil) = machine.receive(.bdat(size: 0, last: true)) else { return XCTFail() }
    }

    func testBDATOverSize() {
        var machine = Machine(configuration: configuration(maximumMessageSize: 1000))
        hello(&machine)
        startMail(&machine)
        addRecipient(&machine)
        guard case .receiveChunk(_, _, true, _) = machine.receive(.bdat(size: 999, last: false)) else { return XCTFail() }
        let errors = machine.errorCount
        let action = machine.receive(.bdat(size: 2, last: false))
        guard case .receiveChunk(2, false, false, let refusal?) = action else { return XCTFail("\(action)") }
        refusal.assert(code: 552, enhanced: esc(5, 3, 4))
        XCTAssertNil(machine.transaction)
        XCTAssertEqual(machine.phase, .ready)
        XCTAssertEqual(machine.errorCount, errors)
        // Later chunks of the abandoned message are out of sequence, and still read.
        guard case .receiveChunk(5, true, false, let later?) = machine.receive(.bdat(size: 5, last: true)) else { return XCTFail() }
        later.assert(code: 503, enhanced: esc(5, 5, 1))
    }

    func testBDATSingleChunkOverSize() {
        var machine = Machine(configuration: configuration(maximumMessageSize: 1000))
        hello(&machine)
        startMail(&machine)
        addRecipient(&machine)
        guard case .receiveChunk(1001, true, false, let refusal?) = machine.receive(.bdat(size: 1001, last: true)) else { return XCTFail() }
        refusal.assert(code: 552, enhanced: esc(5, 3, 4))
    }

    func testBDATWithoutRecipientsOrMail() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        guard case .receiveChunk(10, false, false, let noMail?) = machine.receive(.bdat(size: 10, last: false)) else { return XCTFail() }
        noMail.assert(code: 503, enhanced: esc(5, 5, 1))
        startMail(&machine)
        guard case .receiveChunk(10, true, false, let noRecipients?) = machine.receive(.bdat(size: 10, last: true)) else { return XCTFail() }
        noRecipients.assert(code: 554, enhanced: esc(5, 5, 1))
        XCTAssertNil(machine.transaction)
        XCTAssertEqual(machine.phase, .ready)
    }

    func testBDATAfterHELO() {
        var machine = Machine(configuration: configuration())
        hello(&machine, extended: false)
        startMail(&machine)
        addRecipient(&machine)
        guard case .receiveChunk(10, true, false, let refusal?) = machine.receive(.bdat(size: 10, last: true)) else { return XCTFail() }
        refusal.assert(code: 503, enhanced: nil)
        XCTAssertEqual(machine.transaction?.usesChunking, false)
    }

    func testBDATRefusalPastTheErrorLimitCloses() {
        var machine = Machine(configuration: configuration(maximumErrors: 0))
        hello(&machine)
        let action = machine.receive(.bdat(size: 10, last: false))
        guard case .receiveChunk(10, false, false, let refusal?) = action else { return XCTFail("\(action)") }
        refusal.assert(code: 421, enhanced: esc(4, 7, 0))
        XCTAssertEqual(machine.phase, .closed)
    }

    func testChunkRefused() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        addRecipient(&machine)
        _ = machine.receive(.bdat(size: 10, last: false))
        machine.chunkRefused()
        XCTAssertNil(machine.transaction)
        XCTAssertEqual(machine.phase, .ready)
        guard case .receiveChunk(_, _, false, let refusal?) = machine.receive(.bdat(size: 10, last: true)) else { return XCTFail() }
        refusal.assert(code: 503, enhanced: esc(5, 5, 1))
    }

    // MARK: EHLO, HELO and enhanced codes

    func testEHLOReply() {
        var machine = Machine(configuration: SMTPServerConfiguration(hostname: "mx.example"))
        let action = machine.receive(.ehlo("client.example"))
        guard case .reply(let reply) = action else { return XCTFail() }
        XCTAssertEqual(reply.code, 250)
        XCTAssertNil(reply.enhanced, "no enhanced code on the EHLO reply (RFC 2034 §3)")
        XCTAssertEqual(reply.lines, [
            "mx.example", "SIZE 26214400", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN",
        ])
        XCTAssertEqual(reply.encoded.text,
                       "250-mx.example\r\n250-SIZE 26214400\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
                           + "250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n")
        XCTAssertTrue(machine.isExtended)
        XCTAssertEqual(machine.helloName, "client.example")

        var tls = Machine(configuration: configuration(maximumMessageSize: 5000, tlsAvailable: true))
        let tlsReply = self.reply(tls.receive(.ehlo("c")))
        XCTAssertEqual(tlsReply?.lines.last, "STARTTLS")
        XCTAssertTrue(tlsReply?.lines.contains("SIZE 5000") ?? false)
    }

    func testHELOReply() {
        var machine = Machine(configuration: configuration())
        let action = machine.receive(.helo("client.example"))
        guard case .reply(let reply) = action else { return XCTFail() }
        reply.assert(code: 250, enhanced: nil)
        XCTAssertEqual(reply.lines, ["mx.example"])
        XCTAssertFalse(machine.isExtended)
        XCTAssertEqual(machine.helloName, "client.example")
    }

    func testGreeting() {
        let machine = Machine(configuration: configuration())
        machine.greeting.assert(code: 220, enhanced: nil)
        XCTAssertEqual(machine.greeting.encoded.text, "220 mx.example ESMTP Postern\r\n")
    }

    func testHELOSessionRepliesHaveNoEnhancedCodes() {
        var machine = Machine(configuration: configuration())
        hello(&machine, extended: false)
        assertReply(machine.receive(.noop), code: 250, enhanced: nil)
        assertReply(machine.receive(.vrfy("x")), code: 252, enhanced: nil)
        assertReply(machine.receive(.help(nil)), code: 214, enhanced: nil)
        machine.prepare(SMTPReply(550, esc(5, 7, 1), "policy")).assert(code: 550, enhanced: nil)
        _ = machine.receive(mailCommand)
        machine.mailReplied(SMTPReply(250, esc(2, 1, 0), "Ok"), path: sender, parameters: MailParameters()).assert(code: 250, enhanced: nil)
        _ = machine.receive(rcptCommand)
        machine.recipientReplied(SMTPReply(250, esc(2, 1, 5), "Ok"), path: recipient(9), parameters: RecipientParameters())
            .assert(code: 250, enhanced: nil)
        assertReply(machine.receive(.quit), code: 221, enhanced: nil)
    }

    func testEHLOSessionRepliesHaveEnhancedCodes() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        assertReply(machine.receive(.noop), code: 250, enhanced: esc(2, 0, 0))
        // Upstream replies without a code get the class default; ones with a code keep it.
        machine.prepare(SMTPReply(550, nil, "policy")).assert(code: 550, enhanced: esc(5, 0, 0))
        machine.prepare(SMTPReply(451, nil, "later")).assert(code: 451, enhanced: esc(4, 0, 0))
        machine.prepare(SMTPReply(550, esc(5, 7, 1), "policy")).assert(code: 550, enhanced: esc(5, 7, 1))
        _ = machine.receive(mailCommand)
        machine.mailReplied(SMTPReply(250, nil, "Ok"), path: sender, parameters: MailParameters()).assert(code: 250, enhanced: esc(2, 0, 0))
        _ = machine.receive(rcptCommand)
        machine.recipientReplied(SMTPReply(250, esc(2, 1, 5), "Ok"), path: recipient(9), parameters: RecipientParameters())
            .assert(code: 250, enhanced: esc(2, 1, 5))
        assertReply(machine.receive(.quit), code: 221, enhanced: esc(2, 0, 0))
    }

    func testSwitchingFromEHLOToHELODropsEnhancedCodes() {
        var machine = Machine(configuration: configuration())
        hello(&machine)
        hello(&machine, extended: false)
        XCTAssertFalse(machine.isExtended)
        assertReply(machine.receive(.noop), code: 250, enhanced: nil)
        hello(&machine)
        assertReply(machine.receive(.noop), code: 250, enhanced: esc(2, 0, 0))
    }

    func testParametersAfterHELO() {
        var machine = Machine(configuration: configuration())
        hello(&machine, extended: false)
        for parameters in [MailParameters(size: 10), MailParameters(body: .eightBitMIME), MailParameters(smtpUTF8: true), MailParameters(ret: "FULL")] {
            let action = machine.receive(.mail(sender, parameters))
            XCTAssertEqual(kind(action), .reply)
            assertReply(action, code: 555, enhanced: nil)
        }
        startMail(&machine)
        let action = machine.receive(.rcpt(recipient(), RecipientParameters(notify: "NEVER")))
        assertReply(action, code: 555, enhanced: nil)
        addRecipient(&machine)
    }

    func testNonASCIIRecipientNeedsSMTPUTF8() {
        let unicode = ForwardPath.mailbox(Mailbox(localPart: "jörg", domain: "bücher.example"))
        var machine = Machine(configuration: configuration())
        hello(&machine)
        startMail(&machine)
        let refused = machine.receive(.rcpt(unicode, RecipientParameters()))
        XCTAssertEqual(kind(refused), .reply)
        assertReply(refused, code: 553, enhanced: esc(5, 6, 7))

        var utf8 = Machine(configuration: configuration())
        hello(&utf8)
        startMail(&utf8, MailParameters(smtpUTF8: true))
        guard case .recipient(let path, _) = utf8.receive(.rcpt(unicode, RecipientParameters())) else { return XCTFail() }
        XCTAssertEqual(path, unicode)
    }

    func testParserFollowsTheConfiguration() throws {
        let machine = Machine(configuration: SMTPServerConfiguration(hostname: "mx.example", maximumCommandLineLength: 20))
        XCTAssertEqual(machine.parser.maximumLineLength, 20)
        XCTAssertThrowsError(try machine.parser.parse(Array("NOOP 12345678901234".utf8)))
        XCTAssertEqual(try machine.parser.parse(Array("NOOP 1234567890123".utf8)), .noop)
    }

    func testConfigurationDefaults() {
        let configuration = SMTPServerConfiguration(hostname: "h")
        XCTAssertEqual(configuration.maximumMessageSize, 25 * 1024 * 1024)
        XCTAssertEqual(configuration.maximumRecipients, 100)
        XCTAssertEqual(configuration.maximumErrors, 10)
        XCTAssertEqual(configuration.maximumCommandLineLength, 512)
        XCTAssertEqual(configuration.maximumTextLineLength, 1000)
        XCTAssertFalse(configuration.tlsAvailable)
        XCTAssertFalse(configuration.requireTLS)
    }

    /// A whole session driven through the framer, parser and state machine, as the handler does.
    func testPipelinedSessionEndToEnd() throws {
        var machine = Machine(configuration: SMTPServerConfiguration(hostname: "mx.example"))
        var framer = SMTPInputFramer()
        framer.append(ByteBuffer(string:
            "EHLO c.example\r\nMAIL FROM:<a@b.example> SIZE=20\r\nRCPT TO:<x@y.example>\r\nBOGUS\r\nDATA\r\n..hi\r\n.\r\nQUIT\r\n"))
        var transcript: [String] = []
        var content: [UInt8] = []
        loop: while true {
            if machine.phase == .receivingData {
                guard let event = framer.nextDataEvent(maximumLineLength: 1000, bareLineEndings: .reject) else { break }
                switch event {
                case .content(let bytes): content += bytes.bytes
                case .end: machine.messageFinished(); transcript.append("250 queued")
                }
                continue
            }
            guard let event = framer.nextCommandLine(maximumLength: 512) else { break }
            let action: Machine.Action
            switch event {
            case .line(let line):
                do { action = machine.receive(try machine.parser.parse(line.readableBytesView)) } catch { action = machine.receive(error) }
            case .failure(let error):
                action = machine.receive(error)
            }
            switch action {
            case .mail(let path, let parameters):
                transcript.append(machine.mailReplied(SMTPReply(250, nil, "Ok"), path: path, parameters: parameters).description)
            case .recipient(let path, let parameters):
                transcript.append(machine.recipientReplied(SMTPReply(250, nil, "Ok"), path: path, parameters: parameters).description)
            case .quit(let reply):
                transcript.append(reply.description)
                break loop
            default:
                transcript.append(self.reply(action).map { "\($0.code)" } ?? "?")
            }
        }
        XCTAssertEqual(transcript, ["250", "250 2.0.0 Ok", "250 2.0.0 Ok", "500", "354", "250 queued", "221 2.0.0 Bye"])
        XCTAssertEqual(content, Array(".hi\r\n".utf8))
        XCTAssertEqual(machine.phase, .closed)
    }
}
