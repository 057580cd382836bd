import NIOCore
import XCTest

@testable import SMTPCore

final class SMTPCommandEncoderTests: XCTestCase {
    func mailbox(_ local: String, _ domain: String) -> Mailbox { Mailbox(localPart: local, domain: domain) }

    func testEncodedForms() {
        let table: [(SMTPCommand, String)] = [
            (.ehlo("client.example"), "EHLO client.example\r\n"),
            (.helo("client.example"), "HELO client.example\r\n"),
            (.mail(.null, MailParameters()), "MAIL FROM:<>\r\n"),
            (.mail(.mailbox(mailbox("a", "b.example")),
                   MailParameters(size: 10, body: .eightBitMIME, smtpUTF8: true, ret: "HDRS", envelopeID: "QQ")),
             "MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ\r\n"),
            (.rcpt(.postmaster, RecipientParameters()), "RCPT TO:<Postmaster>\r\n"),
            (.rcpt(.mailbox(mailbox("c", "d.example")), RecipientParameters(notify: "FAILURE,DELAY", originalRecipient: "rfc822;c@d.example")),
             "RCPT TO:<c@d.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;c@d.example\r\n"),
            (.data, "DATA\r\n"),
            (.bdat(size: 512, last: false), "BDAT 512\r\n"),
            (.bdat(size: 0, last: true), "BDAT 0 LAST\r\n"),
            (.rset, "RSET\r\n"),
            (.noop, "NOOP\r\n"),
            (.quit, "QUIT\r\n"),
            (.vrfy("user"), "VRFY user\r\n"),
            (.expn("list"), "EXPN list\r\n"),
            (.help(nil), "HELP\r\n"),
            (.help("MAIL"), "HELP MAIL\r\n"),
            (.starttls, "STARTTLS\r\n"),
            (.auth("PLAIN AGEAYg=="), "AUTH PLAIN AGEAYg==\r\n"),
            (.notImplemented("ATRN"), "ATRN\r\n"),
            (.etrn("@example.org"), "ETRN @example.org\r\n"),
        ]
        for (command, text) in table {
            XCTAssertEqual(command.encoded.text, text)
            var buffer = ByteBuffer(string: "prefix:")
            command.encode(into: &buffer)
            XCTAssertEqual(buffer.text, "prefix:" + text, "encode(into:) appends")
        }
    }

    func testEncoderCanDropUnofferedParameters() {
        let mail = SMTPCommand.mail(.mailbox(mailbox("a", "b.example")),
                                    MailParameters(size: 10, body: .sevenBit, smtpUTF8: true, ret: "FULL", envelopeID: "x"))
        func encode(_ command: SMTPCommand, dsn: Bool = true, size: Bool = true, mime: Bool = true) -> String {
            var buffer = ByteBuffer()
            command.encode(into: &buffer, includeDSN: dsn, includeSize: size, include8BitMIME: mime)
            return buffer.text
        }
        XCTAssertEqual(encode(mail, dsn: false), "MAIL FROM:<a@b.example> SIZE=10 BODY=7BIT SMTPUTF8\r\n")
        XCTAssertEqual(encode(mail, size: false), "MAIL FROM:<a@b.example> BODY=7BIT SMTPUTF8 RET=FULL ENVID=x\r\n")
        XCTAssertEqual(encode(mail, mime: false), "MAIL FROM:<a@b.example> SIZE=10 SMTPUTF8 RET=FULL ENVID=x\r\n")
        XCTAssertEqual(encode(mail, dsn: false, size: false, mime: false), "MAIL FROM:<a@b.example> SMTPUTF8\r\n")
        let rcpt = SMTPCommand.rcpt(.mailbox(mailbox("c", "d.example")), RecipientParameters(notify: "NEVER", originalRecipient: "rfc822;x"))
        XCTAssertEqual(encode(rcpt, dsn: false), "RCPT TO:<c@d.example>\r\n")
    }

    /// Encode, strip the CRLF, parse: the command comes back unchanged.
    func testRoundTrips() throws {
        let commands: [SMTPCommand] = [
            .ehlo("client.example"),
            .helo("[192.0.2.1]"),
            .mail(.null, MailParameters()),
            .mail(.null, MailParameters(size: 0, body: .sevenBit)),
            .mail(.mailbox(mailbox("a", "b.example")), MailParameters(size: 123_456)),
            .mail(.mailbox(mailbox("a.b+c", "sub.b.example")),
                  MailParameters(size: 10, body: .eightBitMIME, smtpUTF8: true, ret: "HDRS", envelopeID: "QQ+2B314159")),
            .mail(.mailbox(mailbox("\"john doe\"", "example.com")), MailParameters(ret: "FULL")),
            .mail(.mailbox(mailbox("jörg", "bücher.example")), MailParameters(smtpUTF8: true)),
            .mail(.mailbox(mailbox("user", "[IPv6:2001:db8::1]")), MailParameters(body: .eightBitMIME)),
            .rcpt(.postmaster, RecipientParameters()),
            .rcpt(.postmaster, RecipientParameters(notify: "NEVER")),
            .rcpt(.mailbox(mailbox("c", "d.example")), RecipientParameters()),
            .rcpt(.mailbox(mailbox("\"a@b\"", "[192.0.2.1]")), RecipientParameters(notify: "SUCCESS,FAILURE")),
            .rcpt(.mailbox(mailbox("c", "d.example")),
                  RecipientParameters(notify: "SUCCESS,FAILURE,DELAY", originalRecipient: "rfc822;c+2Bx@d.example")),
            .data, .rset, .noop, .quit, .starttls,
            .bdat(size: 0, last: true), .bdat(size: 1_000_000, last: false),
            .vrfy("user"), .expn("list"), .help(nil), .help("RCPT"),
            .auth("PLAIN"), .auth("PLAIN AGEAYg=="),
            .notImplemented("ATRN"), .notImplemented("TURN"), .etrn("example.org"), .etrn("#queue"),
        ]
        let parser = SMTPCommandParser()
        for command in commands {
            let bytes = command.encoded.bytes
            XCTAssertEqual(Array(bytes.suffix(2)), [13, 10], "\(command) ends in CRLF")
            let parsed = try parser.parse(bytes.dropLast(2))
            XCTAssertEqual(parsed, command, "round trip of \(command.encoded.text.debugDescription)")
        }
    }

    /// Round trip through the framer as well: what a client pipelines, a server reads back.
    func testPipelinedRoundTrip() throws {
        let commands: [SMTPCommand] = [
            .ehlo("client.example"),
            .mail(.mailbox(mailbox("a", "b.example")), MailParameters(size: 42, body: .eightBitMIME)),
            .rcpt(.mailbox(mailbox("c", "d.example")), RecipientParameters(notify: "NEVER")),
            .rcpt(.postmaster, RecipientParameters()),
            .data,
        ]
        var wire = ByteBuffer()
        for command in commands { command.encode(into: &wire) }
        var framer = SMTPInputFramer()
        framer.append(wire)
        var parsed: [SMTPCommand] = []
        while case .line(let line)? = framer.nextCommandLine(maximumLength: 512) {
            parsed.append(try SMTPCommandParser().parse(line.readableBytesView))
        }
        XCTAssertEqual(parsed, commands)
        XCTAssertEqual(framer.bufferedBytes, 0)
    }
}
