import NIOCore
import PosternPolicy
import SMTPCore
import Synchronization
import XCTest

/// A clock that moves only when the test says so; sleepers wake when it passes their deadline.
final class ManualClock: Clock, Sendable {
    struct Instant: InstantProtocol {
        var offset: Duration
        func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Duration { other.offset - offset }
        static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
    }

    private struct Sleeper {
        var id: Int
        var deadline: Instant
        var continuation: CheckedContinuation<Void, any Error>
    }

    private let state = Mutex<(now: Instant, next: Int, sleepers: [Sleeper])>((Instant(offset: .zero), 0, []))

    var now: Instant { state.withLock { $0.now } }
    var minimumResolution: Duration { .zero }
    var sleeping: Int { state.withLock { $0.sleepers.count } }

    func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        let id = state.withLock { state -> Int in
            state.next += 1
            return state.next
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if deadline <= state.now || Task.isCancelled { return true }
                    state.sleepers.append(Sleeper(id: id, deadline: deadline, continuation: continuation))
                    return false
                }
                if ready { Task.isCancelled ? continuation.resume(throwing: CancellationError()) : continuation.resume() }
            }
        } onCancel: {
            let cancelled = state.withLock { state -> Sleeper? in
                guard let index = state.sleepers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.sleepers.remove(at: index)
            }
            cancelled?.continuation.resume(throwing: CancellationError())
        }
    }

    func advance(by duration: Duration) {
        let due = state.withLock { state -> [Sleeper] in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.deadline <= now }
            state.sleepers.removeAll { $0.deadline <= now }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// Waits (by yielding, never sleeping) until `count` sleepers are waiting.
    func waitForSleepers(_ count: Int) async {
        while sleeping < count { await Task.yield() }
    }
}

final class StagePipelineTests: XCTestCase {
    struct Check: StageCheck {
        var name: String
        var stages: Set<PolicyStage> = [.rcpt]
        var timeout: Duration = .seconds(5)
        var failureMode: CheckFailureMode = .ignore
        var body: @Sendable () async throws -> CheckFinding

        func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding { try await body() }
    }

    /// Matches when the check `name` found `result`.
    struct Found: PolicyCondition {
        var name: String
        var result: CheckOutcome.Result
        var earliestStage: PolicyStage { .connect }
        func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
            facts.checks[name]?.result == result ? ConditionMatch("\(name) said \(result.rawValue)") : nil
        }
    }

    static let facts = TransactionFacts(transactionID: "T1", clientAddress: IPAddress("192.0.2.1")!, clientPort: 1)
    static let spam = SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Spam")

    func testChecksOfAStageRunConcurrently() async {
        let clock = ManualClock()
        let slow = { @Sendable in
            try await clock.sleep(for: .seconds(1))
            return CheckFinding(.pass, detail: "fine")
        }
        let pipeline = StagePipeline(policy: .empty, checks: [Check(name: "a", body: slow), Check(name: "b", body: slow)], clock: clock)
        async let verdict = pipeline.evaluate(.rcpt, facts: Self.facts)
        // Both checks and both their timeouts wait at once: neither waited for the other.
        await clock.waitForSleepers(4)
        clock.advance(by: .seconds(1))
        let result = await verdict
        XCTAssertEqual(result.checks.map(\.check), ["a", "b"], "in configured order")
        XCTAssertEqual(result.checks.map(\.result), [.pass, .pass])
        XCTAssertEqual(result.verdict.outcome, .pass)
        XCTAssertEqual(clock.sleeping, 0, "the timeouts were cancelled")
    }

    func testOnlyTheChecksOfTheStageRun() async {
        let pipeline = StagePipeline(policy: .empty, checks: [Check(name: "rcpt-only", stages: [.rcpt]) { CheckFinding(.reject(Self.spam), detail: "x") }])
        let mail = await pipeline.evaluate(.mail, facts: Self.facts)
        XCTAssertEqual(mail.checks, [])
        XCTAssertEqual(mail.verdict.outcome, .pass)
        XCTAssertEqual(pipeline.checkedStages, [.rcpt])
    }

    func testATimeoutIsIgnoredOrTempfailsAsConfigured() async {
        for mode in [CheckFailureMode.ignore, .tempfail] {
            let clock = ManualClock()
            let hangs = Check(name: "engine", timeout: .seconds(2), failureMode: mode) {
                try await clock.sleep(for: .seconds(3600))
                return CheckFinding(.pass, detail: "late")
            }
            let pipeline = StagePipeline(policy: .empty, checks: [hangs], clock: clock)
            async let verdict = pipeline.evaluate(.rcpt, facts: Self.facts)
            await clock.waitForSleepers(2)
            clock.advance(by: .seconds(2))
            let result = await verdict
            XCTAssertEqual(result.checks.first?.result, .timeout, "\(mode)")
            XCTAssertEqual(clock.sleeping, 0, "the check was cancelled")
            if mode == .ignore {
                XCTAssertEqual(result.verdict.outcome, .pass)
            } else {
                XCTAssertEqual(result.verdict.outcome, .decided(.tempfail, SMTPReply(451, EnhancedStatusCode(4, 7, 1),
                    "Temporary failure in a content or sender check, try again later (ref T1)")))
                XCTAssertEqual(result.verdict.rule, "check:engine")
            }
        }
    }

    func testAThrowingCheckIsAnError() async {
        struct Down: Error {}
        let pipeline = StagePipeline(policy: .empty, checks: [Check(name: "engine", failureMode: .tempfail) { throw Down() }])
        let result = await pipeline.evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(result.checks.first?.result, .error)
        XCTAssertEqual(result.verdict.rule, "check:engine")
    }

    func testACheckDecidesOnlyWhenNoRuleDoes() async {
        let reject = Check(name: "engine") { CheckFinding(.reject(Self.spam), detail: "score 15") }
        let alone = await StagePipeline(policy: .empty, checks: [reject]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(alone.verdict.outcome, .decided(.reject, Self.spam))
        XCTAssertEqual(alone.verdict.reason, "score 15")

        let accept = PolicyRule(id: "vip", stage: .rcpt, condition: Found(name: "engine", result: .reject), action: .accept, mode: .enforce, reply: nil)
        let overruled = await StagePipeline(policy: Policy(version: "v", rules: [accept]), checks: [reject]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(overruled.verdict.outcome, .accept, "the rule saw the finding and decided")
        XCTAssertEqual(overruled.verdict.rule, "vip")
        XCTAssertEqual(overruled.verdict.reason, "engine said reject")
        XCTAssertEqual(overruled.checks.first?.result, .reject, "the finding is still recorded")
    }

    func testConditionalDeferrals() async {
        let later = SMTPReply(450, EnhancedStatusCode(4, 7, 24), "SPF temperror")
        let ifPermit = Check(name: "spf") { CheckFinding(.deferIfPermit(later), detail: "temperror") }
        let goesOn = await StagePipeline(policy: .empty, checks: [ifPermit]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(goesOn.verdict.outcome, .decided(.tempfail, later))
        XCTAssertEqual(goesOn.verdict.rule, "check:spf")
        let reject = Check(name: "engine") { CheckFinding(.reject(Self.spam), detail: "score 15") }
        let rejected = await StagePipeline(policy: .empty, checks: [reject, ifPermit]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(rejected.verdict.outcome, .decided(.reject, Self.spam), "DEFER_IF_PERMIT leaves a rejection alone")

        let ifReject = Check(name: "soft") { CheckFinding(.deferIfReject(later), detail: "be kind") }
        let softened = await StagePipeline(policy: .empty, checks: [reject, ifReject]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(softened.verdict.outcome, .decided(.tempfail, later))
        XCTAssertEqual(softened.verdict.rule, "check:soft")
        let untouched = await StagePipeline(policy: .empty, checks: [ifReject]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(untouched.verdict.outcome, .pass, "DEFER_IF_REJECT leaves a stage that goes on alone")
    }

    func testHeadersGoWithAStageThatGoesOnOnly() async {
        let spf = AddedHeader(name: "Received-SPF", value: "Pass")
        let prepend = Check(name: "spf") { CheckFinding(.pass, detail: "pass", headers: [spf]) }
        let passed = await StagePipeline(policy: .empty, checks: [prepend]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(passed.verdict.headerActions, [.addHeader(name: "Received-SPF", value: "Pass")])
        XCTAssertEqual(passed.checks.first?.headers, [spf])
        let reject = Check(name: "engine") { CheckFinding(.reject(Self.spam), detail: "score 15") }
        let refused = await StagePipeline(policy: .empty, checks: [prepend, reject]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(refused.verdict.headerActions, [])
    }

    func testDiscardAndHoldBeforeDataWaitForTheMessage() async {
        let hold = Check(name: "policyd") { CheckFinding(.quarantine, detail: "HOLD suspicious") }
        let rcpt = await StagePipeline(policy: .empty, checks: [hold]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(rcpt.verdict.outcome, .pass, "the recipient is accepted; the message is held when it arrives")
        XCTAssertEqual(rcpt.verdict.messageDisposition?.action, .quarantine)
        XCTAssertEqual(rcpt.verdict.messageDisposition?.rule, "check:policyd")
        let data = await StagePipeline(policy: .empty, checks: [Check(name: "policyd", stages: [.data]) { CheckFinding(.discard, detail: "DISCARD") }])
            .evaluate(.data, facts: Self.facts)
        guard case .decided(.discard, let reply) = data.verdict.outcome else { return XCTFail("\(data.verdict.outcome)") }
        XCTAssertEqual(reply.code, 250)
        let reject = Check(name: "engine") { CheckFinding(.reject(Self.spam), detail: "score 15") }
        let refused = await StagePipeline(policy: .empty, checks: [hold, reject]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertNil(refused.verdict.messageDisposition)
        XCTAssertEqual(refused.verdict.outcome, .decided(.reject, Self.spam))
    }

    func testAFailingCheckTempfailsWithItsOwnReply() async {
        struct Down: Error {}
        struct Configured: StageCheck {
            var name = "policyd"
            var stages: Set<PolicyStage> = [.rcpt]
            var timeout: Duration = .seconds(1)
            var failureMode: CheckFailureMode = .tempfail
            var failureReply: SMTPReply? { SMTPReply(451, EnhancedStatusCode(4, 3, 5), "Server configuration problem") }
            func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding { throw Down() }
        }
        let result = await StagePipeline(policy: .empty, checks: [Configured()]).evaluate(.rcpt, facts: Self.facts)
        XCTAssertEqual(result.verdict.outcome, .decided(.tempfail, SMTPReply(451, EnhancedStatusCode(4, 3, 5), "Server configuration problem")))
    }
}

/// The checks that edit the message at data: one after another, each seeing the edits of the ones before.
final class MessageEditingChainTests: XCTestCase {
    struct Editor: MessageEditingCheck {
        var name: String
        var stages: Set<PolicyStage> = [.data]
        var timeout: Duration = .seconds(5)
        var failureMode: CheckFailureMode = .ignore
        var body: @Sendable (MessageDraft) async throws -> (CheckFinding, MessageDraft)

        func check(_ stage: PolicyStage, facts: TransactionFacts) async throws -> CheckFinding { CheckFinding(.pass, detail: "envelope") }
        func check(facts: TransactionFacts, message: MessageDraft) async throws -> (CheckFinding, MessageDraft) { try await body(message) }
    }

    static let draft = MessageDraft(fields: [MessageDraft.Field(name: "Subject", text: "hi", leadingSpace: false)],
                                    body: .replaced(ByteBuffer(string: "body\r\n")), sender: .null, recipients: [])

    func testEachEditorSeesTheEditsOfTheOneBefore() async {
        let first = Editor(name: "dkim") { draft in
            var draft = draft
            draft.insertHeader(MessageDraft.Field(name: "Authentication-Results", text: "mx; dkim=pass", leadingSpace: false), at: 1)
            return (CheckFinding(.pass, detail: "insert header Authentication-Results"), draft)
        }
        let second = Editor(name: "dmarc") { draft in
            var draft = draft
            let saw = draft.fields.contains { $0.name == "Authentication-Results" }
            draft.addHeader(MessageDraft.Field(name: "X-Saw-DKIM", text: "\(saw)", leadingSpace: false))
            return (CheckFinding(.pass, detail: "add header"), draft)
        }
        let pipeline = StagePipeline(policy: .empty, checks: [first, second])
        XCTAssertTrue(pipeline.editsMessages)
        let result = await pipeline.evaluate(.data, facts: StagePipelineTests.facts, message: Self.draft)
        XCTAssertEqual(result.checks.map(\.check), ["dkim", "dmarc"])
        let edited = result.verdict.editedMessage
        XCTAssertEqual(edited?.fields.map(\.name), ["Authentication-Results", "Subject", "X-Saw-DKIM"])
        XCTAssertEqual(edited?.fields.last.map { String(decoding: $0.value, as: UTF8.self) }, " true")
    }

    func testARefusalEndsTheChainAndNamesTheCheck() async {
        let refuses = Editor(name: "spam") { (CheckFinding(.reject(StagePipelineTests.spam), detail: "reply 550"), $0) }
        let never = Editor(name: "after") { _ in
            XCTFail("a check after a refusal was asked")
            return (CheckFinding(.pass, detail: ""), StagePipelineTests.draftPlaceholder)
        }
        let pipeline = StagePipeline(policy: .empty, checks: [refuses, never])
        let result = await pipeline.evaluate(.data, facts: StagePipelineTests.facts, message: Self.draft)
        XCTAssertEqual(result.checks.map(\.check), ["spam"])
        XCTAssertEqual(result.verdict.outcome, .decided(.reject, StagePipelineTests.spam))
        XCTAssertNil(result.verdict.editedMessage, "nothing changed")
    }

    func testAFailureTakesTheDefaultActionAndItsEditsAreDropped() async {
        struct Broken: Error, CheckError { var kind: String { "protocol" } }
        for (mode, expected) in [(CheckFailureMode.ignore, nil), (.reject, RuleAction.reject), (.quarantine, .quarantine), (.tempfail, .tempfail)] {
            let breaks = Editor(name: "broken", failureMode: mode) { _ in throw Broken() }
            let pipeline = StagePipeline(policy: .empty, checks: [breaks])
            let result = await pipeline.evaluate(.data, facts: StagePipelineTests.facts, message: Self.draft)
            XCTAssertEqual(result.checks.first?.result, .error, "\(mode)")
            XCTAssertEqual(result.checks.first?.errorKind, "protocol")
            if let expected {
                guard case .decided(let action, _) = result.verdict.outcome else { XCTFail("\(mode): \(result.verdict.outcome)"); continue }
                XCTAssertEqual(action, expected)
                XCTAssertEqual(result.verdict.rule, "check:broken")
            } else {
                XCTAssertEqual(result.verdict.outcome, .pass)
            }
        }
    }

    func testWithoutAMessageTheEditorsAreNotAsked() async {
        let editor = Editor(name: "dkim") { _ in
            XCTFail("asked without a message")
            return (CheckFinding(.pass, detail: ""), StagePipelineTests.draftPlaceholder)
        }
        let result = await StagePipeline(policy: .empty, checks: [editor]).evaluate(.data, facts: StagePipelineTests.facts)
        XCTAssertEqual(result.checks.map(\.check), [])
    }
}

extension StagePipelineTests {
    static let draftPlaceholder = MessageDraft(fields: [], body: .replaced(ByteBuffer()), sender: .null, recipients: [])
}
