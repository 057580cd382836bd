import Foundation
import XCTest

/// `postern tail`: the real binary on a decision log written in the work directory.
final class TailCLITests: IntegrationTestCase, @unchecked Sendable {
    private static func line(
        ts: String, id: String, decision: String, ip: String, country: String? = nil, from: String?,
        rcpts: [String] = [], rule: String? = nil, code: Int? = nil, enhanced: String? = nil, shadow: [(String, String)] = []
    ) -> String {
        func value(_ text: String?) -> String { text.map { "\"\($0)\"" } ?? "null" }
        let recipients = rcpts.map { #"{"address":"\#($0)","reply":"250 2.1.5 Ok"}"# }.joined(separator: ",")
        let shadows = shadow.map { #"{"rule":"\#($0.0)","action":"\#($0.1)"}"# }.joined(separator: ",")
        let reply = code.map { #"{"code":\#($0),"enhanced":\#(value(enhanced)),"text":"text"}"# } ?? "null"
        return #"{"schema":1,"ts":"\#(ts)","id":"\#(id)","session":"S\#(id)","policy_version":null,"#
            + #""client":{"ip":"\#(ip)","port":40000,"country":\#(value(country)),"asn":null,"helo":"h.example","tls":null,"auth":null},"#
            + #""mail_from":\#(value(from)),"rcpts":[\#(recipients)],"size":null,"message_id":null,"decision":"\#(decision)","#
            + #""stage":"rcpt","rule":\#(value(rule)),"reason":null,"reply":\#(reply),"upstream":null,"shadow":[\#(shadows)],"#
            + #""timings":{"total_ms":1,"filters_ms":0,"upstream_ms":0}}"#
    }

    private static let lines = [
        line(ts: "2025-06-01T10:00:00.000Z", id: "R1", decision: "accepted", ip: "192.0.2.7", country: "GB",
             from: "alice@example.org", rcpts: ["bob@example.net"], code: 250, enhanced: "2.0.0",
             shadow: [("literal-helo", "tempfail")]),
        line(ts: "2025-06-01T10:05:00.000Z", id: "R2", decision: "rejected", ip: "198.51.100.23",
             from: "spam@bad.example", rcpts: ["x@example.net"], rule: "blocked-sender", code: 550, enhanced: "5.7.1"),
        line(ts: "2025-06-01T10:10:00.000Z", id: "R3", decision: "rejected", ip: "198.51.100.99", country: "NL",
             from: "other@bad.example", rcpts: ["a@example.net", "b@example.net", "c@example.net"],
             rule: "blocked-sender", code: 550, enhanced: "5.7.1"),
        line(ts: "2025-06-01T10:15:00.000Z", id: "R4", decision: "tempfailed", ip: "2001:db8::5", from: "",
             rcpts: ["postmaster@example.net"], rule: "greylist", code: 451, enhanced: "4.7.1",
             shadow: [("literal-helo", "tempfail")]),
        line(ts: "2025-06-01T10:20:00.000Z", id: "R5", decision: "aborted", ip: "192.0.2.8", from: "alice@example.org",
             rcpts: ["bob@example.net"]),
    ]

    private func writeLog(_ text: String, name: String = "decisions.log") throws -> URL {
        let url = workDir.appendingPathComponent(name)
        try Data(text.utf8).write(to: url)
        return url
    }

    private func tail(_ arguments: [String], environment: [String: String] = [:]) throws -> CommandResult {
        try Command.run(try posternBinary(), ["tail"] + arguments, environment: ["TZ": "UTC"].merging(environment) { $1 },
                        currentDirectory: workDir, timeout: 30)
    }

    func testPlainAlignedOutputWithoutColourOnAPipe() throws {
        let log = try writeLog(Self.lines.map { $0 + "\n" }.joined())
        let result = try tail([log.path])
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertEqual(result.stderr, "", result.description)
        XCTAssertFalse(result.stdout.contains("\u{1B}"), "no colour when stdout is a pipe:\n\(result.stdout)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 5, result.stdout)
        XCTAssertTrue(lines[0].hasPrefix("2025-06-01 10:00:00  accepted "), lines[0])
        XCTAssertTrue(lines[0].contains("192.0.2.7 GB"), lines[0])
        XCTAssertTrue(lines[0].contains("alice@example.org → bob@example.net"), lines[0])
        XCTAssertTrue(lines[0].hasSuffix("250 2.0.0"), lines[0])
        XCTAssertTrue(lines[2].contains("other@bad.example → a@example.net, b@example.net +1"), lines[2])
        XCTAssertTrue(lines[3].contains("<> → postmaster@example.net"), lines[3])
        XCTAssertTrue(lines[4].hasSuffix("-"), "no reply: \(lines[4])")
        // Aligned: every column starts at the same place on every line.
        for word in ["blocked-sender", "greylist"] {
            let columns = lines.compactMap { line in line.range(of: word).map { line.distance(from: line.startIndex, to: $0.lowerBound) } }
            XCTAssertEqual(Set(columns).count, 1, "\(word) not aligned:\n\(result.stdout)")
        }
        let replyColumns = lines.dropLast().map { $0.count - 9 }
        XCTAssertEqual(Set(replyColumns).count, 1, "replies not aligned:\n\(result.stdout)")

        let withNoColor = try tail([log.path], environment: ["NO_COLOR": ""])
        XCTAssertEqual(withNoColor.stdout, result.stdout)
    }

    func testFiltersAndJSONPassTheOriginalLinesThrough() throws {
        let log = try writeLog(Self.lines.map { $0 + "\n" }.joined())
        let rejected = try tail([log.path, "--decision", "rejected", "--decision", "tempfailed", "--json"])
        XCTAssertEqual(rejected.status, 0, rejected.description)
        XCTAssertEqual(rejected.stdout, [Self.lines[1], Self.lines[2], Self.lines[3]].map { $0 + "\n" }.joined())

        let combined = try tail([log.path, "--client", "198.51.100.0/24", "--sender", "*@BAD.example",
                                 "--recipient", "c@*", "--since", "2025-06-01T10:08:00Z", "--json"])
        XCTAssertEqual(combined.stdout, Self.lines[2] + "\n", combined.description)
        let nullSender = try tail([log.path, "--sender", "<>", "--json"])
        XCTAssertEqual(nullSender.stdout, Self.lines[3] + "\n", nullSender.description)
        let byRule = try tail([log.path, "--rule", "greylist"])
        XCTAssertEqual(byRule.stdout.split(separator: "\n").count, 1, byRule.description)
        let recent = try tail([log.path, "--since", "15m"])
        XCTAssertEqual(recent.status, 0, recent.description)
        XCTAssertEqual(recent.stdout, "", "the fixture is older than 15 minutes")

        let badClient = try tail([log.path, "--client", "not-an-ip"])
        XCTAssertNotEqual(badClient.status, 0)
        XCTAssertTrue(badClient.stderr.contains("--client"), badClient.description)
    }

    func testSummary() throws {
        let log = try writeLog(Self.lines.map { $0 + "\n" }.joined())
        let result = try tail([log.path, "--summary"])
        XCTAssertEqual(result.status, 0, result.description)
        let lines = result.stdout.components(separatedBy: "\n")
        XCTAssertTrue(lines[0].hasPrefix("5 decisions from 2025-06-01T10:00:00.000Z"), result.stdout)
        for expected in ["Decisions", "  rejected        2  40.0%", "Top rules", "  blocked-sender     2",
                         "Top rejected client networks", "  198.51.100.0/24         2",
                         "Top rejected sender domains", "  bad.example         2",
                         "Shadow rules (would have hit)", "  literal-helo  tempfail     2                 1"] {
            XCTAssertTrue(lines.contains(expected), "missing \"\(expected)\" in\n\(result.stdout)")
        }
        let filtered = try tail([log.path, "--summary", "--since", "2025-06-01T10:10:00Z"])
        XCTAssertTrue(filtered.stdout.hasPrefix("3 decisions"), filtered.description)
    }

    func testMalformedLinesAreSkippedWithAWarning() throws {
        let log = try writeLog(Self.lines[0] + "\nforeign text\n" + #"{"schema":9,"ts":"x"}"# + "\n" + Self.lines[1]
                               + "\n" + String(Self.lines[2].prefix(50)))
        let result = try tail([log.path, "--json"])
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertEqual(result.stdout, Self.lines[0] + "\n" + Self.lines[1] + "\n")
        XCTAssertTrue(result.stderr.contains("postern tail: skipping line 2: not JSON"), result.description)
        XCTAssertTrue(result.stderr.contains("postern tail: skipping line 3: schema 9, expected 1"), result.description)
        XCTAssertTrue(result.stderr.contains("postern tail: skipping line 5: incomplete line"), result.description)
    }

    func testMissingFileExitsOneWithAClearMessage() throws {
        let result = try tail([workDir.appendingPathComponent("nope.log").path])
        XCTAssertEqual(result.status, 1, result.description)
        XCTAssertEqual(result.stdout, "")
        XCTAssertTrue(result.stderr.contains("postern tail: cannot open "), result.description)
        XCTAssertTrue(result.stderr.contains("nope.log: No such file or directory"), result.description)

        let defaultPath = try tail([])
        XCTAssertEqual(defaultPath.status, 1, defaultPath.description)
        XCTAssertTrue(defaultPath.stderr.contains("var/decisions.log"), defaultPath.description)
    }

    func testFollowAcrossRotation() throws {
        let log = try writeLog(Self.lines[0] + "\n")
        let process = try launch("tail", try posternBinary(), ["tail", "-f", "--json", log.path],
                                 environment: ["TZ": "UTC"], currentDirectory: workDir)
        try process.waitForOutput(containing: #""id":"R1""#, timeout: 15)
        func append(_ text: String, to url: URL) throws {
            let handle = try FileHandle(forWritingTo: url)
            try handle.seekToEnd()
            try handle.write(contentsOf: Data(text.utf8))
            try handle.close()
        }
        try append(Self.lines[1] + "\n" + String(Self.lines[2].prefix(40)), to: log)
        try process.waitForOutput(containing: #""id":"R2""#, timeout: 15)
        try append(String(Self.lines[2].dropFirst(40)) + "\n", to: log)
        try FileManager.default.moveItem(at: log, to: workDir.appendingPathComponent("decisions.log.1"))
        _ = try writeLog(Self.lines[3] + "\n")
        try process.waitForOutput(containing: #""id":"R4""#, timeout: 15)
        try append(Self.lines[4] + "\n", to: log)
        try process.waitForOutput(containing: #""id":"R5""#, timeout: 15)
        XCTAssertEqual(process.stdout, Self.lines.map { $0 + "\n" }.joined(), "every record once, in order")
        XCTAssertEqual(process.stderr, "", process.tail())
    }
}
