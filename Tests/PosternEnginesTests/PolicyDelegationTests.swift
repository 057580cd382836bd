import NIOCore
import PosternEngines
import SMTPCore
import XCTest

/// The policy-delegation codec against SMTPD_POLICY_README and access(5).
final class PolicyDelegationTests: XCTestCase {
    func testRequestIsNameValueLinesEndedByAnEmptyLine() {
        let request = PolicyDelegation.encode([
            ("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("sender", ""),
            ("client_name", nil), ("helo_name", "evil\r\nrequest=x"), ("recipient", "a@b.example"),
        ])
        XCTAssertEqual(String(buffer: request),
                       "request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\nhelo_name=evil\nrecipient=a@b.example\n\n")
    }

    func testReaderTakesTheActionAndSkipsOtherAttributes() throws {
        var reader = PolicyResponseReader()
        reader.append(ByteBuffer(string: "action=DUNNO\n\nfoo=bar\r\naction=REJECT no\r\n\r\n"))
        XCTAssertEqual(try reader.next(), "DUNNO")
        XCTAssertEqual(try reader.next(), "REJECT no")
        XCTAssertNil(try reader.next())
        // Byte by byte.
        var slow = PolicyResponseReader()
        var got: [String] = []
        for byte in "action=OK\n\n".utf8 {
            slow.append(ByteBuffer(bytes: [byte]))
            if let action = try slow.next() { got.append(action) }
        }
        XCTAssertEqual(got, ["OK"])
    }

    func testReaderRefusesBrokenAnswers() {
        var missing = PolicyResponseReader()
        missing.append(ByteBuffer(string: "foo=bar\n\n"))
        XCTAssertThrowsError(try missing.next()) { XCTAssertEqual("\($0)", "an answer without an action attribute") }
        var noEquals = PolicyResponseReader()
        noEquals.append(ByteBuffer(string: "garbage\n"))
        XCTAssertThrowsError(try noEquals.next()) { XCTAssertEqual("\($0)", "an answer line without '=': 'garbage'") }
        var twice = PolicyResponseReader()
        twice.append(ByteBuffer(string: "action=OK\naction=REJECT\n\n"))
        XCTAssertThrowsError(try twice.next())
        var long = PolicyResponseReader()
        long.append(ByteBuffer(string: "action=" + String(repeating: "x", count: 5000)))
        XCTAssertThrowsError(try long.next()) { XCTAssertEqual("\($0)", "an answer line longer than 4096 octets") }
    }

    func testActionsAsPostfixReadsThem() {
        XCTAssertEqual(PolicyAction("OK"), .accept)
        XCTAssertEqual(PolicyAction("ok"), .accept)
        XCTAssertEqual(PolicyAction("1234"), .accept)
        XCTAssertEqual(PolicyAction("dunno"), .dunno)
        XCTAssertEqual(PolicyAction("REJECT"), .reject(SMTPReply(554, EnhancedStatusCode(5, 7, 1), "Access denied")))
        XCTAssertEqual(PolicyAction("REJECT go away"), .reject(SMTPReply(554, EnhancedStatusCode(5, 7, 1), "go away")))
        XCTAssertEqual(PolicyAction("550 5.7.23 SPF fail"), .reject(SMTPReply(550, EnhancedStatusCode(5, 7, 23), "SPF fail")))
        XCTAssertEqual(PolicyAction("450 slow down"), .tempfail(SMTPReply(450, EnhancedStatusCode(4, 7, 1), "slow down")))
        XCTAssertEqual(PolicyAction("DEFER"), .tempfail(SMTPReply(450, EnhancedStatusCode(4, 7, 1), "Try again later")))
        XCTAssertEqual(PolicyAction("421 4.7.0 bye"), .disconnect(SMTPReply(421, EnhancedStatusCode(4, 7, 0), "bye")))
        XCTAssertEqual(PolicyAction("defer_if_permit 4.7.24 SPF temperror"),
                       .deferIfPermit(SMTPReply(450, EnhancedStatusCode(4, 7, 24), "SPF temperror")))
        XCTAssertEqual(PolicyAction("DEFER_IF_REJECT"), .deferIfReject(SMTPReply(450, EnhancedStatusCode(4, 7, 1), "Try again later")))
        XCTAssertEqual(PolicyAction("prepend Received-SPF: Pass (mailfrom) identity=mailfrom"),
                       .prepend(name: "Received-SPF", value: "Pass (mailfrom) identity=mailfrom"))
        XCTAssertEqual(PolicyAction("PREPEND no header"), .unsupported("PREPEND without a header: 'no header'"))
        XCTAssertEqual(PolicyAction("HOLD suspicious"), .hold("suspicious"))
        XCTAssertEqual(PolicyAction("DISCARD"), .discard(""))
        XCTAssertEqual(PolicyAction("WARN watch this"), .log("watch this"))
        XCTAssertEqual(PolicyAction("FILTER smtp:[127.0.0.1]:10026"), .unsupported("FILTER smtp:[127.0.0.1]:10026"))
        XCTAssertEqual(PolicyAction("250 fine"), .accept)  // an all-numeric first word that is no 4xx/5xx
    }
}
