import PosternMIME
import XCTest

final class AuthenticationResultsTests: XCTestCase {
    func testWhichFieldsClaimTheAuthservID() {
        let id = "mx.postern.test"
        XCTAssertTrue(AuthenticationResults.claims(name: "Authentication-Results", value: "mx.postern.test; spf=pass", id: id))
        XCTAssertTrue(AuthenticationResults.claims(name: "authentication-results", value: " MX.Postern.Test ; none", id: id))
        XCTAssertTrue(AuthenticationResults.claims(name: "Authentication-Results", value: "mx.postern.test (forged) 1; none", id: id))
        XCTAssertFalse(AuthenticationResults.claims(name: "Authentication-Results", value: "mx.postern.test.evil; none", id: id))
        XCTAssertFalse(AuthenticationResults.claims(name: "Authentication-Results", value: "other.example; spf=pass", id: id))
        XCTAssertFalse(AuthenticationResults.claims(name: "X-Authentication-Results", value: "mx.postern.test; none", id: id))
    }

    func testStripRemovesWholeFoldedFieldsAndKeepsTheRest() {
        let message = Array("Received: x\r\nAuthentication-Results: mx.postern.test;\r\n\tspf=pass\r\nSubject: s\r\n\r\nbody\r\n".utf8)
        let section = MessageHeaderSection(parsing: message)
        let stripped = AuthenticationResults.strip(section, id: "mx.postern.test")
        XCTAssertEqual(stripped.map { String(decoding: $0, as: UTF8.self) }, "Received: x\r\nSubject: s\r\n\r\n")
        XCTAssertNil(AuthenticationResults.strip(section, id: "other.example"), "nothing to remove: nil")
        let incomplete = MessageHeaderSection(parsing: Array("Authentication-Results: mx.postern.test; none\r\n".utf8))
        XCTAssertNil(AuthenticationResults.strip(incomplete, id: "mx.postern.test"))
    }
}
