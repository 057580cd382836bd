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

    /// Includes, list files and GeoIP databases resolve the same way: relative to the file
    /// that names them, standardised, so `Policy.files` names every file once and plainly.
    func testEveryPathIsRelativeToTheFileThatNamesItAndStandardised() async throws {
        let database = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("PosternNativeTests/Fixtures/postern-country.mmdb").path
        let root = fixture.directory
        for directory in ["policies/inc", "lists", "geo"] {
            try FileManager.default.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: database, toPath: root + "/geo/country.mmdb")
        try "a@example.org\n".write(toFile: root + "/lists/a.txt", atomically: true, encoding: .utf8)
        try "b@example.org\n".write(toFile: root + "/lists/b.txt", atomically: true, encoding: .utf8)
        // Named from policies/inc/: relative to that directory, not to the main policy's.
        try """
            lists:
              b: { file: ../../lists/./b.txt }
            """.write(toFile: root + "/policies/inc/more.yaml", atomically: true, encoding: .utf8)
        try """
            include: [./inc/../inc/more.yaml]
            geoip: { country: ../geo/../geo/country.mmdb }
            lists:
              a: { file: \(root)/policies/../lists/a.txt }
            rules:
              - { id: a, stage: mail, if: { sender: { in: a } }, then: reject }
              - { id: b, stage: mail, if: { sender: { in: b } }, then: reject }
              - { id: gb, stage: connect, if: { country: GB }, then: reject }
            """.write(toFile: root + "/policies/policy.yaml", atomically: true, encoding: .utf8)
        let policy = try BuiltinFilters.compiler.compile(path: root + "/policies/policy.yaml")
        XCTAssertEqual(policy.files, [
            root + "/geo/country.mmdb", root + "/lists/a.txt", root + "/lists/b.txt",
            root + "/policies/inc/more.yaml", root + "/policies/policy.yaml",
        ])
        let blocked = await PolicyEngine.evaluate(policy, stage: .mail, facts: facts(sender: "b@example.org"))
        XCTAssertEqual(blocked.rule, "b", "the included list file was read")
        let located = await PolicyEngine.evaluate(policy, stage: .connect, facts: facts(client: "192.0.2.7"))
        XCTAssertEqual(located.rule, "gb", "the database was opened")
        XCTAssertEqual(PolicyCompiler.resolve("x/./y/../z.txt", relativeTo: "/etc/postern/policy.yaml"), "/etc/postern/x/z.txt")
        XCTAssertEqual(PolicyCompiler.resolve("/srv//a/../b.txt", relativeTo: "/etc/postern/policy.yaml"), "/srv/b.txt")
    }

    func testUnknownTopLevelKey() {
        XCTAssertEqual(fixture.errors("rulez: []\n").first,
                       "policy.yaml:1:1: unknown key 'rulez' in the policy (expected one of: dnsbl, dnsbl_wait, geoip, include, limits, lists, rules, version)")
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
