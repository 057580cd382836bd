import PosternPolicy
import SMTPCore
import XCTest

final class PolicyCompilerTests: XCTestCase {
    private var fixture: PolicyFixture!

    override func setUpWithError() throws {
        fixture = try PolicyFixture(files: [
            "lists.yaml": "lists:\n  partner_nets: { items: [192.0.2.0/24] }\n  blocked: { file: blocked.txt }\n",
            "blocked.txt": "spam@example.com\n",
        ])
    }

    override func tearDown() { fixture.remove() }

    func testIncludeListsAndVersion() throws {
        let text = """
            version: 1
            include: [lists.yaml]
            rules:
              - id: partners
                stage: connect
                if: { client_ip: { in: partner_nets } }
                then: accept
              - id: blocked
                stage: mail
                if: { sender: { in: blocked } }
                then: reject
                reply: "550 5.7.1 Not here (ref {id})"
            """
        let policy = try fixture.compile(text)
        XCTAssertEqual(policy.rules.map(\.id), ["partners", "blocked"])
        XCTAssertEqual(policy.version.count, 16)
        XCTAssertEqual(try fixture.compile(text).version, policy.version, "same files, same version")
        XCTAssertNotEqual(try fixture.compile(text + "\n# changed\n").version, policy.version)
    }

    func testEveryErrorWithItsPosition() {
        let found = fixture.errors("""
            rules:
              - id: a
                stage: mail
                if: { recipient: bob@example.org }
                then: reject
              - id: a
                stage: rcpt
                if: { sender: { in: nolist } }
                then: reject
                reply: "250 nope {who}"
              - id: c
                stage: connect
                if: { client_ip: 300.1.1.1/8, frob: 1 }
                then: explode
              - id: d
                stage: later
                if: { tls: maybe }
                then: reject
                mode: loud
            """)
        XCTAssertEqual(found, [
            "policy.yaml:4:9: rule 'a' can never run: its condition needs stage rcpt or later, the rule is at mail",
            "policy.yaml:6:9: duplicate rule id 'a'",
            "policy.yaml:10:12: a reject reply needs a code in 500...599",
            "policy.yaml:10:12: unknown placeholder {who} (known: {client_ip}, {id}, {recipient}, {rule}, {sender})",
            "policy.yaml:8:25: unknown list 'nolist' (no lists are defined)",
            "policy.yaml:14:11: then must be accept, reject, tempfail, discard, quarantine, add_header, tag_subject or continue",
            "policy.yaml:13:22: '300.1.1.1/8' is not an IP address or CIDR block",
            "policy.yaml:13:35: unknown condition 'frob' (known: any, all, not, \(BuiltinFilters.registry.names.joined(separator: ", ")))",
            "policy.yaml:16:12: stage must be connect, helo, mail, rcpt or data",
            "policy.yaml:19:11: mode must be enforce, shadow or off",
            "policy.yaml:17:16: tls must be true or false",
        ])
    }

    func testMessageActionsNeedTheDataStage() {
        XCTAssertEqual(fixture.errors("""
            rules:
              - { id: x, stage: mail, if: { tls: false }, then: discard }
            """), ["policy.yaml:2:53: discard acts on the message: it needs stage: data"])
    }

    func testMissingFilesAndIncludeLoops() {
        XCTAssertEqual(fixture.errors("lists:\n  l: { file: missing.txt }\n").map { $0.replacingOccurrences(of: fixture.directory + "/", with: "") },
                       ["policy.yaml:2:14: cannot read list file missing.txt"])
        XCTAssertEqual(fixture.errors("include: [policy.yaml]\n"), ["policy.yaml:1:11: include loop: policy.yaml is already included"])
        XCTAssertEqual(fixture.errors("include: [nope.yaml]\n").first?.hasPrefix("policy.yaml:1:11: cannot read nope.yaml"), true)
        XCTAssertThrowsError(try BuiltinFilters_compile(path: "/nonexistent/policy.yaml"))
    }

    func testUnknownTopLevelKey() {
        XCTAssertEqual(fixture.errors("rulez: []\n").first,
                       "policy.yaml:1:1: unknown key 'rulez' in the policy (expected one of: geoip, include, limits, lists, rules, version)")
    }

    func testShippedPoliciesCompile() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let policy = try BuiltinFilters.compiler.compile(path: root.appendingPathComponent("Policies/default.yaml").path)
        XCTAssertEqual(policy.rules.first?.id, "trusted-networks")
        XCTAssertTrue(policy.rules.contains { $0.mode == .shadow }, "new rules start in shadow mode")
    }

    func testReplyTemplates() throws {
        let template = try XCTUnwrap(ReplyTemplate.parse("550 5.7.1 Sender {sender} refused for {recipient} from {client_ip} (ref {id}, {rule})"))
        let rendered = template.render(rule: "r1", facts: facts(client: "192.0.2.7", sender: "a@example.org", recipient: "b@example.net"))
        XCTAssertEqual(rendered, SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Sender a@example.org refused for b@example.net from 192.0.2.7 (ref TXID, r1)"))
        XCTAssertEqual(ReplyTemplate.parse("451 try later")?.enhanced, nil)
        XCTAssertNil(ReplyTemplate.parse("550 4.7.1 class mismatch"))
        XCTAssertNil(ReplyTemplate.parse("hello"))
    }
}

private func BuiltinFilters_compile(path: String) throws {
    _ = try PosternFilters.BuiltinFilters.compiler.compile(path: path)
}

import PosternFilters
