import NIOCore
import PosternSession
import XCTest

final class SessionTimeTests: XCTestCase {
    func testAdvancingMovesBothClocks() {
        let start = SessionTime(uptime: .uptimeNanoseconds(1_000), wallMilliseconds: 5_000)
        let later = start.advanced(by: .milliseconds(250))
        XCTAssertEqual(later.uptime, .uptimeNanoseconds(250_001_000))
        XCTAssertEqual(later.wallMilliseconds, 5_250)
    }
}
