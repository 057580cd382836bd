import Foundation
import Logging
import NIOCore
import PosternFilters
import PosternLog
import PosternMIME
import PosternPolicy
@testable import PosternServer
import PosternUpstream
import Synchronization
import XCTest

/// The sample store: which messages are kept, how the privacy options treat them, where they
/// go, when they are removed, and replay reading them.
final class SampleStoreTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "postern-samples-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// 2026-12-06T10:00:00Z.
    private let timestamp: Int64 = 1_796_551_200_000

    private let message = Array("""
        From: "Ann Example" <ann@example.org>\r
        To: bob@example.net,\r
         "Carl" <carl.c+tag@example.net>\r
        Subject: the quarterly\r
         figures\r
        Message-ID: <1@mail.example.org>\r
        \r
        Dear Bob, write to ann@example.org.\r

        """.utf8)

    private func record(_ id: String, decision: DecisionRecord.Decision = .accepted, stage: DecisionRecord.Stage = .data, size: Int?) -> DecisionRecord {
        DecisionRecord(timestamp: timestamp, id: id, session: "S", client: .init(ip: "192.0.2.1", port: 1), mailFrom: "ann@example.org",
                       recipients: [.init(address: "bob@example.net", reply: "250 2.1.5 Ok")], size: size, subject: nil, decision: decision,
                       stage: stage, rule: nil, upstream: nil, timings: .init(total: 1, filters: 0, upstream: 1))
    }

    private func spool(_ bytes: [UInt8]) throws -> MessageSpool {
        let spool = MessageSpool(memoryThreshold: 1 << 20, directory: directory)
        try spool.append(ByteBuffer(bytes: bytes))
        return spool
    }

    private func store(_ configure: (inout SampleStore.Configuration) -> Void = { _ in }, privacy: DecisionLogPrivacy = DecisionLogPrivacy(),
                       results: Results) throws -> SampleStore {
        var configuration = SampleStore.Configuration(directory: directory + "/samples")
        configuration.fraction = 1
        configure(&configuration)
        return try SampleStore(configuration, privacy: privacy, logger: Logger(label: "test"), counted: { results.append($0) })
    }

    func testTheFractionSampledDependsOnTheIDOnly() {
        let ids = (0..<4000).map { "ID\($0)X" }
        XCTAssertTrue(ids.allSatisfy { SampleStore.isSampled(id: $0, fraction: 1) })
        XCTAssertFalse(ids.contains { SampleStore.isSampled(id: $0, fraction: 0) })
        let quarter = ids.filter { SampleStore.isSampled(id: $0, fraction: 0.25) }
        XCTAssertTrue((800...1200).contains(quarter.count), "\(quarter.count) of 4000 at 0.25")
        XCTAssertEqual(quarter, ids.filter { SampleStore.isSampled(id: $0, fraction: 0.25) }, "the same ids each time")
        // A smaller fraction samples a subset of a larger one's.
        XCTAssertTrue(Set(ids.filter { SampleStore.isSampled(id: $0, fraction: 0.1) }).isSubset(of: quarter))
    }

    func testAKeptSampleIsTheMessageAsReceivedWithItsLine() throws {
        let results = Results()
        let store = try store(results: results)
        store.offer(record("A1", size: message.count), spool: try spool(message))
        store.flush()
        let path = SampleStore.path(directory: directory + "/samples", id: "A1", timestamp: timestamp)
        XCTAssertEqual(path, directory + "/samples/2026-12-06/A1.eml")
        let written = try XCTUnwrap(FileManager.default.contents(atPath: path))
        let line = "X-Postern-Sample: id=A1; decision=accepted; received=2026-12-06T10:00:00.000Z; withheld=none\r\n"
        XCTAssertEqual([UInt8](written), Array(line.utf8) + message)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int, 0o600)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: directory + "/samples/2026-12-06")[.posixPermissions] as? Int, 0o700)
        XCTAssertEqual(results.all, ["written"])
        let read = try SampleStore.read(path)
        XCTAssertEqual(read.message, message)
        XCTAssertEqual(read.withheld, [])
        XCTAssertEqual(SampleStore.index(directory + "/samples"), ["A1": path])
    }

    func testOnlyCompleteMessagesOfTheChosenDecisionsWithinTheSizeAreKept() throws {
        let results = Results()
        let store = try store({ (configuration: inout SampleStore.Configuration) in
            configuration.decisions = [.rejected]
            configuration.maximumSize = 100
        }, results: results)
        let small = Array(message.prefix(80))
        store.offer(record("R1", decision: .rejected, size: small.count), spool: try spool(small))
        store.offer(record("A1", decision: .accepted, size: small.count), spool: try spool(small))       // not a chosen decision
        store.offer(record("R2", decision: .rejected, stage: .rcpt, size: nil), spool: try spool(small))  // no message
        store.offer(record("R3", decision: .rejected, size: small.count + 10), spool: try spool(small))  // the spool is not all of it
        store.offer(record("R4", decision: .rejected, size: message.count), spool: try spool(message))   // over max_size
        store.flush()
        XCTAssertEqual(Set(SampleStore.index(directory + "/samples").keys), ["R1"])
        XCTAssertEqual(results.all.sorted(), ["too_large", "written"])
    }

    func testAWriterBehindDropsSamplesInsteadOfHoldingTheSession() throws {
        let results = Results()
        let store = try store(results: results)
        let gate = DispatchSemaphore(value: 0)
        store.queue.async { gate.wait() }
        for index in 0...SampleStore.maximumPending { store.offer(record("P\(index)", size: 10), spool: try spool(Array(message.prefix(10)))) }
        XCTAssertEqual(results.all, ["dropped"], "the one over the limit, at once")
        gate.signal()
        store.flush()
        XCTAssertEqual(SampleStore.index(directory + "/samples").count, SampleStore.maximumPending)
        XCTAssertEqual(results.all.filter { $0 == "written" }.count, SampleStore.maximumPending)
    }

    func testAWriteThatFailsIsCounted() throws {
        let results = Results()
        let store = try store(results: results)
        // The day's directory cannot be made: a file is in its place.
        XCTAssertTrue(FileManager.default.createFile(atPath: directory + "/samples/2026-12-06", contents: Data()))
        store.offer(record("F1", size: 10), spool: try spool(Array(message.prefix(10))))
        store.flush()
        XCTAssertEqual(results.all, ["failed"])
        XCTAssertThrowsError(try SampleStore(SampleStore.Configuration(directory: directory + "/samples/2026-12-06/x"), privacy: DecisionLogPrivacy(),
                                             logger: Logger(label: "test")))
    }

    func testTheDecisionLogsPrivacyOptionsApplyToTheHeaderSection() throws {
        let hashed = DecisionLogPrivacy(localParts: .hashed, subject: .hashed, salt: "s")
        let (treated, withheld) = SampleStore.treated(message, privacy: hashed, body: true)
        let text = String(decoding: treated, as: UTF8.self)
        XCTAssertEqual(withheld, [.subject, .addresses])
        let ann = hashed.addresses(in: "ann@example.org")
        XCTAssertTrue(ann.hasPrefix("h:") && ann.hasSuffix("@example.org") && ann != "ann@example.org", ann)
        XCTAssertTrue(text.hasPrefix("From: \"Ann Example\" <\(ann)>\r\nTo: \(hashed.addresses(in: "bob@example.net")),\r\n \"Carl\" <\(hashed.addresses(in: "carl.c+tag@example.net"))>\r\n"), text)
        XCTAssertTrue(text.contains("\r\nSubject: \(hashed.subjectText("the quarterly figures")!)\r\nMessage-ID: <1@mail.example.org>\r\n"), text)
        XCTAssertFalse(text.contains("quarterly"), text)
        XCTAssertTrue(text.hasSuffix("\r\n\r\nDear Bob, write to ann@example.org.\r\n"), "the body is kept as it is: \(text.debugDescription)")

        let off = DecisionLogPrivacy(localParts: .off, subject: .off)
        let (dropped, droppedWithheld) = SampleStore.treated(message, privacy: off, body: false)
        XCTAssertEqual(droppedWithheld, [.subject, .addresses, .body])
        XCTAssertEqual(String(decoding: dropped, as: UTF8.self),
                       "From: \"Ann Example\" <@example.org>\r\nTo: @example.net,\r\n \"Carl\" <@example.net>\r\nMessage-ID: <1@mail.example.org>\r\n\r\n")

        // Without privacy options the message is untouched; without its body, only the header section.
        XCTAssertEqual(SampleStore.treated(message, privacy: DecisionLogPrivacy(), body: true).0, message)
        let (head, headWithheld) = SampleStore.treated(message, privacy: DecisionLogPrivacy(), body: false)
        XCTAssertEqual(headWithheld, [.body])
        XCTAssertTrue(String(decoding: head, as: UTF8.self).hasSuffix("Message-ID: <1@mail.example.org>\r\n\r\n"))
    }

    func testReadRefusesWhatIsNotASample() throws {
        let path = directory + "/x.eml"
        try Data("From: a@b\r\n\r\nhi\r\n".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try SampleStore.read(path)) { XCTAssertTrue("\($0)".contains("not a Postern sample"), "\($0)") }
        try Data("X-Postern-Sample: id=1; withheld=everything\r\n\r\n".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try SampleStore.read(path)) { XCTAssertTrue("\($0)".contains("unknown part 'everything'"), "\($0)") }
        XCTAssertThrowsError(try SampleStore.read(directory + "/missing.eml"))
    }

    func testSamplesOlderThanKeepAreRemovedAndEmptyDaysWithThem() throws {
        let root = directory + "/samples"
        for (day, name, age) in [("2026-11-20", "OLD1", 20.0), ("2026-11-20", "OLD2", 20), ("2026-12-01", "MIX1", 8), ("2026-12-01", "MIX2", 2),
                                 ("2026-12-06", "NEW1", 0.1)] {
            try FileManager.default.createDirectory(atPath: root + "/" + day, withIntermediateDirectories: true)
            let path = root + "/" + day + "/" + name + ".eml"
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data("X-Postern-Sample: id=\(name)\r\n".utf8)))
            try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-age * 86_400)], ofItemAtPath: path)
        }
        XCTAssertTrue(FileManager.default.createFile(atPath: root + "/README", contents: Data("not ours".utf8)))
        XCTAssertEqual(SampleStore.sweep(root, olderThan: Date().addingTimeInterval(-7 * 86_400)), 3)
        XCTAssertEqual(Set(SampleStore.index(root).keys), ["MIX2", "NEW1"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/2026-11-20"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/README"))
    }

    /// What the store counted, in order.
    final class Results: Sendable {
        private let values = Mutex<[String]>([])
        func append(_ value: String) { values.withLock { $0.append(value) } }
        var all: [String] { values.withLock { $0 } }
    }

    // MARK: Replay with samples

    private func replay(_ yaml: String, records: [DecisionRecord], samples: String?) async throws -> PolicyReplayRun.Report {
        let path = directory + "/candidate.yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        let clock = ManualRateLimitClock()
        let policy = try BuiltinFilters.compiler(rateLimitStore: InMemoryRateLimitStore(clock: clock)).compile(path: path)
        let log = directory + "/decisions.log"
        try records.map { $0.jsonLine() }.joined().write(toFile: log, atomically: true, encoding: .utf8)
        var report = PolicyReplayRun.Report()
        let read = try await PolicyReplayRun.read([log], into: &report)
        let run = PolicyReplayRun(policy: policy, relayControl: RelayControl(relayDomains: ["example.net"], trustedNetworks: []), clock: clock,
                                  samples: samples)
        await run.run(read, report: &report)
        return report
    }

    func testReplayReadsWhatTheSampleKeptAndNothingItWithheld() async throws {
        let results = Results()
        let plain = try store(results: results)
        plain.offer(record("K1", size: message.count), spool: try spool(message))
        plain.flush()
        let hashedRoot = directory + "/hashed"
        var configuration = SampleStore.Configuration(directory: hashedRoot)
        configuration.fraction = 1
        configuration.body = false
        let hashed = try SampleStore(configuration, privacy: DecisionLogPrivacy(localParts: .on, subject: .hashed), logger: Logger(label: "test"))
        hashed.offer(record("K2", size: message.count), spool: try spool(message))
        hashed.flush()
        let records = [record("K1", size: message.count), record("K2", size: message.count)]

        let body = "version: 1\nrules:\n  - { id: body-rule, stage: data, if: { body: { regex: 'Dear Bob' } }, then: reject }\n"
        let fromPlain = try await replay(body, records: [records[0]], samples: directory + "/samples")
        XCTAssertEqual(fromPlain.sampled, 1)
        XCTAssertEqual(fromPlain.changes.map { "\($0.id) \($0.was)->\($0.now) \($0.rule ?? "-")" }, ["K1 accepted->rejected body-rule"])
        let fromHashed = try await replay(body, records: [records[1]], samples: hashedRoot)
        XCTAssertEqual(fromHashed.sampled, 1)
        XCTAssertEqual(fromHashed.notEvaluableReasons, ["a content rule reads what the message's sample withholds (body, subject)": 1])

        // A header the treatment left alone is read from the sample; the Subject it hashed is not.
        let header = "version: 1\nrules:\n  - { id: mid, stage: data, if: { header.Message-ID: { regex: 'mail[.]example' } }, then: reject }\n"
        let headerReport = try await replay(header, records: [records[1]], samples: hashedRoot)
        XCTAssertEqual(headerReport.changed, 1, "\(headerReport.notEvaluableReasons)")
        let subject = "version: 1\nrules:\n  - { id: subj, stage: data, if: { subject: { regex: quarterly } }, then: reject }\n"
        let subjectReport = try await replay(subject, records: [records[1]], samples: hashedRoot)
        XCTAssertEqual(subjectReport.notEvaluable, 1)

        // An unreadable sample: the transaction is replayed from its record alone, and named.
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: directory + "/samples/2026-12-06/K1.eml"))
        let broken = try await replay(body, records: [records[0]], samples: directory + "/samples")
        XCTAssertEqual(broken.sampled, 0)
        XCTAssertEqual(broken.unreadableSamples.count, 1)
        XCTAssertTrue(broken.unreadableSamples[0].contains("K1.eml: not a Postern sample"), broken.unreadableSamples[0])
        XCTAssertEqual(broken.notEvaluable, 1)
    }
}
