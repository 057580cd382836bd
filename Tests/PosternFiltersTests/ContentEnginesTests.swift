import Foundation
import PosternMIME
import PosternPolicy
import XCTest

@testable import PosternFilters

/// The one-pass prefilter never changes an answer: every pattern against every message gives
/// the same verdict and reason with it as with PCRE2 alone. The content condition tests also
/// run in full both ways (`ContentConditionTests.invokeTest`).
final class ContentEnginesTests: XCTestCase {
    /// The 20 body checks a Postfix body_checks file typically holds, and patterns whose
    /// semantics differ most between engines (back-references, look-arounds, inline options,
    /// Unicode case folding, anchors, empty matches, what Hyperscan cannot compile).
    static let patterns = [
        "<iframe\\s+src=", "<script[^>]*>.*\\b(eval|unescape)\\(", "^TVqQAAMAAAAEAAAA", "^UEsDBBQ.{0,40}\\.exe",
        "\\b(bit\\.ly|tinyurl\\.com)\\/[a-z0-9]{5,}", "\\bwire\\s+transfer\\b.*\\burgent\\b", "\\b(viagra|cialis|levitra)\\b",
        "\\bpassword\\s+expire[sd]?\\b", "\\bverify\\s+your\\s+account\\b", "\\b\\d{4}[- ]\\d{4}[- ]\\d{4}[- ]\\d{4}\\b",
        "https?:\\/\\/\\d+\\.\\d+\\.\\d+\\.\\d+\\/", "\\bbitcoin\\s+wallet\\b", "\\bnigeria\\b.*\\bprince\\b",
        "^begin\\s+[0-7]{3}\\s+\\S+\\.(exe|scr)", "\\bclick\\s+here\\s+to\\s+unsubscribe\\b", "EICAR-STANDARD-ANTIVIRUS-TEST-FILE",
        "\\b(lottery|jackpot)\\s+winner\\b", "=\\?utf-8\\?b\\?[A-Za-z0-9+\\/=]{200,}\\?=", "\\bact\\s+now\\b", "X{200}",
        "(\\w+) \\1\\b", "(?<=pay)pal", "foo(?!bar)", "(?-i)URGENT", "(?m)^offer$", "straße", "ÉTÉ", "\\Cx", "a(?C1)b", "z*",
        "password.{0,20}expire",
        // One character repeated, counted as runs instead of scanned (LiteralRun).
        "-{20,}", "(?-i)x{5}", "\\*{3,8}", "k{3}", "(?i)Q{2}", "X{79}",
    ]

    static let bodies = [
        "Your password will expire today. Verify your account at http://192.0.2.7/login",
        "hello hello world, click here to unsubscribe; WIRE TRANSFER needed, urgent!",
        "begin 644 invoice.exe\nM1234\nend", "text first\nbegin 644 invoice.exe", "TVqQAAMAAAAEAAAA rest",
        "<html><iframe  src=x><script type=js>var a = eval(b)</script></html>", "pay pal paypal foobar foobaz",
        "urgent URGENT", "special\noffer\nnow", "STRASSE Straße été", "card 1234-5678-9012-3456 and bitcoin  wallet",
        String(repeating: "X", count: 250), "the nigeria connection and a prince", "=?utf-8?b?" + String(repeating: "QUJD", count: 60) + "?=",
        "lottery   winner", "nothing to see", "", "act now: bit.ly/abc123 tinyurl.com/xy", "Cx ab a\u{0}b EICAR-STANDARD-ANTIVIRUS-TEST-FILE",
        String(repeating: "N" + String(repeating: "X", count: 79) + "\n", count: 40), "xxXxx xxxxX XXXXX -------------------- ** ***",
        "kK\u{212A} qQ ------------------- \\*\\*\\*",
    ]

    private func verdicts(prefilter: Bool, minimumScanSize: Int = 0, padding: Int = 0) async throws -> [String] {
        let (previous, size) = (ContentMatching.prefilter, ContentMatching.minimumScanSize)
        ContentMatching.prefilter = prefilter
        ContentMatching.minimumScanSize = minimumScanSize
        defer {
            ContentMatching.prefilter = previous
            ContentMatching.minimumScanSize = size
        }
        let rules = Self.patterns.enumerated().map { index, pattern in
            "  - { id: p\(index), stage: data, if: { body: { regex: '\(pattern.replacingOccurrences(of: "'", with: "''"))' } }, then: continue }\n"
                + "  - { id: r\(index), stage: data, if: { raw: { regex: '\(pattern.replacingOccurrences(of: "'", with: "''"))' } }, then: continue }\n"
        }.joined()
        let policy = try BuiltinFilters.compiler.compile(yaml: "rules:\n" + rules, file: "policy.yaml")
        var results: [String] = []
        for body in Self.bodies {
            let filler = String(repeating: "the quarterly report is attached for review. ", count: padding / 45 + (padding > 0 ? 1 : 0))
            let text = "Subject: test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body.replacingOccurrences(of: "\n", with: "\r\n")
                + (padding > 0 ? "\r\n" + filler : "") + "\r\n"
            var facts = facts(sender: "a@example.org")
            facts.message = MIMEMessage.parse(Array(text.utf8))
            for rule in policy.rules {
                let match = await rule.condition.evaluate(facts)
                results.append("\(rule.id) on \(body.prefix(20)): \(match?.reason ?? "no match")")
            }
        }
        return results
    }

    func testThePrefilterGivesPCRE2sAnswers() async throws {
        // Every subject through the pass (however short), then bodies of real size with the
        // default threshold.
        let alone = try await verdicts(prefilter: false)
        let prefiltered = try await verdicts(prefilter: true)
        XCTAssertEqual(alone.count, Self.patterns.count * 2 * Self.bodies.count)
        for (a, b) in zip(alone, prefiltered) where a != b { XCTFail("PCRE2 alone: \(a)\nprefiltered: \(b)") }
        XCTAssertGreaterThan(alone.filter { !$0.hasSuffix("no match") }.count, 40, "the corpus matches often enough to mean something")
        let size = ContentMatching.minimumScanSize
        let large = try await verdicts(prefilter: true, minimumScanSize: size, padding: size)
        let largeAlone = try await verdicts(prefilter: false, minimumScanSize: size, padding: size)
        for (a, b) in zip(largeAlone, large) where a != b { XCTFail("PCRE2 alone: \(a)\nprefiltered: \(b)") }
    }

    func testShortSubjectsAreSearchedDirectly() throws {
        let policy = try BuiltinFilters.compiler.compile(yaml: "rules:\n  - { id: a, stage: data, if: { body: { regex: 'viagra' } }, then: reject }\n",
                                                         file: "policy.yaml")
        guard let condition = policy.rules.first?.condition as? ContentCondition, let prefilter = condition.prefilter else {
            return XCTFail("the body pattern is prefiltered")
        }
        let short = MIMEMessage.parse(Array("Subject: x\r\n\r\nhello\r\n".utf8))
        XCTAssertEqual(prefilter.set.candidates(in: short), [nil], "below the threshold: no scan, PCRE2 searches")
        let long = MIMEMessage.parse(Array(("Subject: x\r\n\r\n" + String(repeating: "hello world ", count: 2_000) + "\r\n").utf8))
        XCTAssertEqual(prefilter.set.candidates(in: long), [[]], "scanned: nothing can match")
        XCTAssertFalse(prefilter.set.mayMatch(prefilter.id, subject: 0, length: 24_000, in: long))
        XCTAssertTrue(prefilter.set.mayMatch(prefilter.id, subject: 0, length: 7, in: short))
    }

    func testEachPatternSaysWhichEngineItGot() throws {
        let policy = try BuiltinFilters.compiler.compile(yaml: """
            rules:
              - { id: a, stage: data, if: { body: { regex: 'viagra' } }, then: reject }
              - { id: b, stage: data, if: { any: [{ body: { regex: '\\Cx' } }, { subject: { regex: 'offer' } }] }, then: reject }
            """, file: "policy.yaml")
        let engines = policy.rules.flatMap(\.condition.patternEngines)
        XCTAssertEqual(engines.map(\.pattern), ["body: /viagra/", "body: /\\Cx/", "subject: /offer/"])
        XCTAssertEqual(engines[0].engine, .prefiltered)
        guard case .pcre2(let why) = engines[1].engine else { return XCTFail("\(engines)") }
        XCTAssertTrue(why.hasPrefix("Hyperscan: "), why)
        XCTAssertEqual(engines[2].engine, .shortValues)
    }

    func testARepeatedCharacterIsCountedAsRunsInSubjectsOfAnySize() throws {
        let policy = try BuiltinFilters.compiler.compile(yaml: """
            rules:
              - { id: a, stage: data, if: { body: { regex: '(?-i)X{200}' } }, then: reject }
            """, file: "policy.yaml")
        guard let condition = policy.rules.first?.condition as? ContentCondition, let prefilter = condition.prefilter else {
            return XCTFail("the body pattern is prefiltered")
        }
        XCTAssertEqual(condition.patternEngines.first?.engine, .runCount(minimum: 200))
        // smtp-source's body: lines of 79 X's, never 200 in a row.
        let lines = String(repeating: "N" + String(repeating: "X", count: 79) + "\r\n", count: 1_300)
        let message = MIMEMessage.parse(Array(("Subject: x\r\n\r\n" + lines).utf8))
        XCTAssertFalse(prefilter.set.mayMatch(prefilter.id, subject: 0, length: lines.utf8.count, in: message))
        let short = MIMEMessage.parse(Array(("Subject: x\r\n\r\nN" + String(repeating: "X", count: 200) + "\r\n").utf8))
        XCTAssertTrue(prefilter.set.mayMatch(prefilter.id, subject: 0, length: 203, in: short), "a run of 200, under the scan threshold")
        let lower = MIMEMessage.parse(Array(("Subject: x\r\n\r\n" + String(repeating: "x", count: 300) + "\r\n").utf8))
        XCTAssertFalse(prefilter.set.mayMatch(prefilter.id, subject: 0, length: 302, in: lower), "(?-i): lower case is no run")
    }

    func testOnlyOneCharacterWithACountedRepeatIsARun() {
        let runs: [(String, [UInt8], Int)] = [
            ("X{200}", [UInt8(ascii: "X"), UInt8(ascii: "x")], 200), ("(?-i)X{200}", [UInt8(ascii: "X")], 200),
            ("-{20,}", [UInt8(ascii: "-")], 20), ("\\*{3,8}", [UInt8(ascii: "*")], 3), ("(?i)q{2}", [UInt8(ascii: "q"), UInt8(ascii: "Q")], 2),
        ]
        for (pattern, octets, minimum) in runs {
            let run = LiteralRun(pattern, caseInsensitive: true)
            XCTAssertEqual(run?.octets, octets, pattern)
            XCTAssertEqual(run?.minimum, minimum, pattern)
        }
        for pattern in ["X{1}", "X{200", "X{3,2}", "X{,3}", "X{200}?", "X{200}+", "XY{3}", "[X]{3}", ".{3}", "\\d{3}", "\\1{3}",
                        "(?m)X{3}", "^X{3}", "X{3}$", "é{3}", "k{3}", "(?i)S{4}", "X{99999}", " {3}", "X*", ""] {
            XCTAssertNil(LiteralRun(pattern, caseInsensitive: true), pattern)
        }
        XCTAssertNotNil(LiteralRun("k{3}", caseInsensitive: false), "k has no third case when case matters")
        let run = LiteralRun("-{3,}", caseInsensitive: true)!
        XCTAssertTrue(run.occurs(in: "a---b"))
        XCTAssertFalse(run.occurs(in: "a--b--c"))
        XCTAssertTrue(run.occurs(in: "---"))
        XCTAssertFalse(run.occurs(in: ""))
    }
}
