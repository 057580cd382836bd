import Foundation
@testable import PosternFuzzTargets
import PosternPolicy
import SMTPCore
import XCTest

/// Replays every committed fuzz input (Fuzz/corpus/<target>/, Fuzz/regressions/<target>/)
/// through the same functions `SMTPFuzzer` runs: each completes without breaking an
/// invariant (reported here as a test failure, not a trap), so a fixed crash stays fixed.
final class CorpusReplayTests: XCTestCase {
    /// The package root, from this file's path (Tests/PosternFuzzTests/ is two levels down).
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The files of `Fuzz/<kind>/<target>/`, sorted.
    static func inputs(_ kind: String, _ target: PosternFuzzTarget) throws -> [URL] {
        let directory = packageRoot.appendingPathComponent("Fuzz/\(kind)/\(target.rawValue)")
        guard FileManager.default.fileExists(atPath: directory.path) else { return [] }
        return try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
            .filter { !$0.lastPathComponent.hasPrefix(".") }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    func testEveryTargetHasASeedCorpus() throws {
        for target in PosternFuzzTarget.allCases {
            XCTAssertGreaterThanOrEqual(try Self.inputs("corpus", target).count, 3, "Fuzz/corpus/\(target.rawValue)")
        }
    }

    func testCorpusReplays() throws {
        for target in PosternFuzzTarget.allCases {
            for file in try Self.inputs("corpus", target) {
                let failures = target.check(Array(try Data(contentsOf: file)))
                XCTAssertEqual(failures, [], "Fuzz/corpus/\(target.rawValue)/\(file.lastPathComponent)")
            }
        }
    }

    func testRegressionsReplay() throws {
        var count = 0
        for target in PosternFuzzTarget.allCases {
            for file in try Self.inputs("regressions", target) {
                let failures = target.check(Array(try Data(contentsOf: file)))
                XCTAssertEqual(failures, [], "Fuzz/regressions/\(target.rawValue)/\(file.lastPathComponent)")
                count += 1
            }
        }
        // Each fixed crash keeps its input (see Fuzz/README.md, "Adding a regression").
        XCTAssertGreaterThanOrEqual(count, 2)
    }

    func testABrokenInvariantIsReportedNotATrap() {
        let findings = FuzzFindings()
        FuzzFindings.$current.withValue(findings) {
            expect(true, "holds")
            expect(false, "broken")
        }
        XCTAssertEqual(findings.failures, ["broken"])
    }

    func testTheSessionTargetDrivesTheSessionMachine() {
        // EHLO, a transaction, QUIT: the machine answers and the checks find nothing.
        let script = [UInt8](repeating: 0, count: SessionScript.size)
        let input: [UInt8] = [0x00, 0x00] + script + Array("EHLO a.fuzz.test\r\n".utf8)
        XCTAssertEqual(PosternFuzzTarget.session.check(input), [])
        let pipelined: [UInt8] = [0x18, 0x00] + script + Array("EHLO a.fuzz.test\r\nMAIL FROM:<a@b.fuzz.test>\r\n".utf8)
        XCTAssertEqual(PosternFuzzTarget.session.check(pipelined), [], "improper pipelining ends the session cleanly")
    }

    func testTheSessionScriptChoosesResults() {
        // Byte 0 of the script: the 1st and 2nd verdicts (8: reject); byte 2: the 1st upstream reply.
        let script = SessionScript([0x08, 0, 0x0A, 0, 0, 0x01, 0x70, 0])
        XCTAssertEqual(script.verdict(0, stage: .mail).outcome,
                       .decided(.reject, SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Refused by fuzz rule")))
        XCTAssertEqual(script.verdict(1, stage: .mail).outcome, .pass)
        XCTAssertEqual(script.verdict(4, stage: .data).outcome, script.verdict(0, stage: .data).outcome, "the nibbles cycle")
        guard case .success(let refused) = script.upstream(0, .abort) else { return XCTFail("a reply") }
        XCTAssertEqual(refused.reply.code, 550)
        XCTAssertEqual(script.credentials(0), .failure(nowLockedOut: false))
        XCTAssertEqual(script.admission, .shuttingDown)
    }

    func testTheSessionTargetFindsAnEarlyReply() {
        // The credit for replies: a BDAT line counts once its chunk is in, not at its CRLF.
        var credit = ReplyCredit()
        credit.feed(Array("EHLO c\r\nBDAT 4\r\nab".utf8)[...])
        XCTAssertEqual(credit.completed, 1)
        credit.feed(Array("cd".utf8)[...])
        XCTAssertEqual(credit.completed, 2)
        credit.feed(Array("NOOP".utf8)[...])
        XCTAssertEqual(credit.completed, 2, "no CRLF yet")
        credit.feed(Array("\r\n".utf8)[...])
        XCTAssertEqual(credit.completed, 3)
    }

    func testTheRESPAndConfigTargetsRun() {
        XCTAssertEqual(PosternFuzzTarget.resp.check([0, 1, 2] + Array("*2\r\n+OK\r\n,nan\r\n$-1\r\n".utf8)), [])
        XCTAssertEqual(PosternFuzzTarget.config.check(Array("upstreams: [{url: smtp://127.0.0.1}]\n".utf8)), [])
        XCTAssertEqual(PosternFuzzTarget.config.check(Array("upstreams: 3\nbogus: 1\n".utf8)), [])
        // A file the loader would read is never opened.
        XCTAssertEqual(PosternFuzzTarget.config.check(Array("auth: {credentials: /dev/zero}\n".utf8)), [])
    }

    func testOversizedInputsAreIgnored() {
        // Past the size cap no target does any work, so nothing can fail.
        let huge = [UInt8](repeating: UInt8(ascii: "\n"), count: PosternFuzzTarget.maximumInputSize + 1)
        for target in PosternFuzzTarget.allCases { XCTAssertEqual(target.check(huge), [], target.rawValue) }
    }
}
