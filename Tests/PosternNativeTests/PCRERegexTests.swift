import Dispatch
import PosternNative
import XCTest

final class PCRERegexTests: XCTestCase {
    // MARK: Compile errors

    func testCompileErrorsCarryMessageAndByteOffset() {
        // (pattern, offset PCRE2 reports, a word of its message)
        let table: [(String, Int, String)] = [
            ("abc(def", 7, "missing closing parenthesis"),
            ("a{2,1}", 5, "numbers out of order"),
            ("[z-a]", 3, "range out of order"),
            ("x)", 1, "unmatched closing parenthesis"),
            ("é(", 3, "missing closing parenthesis"),  // é is 2 bytes: the offset counts bytes
            ("(?<n>a)(?<n>b)", 12, "two named subpatterns have the same name"),
        ]
        for (pattern, offset, message) in table {
            do {
                _ = try PCRERegex(pattern: pattern)
                XCTFail("\(pattern) compiled")
            } catch {
                XCTAssertEqual(error.offset, offset, pattern)
                XCTAssertTrue(error.message.contains(message), "\(pattern): \(error.message)")
                XCTAssertGreaterThan(error.code, 0, pattern)
                XCTAssertEqual(error.pattern, pattern)
                XCTAssertTrue(error.description.contains("offset \(offset)"), error.description)
            }
        }
    }

    func testPatternCannotSwitchOnUTFByItself() throws {
        XCTAssertThrowsError(try PCRERegex(pattern: "(*UTF)a"))
        XCTAssertNoThrow(try PCRERegex(pattern: "(*UTF)a", options: .utf))
    }

    // MARK: Options

    func testCaseInsensitive() throws {
        let sensitive = try PCRERegex(pattern: "viagra")
        let insensitive = try PCRERegex(pattern: "viagra", options: .caseInsensitive)
        XCTAssertNil(try sensitive.firstMatch(in: "Buy ViAgRa now"))
        XCTAssertEqual(try insensitive.firstMatch(in: "Buy ViAgRa now"), 4..<10)
    }

    func testCaseInsensitiveNonASCIINeedsUTF() throws {
        let bytes = try PCRERegex(pattern: "ÉTÉ", options: .caseInsensitive)
        let utf = try PCRERegex(pattern: "ÉTÉ", options: [.caseInsensitive, .utf])
        XCTAssertNil(try bytes.firstMatch(in: "un été"))
        XCTAssertEqual(try utf.firstMatch(in: "un été"), 3..<8)
    }

    func testMultiline() throws {
        let headers = "From: a@example.org\r\nSubject: cheap pills\r\nTo: b@example.org\r\n"
        let plain = try PCRERegex(pattern: "^Subject: .*pills\\r?$")
        let multiline = try PCRERegex(pattern: "^Subject: .*pills\\r?$", options: .multiline)
        XCTAssertNil(try plain.firstMatch(in: headers))
        XCTAssertEqual(try multiline.firstMatch(in: headers), 21..<42)
    }

    func testDotAll() throws {
        let plain = try PCRERegex(pattern: "begin.+end")
        let dotAll = try PCRERegex(pattern: "begin.+end", options: .dotAll)
        XCTAssertNil(try plain.firstMatch(in: "begin\nend"))
        XCTAssertEqual(try dotAll.firstMatch(in: "begin\nend"), 0..<9)
    }

    func testExtendedAndLiteral() throws {
        let extended = try PCRERegex(pattern: "a b  # comment\n c", options: .extended)
        XCTAssertEqual(try extended.firstMatch(in: "xxabc"), 2..<5)
        let literal = try PCRERegex(pattern: "a.b(", options: .literal)
        XCTAssertEqual(try literal.firstMatch(in: "axb( a.b("), 5..<9)
    }

    // MARK: Byte ranges and subjects

    func testRangesAreByteOffsetsIntoUTF8() throws {
        let subject = "café crème brûlée"
        let regex = try PCRERegex(pattern: "crème")
        let range = try XCTUnwrap(try regex.firstMatch(in: subject))
        XCTAssertEqual(range, 6..<12)
        XCTAssertEqual(String(decoding: Array(subject.utf8)[range], as: UTF8.self), "crème")

        // In UTF mode "." is one character (two bytes for è); in byte mode one byte.
        let utfDot = try PCRERegex(pattern: "cr.me", options: .utf)
        let byteDot = try PCRERegex(pattern: "cr.me")
        XCTAssertEqual(try utfDot.firstMatch(in: subject), 6..<12)
        XCTAssertNil(try byteDot.firstMatch(in: subject))
        XCTAssertEqual(try PCRERegex(pattern: "cr..me").firstMatch(in: subject), 6..<12)
    }

    func testEmptyMatchIsAnEmptyRangeNotNil() throws {
        let regex = try PCRERegex(pattern: "x*")
        XCTAssertEqual(try regex.firstMatch(in: "abc"), 0..<0)
        XCTAssertEqual(try regex.firstMatch(in: ""), 0..<0)
        XCTAssertEqual(try regex.firstMatch(in: [UInt8]()), 0..<0)
        XCTAssertNil(try PCRERegex(pattern: "a").firstMatch(in: ""))
    }

    func testEverySubjectKind() throws {
        let regex = try PCRERegex(pattern: "b+c")
        let bytes: [UInt8] = Array("aabbbcd".utf8)
        XCTAssertEqual(try regex.firstMatch(in: bytes), 2..<6)
        XCTAssertEqual(try regex.firstMatch(in: bytes[1...]), 1..<5)  // offsets relative to the slice
        XCTAssertEqual(try regex.firstMatch(in: "aabbbcd".utf8), 2..<6)
        XCTAssertEqual(try regex.firstMatch(in: bytes.lazy.map { $0 }), 2..<6)  // not contiguous
        try bytes.withUnsafeBytes { raw in
            XCTAssertEqual(try regex.firstMatch(in: raw), 2..<6)
        }
        XCTAssertTrue(try regex.matches("abc"))
        XCTAssertFalse(try regex.matches(Array("ac".utf8)))
    }

    func testNULBytesInPatternAndSubject() throws {
        let regex = try PCRERegex(pattern: "a\u{0}b")
        XCTAssertEqual(try regex.firstMatch(in: [0x78, 0x61, 0x00, 0x62]), 1..<4)
    }

    // MARK: Invalid UTF-8

    func testInvalidUTF8SubjectInUTFModeIsAnError() throws {
        let regex = try PCRERegex(pattern: "b", options: .utf)
        let subject: [UInt8] = [0x61, 0xFF, 0x62]
        XCTAssertThrowsError(try regex.firstMatch(in: subject)) { error in
            guard case .invalidUTF8(let offset, let message) = error as? RegexMatchError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(offset, 1)
            XCTAssertFalse(message.isEmpty)
        }
        // Truncated multi-byte sequence at the end.
        XCTAssertThrowsError(try regex.firstMatch(in: [0x62, 0xC3])) { error in
            guard case .invalidUTF8(let offset, _) = error as? RegexMatchError else { return XCTFail("\(error)") }
            XCTAssertEqual(offset, 1)
        }
    }

    func testMatchInvalidUTFSkipsBadBytes() throws {
        let regex = try PCRERegex(pattern: "b.", options: .matchInvalidUTF)
        XCTAssertEqual(try regex.firstMatch(in: [0x61, 0xFF, 0x62, 0xC3, 0xA9]), 2..<5)
        // The invalid byte is never matched by ".", so "a.b" cannot bridge it.
        XCTAssertNil(try PCRERegex(pattern: "a.b", options: .matchInvalidUTF).firstMatch(in: [0x61, 0xFF, 0x62]))
    }

    func testByteModeMatchesAnyBytes() throws {
        let regex = try PCRERegex(pattern: "a\\xFFb")
        XCTAssertEqual(try regex.firstMatch(in: [0x00, 0x61, 0xFF, 0x62]), 1..<4)
        XCTAssertEqual(try PCRERegex(pattern: "a.b").firstMatch(in: [0x61, 0xFF, 0x62]), 0..<3)
    }

    // MARK: Limits

    /// `(a+)+$` against "aaa…b" backtracks 2^n ways; without a limit this takes
    /// minutes. The limit must surface as an error, not a hang and not "no match".
    func testCatastrophicBacktrackingHitsTheMatchLimit() throws {
        let subject = String(repeating: "a", count: 30) + "b"
        for jit in [true, false] {
            let regex = try PCRERegex(pattern: "(a+)+$", jit: jit)
            XCTAssertThrowsError(try regex.firstMatch(in: subject), "jit: \(jit)") { error in
                XCTAssertEqual(error as? RegexMatchError, .matchLimitExceeded)
                XCTAssertEqual((error as? RegexMatchError)?.isResourceLimit, true)
            }
            // The same pattern on a harmless subject still works.
            XCTAssertEqual(try regex.firstMatch(in: "xaaa"), 1..<4)
        }
    }

    /// PCRE2 counts the match limit per start position, not per search: many cheap
    /// start positions never add up to the limit. (Documented on `Limits.matchLimit`.)
    func testMatchLimitCountsPerStartPosition() throws {
        let subject = String(repeating: "a", count: 20_000)
        let regex = try PCRERegex(pattern: "(?:a|x)(?:a|x)(?:a|x)(?:b|z)", limits: .init(matchLimit: 1_000), jit: false)
        XCTAssertNil(try regex.firstMatch(in: subject))
    }

    func testMatchLimitIsConfigurable() throws {
        let subject = String(repeating: "a", count: 12) + "b"  // ~2^12 steps
        let tight = try PCRERegex(pattern: "(a+)+$", limits: .init(matchLimit: 100), jit: false)
        let loose = try PCRERegex(pattern: "(a+)+$", limits: .init(matchLimit: 10_000_000), jit: false)
        XCTAssertThrowsError(try tight.firstMatch(in: subject))
        XCTAssertNil(try loose.firstMatch(in: subject))
    }

    func testDepthLimit() throws {
        // Each repetition of a group with alternatives nests one backtracking frame.
        // (The subject holds a "c" so PCRE2's required-character check cannot skip the match.)
        let subject = String(repeating: "ab", count: 500) + "xc"
        let regex = try PCRERegex(pattern: "(?:a|b)*c", limits: .init(depthLimit: 50), jit: false)
        XCTAssertThrowsError(try regex.firstMatch(in: subject)) { error in
            XCTAssertEqual(error as? RegexMatchError, .depthLimitExceeded)
        }
        let roomy = try PCRERegex(pattern: "(?:a|b)*c", limits: .init(depthLimit: 5_000), jit: false)
        XCTAssertEqual(try roomy.firstMatch(in: subject), 1001..<1002)
        XCTAssertEqual(try roomy.firstMatch(in: String(repeating: "ab", count: 500) + "c"), 0..<1001)
    }

    func testHeapLimit() throws {
        let subject = String(repeating: "ab", count: 20_000) + "xc"
        let regex = try PCRERegex(
            pattern: "(?:(a)|b)*c",
            limits: .init(depthLimit: 1_000_000, heapLimitKiB: 64),
            jit: false
        )
        XCTAssertThrowsError(try regex.firstMatch(in: subject)) { error in
            XCTAssertEqual(error as? RegexMatchError, .heapLimitExceeded)
        }
    }

    /// JIT code runs on a 32 KiB stack; a pattern that needs more is rerun in the
    /// interpreter rather than failing.
    func testJITStackExhaustionFallsBackToTheInterpreter() throws {
        let subject = String(repeating: "ab", count: 50_000) + "c"
        let limits = PCRERegex.Limits(matchLimit: 10_000_000, depthLimit: 1_000_000, heapLimitKiB: 1_000_000)
        let jit = try PCRERegex(pattern: "(?:(a)|b)*c", limits: limits)
        let interpreter = try PCRERegex(pattern: "(?:(a)|b)*c", limits: limits, jit: false)
        XCTAssertEqual(try jit.firstMatch(in: subject), 0..<100_001)
        XCTAssertEqual(try interpreter.firstMatch(in: subject), 0..<100_001)
    }

    // MARK: JIT

    func testJITAndInterpreterAgree() throws {
        if PCRERegex.isJITAvailable {
            XCTAssertTrue(try PCRERegex(pattern: "a").isJITCompiled)
        }
        XCTAssertFalse(try PCRERegex(pattern: "a", jit: false).isJITCompiled)

        let subjects = [
            "", "Subject: Free money!!!", "from: <spam@example.com>", "café\ncrème\n",
            "Content-Type: application/x-msdownload; name=\"invoice.pdf.exe\"",
            String(repeating: "x", count: 5_000) + "needle",
        ]
        let table: [(String, PCRERegex.Options)] = [
            ("free\\s+money", .caseInsensitive),
            ("^crème$", [.multiline, .utf]),
            ("@example\\.(com|org)>", []),
            ("name=\"[^\"]+\\.(exe|scr|pif)\"", .caseInsensitive),
            ("needle$", []),
            ("\\bmoney\\b", []),
            ("(?<=Free )m\\w+", []),
            ("\\p{Ll}+", [.utf, .unicodeProperties]),
            ("x*", []),
        ]
        for (pattern, options) in table {
            let jit = try PCRERegex(pattern: pattern, options: options)
            let interpreter = try PCRERegex(pattern: pattern, options: options, jit: false)
            for subject in subjects {
                XCTAssertEqual(
                    try jit.firstMatch(in: subject), try interpreter.firstMatch(in: subject),
                    "\(pattern) on \(subject.prefix(40))"
                )
            }
        }
    }

    // MARK: Concurrency

    func testConcurrentMatchingFromEightThreads() throws {
        for jit in [true, false] {
            let regex = try PCRERegex(pattern: "(?i)x-spam-score:\\s*(\\d+)", jit: jit)
            let hostile = try PCRERegex(pattern: "(a+)+$", jit: jit)
            let subjects = (0..<64).map { "Received: from host\(String(repeating: " ", count: $0))X-Spam-Score: \($0)\r\n" }
            let evil = String(repeating: "a", count: 26) + "b"
            let failures = Counter()
            DispatchQueue.concurrentPerform(iterations: 8) { thread in
                for round in 0..<200 {
                    let index = (thread * 7 + round) % subjects.count
                    let expectedStart = "Received: from host".utf8.count + index
                    do {
                        let range = try regex.firstMatch(in: subjects[index])
                        if range?.lowerBound != expectedStart { failures.increment() }
                        if round % 50 == 0 {  // limits are hit concurrently too
                            do {
                                _ = try hostile.firstMatch(in: evil)
                                failures.increment()
                            } catch RegexMatchError.matchLimitExceeded {
                            } catch {
                                failures.increment()
                            }
                        }
                    } catch {
                        failures.increment()
                    }
                }
            }
            XCTAssertEqual(failures.value, 0, "jit: \(jit)")
        }
    }

    func testVersionIsReported() {
        XCTAssertTrue(PCRERegex.libraryVersion.hasPrefix("10."), PCRERegex.libraryVersion)
    }

    func testCaptureGroupCount() throws {
        XCTAssertEqual(try PCRERegex(pattern: "(a)(?:b)(?<c>c)").captureGroupCount, 2)
    }
}

/// A thread-safe counter for tests that run work with `concurrentPerform`.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0

    func increment() {
        lock.lock()
        count += 1
        lock.unlock()
    }

    var value: Int {
        lock.lock()
        defer { lock.unlock() }
        return count
    }
}
