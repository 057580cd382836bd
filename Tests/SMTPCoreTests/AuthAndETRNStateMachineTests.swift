import XCTest

@testable import SMTPCore

/// AUTH (RFC 4954), ETRN (RFC 1985) and the junk-command limit in the server state machine.
final class AuthAndETRNStateMachineTests: XCTestCase {
    typealias Machine = SMTPServerStateMachine

    private func machine(_ offer: AuthenticationOffer, tls: Bool = true, errors: Int = 10, junk: Int = 100) -> Machine {
        Machine(configuration: SMTPServerConfiguration(
            hostname: "mx.example", maximumErrors: errors, tlsAvailable: tls, authentication: offer, maximumJunkCommands: junk))
    }

    private func ehloLines(_ machine: inout Machine) -> [String] {
        guard case .reply(let reply) = machine.receive(.ehlo("client.example")) else { XCTFail("EHLO"); return [] }
        return reply.lines
    }

    private func code(_ action: Machine.Action) -> Int? {
        switch action {
        case .reply(let reply), .close(let reply): return reply.code
        default: return nil
        }
    }

    private func establishTLS(_ machine: inout Machine) {
        _ = machine.receive(.ehlo("client.example"))
        guard case .startTLS = machine.receive(.starttls) else { return XCTFail("STARTTLS") }
        machine.tlsEstablished()
    }

    func testAuthOffIsNotAdvertisedAndAnswered502() {
        var m = machine(.off)
        XCTAssertFalse(ehloLines(&m).contains { $0.hasPrefix("AUTH") })
        let action = m.receive(.auth("PLAIN"))
        XCTAssertEqual(code(action), 502)
        XCTAssertEqual(m.errorCount, 1)
    }

    func testAfterTLSOffersAuthOnlyOnceTLSIsActive() {
        var m = machine(.afterTLS)
        XCTAssertFalse(ehloLines(&m).contains { $0.hasPrefix("AUTH") }, "not advertised in plaintext")
        guard case .reply(let refusal) = m.receive(.auth("PLAIN dGVzdA==")) else { return XCTFail("AUTH in plaintext") }
        XCTAssertEqual(refusal.code, 538)
        XCTAssertEqual(refusal.enhanced, EnhancedStatusCode(5, 7, 11))

        var secure = machine(.afterTLS)
        establishTLS(&secure)
        XCTAssertTrue(ehloLines(&secure).contains("AUTH PLAIN LOGIN"))
        guard case .authenticate(.plain, let initial) = secure.receive(.auth("plain AGFsaWNlAHB3")) else { return XCTFail("AUTH after TLS") }
        XCTAssertEqual(initial, "AGFsaWNlAHB3")
    }

    func testAlwaysOffersAuthWithoutTLS() {
        var m = machine(.always, tls: false)
        XCTAssertTrue(ehloLines(&m).contains("AUTH PLAIN LOGIN"))
        guard case .authenticate(.login, nil) = m.receive(.auth("LOGIN")) else { return XCTFail("AUTH LOGIN") }
    }

    func testAuthSequenceErrors() {
        var m = machine(.always)
        XCTAssertEqual(code(m.receive(.auth("PLAIN"))), 503, "before EHLO")
        _ = m.receive(.helo("client.example"))
        XCTAssertEqual(code(m.receive(.auth("PLAIN"))), 503, "after HELO: AUTH is an ESMTP extension")
        _ = m.receive(.ehlo("client.example"))
        XCTAssertEqual(code(m.receive(.auth("CRAM-MD5"))), 504)
        XCTAssertEqual(code(m.receive(.auth("PLAIN a b"))), 501)
        XCTAssertEqual(code(m.receive(.auth(""))), 501)
        _ = m.receive(.mail(.null, MailParameters()))
        _ = m.mailReplied(SMTPReply(250, nil, "Ok"), path: .null, parameters: MailParameters())
        XCTAssertEqual(code(m.receive(.auth("PLAIN"))), 503, "in a transaction")
        XCTAssertEqual(m.errorCount, 6)
    }

    func testSuccessRecordsTheUserAndRefusesASecondAuth() {
        var m = machine(.always)
        _ = m.receive(.ehlo("client.example"))
        guard case .authenticate = m.receive(.auth("PLAIN")) else { return XCTFail() }
        let reply = m.authenticationSucceeded(user: "alice")
        XCTAssertEqual(reply.code, 235)
        XCTAssertEqual(reply.enhanced, EnhancedStatusCode(2, 7, 0))
        XCTAssertEqual(m.authenticatedUser, "alice")
        XCTAssertEqual(code(m.receive(.auth("PLAIN"))), 503)
    }

    func testFailuresCountAsErrorsAndEndTheSession() {
        var m = machine(.always, errors: 2)
        _ = m.receive(.ehlo("client.example"))
        let invalid = SMTPReply(535, EnhancedStatusCode(5, 7, 8), "Authentication credentials invalid")
        XCTAssertEqual(code(m.authenticationFailed(invalid)), 535)
        XCTAssertEqual(code(m.authenticationFailed(invalid)), 535)
        guard case .close(let closing) = m.authenticationFailed(invalid) else { return XCTFail("third failure should close") }
        XCTAssertEqual(closing.code, 421)
        XCTAssertNil(m.authenticatedUser)
    }

    func testTLSRestartForgetsAuthentication() {
        var m = machine(.always)
        _ = m.receive(.ehlo("client.example"))
        _ = m.authenticationSucceeded(user: "alice")
        guard case .startTLS = m.receive(.starttls) else { return XCTFail() }
        m.tlsEstablished()
        XCTAssertNil(m.authenticatedUser)
    }

    func testMailAcceptsTheAuthParameterOnlyWhenAuthIsOffered() throws {
        let offered = machine(.always).parser
        guard case .mail(_, let parameters) = try offered.parse(Array("MAIL FROM:<a@b.example> AUTH=<>".utf8)) else { return XCTFail() }
        XCTAssertEqual(parameters.auth, "<>")
        guard case .mail(_, let named) = try offered.parse(Array("MAIL FROM:<a@b.example> AUTH=alice+40b.example".utf8)) else { return XCTFail() }
        XCTAssertEqual(named.auth, "alice+40b.example")
        XCTAssertThrowsError(try offered.parse(Array("MAIL FROM:<a@b.example> AUTH=".utf8)))
        XCTAssertThrowsError(try offered.parse(Array("MAIL FROM:<a@b.example> AUTH=a b".utf8)))
        XCTAssertThrowsError(try machine(.off).parser.parse(Array("MAIL FROM:<a@b.example> AUTH=<>".utf8))) { error in
            XCTAssertEqual((error as? SMTPSyntaxError)?.reply.code, 555)
        }
    }

    func testETRNIsRefusedInATransaction() {
        var m = machine(.off)
        m.offersETRN = true
        _ = m.receive(.ehlo("client.example"))
        guard case .etrn("example.org") = m.receive(.etrn("example.org")) else { return XCTFail("ETRN outside a transaction") }
        _ = m.receive(.mail(.null, MailParameters()))
        _ = m.mailReplied(SMTPReply(250, nil, "Ok"), path: .null, parameters: MailParameters())
        XCTAssertEqual(code(m.receive(.etrn("example.org"))), 503)
        XCTAssertEqual(code(m.refuse(SMTPReply(502, EnhancedStatusCode(5, 5, 1), "no"))), 502)
        XCTAssertEqual(m.errorCount, 2)
    }

    func testETRNIsNotServedWhereItIsNotOffered() {
        var m = machine(.off)
        _ = m.receive(.ehlo("client.example"))
        XCTAssertEqual(code(m.receive(.etrn("example.org"))), 502)
        XCTAssertEqual(m.errorCount, 1, "a refused ETRN is a client error")
    }

    func testHELPListsWhatTheSessionOffers() {
        func help(_ m: inout SMTPServerStateMachine) -> String? {
            guard case .reply(let reply) = m.receive(.help(nil)) else { return nil }
            return reply.text
        }
        var plain = SMTPServerStateMachine(configuration: SMTPServerConfiguration(hostname: "mx.example"))
        XCTAssertEqual(help(&plain), "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
        var everything = SMTPServerStateMachine(configuration: SMTPServerConfiguration(
            hostname: "mx.example", tlsAvailable: true, authentication: .always))
        everything.offersETRN = true
        XCTAssertEqual(help(&everything), "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH ETRN")
        // AUTH only after TLS on a `tls` listener; STARTTLS no more once TLS is active.
        var tls = SMTPServerStateMachine(configuration: SMTPServerConfiguration(hostname: "mx.example", tlsAvailable: true, authentication: .afterTLS))
        XCTAssertEqual(help(&tls), "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS")
        _ = tls.receive(.ehlo("c.example"))
        guard case .startTLS = tls.receive(.starttls) else { return XCTFail("STARTTLS") }
        tls.tlsEstablished()
        XCTAssertEqual(help(&tls), "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP AUTH")
    }

    func testETRNWithoutArgumentIsASyntaxError() {
        for line in ["ETRN", "ETRN ", "ETRN @", "ETRN #", "ETRN a b"] {
            XCTAssertThrowsError(try SMTPCommandParser().parse(Array(line.utf8)), line) { error in
                XCTAssertEqual((error as? SMTPSyntaxError)?.reply.code, 501, line)
            }
        }
    }

    func testJunkCommandsPastTheLimitCloseTheSession() {
        var m = machine(.off, junk: 3)
        _ = m.receive(.ehlo("client.example"))
        for command in [SMTPCommand.noop, .rset, .vrfy("x")] {
            XCTAssertNotEqual(code(m.receive(command)), 421)
        }
        guard case .close(let reply) = m.receive(.help(nil)) else { return XCTFail("fourth junk command should close") }
        XCTAssertEqual(reply.code, 421)
        XCTAssertEqual(reply.enhanced, EnhancedStatusCode(4, 7, 0))
        XCTAssertEqual(m.phase, .closed)
    }

    func testADeliveredMessageResetsTheJunkCount() {
        var m = machine(.off, junk: 2)
        _ = m.receive(.ehlo("client.example"))
        _ = m.receive(.noop)
        _ = m.receive(.noop)
        XCTAssertEqual(m.junkCount, 2)
        m.messageFinished()
        XCTAssertEqual(m.junkCount, 0)
        XCTAssertNotEqual(code(m.receive(.noop)), 421)
    }
}
