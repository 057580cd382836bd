import PosternNative
import XCTest

/// The Hyperscan wrapper: one pass reports every pattern that may match (a superset of
/// PCRE2's matches, never fewer), patterns it cannot compile are named with the reason, and
/// concurrent scans each get their own scratch space.
final class HyperscanDatabaseTests: XCTestCase {
    func testOnePassReportsEachPatternThatMayMatch() throws {
        let database = try HyperscanDatabase([
            .init("viagra"), .init("\\bwire\\s+transfer\\b.*\\burgent\\b"), .init("(?-i)EICAR"), .init("^begin\\s+[0-7]{3}"),
            .init("x{200}"),
        ])
        XCTAssertEqual(database.unsupported, [:])
        XCTAssertEqual(database.candidates(in: "Buy VIAGRA now"), [0], "case-insensitive by default")
        XCTAssertEqual(database.candidates(in: "a Wire  Transfer, very URGENT"), [1])
        XCTAssertEqual(database.candidates(in: "eicar EICAR"), [2])
        XCTAssertEqual(database.candidates(in: "eicar"), [], "(?-i) is honoured")
        XCTAssertEqual(database.candidates(in: "begin 644 file.exe"), [3])
        XCTAssertEqual(database.candidates(in: "text\nbegin 644 file.exe"), [], "^ is the start of the subject (no multiline)")
        XCTAssertEqual(database.candidates(in: String(repeating: "x", count: 199)), [])
        XCTAssertEqual(database.candidates(in: String(repeating: "x", count: 200)), [4])
        XCTAssertEqual(database.candidates(in: ""), [])
        // A back-reference is approximated (prefilter mode): candidates PCRE2 then refutes.
        let approximated = try HyperscanDatabase([.init("(\\w+) \\1")])
        XCTAssertEqual(approximated.candidates(in: "hello hello"), [0])
        XCTAssertEqual(approximated.candidates(in: "hello world"), [0], "a superset: never fewer than PCRE2")
        XCTAssertEqual(approximated.candidates(in: "hello"), [])
    }

    func testPatternsHyperscanCannotCompileAreNamedAndLeftOut() throws {
        let database = try HyperscanDatabase([.init("ok"), .init("\\Cx"), .init("a(?C1)b"), .init("fine")])
        XCTAssertEqual(Set(database.unsupported.keys), [1, 2], "\(database.unsupported)")
        XCTAssertFalse(database.unsupported[1]?.isEmpty ?? true)
        XCTAssertEqual(database.candidates(in: "ok fine Cx ab"), [0, 3])
        let none = try HyperscanDatabase([.init("\\Cx")])
        XCTAssertEqual(none.candidates(in: "Cx"), [], "nothing compiled: nothing reported, the caller searches")
    }

    func testBytesAndConcurrentScans() async throws {
        let database = try HyperscanDatabase([.init("^X-Spam-Flag: YES", utf8: false), .init("\\xff\\xfe", caseInsensitive: false, utf8: false)])
        let bytes: [UInt8] = Array("X-Spam-Flag: yes\r\n".utf8) + [0xFF, 0xFE]
        XCTAssertEqual(bytes.withUnsafeBytes { database.candidates(in: $0) }, [0, 1])
        let texts = (0..<64).map { $0 % 2 == 0 ? "X-Spam-Flag: YES \($0)" : "clean \($0)" }
        let results = await withTaskGroup(of: (Int, Set<Int>?).self) { group in
            for (index, text) in texts.enumerated() { group.addTask { (index, database.candidates(in: text)) } }
            var results: [Int: Set<Int>?] = [:]
            for await (index, found) in group { results[index] = found }
            return results
        }
        for (index, found) in results { XCTAssertEqual(found, index % 2 == 0 ? [0] : [], "\(index)") }
    }
}
