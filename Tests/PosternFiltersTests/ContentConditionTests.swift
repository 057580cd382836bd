import PosternMIME
import Foundation
import PosternPolicy
import XCTest

@testable import PosternFilters

/// Every test runs twice (`bothEngines`): with the one-pass prefilter, and with PCRE2 alone.
final class ContentConditionTests: XCTestCase {
    private func bothEngines(_ body: () async throws -> Void) async throws {
        let size = ContentMatching.minimumScanSize
        defer {
            ContentMatching.prefilter = true
            ContentMatching.minimumScanSize = size
        }
        ContentMatching.minimumScanSize = 0  // every subject through the pass, however short
        for prefilter in [true, false] {
            ContentMatching.prefilter = prefilter
            try await body()
        }
    }

    private func message(_ text: String) -> TransactionFacts {
        var result = facts(sender: "a@example.org")
        result.message = MIMEMessage.parse(Array(text.replacingOccurrences(of: "\n", with: "\r\n").utf8))
        return result
    }

    private let phish = """
        From: "Bank" <security@bank.example>
        Subject: =?UTF-8?B?VmVyaWZ5IHlvdXIgYWNjb3VudCBub3c=?=
        X-Mailer: PHPMailer 5.2
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="b1"

        --b1
        Content-Type: text/html; charset=utf-8
        Content-Transfer-Encoding: quoted-printable

        <p>Your password will=20expire today</p>
        --b1
        Content-Type: application/x-msdownload
        Content-Disposition: attachment; filename*=UTF-8''invoice%20%E2%84%96%201.exe
        Content-Transfer-Encoding: base64

        TVqQAAMAAAAEAAAA
        --b1--
        """

    func testEveryContentTarget() async throws {
        try await bothEngines {
            let facts = message(phish)
            try await expectMatch(true, "{ subject: { regex: 'verify your account' } }", stage: .data, facts)
            try await expectMatch(true, "{ body: { regex: 'password.{0,20}expire' } }", stage: .data, facts)
            try await expectMatch(true, "{ header.X-Mailer: { regex: '^phpmailer' } }", stage: .data, facts)
            try await expectMatch(false, "{ header.X-Mailer: { regex: '^Outlook' } }", stage: .data, facts)
            try await expectMatch(true, "{ attachment_name: { regex: '\\.exe$' } }", stage: .data, facts)
            try await expectMatch(true, "{ attachment_type: [application/x-msdownload] }", stage: .data, facts)
            try await expectMatch(false, "{ attachment_type: application/pdf }", stage: .data, facts)
            try await expectMatch(true, "{ raw: { regex: 'filename\\*=UTF-8' } }", stage: .data, facts)
            try await expectMatch(false, "{ subject: { regex: 'invoice' } }", stage: .data, message("Subject: hello\n\nbody\n"))
        }
    }

    func testReasonsNameThePlaceNotTheText() async throws {
        try await bothEngines {
            let fixture = try PolicyFixture()
            defer { fixture.remove() }
            let policy = try fixture.compile("rules:\n  - { id: r, stage: data, if: { attachment_name: { regex: 'exe$' } }, then: reject }\n")
            XCTAssertTrue(policy.needsMessage)
            let verdict = await PolicyEngine.evaluate(policy, stage: .data, facts: message(phish))
            XCTAssertEqual(verdict.reason, "attachment invoice № 1.exe matches /exe$/")
        }
    }

    func testCatastrophicPatternFinishesWithinItsLimit() async throws {
        try await bothEngines {
            // (a+)+$ against a long run of a's and a final b backtracks exponentially; the match
            // limit ends it, and it counts as no match.
            let hostile = "Subject: x\n\n" + String(repeating: "a", count: 5000) + "b\n"
            let started = ContinuousClock.now
            try await expectMatch(false, "{ body: { regex: '(a+)+$' } }", stage: .data, message(hostile))
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(30), "bounded by the match limit, not by luck")
        }
    }

    func testContentErrors() async throws {
        try await bothEngines {
            let fixture = try PolicyFixture()
            defer { fixture.remove() }
            XCTAssertEqual(fixture.errors("""
                rules:
                  - { id: a, stage: mail, if: { subject: { regex: x } }, then: reject }
                  - { id: b, stage: data, if: { body: { regex: '(' } }, then: reject }
                  - { id: c, stage: data, if: { attachment_type: [exe] }, then: reject }
                """), [
                    "policy.yaml:2:31: rule 'a' can never run: its condition needs stage data or later, the rule is at mail",
                    "policy.yaml:3:48: body.regex: invalid regular expression at offset 1: missing closing parenthesis",
                    "policy.yaml:4:51: 'exe' is not a MIME type (type/subtype)",
                ])
        }
    }
}
