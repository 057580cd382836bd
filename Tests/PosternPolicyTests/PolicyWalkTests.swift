import PosternPolicy
import SMTPCore
import XCTest

/// The cross-stage semantics of `PolicyWalk`, with stand-in conditions.
final class PolicyWalkTests: XCTestCase {
    /// Matches always, with a fixed reason.
    struct Always: PolicyCondition {
        var earliestStage: PolicyStage = .connect
        func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? { ConditionMatch("always") }
    }

    static func rule(_ id: String, _ stage: PolicyStage, _ action: RuleAction, mode: RuleMode = .enforce) -> PolicyRule {
        PolicyRule(id: id, stage: stage, condition: Always(), action: action, mode: mode, reply: nil)
    }

    static let relay = RelayControl(relayDomains: ["example.org"], trustedNetworks: [IPNetwork("127.0.0.0/8")!])
    static let bob = ForwardPath.mailbox(Mailbox(localPart: "bob", domain: "example.org"))
    static let elsewhere = ForwardPath.mailbox(Mailbox(localPart: "x", domain: "elsewhere.example"))

    /// Runs `point` to its end with the real engine; the stages evaluated and the last step.
    static func run(_ walk: inout PolicyWalk, _ point: PolicyWalk.Point) async -> (stages: [PolicyStage], step: PolicyWalk.Step) {
        var stages: [PolicyStage] = []
        var step = walk.begin(point)
        while case .evaluate(let stage) = step {
            stages.append(stage)
            let facts = TransactionFacts(transactionID: "T", clientAddress: IPAddress("192.0.2.1")!, clientPort: 1)
            step = walk.evaluated(await PolicyEngine.evaluate(walk.policy, stage: stage, facts: facts))
        }
        return (stages, step)
    }

    func testStagesWithoutActiveRulesAreNotEvaluated() async {
        var walk = PolicyWalk(policy: Policy(version: "v", rules: [Self.rule("off", .connect, .reject, mode: .off)]),
                              relayControl: Self.relay, clientTrusted: false)
        let connect = await Self.run(&walk, .connect)
        XCTAssertEqual(connect.stages, [])
        XCTAssertEqual(connect.step, .proceed)
    }

    func testACheckedStageIsEvaluatedEvenWithoutRules() async {
        var walk = PolicyWalk(policy: .empty, relayControl: Self.relay, clientTrusted: false, checkedStages: [.rcpt])
        let rcpt = await Self.run(&walk, .rcpt(Self.bob, authenticated: false))
        XCTAssertEqual(rcpt.stages, [.rcpt])
    }

    func testHELORulesRunAtMAILOncePerName() async {
        let policy = Policy(version: "v", rules: [Self.rule("h", .helo, .continue), Self.rule("m", .mail, .continue)])
        var walk = PolicyWalk(policy: policy, relayControl: Self.relay, clientTrusted: false)
        let r1 = await Self.run(&walk, .mail(helo: "a.example"))
        XCTAssertEqual(r1.stages, [.helo, .mail])
        let r2 = await Self.run(&walk, .mail(helo: "a.example"))
        XCTAssertEqual(r2.stages, [.mail], "the same name: not again")
        let r3 = await Self.run(&walk, .mail(helo: "b.example"))
        XCTAssertEqual(r3.stages, [.helo, .mail], "a new EHLO name")
        let r4 = await Self.run(&walk, .mail(helo: nil))
        XCTAssertEqual(r4.stages, [.mail], "no name: no helo rules")
    }

    func testAnAcceptAtConnectEndsPolicyForTheSession() async {
        let policy = Policy(version: "v", rules: [Self.rule("welcome", .connect, .accept), Self.rule("no", .mail, .reject),
                                                  Self.rule("no-rcpt", .rcpt, .reject), Self.rule("no-data", .data, .reject)])
        var walk = PolicyWalk(policy: policy, relayControl: Self.relay, clientTrusted: false)
        let r5 = await Self.run(&walk, .connect)
        XCTAssertEqual(r5.stages, [.connect])
        XCTAssertEqual(walk.sessionAccept?.rule, "welcome")
        for point in [PolicyWalk.Point.mail(helo: "a"), .rcpt(Self.bob, authenticated: false), .data] {
            let result = await Self.run(&walk, point)
            XCTAssertEqual(result.stages, [], "\(point)")
            XCTAssertEqual(result.step, .proceed, "\(point)")
        }
        XCTAssertEqual(walk.skipReason(.data), "an accept at connect ended evaluation")
    }

    func testAnAcceptAtMailEndsPolicyForTheTransactionOnly() async {
        let policy = Policy(version: "v", rules: [Self.rule("ok", .mail, .accept), Self.rule("no-rcpt", .rcpt, .reject)])
        var walk = PolicyWalk(policy: policy, relayControl: Self.relay, clientTrusted: false)
        _ = await Self.run(&walk, .mail(helo: "a"))
        let r6 = await Self.run(&walk, .rcpt(Self.bob, authenticated: false))
        XCTAssertEqual(r6.stages, [])
        XCTAssertEqual(walk.skipReason(.rcpt), "an accept at mail ended evaluation")
        // The next transaction is judged again.
        _ = await Self.run(&walk, .mail(helo: "a"))
        XCTAssertEqual(walk.transactionAccept?.rule, "ok")
    }

    func testARefusalAtRCPTRefusesThatRecipientOnly() async {
        let policy = Policy(version: "v", rules: [Self.rule("no-rcpt", .rcpt, .reject)])
        var walk = PolicyWalk(policy: policy, relayControl: Self.relay, clientTrusted: false)
        guard case .decided(let decision) = await Self.run(&walk, .rcpt(Self.bob, authenticated: false)).step else { return XCTFail() }
        XCTAssertEqual(decision.rule, "no-rcpt")
        XCTAssertNil(walk.refusal, "the transaction goes on")
        XCTAssertNil(walk.skipReason(.rcpt))
    }

    func testRelayControlIsTheFirstStepAtRCPT() async {
        let policy = Policy(version: "v", rules: [Self.rule("anything", .rcpt, .accept)])
        var walk = PolicyWalk(policy: policy, relayControl: Self.relay, clientTrusted: false)
        let denied = await Self.run(&walk, .rcpt(Self.elsewhere, authenticated: false))
        XCTAssertEqual(denied.stages, [], "no rule sees a recipient relay control refused")
        guard case .decided(let decision) = denied.step else { return XCTFail("\(denied.step)") }
        XCTAssertTrue(decision.byRelayControl)
        XCTAssertEqual(decision.reply, SMTPReply(554, EnhancedStatusCode(5, 7, 1), "<x@elsewhere.example>: Relay access denied"))
        XCTAssertEqual(decision.reason, "relay access denied: elsewhere.example is not a relay domain")
        let r7 = await Self.run(&walk, .rcpt(Self.elsewhere, authenticated: true))
        XCTAssertEqual(r7.stages, [.rcpt], "authenticated: relayed")
        var trusted = PolicyWalk(policy: policy, relayControl: Self.relay, clientTrusted: true)
        let r8 = await Self.run(&trusted, .rcpt(Self.elsewhere, authenticated: false))
        XCTAssertEqual(r8.stages, [.rcpt])
    }

    func testShadowHitsAtConnectAndHELOBelongToTheSession() async {
        let policy = Policy(version: "v", rules: [Self.rule("c", .connect, .reject, mode: .shadow), Self.rule("h", .helo, .tempfail, mode: .shadow),
                                                  Self.rule("m", .mail, .reject, mode: .shadow)])
        var walk = PolicyWalk(policy: policy, relayControl: Self.relay, clientTrusted: false)
        _ = await Self.run(&walk, .connect)
        _ = await Self.run(&walk, .mail(helo: "a"))
        XCTAssertEqual(walk.sessionShadow.map(\.rule), ["c", "h"], "mail-stage hits are the transaction's")
    }

    func testAMailRefusalEndsTheTransactionAndTheNextStartsClean() async {
        let policy = Policy(version: "v", rules: [Self.rule("no", .mail, .reject)])
        var walk = PolicyWalk(policy: policy, relayControl: Self.relay, clientTrusted: false)
        guard case .decided = await Self.run(&walk, .mail(helo: "a")).step else { return XCTFail() }
        XCTAssertEqual(walk.skipReason(.rcpt), "an earlier rule decided (no)")
        _ = walk.begin(.mail(helo: "a"))
        XCTAssertNil(walk.refusal, "a new MAIL is a new transaction")
    }
}
