import Logging
import XCTest

@testable import PosternServer

final class LogHandlerTests: XCTestCase {
    func testLogfmtQuotesOnlyWhenNeeded() {
        let line = PosternLogHandler.render(
            format: .logfmt, ts: "2026-11-23T19:11:38.123Z", level: "info", message: "message relayed",
            fields: [("smtp.session.id", "Q0XMJBVMZGZQ"), ("from", "<a@example.org>"), ("reply", "250 2.0.0 \"Ok\"\nx")])
        XCTAssertEqual(line, #"ts=2026-11-23T19:11:38.123Z level=info msg="message relayed" smtp.session.id=Q0XMJBVMZGZQ from=<a@example.org> reply="250 2.0.0 \"Ok\"\nx""#)
    }

    func testJSONLines() throws {
        let line = PosternLogHandler.render(format: .json, ts: "t", level: "warning", message: "upstream failed", fields: [("smtp.session.id", "S")])
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        XCTAssertEqual(object, ["ts": "t", "level": "warning", "msg": "upstream failed", "smtp.session.id": "S"])
        XCTAssertFalse(line.contains("\n"))
    }

    func testTheSharedLevelChangesEveryHandlerItMadeUnlessOneSetItsOwn() {
        let setting = LogLevelSetting(.info)
        let handler = PosternLogHandler(label: "a", format: .logfmt, level: setting, output: { _ in })
        var own = PosternLogHandler(label: "b", format: .logfmt, level: setting, output: { _ in })
        own.logLevel = .error
        XCTAssertEqual(handler.logLevel, .info)
        setting.level = .debug
        XCTAssertEqual(handler.logLevel, .debug, "a handler made before the change follows it")
        XCTAssertEqual(own.logLevel, .error)
        for level in Logger.Level.allCases {
            setting.level = level
            XCTAssertEqual(setting.level, level)
        }
        XCTAssertEqual(PosternLogHandler(label: "c", format: .json, output: { _ in }).logLevel, .info, "without a setting: info")
    }
}
