import NIOCore
import XCTest

@testable import SMTPCore

final class SMTPCommandParserTests: XCTestCase {
    enum Expected {
        case success(SMTPCommand)
        case failure(SMTPSyntaxError.Kind)
    }

    /// Runs a table of fixtures through `parser`, naming the failing line.
    func check(
        _ fixtures: [(String, Expected)], parser: SMTPCommandParser = SMTPCommandParser(),
        file: StaticString = #filePath, line: UInt = #line
    ) {
        for (input, expected) in fixtures {
            check(Array(input.utf8), expected, parser: parser, label: input.debugDescription, file: file, line: line)
        }
    }

    func check(
        _ input: [UInt8], _ expected: Expected, parser: SMTPCommandParser = SMTPCommandParser(), label: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        do {
            let command = try parser.parse(input)
            switch expected {
            case .success(let want):
                XCTAssertEqual(command, want, "input \(label)", file: file, line: line)
            case .failure(let kind):
                XCTFail("input \(label): expected \(kind), parsed \(command)", file: file, line: line)
            }
        } catch {
            switch expected {
            case .success(let want):
                XCTFail("input \(label): expected \(want), threw \(error)", file: file, line: line)
            case .failure(let kind):
                XCTAssertEqual(error.kind, kind, "input \(label): \(error)", file: file, line: line)
            }
        }
    }

    func mailbox(_ local: String, _ domain: String) -> Mailbox { Mailbox(localPart: local, domain: domain) }

    // MARK: Verbs

    func testEveryVerb() {
        check([
            ("EHLO client.example", .success(.ehlo("client.example"))),
            ("HELO client.example", .success(.helo("client.example"))),
            ("EHLO [192.0.2.1]", .success(.ehlo("[192.0.2.1]"))),
            ("MAIL FROM:<a@b.example>", .success(.mail(.mailbox(mailbox("a", "b.example")), MailParameters()))),
            ("RCPT TO:<c@d.example>", .success(.rcpt(.mailbox(mailbox("c", "d.example")), RecipientParameters()))),
            ("DATA", .success(.data)),
            ("BDAT 100", .success(.bdat(size: 100, last: false))),
            ("BDAT 0 LAST", .success(.bdat(size: 0, last: true))),
            ("BDAT 42 last", .success(.bdat(size: 42, last: true))),
            ("RSET", .success(.rset)),
            ("NOOP", .success(.noop)),
            ("NOOP anything at all", .success(.noop)),
            ("QUIT", .success(.quit)),
            ("VRFY postmaster", .success(.vrfy("postmaster"))),
            ("VRFY John Smith", .success(.vrfy("John Smith"))),
            ("EXPN staff", .success(.expn("staff"))),
            ("HELP", .success(.help(nil))),
            ("HELP MAIL", .success(.help("MAIL"))),
            ("HELP ", .success(.help(nil))),
            ("STARTTLS", .success(.starttls)),
            ("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=", .success(.auth("PLAIN dGVzdAB0ZXN0AHRlc3Q="))),
            ("AUTH LOGIN", .success(.auth("LOGIN"))),
            ("ETRN example.com", .success(.etrn("example.com"))),
            ("ETRN @example.com", .success(.etrn("@example.com"))),
            ("ETRN #queue", .success(.etrn("#queue"))),
            ("ATRN", .success(.notImplemented("ATRN"))),
            ("TURN", .success(.notImplemented("TURN"))),
            ("SAML FROM:<a@b>", .success(.notImplemented("SAML"))),
            ("SEND FROM:<a@b>", .success(.notImplemented("SEND"))),
            ("SOML FROM:<a@b>", .success(.notImplemented("SOML"))),
            ("etrn x", .success(.etrn("x"))),
        ])
    }

    func testVerbsAreCaseInsensitive() {
        check([
            ("ehlo client.example", .success(.ehlo("client.example"))),
            ("Helo client.example", .success(.helo("client.example"))),
            ("mail from:<a@b.example>", .success(.mail(.mailbox(mailbox("a", "b.example")), MailParameters()))),
            ("MaIl FrOm:<a@b.example> size=10 body=8bitmime",
             .success(.mail(.mailbox(mailbox("a", "b.example")), MailParameters(size: 10, body: .eightBitMIME)))),
            ("rcpt to:<c@d.example>", .success(.rcpt(.mailbox(mailbox("c", "d.example")), RecipientParameters()))),
            ("data", .success(.data)),
            ("rset", .success(.rset)),
            ("noop", .success(.noop)),
            ("quit", .success(.quit)),
            ("StartTLS", .success(.starttls)),
            ("bdat 5 LaSt", .success(.bdat(size: 5, last: true))),
        ])
    }

    func testUnknownAndMalformedVerbs() {
        check([
            ("", .failure(.unknownCommand)),
            ("XYZZY", .failure(.unknownCommand)),
            ("MAILFROM:<a@b>", .failure(.unknownCommand)),
            ("GET / HTTP/1.1", .failure(.unknownCommand)),
            (" EHLO x", .failure(.unknownCommand)),
            ("EHLO", .failure(.syntax)),
            ("EHLO ", .failure(.syntax)),
            ("HELO", .failure(.syntax)),
            ("EHLO two words", .failure(.syntax)),
            ("EHLO " + String(repeating: "a", count: 256), .failure(.syntax)),
            ("DATA now", .failure(.syntax)),
            ("RSET x", .failure(.syntax)),
            ("QUIT please", .failure(.syntax)),
            ("STARTTLS now", .failure(.syntax)),
            ("VRFY", .failure(.syntax)),
            ("EXPN  ", .failure(.syntax)),
            ("BDAT", .failure(.syntax)),
            ("BDAT x", .failure(.syntax)),
            ("BDAT -1", .failure(.syntax)),
            ("BDAT 10 FIRST", .failure(.syntax)),
            ("BDAT 10 LAST extra", .failure(.syntax)),
            ("BDAT 1234567890123456789", .failure(.syntax)),
        ])
    }

    func testHelloNameLimit() {
        let name = String(repeating: "a", count: 255)
        check([("EHLO " + name, .success(.ehlo(name))), ("EHLO " + name + "a", .failure(.syntax))])
    }

    func testTrailingSpacesAreTrimmed() {
        check([
            ("EHLO client.example  ", .success(.ehlo("client.example"))),
            ("DATA ", .success(.data)),
            ("QUIT  ", .success(.quit)),
            ("BDAT 10  LAST ", .success(.bdat(size: 10, last: true))),
        ])
    }

    // MARK: Paths

    func testReversePaths() {
        check([
            ("MAIL FROM:<>", .success(.mail(.null, MailParameters()))),
            ("MAIL FROM: <>", .success(.mail(.null, MailParameters()))),
            ("MAIL FROM: <a@b.example>", .success(.mail(.mailbox(mailbox("a", "b.example")), MailParameters()))),
            ("MAIL FROM:<first.last+tag@sub.example.org>",
             .success(.mail(.mailbox(mailbox("first.last+tag", "sub.example.org")), MailParameters()))),
            ("MAIL FROM:<!#$%&'*+-/=?^_`{|}~@example.com>",
             .success(.mail(.mailbox(mailbox("!#$%&'*+-/=?^_`{|}~", "example.com")), MailParameters()))),
            ("MAIL FROM:<a@x-y.example>", .success(.mail(.mailbox(mailbox("a", "x-y.example")), MailParameters()))),
            ("MAIL FROM:<a@localhost>", .success(.mail(.mailbox(mailbox("a", "localhost")), MailParameters()))),
            // A source route is accepted and dropped (RFC 5321 Appendix C).
            ("MAIL FROM:<@a.example,@b.example:user@c.example>",
             .success(.mail(.mailbox(mailbox("user", "c.example")), MailParameters()))),
            ("RCPT TO:<@a.example:user@c.example>",
             .success(.rcpt(.mailbox(mailbox("user", "c.example")), RecipientParameters()))),
            // Quoted local parts keep their quotes; spaces, '@' and '>' are allowed inside.
            ("MAIL FROM:<\"john doe\"@example.com>",
             .success(.mail(.mailbox(mailbox("\"john doe\"", "example.com")), MailParameters()))),
            ("RCPT TO:<\"a@b\"@example.com>",
             .success(.rcpt(.mailbox(mailbox("\"a@b\"", "example.com")), RecipientParameters()))),
            ("RCPT TO:<\"a>b\"@example.com>",
             .success(.rcpt(.mailbox(mailbox("\"a>b\"", "example.com")), RecipientParameters()))),
            ("RCPT TO:<\"a\\\"b\"@example.com>",
             .success(.rcpt(.mailbox(mailbox("\"a\\\"b\"", "example.com")), RecipientParameters()))),
            ("RCPT TO:<\"\"@example.com>",
             .success(.rcpt(.mailbox(mailbox("\"\"", "example.com")), RecipientParameters()))),
            // Address literals.
            ("RCPT TO:<user@[192.0.2.1]>",
             .success(.rcpt(.mailbox(mailbox("user", "[192.0.2.1]")), RecipientParameters()))),
            ("RCPT TO:<user@[IPv6:2001:db8::1]>",
             .success(.rcpt(.mailbox(mailbox("user", "[IPv6:2001:db8::1]")), RecipientParameters()))),
            ("RCPT TO:<user@[ipv6:::1]>",
             .success(.rcpt(.mailbox(mailbox("user", "[ipv6:::1]")), RecipientParameters()))),
            ("RCPT TO:<user@[x-tag:something]>",
             .success(.rcpt(.mailbox(mailbox("user", "[x-tag:something]")), RecipientParameters()))),
        ])
    }

    func testPostmaster() {
        check([
            ("RCPT TO:<Postmaster>", .success(.rcpt(.postmaster, RecipientParameters()))),
            ("RCPT TO:<postmaster>", .success(.rcpt(.postmaster, RecipientParameters()))),
            ("RCPT TO:<POSTMASTER>", .success(.rcpt(.postmaster, RecipientParameters()))),
            ("RCPT TO:<Postmaster@example.com>",
             .success(.rcpt(.mailbox(mailbox("Postmaster", "example.com")), RecipientParameters()))),
            // Only RCPT knows the special <Postmaster>; a reverse-path needs a domain.
            ("MAIL FROM:<Postmaster>", .failure(.badAddress)),
        ])
    }

    func testBadPaths() {
        check([
            ("MAIL FROM:", .failure(.syntax)),
            ("MAIL FROM:a@b.example", .failure(.syntax)),
            ("MAIL FROM:<a@b.example", .failure(.syntax)),
            ("MAIL TO:<a@b.example>", .failure(.syntax)),
            ("MAIL <a@b.example>", .failure(.syntax)),
            ("MAIL", .failure(.syntax)),
            ("RCPT", .failure(.syntax)),
            ("RCPT FROM:<a@b.example>", .failure(.syntax)),
            ("RCPT TO:", .failure(.syntax)),
            ("MAIL FROM:<a@b.example>SIZE=10", .failure(.syntax)),
            ("MAIL FROM:<\"unterminated@b.example>", .failure(.syntax)),
            ("RCPT TO:<>", .failure(.badAddress)),
            ("MAIL FROM:<a>", .failure(.badAddress)),
            ("MAIL FROM:<@b.example>", .failure(.badAddress)),
            ("MAIL FROM:<a@>", .failure(.badAddress)),
            ("MAIL FROM:<a b@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<.a@b.example>", .failure(.badAddress)),
            ("MAIL FROM:<a.@b.example>", .failure(.badAddress)),
            ("MAIL FROM:<a..b@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<a(b)@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<a@b..example>", .failure(.badAddress)),
            ("MAIL FROM:<a@.b.example>", .failure(.badAddress)),
            ("MAIL FROM:<a@b.example.>", .failure(.badAddress)),
            ("MAIL FROM:<a@-b.example>", .failure(.badAddress)),
            ("MAIL FROM:<a@b-.example>", .failure(.badAddress)),
            ("MAIL FROM:<a@b_c.example>", .failure(.badAddress)),
            ("MAIL FROM:<a@b@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<\"a\"b@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<\"a\"@>", .failure(.badAddress)),
            ("RCPT TO:<user@[192.0.2.256]>", .failure(.badAddress)),
            ("RCPT TO:<user@[192.0.2]>", .failure(.badAddress)),
            ("RCPT TO:<user@[2001:db8::1]>", .failure(.badAddress)),
            ("RCPT TO:<user@[IPv6:192.0.2.1]>", .failure(.badAddress)),
            ("RCPT TO:<user@[IPv6:2001:db8::g]>", .failure(.badAddress)),
            ("RCPT TO:<user@[192.0.2.1>", .failure(.badAddress)),
            ("RCPT TO:<user@[]>", .failure(.badAddress)),
            ("RCPT TO:<user@[:x]>", .failure(.badAddress)),
            ("RCPT TO:<user@[tag:]>", .failure(.badAddress)),
            // Source routes must be well formed; an address literal is not a route hop.
            ("MAIL FROM:<@a.example user@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<@a.example,b.example:user@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<@a.example,:user@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<@:user@c.example>", .failure(.badAddress)),
            ("MAIL FROM:<@[192.0.2.1]:user@c.example>", .failure(.badAddress)),
        ])
    }

    func testQuotedPairMustBePrintable() {
        // A backslash followed by a control character is not a quoted-pair.
        let line = Array("MAIL FROM:<\"a\\".utf8) + [0x01] + Array("\"@b.example>".utf8)
        check(line, .failure(.badAddress), label: "quoted-pair with 0x01")
        let control = Array("MAIL FROM:<\"a".utf8) + [0x09] + Array("\"@b.example>".utf8)
        check(control, .failure(.badAddress), label: "tab inside quoted string")
    }

    // MARK: SMTPUTF8

    func testNonASCIIAddressNeedsSMTPUTF8() {
        check([
            ("MAIL FROM:<jörg@bücher.example> SMTPUTF8",
             .success(.mail(.mailbox(mailbox("jörg", "bücher.example")), MailParameters(smtpUTF8: true)))),
            ("MAIL FROM:<\"jö rg\"@example.com> SMTPUTF8",
             .success(.mail(.mailbox(mailbox("\"jö rg\"", "example.com")), MailParameters(smtpUTF8: true)))),
            ("MAIL FROM:<用户@例子.广告> smtputf8",
             .success(.mail(.mailbox(mailbox("用户", "例子.广告")), MailParameters(smtpUTF8: true)))),
            ("MAIL FROM:<jörg@example.com>", .failure(.badAddress)),
            ("MAIL FROM:<joerg@bücher.example>", .failure(.badAddress)),
            ("MAIL FROM:<jörg@example.com> SIZE=10", .failure(.badAddress)),
            // The parser does not police RCPT; the state machine checks it against MAIL.
            ("RCPT TO:<jörg@bücher.example>",
             .success(.rcpt(.mailbox(mailbox("jörg", "bücher.example")), RecipientParameters()))),
        ])
    }

    func testInvalidUTF8InAddressIsRejected() {
        let line = Array("MAIL FROM:<a".utf8) + [0xC3, 0x62] + Array("@b.example> SMTPUTF8".utf8)
        check(line, .failure(.badAddress), label: "invalid UTF-8 local part")
        let domain = Array("MAIL FROM:<a@b".utf8) + [0xFF] + Array(".example> SMTPUTF8".utf8)
        check(domain, .failure(.badAddress), label: "invalid UTF-8 domain")
    }

    func testMailboxProperties() {
        XCTAssertTrue(mailbox("a", "b.example").isASCII)
        XCTAssertFalse(mailbox("ä", "b.example").isASCII)
        XCTAssertFalse(mailbox("a", "bä.example").isASCII)
        XCTAssertTrue(mailbox("a", "[192.0.2.1]").isAddressLiteral)
        XCTAssertFalse(mailbox("a", "b.example").isAddressLiteral)
        XCTAssertEqual(mailbox("a", "b.example").description, "a@b.example")
        XCTAssertEqual(ReversePath.null.description, "<>")
        XCTAssertEqual(ReversePath.mailbox(mailbox("a", "b.example")).description, "<a@b.example>")
        XCTAssertNil(ReversePath.null.mailbox)
        XCTAssertEqual(ReversePath.mailbox(mailbox("a", "b")).mailbox, mailbox("a", "b"))
        XCTAssertEqual(ForwardPath.postmaster.description, "<Postmaster>")
        XCTAssertNil(ForwardPath.postmaster.mailbox)
        XCTAssertEqual(ForwardPath.mailbox(mailbox("a", "b")).mailbox, mailbox("a", "b"))
    }

    // MARK: ESMTP parameters

    func testMailParameters() {
        let from = ReversePath.mailbox(mailbox("a", "b.example"))
        check([
            ("MAIL FROM:<a@b.example> SIZE=1000", .success(.mail(from, MailParameters(size: 1000)))),
            ("MAIL FROM:<a@b.example> SIZE=0", .success(.mail(from, MailParameters(size: 0)))),
            ("MAIL FROM:<a@b.example> SIZE=99999999999999999999", .success(.mail(from, MailParameters(size: Int.max)))),
            ("MAIL FROM:<a@b.example> BODY=8BITMIME", .success(.mail(from, MailParameters(body: .eightBitMIME)))),
            ("MAIL FROM:<a@b.example> BODY=7BIT", .success(.mail(from, MailParameters(body: .sevenBit)))),
            ("MAIL FROM:<a@b.example> body=8bitmime", .success(.mail(from, MailParameters(body: .eightBitMIME)))),
            ("MAIL FROM:<a@b.example> SMTPUTF8", .success(.mail(from, MailParameters(smtpUTF8: true)))),
            ("MAIL FROM:<a@b.example> RET=FULL", .success(.mail(from, MailParameters(ret: "FULL")))),
            ("MAIL FROM:<a@b.example> RET=hdrs", .success(.mail(from, MailParameters(ret: "HDRS")))),
            ("MAIL FROM:<a@b.example> ENVID=QQ314159", .success(.mail(from, MailParameters(envelopeID: "QQ314159")))),
            ("MAIL FROM:<a@b.example> ENVID=a+2Bb+3Dc", .success(.mail(from, MailParameters(envelopeID: "a+2Bb+3Dc")))),
            ("MAIL FROM:<> SIZE=5 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x",
             .success(.mail(.null, MailParameters(size: 5, body: .eightBitMIME, smtpUTF8: true, ret: "HDRS", envelopeID: "x")))),
            ("MAIL FROM:<a@b.example>  SIZE=1   BODY=7BIT ", .success(.mail(from, MailParameters(size: 1, body: .sevenBit)))),
            // Not offered, or not a known keyword: 555.
            ("MAIL FROM:<a@b.example> BODY=BINARYMIME", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> BODY=9BIT", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> BODY", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> AUTH=<>", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> X-FOO=bar", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> MT-PRIORITY=3", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> NOTIFY=NEVER", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> REQUIRETLS", .failure(.unknownParameter)),
            // Malformed values.
            ("MAIL FROM:<a@b.example> SIZE", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SIZE=", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SIZE=12k", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SIZE=-1", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SIZE=123456789012345678901", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SMTPUTF8=yes", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> RET=ALL", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> RET", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> ENVID", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> ENVID=a+2b", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> ENVID=a+", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> ENVID=" + String(repeating: "x", count: 101), .failure(.syntax)),
            ("MAIL FROM:<a@b.example> =x", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> -SIZE=1", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SI_ZE=1", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SIZE=1=2", .failure(.syntax)),
            // Duplicates are a syntax error, whatever the case.
            ("MAIL FROM:<a@b.example> SIZE=1 SIZE=2", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SIZE=1 size=1", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> SMTPUTF8 SMTPUTF8", .failure(.syntax)),
            ("MAIL FROM:<a@b.example> X-FOO X-FOO", .failure(.syntax)),
        ])
        check([("MAIL FROM:<a@b.example> ENVID=" + String(repeating: "x", count: 100),
                .success(.mail(from, MailParameters(envelopeID: String(repeating: "x", count: 100)))))])
    }

    func testRecipientParameters() {
        let to = ForwardPath.mailbox(mailbox("c", "d.example"))
        check([
            ("RCPT TO:<c@d.example> NOTIFY=NEVER", .success(.rcpt(to, RecipientParameters(notify: "NEVER")))),
            ("RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE,DELAY",
             .success(.rcpt(to, RecipientParameters(notify: "SUCCESS,FAILURE,DELAY")))),
            ("RCPT TO:<c@d.example> notify=failure", .success(.rcpt(to, RecipientParameters(notify: "FAILURE")))),
            ("RCPT TO:<c@d.example> ORCPT=rfc822;c@d.example",
             .success(.rcpt(to, RecipientParameters(originalRecipient: "rfc822;c@d.example")))),
            ("RCPT TO:<c@d.example> ORCPT=rfc822;c+2Bx@d.example NOTIFY=DELAY",
             .success(.rcpt(to, RecipientParameters(notify: "DELAY", originalRecipient: "rfc822;c+2Bx@d.example")))),
            ("RCPT TO:<Postmaster> NOTIFY=NEVER", .success(.rcpt(.postmaster, RecipientParameters(notify: "NEVER")))),
            ("RCPT TO:<c@d.example> NOTIFY", .failure(.syntax)),
            ("RCPT TO:<c@d.example> NOTIFY=NEVER,FAILURE", .failure(.syntax)),
            ("RCPT TO:<c@d.example> NOTIFY=SOMETIMES", .failure(.syntax)),
            ("RCPT TO:<c@d.example> NOTIFY=SUCCESS,,FAILURE", .failure(.syntax)),
            ("RCPT TO:<c@d.example> ORCPT=c@d.example", .failure(.syntax)),
            ("RCPT TO:<c@d.example> ORCPT=;c@d.example", .failure(.syntax)),
            ("RCPT TO:<c@d.example> ORCPT", .failure(.syntax)),
            ("RCPT TO:<c@d.example> NOTIFY=NEVER NOTIFY=NEVER", .failure(.syntax)),
            ("RCPT TO:<c@d.example> SIZE=10", .failure(.unknownParameter)),
            ("RCPT TO:<c@d.example> X-FOO", .failure(.unknownParameter)),
        ])
    }

    func testParametersNotOfferedAreUnknown() {
        var parser = SMTPCommandParser()
        parser.offersSize = false
        parser.offers8BitMIME = false
        parser.offersSMTPUTF8 = false
        parser.offersDSN = false
        check([
            ("MAIL FROM:<a@b.example> SIZE=10", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> BODY=8BITMIME", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> SMTPUTF8", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> RET=FULL", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example> ENVID=x", .failure(.unknownParameter)),
            ("RCPT TO:<c@d.example> NOTIFY=NEVER", .failure(.unknownParameter)),
            ("RCPT TO:<c@d.example> ORCPT=rfc822;c@d.example", .failure(.unknownParameter)),
            ("MAIL FROM:<a@b.example>", .success(.mail(.mailbox(mailbox("a", "b.example")), MailParameters()))),
        ], parser: parser)
    }

    // MARK: Limits

    func testLocalPartLimit() {
        let local64 = String(repeating: "l", count: 64)
        let quoted64 = "\"" + String(repeating: "q", count: 62) + "\""
        check([
            ("MAIL FROM:<\(local64)@b.example>", .success(.mail(.mailbox(mailbox(local64, "b.example")), MailParameters()))),
            ("MAIL FROM:<\(local64)l@b.example>", .failure(.badAddress)),
            ("RCPT TO:<\(quoted64)@b.example>", .success(.rcpt(.mailbox(mailbox(quoted64, "b.example")), RecipientParameters()))),
            ("RCPT TO:<\"\(String(repeating: "q", count: 63))\"@b.example>", .failure(.badAddress)),
        ])
    }

    func testDomainLimits() {
        let label63 = String(repeating: "d", count: 63)
        let domain255 = [label63, label63, label63, label63].joined(separator: ".")
        XCTAssertEqual(domain255.utf8.count, 255)
        let domain256 = [label63, label63, label63, String(repeating: "d", count: 62), "d"].joined(separator: ".")
        XCTAssertEqual(domain256.utf8.count, 256)
        var parser = SMTPCommandParser()
        parser.maximumLineLength = 2000  // so only the address limits apply
        check([
            ("RCPT TO:<a@\(label63).example>", .success(.rcpt(.mailbox(mailbox("a", "\(label63).example")), RecipientParameters()))),
            ("RCPT TO:<a@\(label63)d.example>", .failure(.badAddress)),
            ("MAIL FROM:<@\(label63)d.example:a@b.example>", .failure(.badAddress)),
            ("EHLO " + domain255, .success(.ehlo(domain255))),
            // The domain fits 255 but the path is over 256.
            ("RCPT TO:<a@\(domain255)>", .failure(.badAddress)),
            ("RCPT TO:<@\(domain256):a@b.example>", .failure(.badAddress)),
        ], parser: parser)
    }

    func testDomainLimitAloneIsEnforced() throws {
        // Tested on the grammar directly: any domain over 255 also makes the path too long.
        let label63 = String(repeating: "d", count: 63)
        let domain255 = [label63, label63, label63, label63].joined(separator: ".")
        let domain256 = [label63, label63, label63, String(repeating: "d", count: 62), "d"].joined(separator: ".")
        XCTAssertNoThrow(try PathGrammar.validateDomain(Array(domain255.utf8)[...]))
        XCTAssertThrowsError(try PathGrammar.validateDomain(Array(domain256.utf8)[...]))
        let box = try PathGrammar.parseMailbox(Array("a@\(domain255)".utf8)[...])
        XCTAssertEqual(box.domain, domain255)
        XCTAssertThrowsError(try PathGrammar.parseMailbox(Array("a@\(domain256)".utf8)[...]))
    }

    func testPathLimit() {
        // 254 octets inside the brackets: the path with its brackets is exactly 256.
        let local = String(repeating: "l", count: 64)
        let domain189 = [String(repeating: "d", count: 63), String(repeating: "d", count: 63), String(repeating: "d", count: 61)]
            .joined(separator: ".")
        XCTAssertEqual(local.utf8.count + 1 + domain189.utf8.count, 254)
        check([("RCPT TO:<\(local)@\(domain189)>", .success(.rcpt(.mailbox(mailbox(local, domain189)), RecipientParameters())))])
        // 257 octets inside the brackets, each part valid on its own: over any reading of the limit.
        let domain192 = [String(repeating: "d", count: 63), String(repeating: "d", count: 63), String(repeating: "d", count: 62), "d"]
            .joined(separator: ".")
        XCTAssertEqual(local.utf8.count + 1 + domain192.utf8.count, 257)
        check([
            ("RCPT TO:<\(local)@\(domain192)>", .failure(.badAddress)),
            ("MAIL FROM:<\(local)@\(domain192)>", .failure(.badAddress)),
        ])
        // A source route counts towards the path length even though it is dropped.
        let route = "@" + [String(repeating: "r", count: 63), String(repeating: "r", count: 63), String(repeating: "r", count: 63)]
            .joined(separator: ".")
        let inner = route + ":" + String(repeating: "m", count: 64) + "@" + String(repeating: "e", count: 63)
        XCTAssertEqual(inner.utf8.count, 321)
        check([("RCPT TO:<\(inner)>", .failure(.badAddress))])
        check([("RCPT TO:<@r.example:m@e.example>", .success(.rcpt(.mailbox(mailbox("m", "e.example")), RecipientParameters())))])
    }

    func testCommandLineLimit() {
        // 512 octets including CRLF: 510 octets of command.
        let prefix = "NOOP "
        let ok = prefix + String(repeating: "x", count: 510 - prefix.utf8.count)
        let long = ok + "x"
        check([(ok, .success(.noop)), (long, .failure(.lineTooLong))])
        var parser = SMTPCommandParser()
        parser.maximumLineLength = 20
        check([
            ("NOOP " + String(repeating: "x", count: 13), .success(.noop)),
            ("NOOP " + String(repeating: "x", count: 14), .failure(.lineTooLong)),
        ], parser: parser)
    }

    func testLineLimitStress() {
        // Lines far over the limit fail fast with the same error, whatever they contain.
        for length in [511, 1_000, 65_536, 1_000_000] {
            let line = [UInt8](repeating: UInt8(ascii: "A"), count: length)
            check(line, .failure(.lineTooLong), label: "\(length) octets")
        }
    }

    func testInvalidCharacters() {
        for (bytes, name) in [([UInt8(0)], "NUL"), ([13], "bare CR"), ([10], "bare LF")] {
            for template in ["NOOP a#b", "MAIL FROM:<a#b@c.example>", "EHLO host#", "#QUIT", "DATA#"] {
                var line: [UInt8] = []
                for byte in template.utf8 {
                    if byte == UInt8(ascii: "#") { line += bytes } else { line.append(byte) }
                }
                check(line, .failure(.invalidCharacters), label: "\(template) with \(name)")
            }
        }
    }

    func testLineTooLongIsCheckedBeforeCharacters() {
        let line = [UInt8](repeating: 0, count: 600)
        check(line, .failure(.lineTooLong), label: "600 NULs")
    }

    // MARK: Replies for syntax errors

    func testSyntaxErrorReplies() {
        let table: [(SMTPSyntaxError.Kind, Int, EnhancedStatusCode)] = [
            (.unknownCommand, 500, esc(5, 5, 1)),
            (.syntax, 501, esc(5, 5, 4)),
            (.badAddress, 501, esc(5, 1, 3)),
            (.unknownParameter, 555, esc(5, 5, 4)),
            (.lineTooLong, 500, esc(5, 5, 2)),
            (.invalidCharacters, 500, esc(5, 5, 2)),
        ]
        for (kind, code, enhanced) in table {
            let reply = SMTPSyntaxError(kind, "detail").reply
            reply.assert(code: code, enhanced: enhanced)
            XCTAssertTrue(reply.isPermanentFailure)
        }
        XCTAssertEqual(SMTPSyntaxError(.syntax, "SIZE=<number>").description, "syntax: SIZE=<number>")
    }

    func testParserErrorsCarryTheirReplies() {
        let parser = SMTPCommandParser()
        func reply(_ line: String, file: StaticString = #filePath, lineNumber: UInt = #line) -> SMTPReply {
            do {
                let command = try parser.parse(Array(line.utf8))
                XCTFail("\(line.debugDescription) parsed as \(command)", file: file, line: lineNumber)
                return SMTPReply(250, nil, "unexpected")
            } catch {
                return error.reply
            }
        }
        reply("FOO").assert(code: 500, enhanced: esc(5, 5, 1))
        reply("MAIL FROM:a@b").assert(code: 501, enhanced: esc(5, 5, 4))
        reply("MAIL FROM:<a@@b>").assert(code: 501, enhanced: esc(5, 1, 3))
        reply("MAIL FROM:<a@b> FOO=1").assert(code: 555, enhanced: esc(5, 5, 4))
        reply("MAIL FROM:<a@b> BODY=BINARYMIME").assert(code: 555, enhanced: esc(5, 5, 4))
        reply(String(repeating: "N", count: 600)).assert(code: 500, enhanced: esc(5, 5, 2))
        reply("NOOP \u{0}").assert(code: 500, enhanced: esc(5, 5, 2))
        reply("NOOP \r").assert(code: 500, enhanced: esc(5, 5, 2))
    }

    func testVerbProperty() {
        let commands: [(SMTPCommand, String)] = [
            (.ehlo("x"), "EHLO"), (.helo("x"), "HELO"), (.mail(.null, MailParameters()), "MAIL"),
            (.rcpt(.postmaster, RecipientParameters()), "RCPT"), (.data, "DATA"), (.bdat(size: 1, last: true), "BDAT"),
            (.rset, "RSET"), (.noop, "NOOP"), (.quit, "QUIT"), (.vrfy("x"), "VRFY"), (.expn("x"), "EXPN"),
            (.help(nil), "HELP"), (.starttls, "STARTTLS"), (.auth("PLAIN"), "AUTH"), (.etrn("x"), "ETRN"), (.notImplemented("ATRN"), "ATRN"),
        ]
        for (command, verb) in commands { XCTAssertEqual(command.verb, verb) }
    }

    func testParametersHaveDSN() {
        XCTAssertFalse(MailParameters(size: 1, body: .sevenBit, smtpUTF8: true).hasDSN)
        XCTAssertTrue(MailParameters(ret: "FULL").hasDSN)
        XCTAssertTrue(MailParameters(envelopeID: "x").hasDSN)
        XCTAssertFalse(RecipientParameters().hasDSN)
        XCTAssertTrue(RecipientParameters(notify: "NEVER").hasDSN)
        XCTAssertTrue(RecipientParameters(originalRecipient: "rfc822;a@b").hasDSN)
    }

    func testXtext() {
        XCTAssertTrue(SMTPCommandParser.isXtext("abc"))
        XCTAssertTrue(SMTPCommandParser.isXtext("a+2B+3D"))
        XCTAssertTrue(SMTPCommandParser.isXtext(""))
        XCTAssertFalse(SMTPCommandParser.isXtext("a+2b"))
        XCTAssertFalse(SMTPCommandParser.isXtext("a+2"))
        XCTAssertFalse(SMTPCommandParser.isXtext("a=b"))
        XCTAssertFalse(SMTPCommandParser.isXtext("a b"))
        XCTAssertFalse(SMTPCommandParser.isXtext("é"))
    }

    func testPathsAsPeopleAndLogsWriteThem() {
        XCTAssertEqual(ReversePath(text: ""), .null)
        XCTAssertEqual(ReversePath(text: "<>"), .null)
        XCTAssertEqual(ReversePath(text: "a@b.example"), .mailbox(Mailbox(localPart: "a", domain: "b.example")))
        XCTAssertEqual(ReversePath(text: "<a@b.example>"), .mailbox(Mailbox(localPart: "a", domain: "b.example")))
        XCTAssertNil(ReversePath(text: "h:0123456789abcdef@b.example"), "a pseudonymised local part is not an address")
        XCTAssertNil(ReversePath(text: "@b.example"))
        XCTAssertNil(ReversePath(text: "a@b.example> SIZE=10"))
        XCTAssertEqual(ForwardPath(text: "postmaster"), .postmaster)
        XCTAssertEqual(ForwardPath(text: "<c@d.example>"), .mailbox(Mailbox(localPart: "c", domain: "d.example")))
        XCTAssertNil(ForwardPath(text: ""))
        XCTAssertNil(ForwardPath(text: "not an address"))
    }
}
