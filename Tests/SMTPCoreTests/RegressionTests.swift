import NIOCore
import XCTest

@testable import SMTPCore

/// Bugs found by the first round of tests, each kept as a test.
final class RegressionTests: XCTestCase {
    func testReplyLineLimitHoldsWhenTheWholeLineArrivesAtOnce() {
        var parser = SMTPReplyParser(maximumLineLength: 100)
        var buffer = ByteBuffer(string: "250 " + String(repeating: "x", count: 5000) + "\r\n")
        XCTAssertThrowsError(try parser.parse(&buffer))
    }

    func testReplyParserStartsCleanAfterAnError() throws {
        var parser = SMTPReplyParser()
        var broken = ByteBuffer(string: "250-first\r\n25x\r\n")
        XCTAssertThrowsError(try parser.parse(&broken))
        var next = ByteBuffer(string: "251 fine\r\n")
        XCTAssertEqual(try parser.parse(&next)?.code, 251)
    }

    func testPathLimitCountsTheAngleBrackets() throws {
        let parser = SMTPCommandParser()
        let domain = String(repeating: "d", count: 63) + "." + String(repeating: "d", count: 63) + "." + String(repeating: "d", count: 61)
        // 1 + 64 + 1 + 189 + 1 = 256 octets: allowed; one more is not.
        let local = String(repeating: "l", count: 64)
        XCTAssertNoThrow(try parser.parse(Array("RCPT TO:<\(local)@\(domain)>".utf8)))
        XCTAssertThrowsError(try parser.parse(Array("RCPT TO:<\(local)@\(domain)d>".utf8))) { error in
            XCTAssertEqual((error as? SMTPSyntaxError)?.kind, .badAddress)
        }
    }

    func testIPv6BlocksMatchIPv4MappedAddresses() {
        let mapped = IPAddress("::ffff:192.0.2.1")!
        XCTAssertTrue(IPNetwork("::/0")!.contains(mapped))
        XCTAssertTrue(IPNetwork("::ffff:0:0/96")!.contains(mapped))
        XCTAssertTrue(IPNetwork("192.0.2.0/24")!.contains(mapped))
        XCTAssertFalse(IPNetwork("2001:db8::/32")!.contains(mapped))
    }

    func testAddressLiteralTagMustBeLetDigHyphen() {
        let parser = SMTPCommandParser()
        XCTAssertThrowsError(try parser.parse(Array("RCPT TO:<a@[a b:c]>".utf8)))
        XCTAssertNoThrow(try parser.parse(Array("RCPT TO:<a@[x-tag:abc]>".utf8)))
    }

    func testEHLOMidTransactionAbandonsIt() {
        var machine = SMTPServerStateMachine(configuration: SMTPServerConfiguration(hostname: "mx.test"))
        _ = machine.receive(.ehlo("a.example"))
        _ = machine.receive(.mail(.null, MailParameters()))
        _ = machine.mailReplied(SMTPReply(250, nil, "Ok"), path: .null, parameters: MailParameters())
        XCTAssertNotNil(machine.transaction)
        _ = machine.receive(.ehlo("a.example"))
        // The session resets the upstream whenever the transaction disappears outside a MAIL in flight.
        XCTAssertNil(machine.transaction)
        XCTAssertEqual(machine.phase, .ready)
    }
}
