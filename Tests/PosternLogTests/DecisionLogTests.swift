import Foundation
import Logging
import XCTest

@testable import PosternLog

final class DecisionRecordTests: XCTestCase {
    private func sample() -> DecisionRecord {
        DecisionRecord(
            timestamp: 1_795_461_098_123, id: "H46KQZ1J9M23", session: "Q0XMJBVMZGZQ",
            client: .init(ip: "192.0.2.7", port: 40000, helo: "client.example", tls: "TLSv1.3"),
            mailFrom: "alice@example.org",
            recipients: [.init(address: "bob@example.net", reply: "250 2.1.5 Ok"), .init(address: "x@example.net", reply: "550 5.1.1 No such user")],
            size: 1234, messageID: "<m1@example.org>", decision: .accepted, stage: .data,
            reply: .init(code: 250, enhanced: "2.0.0", text: "Ok: queued as 4XYZ12"),
            upstream: .init(host: "127.0.0.1:10025", reply: "250 2.0.0 Ok: queued as 4XYZ12", queueID: "4XYZ12"),
            timings: .init(total: 12, filters: 0, upstream: 9))
    }

    func testJSONLineHasEveryFieldInOrder() throws {
        let line = sample().jsonLine()
        XCTAssertTrue(line.hasSuffix("}\n"))
        XCTAssertEqual(line.filter { $0 == "\n" }.count, 1)
        XCTAssertTrue(line.hasPrefix(#"{"schema":1,"ts":"2026-11-23T19:11:38.123Z","id":"H46KQZ1J9M23","session":"Q0XMJBVMZGZQ","policy_version":null,"client":{"ip":"192.0.2.7","port":40000,"country":null,"asn":null,"helo":"client.example","tls":"TLSv1.3","auth":null},"mail_from":"alice@example.org","rcpts":[{"address":"bob@example.net","reply":"250 2.1.5 Ok"},"#), line)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual(Set(object.keys), [
            "schema", "ts", "id", "session", "policy_version", "client", "mail_from", "rcpts", "size", "message_id", "subject",
            "decision", "stage", "rule", "reason", "reply", "upstream", "shadow", "timings",
        ])
        XCTAssertEqual((object["upstream"] as? [String: Any])?["queue_id"] as? String, "4XYZ12")
        XCTAssertEqual((object["timings"] as? [String: Any])?["upstream_ms"] as? Int, 9)
        XCTAssertEqual(object["decision"] as? String, "accepted")
    }

    func testTheConfigurationVersionFollowsThePolicyVersionWhenKnown() throws {
        var record = sample()
        XCTAssertFalse(record.jsonLine().contains("config_version"), "not written when unknown")
        record.configVersion = "5d41402abc4b2a76"
        XCTAssertTrue(record.jsonLine().contains(#""policy_version":null,"config_version":"5d41402abc4b2a76","client":{"#), record.jsonLine())
    }

    func testStringsAreEscaped() throws {
        var record = sample()
        record.client.helo = "evil\"\\\r\n\u{01}héllo"
        let line = record.jsonLine()
        XCTAssertEqual(line.filter { $0 == "\n" }.count, 1, "a hostile HELO never splits the line")
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual((object["client"] as? [String: Any])?["helo"] as? String, "evil\"\\\r\n\u{01}héllo")
    }

    func testRFC3339() {
        XCTAssertEqual(DecisionRecord.rfc3339(milliseconds: 0), "1970-01-01T00:00:00.000Z")
        XCTAssertEqual(DecisionRecord.rfc3339(milliseconds: 951_782_400_007), "2000-02-29T00:00:00.007Z")
        XCTAssertEqual(DecisionRecord.rfc3339(milliseconds: 1_795_461_098_123), "2026-11-23T19:11:38.123Z")
        XCTAssertEqual(DecisionRecord.rfc3339(milliseconds: 4_102_444_799_999), "2099-12-31T23:59:59.999Z")
    }

    func testQueueIDFromUpstreamReplies() {
        XCTAssertEqual(DecisionRecord.queueID(fromReply: "Ok: queued as 4XYZ12"), "4XYZ12")
        XCTAssertEqual(DecisionRecord.queueID(fromReply: "2.0.0 Ok: queued as 4fZK1m3XyQz9"), "4fZK1m3XyQz9")
        XCTAssertEqual(DecisionRecord.queueID(fromReply: "OK id=1rAbCd-000123-Ef"), "1rAbCd-000123-Ef")
        XCTAssertNil(DecisionRecord.queueID(fromReply: "Ok"))
    }
}

final class DecisionLogWriterTests: XCTestCase {
    private var directory: String!

    override func setUp() {
        directory = NSTemporaryDirectory() + "postern-log-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static func record(_ index: Int) -> DecisionRecord {
        DecisionRecord(
            timestamp: 1_795_461_098_000 + Int64(index), id: "ID\(index)", session: "S\(index % 7)",
            client: .init(ip: "127.0.0.1", port: index), mailFrom: String(repeating: "a", count: index % 300) + "@example.org",
            decision: .accepted, stage: .data, timings: .init(total: 1, filters: 0, upstream: 1))
    }

    func testConcurrentWritersNeverInterleaveLines() throws {
        let path = directory + "/decisions.log"
        let writer = try DecisionLogWriter(path: path, logger: Logger(label: "test"))
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for index in 0..<500 { writer.record(Self.record(worker * 1000 + index)) }
        }
        writer.close()
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 4000)
        var ids: Set<String> = []
        for line in lines {
            let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
            ids.insert(try XCTUnwrap(object["id"] as? String))
        }
        XCTAssertEqual(ids.count, 4000, "every record exactly once")
        XCTAssertEqual(writer.failures.writeErrors, 0)
    }

    func testARecordThatArrivesWhileTheWriterGathersIsWrittenWithoutWaitingForMore() throws {
        let path = directory + "/decisions.log"
        let writer = try DecisionLogWriter(path: path, logger: Logger(label: "test"))
        func lines() -> Int { ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").count }
        func waitFor(_ count: Int) {
            let deadline = Date().addingTimeInterval(5)
            while lines() < count && Date() < deadline { usleep(1000) }
        }
        writer.record(Self.record(1))
        waitFor(1)
        XCTAssertEqual(lines(), 1, "the first record after a quiet spell goes out at once")
        writer.record(Self.record(2))  // the writer is likely still gathering
        waitFor(2)
        XCTAssertEqual(lines(), 2, "no record waits for a later one or for close")
        writer.close()
    }

    func testAppendsToAnExistingLog() throws {
        let path = directory + "/decisions.log"
        try "earlier line\n".write(toFile: path, atomically: false, encoding: .utf8)
        let writer = try DecisionLogWriter(path: path, logger: Logger(label: "test"))
        writer.record(Self.record(1))
        writer.close()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.hasPrefix("earlier line\n{\"schema\":1,"))
    }

    func testMissingDirectoriesAreCreated() throws {
        let path = directory + "/var/log/postern/decisions.log"
        let writer = try DecisionLogWriter(path: path, logger: Logger(label: "test"))
        writer.record(Self.record(1))
        writer.close()
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").count, 1)
    }

    func testUnopenablePathIsAClearError() throws {
        let blocker = directory + "/not-a-directory"
        try "x".write(toFile: blocker, atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try DecisionLogWriter(path: blocker + "/decisions.log", logger: Logger(label: "test"))) { error in
            XCTAssertTrue("\(error)".contains("cannot open decision log \(blocker)/decisions.log"), "\(error)")
        }
    }

    func testAFullDiskIsCountedAndNeverBlocks() throws {
        guard FileManager.default.fileExists(atPath: "/dev/full") else { throw XCTSkip("no /dev/full") }
        let writer = try DecisionLogWriter(path: "/dev/full", logger: Logger(label: "test"))
        for index in 0..<10 { writer.record(Self.record(index)) }
        writer.close()
        XCTAssertEqual(writer.failures.writeErrors, 10)
    }
}
