import Foundation
import Logging
import XCTest

@testable import PosternLog

final class PrivacyAndRotationTests: XCTestCase {
    private var directory: String!

    override func setUp() {
        directory = NSTemporaryDirectory() + "postern-rotation-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    func testSHA256KnownVectors() {
        XCTAssertEqual(SHA256.hex([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hex([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    private func record(subject: String? = "Quarterly numbers") -> DecisionRecord {
        DecisionRecord(
            timestamp: 0, id: "ID", session: "S", client: .init(ip: "192.0.2.1", port: 1),
            mailFrom: "Alice@example.org", recipients: [.init(address: "bob@example.net", reply: "250 2.1.5 Ok")],
            subject: subject, decision: .accepted, stage: .data, timings: .init(total: 0, filters: 0, upstream: 0))
    }

    func testPrivacyTreatments() {
        let kept = DecisionLogPrivacy().apply(to: record())
        XCTAssertEqual(kept.mailFrom, "Alice@example.org")
        XCTAssertEqual(kept.subject, "Quarterly numbers")

        let dropped = DecisionLogPrivacy(localParts: .off, subject: .off).apply(to: record())
        XCTAssertEqual(dropped.mailFrom, "@example.org")
        XCTAssertEqual(dropped.recipients.first?.address, "@example.net")
        XCTAssertNil(dropped.subject)

        let hashed = DecisionLogPrivacy(localParts: .hashed, subject: .hashed, salt: "s3cret").apply(to: record())
        XCTAssertTrue(hashed.mailFrom?.hasPrefix("h:") ?? false)
        XCTAssertTrue(hashed.mailFrom?.hasSuffix("@example.org") ?? false)
        XCTAssertFalse(hashed.mailFrom?.lowercased().contains("alice") ?? true)
        XCTAssertEqual(hashed.mailFrom, DecisionLogPrivacy(localParts: .hashed, salt: "s3cret").apply(to: record()).mailFrom,
                       "the same value gives the same pseudonym")
        XCTAssertNotEqual(hashed.mailFrom, DecisionLogPrivacy(localParts: .hashed, salt: "other").apply(to: record()).mailFrom,
                          "the salt changes it")
        XCTAssertFalse(hashed.subject?.contains("Quarterly") ?? true)
        XCTAssertEqual(DecisionLogPrivacy(localParts: .off).apply(to: {
            var r = record(); r.mailFrom = ""; return r
        }()).mailFrom, "", "the null sender stays empty")
    }

    func testReopenAfterTheFileWasMovedLosesNothing() throws {
        let path = directory + "/decisions.log"
        let writer = try DecisionLogWriter(path: path, logger: Logger(label: "test"))
        for index in 0..<50 { var r = record(); r.id = "A\(index)"; writer.record(r) }
        // logrotate: move the file away, then SIGUSR1.
        Thread.sleep(forTimeInterval: 0.2)
        try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
        for index in 0..<10 { var r = record(); r.id = "B\(index)"; writer.record(r) }
        writer.reopen()
        // Records queued before the writer thread reopens still go to the old file; after it, the new.
        Thread.sleep(forTimeInterval: 0.2)
        for index in 0..<50 { var r = record(); r.id = "C\(index)"; writer.record(r) }
        writer.close()
        let old = try String(contentsOfFile: path + ".1", encoding: .utf8).split(separator: "\n")
        let new = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(old.count + new.count, 110, "every record is in one of the two files")
        XCTAssertTrue(new.allSatisfy { $0.contains("\"id\":\"C") || $0.contains("\"id\":\"B") })
        XCTAssertEqual(new.filter { $0.contains("\"id\":\"C") }.count, 50)
    }

    func testReconfigureMovesTheLogAndTakesNewRotationAndPrivacy() throws {
        let path = directory + "/decisions.log"
        let moved = directory + "/new/decisions.log"
        let writer = try DecisionLogWriter(path: path, logger: Logger(label: "test"))
        for index in 0..<20 { var r = record(); r.id = "A\(index)"; writer.record(r) }
        let lineSize = record().jsonLine().utf8.count
        writer.reconfigure(path: moved, rotation: (lineSize * 10, 1), privacy: DecisionLogPrivacy(localParts: .on, subject: .off))
        XCTAssertEqual(writer.path, moved)
        XCTAssertEqual(writer.rotation?.keep, 1)
        // The move waits for what is pending (the writer creates the new file when it moves);
        // the privacy options apply to the next record at once.
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: moved) && Date() < deadline { usleep(1000) }
        for index in 0..<15 { var r = record(); r.id = "B\(index)"; writer.record(r) }
        writer.close()

        let old = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        let new = try String(contentsOfFile: moved, encoding: .utf8).split(separator: "\n")
        let rotated = try String(contentsOfFile: moved + ".1", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(old.filter { $0.contains("\"id\":\"A") }.count, 20, "what was written before stays in the old file")
        XCTAssertEqual(old.count, 20)
        XCTAssertEqual(new.count + rotated.count, 15, "every later record is in the new place")
        XCTAssertLessThanOrEqual(new.count, 10, "the new rotation size holds in the new place")
        XCTAssertFalse(FileManager.default.fileExists(atPath: moved + ".2"), "keep: 1")
        XCTAssertTrue((old + new + rotated).filter { $0.contains("\"id\":\"B") }.allSatisfy { !$0.contains("Quarterly numbers") },
                      "the subject is left out of every record after the reconfiguration")
        XCTAssertTrue(old.filter { $0.contains("\"id\":\"A") }.allSatisfy { $0.contains("Quarterly numbers") })
    }

    func testStandardOutputStaysStandardOutput() throws {
        let writer = try DecisionLogWriter(path: "-", logger: Logger(label: "test"))
        writer.reconfigure(path: directory + "/decisions.log", rotation: nil, privacy: DecisionLogPrivacy(localParts: .off))
        XCTAssertEqual(writer.path, "-")
        XCTAssertEqual(writer.privacy.localParts, .off, "the privacy options still apply")
        writer.close()
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/decisions.log"))
        XCTAssertThrowsError(try DecisionLogWriter.check(path: "/dev/null/decisions.log"))
    }

    func testSizeRotationKeepsNFiles() throws {
        let path = directory + "/decisions.log"
        let lineSize = record().jsonLine().utf8.count
        let writer = try DecisionLogWriter(path: path, logger: Logger(label: "test"), rotation: (lineSize * 10, 2))
        for index in 0..<45 { var r = record(); r.id = "R\(index < 10 ? "0" : "")\(index)"; writer.record(r) }
        writer.close()
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        XCTAssertEqual(files, ["decisions.log", "decisions.log.1", "decisions.log.2"])
        for name in files {
            let lines = try String(contentsOfFile: directory + "/" + name, encoding: .utf8).split(separator: "\n")
            XCTAssertLessThanOrEqual(lines.count, 10, name)
            XCTAssertTrue(lines.allSatisfy { $0.hasSuffix("}") }, "no line is cut")
        }
        let newest = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(newest.contains("\"id\":\"R44\""))
    }

    func testTheSubjectField() throws {
        let line = record().jsonLine()
        XCTAssertTrue(line.contains("\"message_id\":null,\"subject\":\"Quarterly numbers\",\"decision\""), line)
    }
}
