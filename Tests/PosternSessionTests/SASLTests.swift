import Foundation
import XCTest

@testable import PosternSession

final class SASLTests: XCTestCase {
    func testSASLDecoding() {
        XCTAssertEqual(SASL.decode("*"), .cancelled)
        XCTAssertEqual(SASL.decode("="), .data([]))
        XCTAssertEqual(SASL.decode("not base64!"), .undecodable)
        guard case .data(let bytes) = SASL.decode(Data("\0alice\0pw".utf8).base64EncodedString()) else { return XCTFail() }
        XCTAssertEqual(SASL.plain(bytes)?.user, "alice")
        XCTAssertEqual(SASL.plain(bytes)?.password, "pw")
        XCTAssertEqual(SASL.plain(Array("alice\0alice\0pw".utf8))?.user, "alice", "authzid equal to the user")
        XCTAssertNil(SASL.plain(Array("admin\0alice\0pw".utf8)), "acting as someone else")
        XCTAssertNil(SASL.plain(Array("\0\0pw".utf8)), "no user")
        XCTAssertNil(SASL.plain(Array("alice\0pw".utf8)), "two fields")
        XCTAssertNil(SASL.plain([0, 0xFF, 0, 0x41]), "not UTF-8")
    }
}
