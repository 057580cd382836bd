import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternEngines
import PosternPolicy
import SMTPCore
import XCTest

/// The milter client (MilterFilter → MilterCheck → MilterSession) against the fake filter: what
/// it sends and in which order, how it follows the negotiation, what each answer and each edit
/// becomes, and what every fault turns into, each within its timeout.
final class MilterSessionTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    // MARK: Helpers

    private func fake(_ configure: (inout FakeMilter.Script) -> Void = { _ in }) async throws -> FakeMilter {
        var script = FakeMilter.Script()
        configure(&script)
        return try await FakeMilter(group: group, script: script)
    }

    private func filter(_ milter: FakeMilter, stages: Set<PolicyStage> = Set(PolicyStage.allCases),
                        timeouts: MilterConfiguration.Timeouts = .init(connect: .seconds(5), command: .seconds(5), content: .seconds(5)),
                        defaultAction: MilterConfiguration.DefaultAction = .tempfail) -> MilterFilter {
        let configuration = MilterConfiguration(name: "fake", address: .inet(host: "127.0.0.1", port: milter.port), stages: stages,
                                                timeouts: timeouts, defaultAction: defaultAction)
        return MilterFilter(configuration: configuration, hostname: "gw.example", group: group, logger: Logger(label: "test"))
    }

    private func mailbox(_ text: String) -> Mailbox {
        let parts = text.split(separator: "@")
        return Mailbox(localPart: String(parts[0]), domain: String(parts[1]))
    }

    private func facts(_ id: String = "T1", recipients: [String] = ["r@example.org"]) -> TransactionFacts {
        TransactionFacts(transactionID: id, clientAddress: IPAddress("192.0.2.7")!, clientPort: 4321, helo: "client.example",
                         sender: .mailbox(mailbox("a@client.example")), recipients: recipients.map { .mailbox(mailbox($0)) })
    }

    private func draft(_ facts: TransactionFacts, headers: [(String, String)] = [("Subject", "hello"), ("From", "a@client.example")],
                       body: String = "line one\r\nline two\r\n") -> MessageDraft {
        MessageDraft(fields: headers.map { MessageDraft.Field(name: $0.0, text: " " + $0.1, leadingSpace: true) },
                     body: .replaced(ByteBuffer(string: body)), sender: facts.sender!, recipients: facts.recipients)
    }

    /// connect, helo, mail, each recipient at rcpt, then the message: as the session drives a check.
    private func transaction(_ check: MilterCheck, _ facts: TransactionFacts, draft: MessageDraft? = nil) async throws
        -> (findings: [CheckFinding], message: (CheckFinding, MessageDraft)) {
        var findings: [CheckFinding] = []
        findings.append(try await check.check(.connect, facts: facts))
        findings.append(try await check.check(.helo, facts: facts))
        findings.append(try await check.check(.mail, facts: facts))
        for recipient in facts.recipients {
            var one = facts
            one.recipient = recipient
            findings.append(try await check.check(.rcpt, facts: one))
        }
        let message = try await check.check(facts: facts, message: draft ?? self.draft(facts))
        return (findings, message)
    }

    private func body(_ draft: MessageDraft) -> String {
        guard case .replaced(let buffer) = draft.body else { return "<original>" }
        return String(buffer: buffer)
    }

    private func header(_ draft: MessageDraft, _ name: String) -> [String] {
        draft.fields.filter { $0.name.lowercased() == name.lowercased() }.map { String(decoding: $0.value, as: UTF8.self) }
    }

    private func letters(_ packets: [FakeMilter.Received]) -> String {
        String(packets.map(\.letter))
    }

    // MARK: The conversation

    func testOneSessionSendsEveryEventInOrderWithPostfixsMacrosThenQuits() async throws {
        let milter = try await fake()
        let check = filter(milter).session()
        let facts = facts(recipients: ["r1@example.org", "r2@example.org"])
        let (findings, (final, _)) = try await transaction(check, facts)
        XCTAssertEqual(findings.map(\.verdict), Array(repeating: .pass, count: 5))
        XCTAssertEqual(final.verdict, .pass)
        await check.close()
        let done = await milter.wait { $0.first?.last?.command == .quit }
        XCTAssertTrue(done)
        let packets = milter.received[0]
        XCTAssertEqual(letters(packets).filter { $0 != "D" }, "OCHMRRTLLNBEQ", "\(packets)")
        let connect = try XCTUnwrap(packets.first { $0.command == .connect })
        XCTAssertEqual(connect.fields.count, 4, "\(connect)")
        XCTAssertEqual(connect.fields[1], "4")
        XCTAssertEqual(connect.fields.last, "192.0.2.7")
        XCTAssertEqual(connect.fields[2], "4321")
        let connectMacros = try XCTUnwrap(packets.first { $0.macroStage == .connect })
        XCTAssertEqual(connectMacros.macro("j"), "gw.example")
        XCTAssertEqual(connectMacros.macro("{client_addr}"), "192.0.2.7")
        XCTAssertEqual(connectMacros.macro("{client_port}"), "4321")
        let mailMacros = try XCTUnwrap(packets.first { $0.macroStage == .mail })
        XCTAssertEqual(mailMacros.macro("i"), "T1")
        XCTAssertEqual(mailMacros.macro("{mail_addr}"), "a@client.example")
        XCTAssertEqual(packets.first { $0.command == .mail }?.fields.first, "<a@client.example>")
        XCTAssertEqual(packets.filter { $0.command == .recipient }.map { $0.fields.first ?? "" }, ["<r1@example.org>", "<r2@example.org>"])
        XCTAssertEqual(packets.filter { $0.command == .header }.map(\.fields), [["Subject", "hello"], ["From", "a@client.example"]])
        XCTAssertEqual(packets.first { $0.command == .body }?.text, "line one\r\nline two\r\n")
        XCTAssertEqual(milter.endings, [.quit])
        await milter.stop()
    }

    func testALargeBodyGoesInChunksOfAtMost65535Octets() async throws {
        let milter = try await fake()
        let check = filter(milter).session()
        let facts = facts()
        let body = String(repeating: "0123456789abcde\r\n", count: 9_000)  // 153,000 octets
        _ = try await transaction(check, facts, draft: draft(facts, body: body))
        await check.close()
        let done = await milter.wait { $0.first?.last?.command == .quit }
        XCTAssertTrue(done)
        let chunks = milter.received[0].filter { $0.command == .body }
        XCTAssertEqual(chunks.map(\.size), [65_535, 65_535, 153_000 - 2 * 65_535])
        XCTAssertEqual(chunks.map(\.text).joined(), body)
        await milter.stop()
    }

    func testTheNextTransactionIsPrecededByAbortOnTheSameConnection() async throws {
        let milter = try await fake()
        let check = filter(milter).session()
        _ = try await transaction(check, facts("T1"))
        var second = facts("T2")
        second.recipient = second.recipients[0]
        _ = try await check.check(.mail, facts: second)
        _ = try await check.check(.rcpt, facts: second)
        await check.close()
        let done = await milter.wait { $0.first?.last?.command == .quit }
        XCTAssertTrue(done)
        XCTAssertEqual(milter.connections, 1)
        let after = letters(milter.received[0]).split(separator: "E", maxSplits: 1).last.map(String.init) ?? ""
        XCTAssertEqual(after, "ADMDRQ", "\(milter.received[0])")
        XCTAssertEqual(milter.received[0].last { $0.macroStage == .mail }?.macro("i"), "T2")
        await milter.stop()
    }

    func testRspamdsNoReplyFlagsAreFollowedAndOnlyTheEndOfMessageIsWaitedFor() async throws {
        let milter = try await fake {
            $0.negotiate.flags = FakeMilter.rspamdFlags
            $0.replies[.endOfMessage] = .reply("554 5.7.1 Gtube pattern")
        }
        // With a 1 s command timeout, waiting for one reply that never comes would fail the check.
        let check = filter(milter, timeouts: .init(connect: .seconds(1), command: .seconds(1), content: .seconds(1))).session()
        let clock = ContinuousClock()
        let start = clock.now
        let (findings, (final, _)) = try await transaction(check, facts())
        XCTAssertLessThan(clock.now - start, .seconds(1))
        XCTAssertEqual(findings.map(\.verdict), Array(repeating: .pass, count: 4))
        XCTAssertEqual(final.verdict, .reject(SMTPReply(554, EnhancedStatusCode(5, 7, 1), "Gtube pattern")))
        await check.close()
        await milter.stop()
    }

    func testEventsAFilterLeftOutAreNotSent() async throws {
        let milter = try await fake { $0.negotiate.flags = [.noHelo, .noData, .noUnknown, .skip] }
        let check = filter(milter).session()
        _ = try await transaction(check, facts())
        await check.close()
        let done = await milter.wait { $0.first?.last?.command == .quit }
        XCTAssertTrue(done)
        let commands = Set(milter.received[0].compactMap(\.command))
        XCTAssertFalse(commands.contains(.helo))
        XCTAssertFalse(commands.contains(.data))
        XCTAssertTrue(commands.contains(.endOfMessage))
        await milter.stop()
    }

    func testStagesNotConfiguredAreSentWithTheNextOneThatIs() async throws {
        let milter = try await fake()
        let check = filter(milter, stages: [.data]).session()
        let facts = facts()
        let (finding, _) = try await check.check(facts: facts, message: draft(facts))
        XCTAssertEqual(finding.verdict, .pass)
        await check.close()
        let done = await milter.wait { $0.first?.last?.command == .quit }
        XCTAssertTrue(done)
        XCTAssertEqual(Array(milter.received[0].compactMap(\.command).filter { $0 != .macro }.prefix(6)),
                       [.optionNegotiation, .connect, .helo, .mail, .recipient, .data])
        await milter.stop()
    }

    // MARK: Answers

    func testRepliesAtEachStageBecomeFindings() async throws {
        let milter = try await fake {
            $0.replies[.recipient] = .ifRecipientEquals("<no@example.org>", then: .reply("550 5.1.1 no such user"))
            $0.replies[.endOfMessage] = .tempfail
        }
        let check = filter(milter).session()
        let (findings, (final, _)) = try await transaction(check, facts(recipients: ["yes@example.org", "no@example.org"]))
        XCTAssertEqual(findings[3].verdict, .pass)
        XCTAssertEqual(findings[4].verdict, .reject(SMTPReply(550, EnhancedStatusCode(5, 1, 1), "no such user")))
        XCTAssertEqual(final.verdict, .tempfail(SMTPReply(451, EnhancedStatusCode(4, 7, 1), "Service unavailable - try again later")))
        await check.close()
        await milter.stop()
    }

    func testARejectAtConnectLastsForTheSessionAndAnAcceptEndsTheConversation() async throws {
        let refusing = try await fake { $0.replies[.connect] = .reject }
        let refused = filter(refusing).session()
        let first = try await refused.check(.connect, facts: facts())
        XCTAssertEqual(first.verdict, .reject(SMTPReply(550, EnhancedStatusCode(5, 7, 1), "Command rejected")))
        let later = try await refused.check(.mail, facts: facts())
        XCTAssertEqual(later.verdict, first.verdict)
        await refused.close()
        XCTAssertEqual(letters(refusing.received[0]).filter { $0 != "D" }, "OC")
        await refusing.stop()

        let accepting = try await fake { $0.replies[.helo] = .accept }
        let accepted = filter(accepting).session()
        let (findings, (final, _)) = try await transaction(accepted, facts())
        XCTAssertEqual(findings.map(\.verdict), Array(repeating: .pass, count: 4))
        XCTAssertEqual(final.verdict, .pass)
        let done = await accepting.wait { $0.first?.last?.command == .quit }
        XCTAssertTrue(done)
        XCTAssertEqual(letters(accepting.received[0]).filter { $0 != "D" }, "OCHQ")
        await accepted.close()
        await accepting.stop()
    }

    func testSkipDuringTheBodyStopsTheBodyButNotTheEndOfMessage() async throws {
        let milter = try await fake { $0.replies[.body] = .skip }
        let check = filter(milter).session()
        let facts = facts()
        _ = try await transaction(check, facts, draft: draft(facts, body: String(repeating: "x", count: 200_000)))
        await check.close()
        let done = await milter.wait { $0.first?.last?.command == .quit }
        XCTAssertTrue(done)
        XCTAssertEqual(milter.received[0].filter { $0.command == .body }.count, 1)
        XCTAssertTrue(milter.received[0].contains { $0.command == .endOfMessage })
        await milter.stop()
    }

    func testProgressRestartsTheDeadline() async throws {
        let milter = try await fake {
            $0.replies[.endOfMessage] = .progressThenContinue(4)
            $0.progressInterval = 0.3
        }
        // 4 × 0.3 s = 1.2 s in all, each wait well under the 0.8 s content timeout.
        let check = filter(milter, timeouts: .init(connect: .seconds(2), command: .seconds(2), content: .milliseconds(800))).session()
        let (_, (final, _)) = try await transaction(check, facts())
        XCTAssertEqual(final.verdict, .pass)
        await check.close()
        await milter.stop()
    }

    func testQuarantineIsAFinding() async throws {
        let milter = try await fake { $0.eomActions = [.quarantine("suspicious attachment")] }
        let check = filter(milter).session()
        let (_, (final, _)) = try await transaction(check, facts())
        XCTAssertEqual(final.verdict, .quarantine)
        XCTAssertTrue(final.detail.contains("suspicious attachment"), final.detail)
        await check.close()
        await milter.stop()
    }

    // MARK: Edits

    func testEveryEndOfMessageEditReachesTheDraft() async throws {
        let milter = try await fake {
            $0.eomActions = [
                .addHeader("X-Spam", "yes"),
                .insertHeader(0, "Authentication-Results", "gw.example; dkim=none"),
                .changeHeader(1, "Subject", "***SPAM*** hello"),
                .replaceBody("new body\n"),
                .addRecipient("<archive@example.org>"),
                .deleteRecipient("<r@example.org>"),
                .changeFrom("<bounce@client.example>"),
            ]
        }
        let check = filter(milter).session()
        let (_, (final, edited)) = try await transaction(check, facts())
        XCTAssertEqual(final.verdict, .pass)
        XCTAssertEqual(edited.fields.map(\.name), ["Authentication-Results", "Subject", "From", "X-Spam"])
        // Without HDR_LEADSPC the value comes without the space after the colon, which Postern adds.
        XCTAssertEqual(header(edited, "Subject"), [" ***SPAM*** hello"])
        XCTAssertEqual(header(edited, "X-Spam"), [" yes"])
        XCTAssertEqual(body(edited), "new body\r\n")
        XCTAssertEqual(edited.recipients.map(\.description), ["<archive@example.org>"])
        XCTAssertEqual(edited.sender.description, "<bounce@client.example>")
        XCTAssertTrue(edited.contentChanged)
        XCTAssertTrue(edited.envelopeChanged)
        XCTAssertEqual(Set(final.effects.headers), ["x-spam", "authentication-results", "subject"])
        await check.close()
        await milter.stop()
    }

    func testDeletingAHeaderThatIsNotThereChangesNothing() async throws {
        let milter = try await fake { $0.eomActions = [.changeHeader(3, "Subject", ""), .changeHeader(1, "X-Absent", "")] }
        let check = filter(milter).session()
        let facts = facts()
        let (_, (_, edited)) = try await transaction(check, facts, draft: draft(facts, headers: [("Subject", "a"), ("Subject", "b")]))
        XCTAssertEqual(header(edited, "Subject"), [" a", " b"])
        await check.close()
        await milter.stop()
    }

    // MARK: Faults: each becomes an error within its timeout, and lasts for the session

    private func assertFails(_ kind: MilterError.Kind, within limit: Duration, timeouts: MilterConfiguration.Timeouts? = nil,
                             file: StaticString = #filePath, line: UInt = #line,
                             _ configure: @escaping (inout FakeMilter.Script) -> Void) async throws {
        let milter = try await fake(configure)
        let timeouts = timeouts ?? .init(connect: .milliseconds(500), command: .milliseconds(500), content: .milliseconds(500))
        let check = filter(milter, timeouts: timeouts).session()
        let clock = ContinuousClock()
        let start = clock.now
        do {
            _ = try await transaction(check, facts())
            XCTFail("no error", file: file, line: line)
        } catch let error as MilterError {
            XCTAssertEqual(error.kindOfFailure, kind, "\(error)", file: file, line: line)
        }
        XCTAssertLessThan(clock.now - start, limit, file: file, line: line)
        // The failure lasts for the session: nothing more is asked of the filter.
        do {
            _ = try await check.check(.mail, facts: facts("T2"))
            XCTFail("no error after the failure", file: file, line: line)
        } catch let error as MilterError {
            XCTAssertEqual(error.kindOfFailure, .failedBefore, file: file, line: line)
        }
        await check.close()
        await milter.stop()
    }

    func testAFilterThatNeverAnswersTimesOut() async throws {
        try await assertFails(.timeout, within: .seconds(2)) { $0.neverAnswerAt = .endOfMessage }
        try await assertFails(.timeout, within: .seconds(2)) { $0.neverAnswerAt = .optionNegotiation }
    }

    func testAFilterThatClosesMidMessage() async throws {
        try await assertFails(.closed, within: .seconds(2)) { $0.closeAt = .body }
    }

    func testGarbageIsAProtocolError() async throws {
        for kind in [FakeMilter.Script.Garbage.frame, .random, .text] {
            try await assertFails(.protocolError, within: .seconds(2)) {
                $0.garbageAt = .recipient
                $0.garbageKind = kind
            }
        }
    }

    func testAnOversizePacketIsAProtocolError() async throws {
        try await assertFails(.protocolError, within: .seconds(2)) { $0.oversizeAt = .endOfMessage }
        try await assertFails(.protocolError, within: .seconds(5)) {
            $0.oversizeAt = .endOfMessage
            $0.oversizeKind = .packet
        }
    }

    func testUnofferedActionsAndANewerVersionFailTheNegotiation() async throws {
        try await assertFails(.negotiation, within: .seconds(2)) { $0.unofferedActions = true }
        try await assertFails(.negotiation, within: .seconds(2)) { $0.negotiate.version = 7 }
    }

    func testAFilterThatIsNotListeningIsAConnectError() async throws {
        let milter = try await fake()
        let configuration = MilterConfiguration(name: "down", address: .inet(host: "127.0.0.1", port: milter.port))
        await milter.stop()
        let check = MilterFilter(configuration: configuration, hostname: "gw.example", group: group, logger: Logger(label: "test")).session()
        do {
            _ = try await check.check(.connect, facts: facts())
            XCTFail("no error")
        } catch let error as MilterError {
            XCTAssertEqual(error.kindOfFailure, .connect, "\(error)")
        }
        await check.close()
    }

    func testTheDefaultActionDecidesWhatAFailureMeans() async throws {
        let milter = try await fake()
        let expected: [(MilterConfiguration.DefaultAction, CheckFailureMode, SMTPReply?)] = [
            (.accept, .ignore, nil),
            (.tempfail, .tempfail, SMTPReply(451, EnhancedStatusCode(4, 7, 1), "Service unavailable - try again later")),
            (.reject, .reject, SMTPReply(550, EnhancedStatusCode(5, 5, 0), "Service unavailable")),
            (.quarantine, .quarantine, nil),
        ]
        for (action, mode, reply) in expected {
            let check = filter(milter, defaultAction: action).session()
            XCTAssertEqual(check.failureMode, mode, "\(action)")
            XCTAssertEqual(check.failureReply, reply, "\(action)")
            await check.close()
        }
        await milter.stop()
    }

    func testAFailedSessionReconnectsOnTheNextClientSession() async throws {
        let milter = try await fake {
            $0.closeAt = .mail
            $0.faultsOn = [1]
        }
        let shared = filter(milter)
        let first = shared.session()
        do {
            _ = try await transaction(first, facts())
            XCTFail("no error")
        } catch {}
        await first.close()
        let second = shared.session()
        let (_, (final, _)) = try await transaction(second, facts())
        XCTAssertEqual(final.verdict, .pass)
        await second.close()
        XCTAssertEqual(milter.connections, 2)
        await milter.stop()
    }

    func testProbeReportsTheNegotiation() async throws {
        let milter = try await fake {
            $0.negotiate.actions = [.addHeaders, .changeHeaders]
            $0.negotiate.flags = [.noHelo, .skip]
        }
        let negotiation = try await filter(milter).probe()
        XCTAssertEqual(negotiation.version, 6)
        XCTAssertEqual(negotiation.actions, [.addHeaders, .changeHeaders])
        let text = MilterFilter.describe(negotiation)
        XCTAssertTrue(text.contains("add headers") && text.contains("HELO"), text)
        await milter.stop()
    }
}
