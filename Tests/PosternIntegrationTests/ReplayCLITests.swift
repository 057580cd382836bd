import Foundation
import XCTest

/// `postern replay`: a real `postern serve` writes a decision log under one policy, then the
/// real binary replays that log against a candidate.
final class ReplayCLITests: IntegrationTestCase, @unchecked Sendable {
    /// The policy the mail was decided under.
    private static let livePolicy = """
        version: 1
        rules:
          - id: block-bad
            stage: mail
            if: { sender: "@bad.example" }
            then: reject

        """

    /// The candidate: block-bad retired, a subject rule and a per-sender limit added.
    private static let candidatePolicy = """
        version: 1
        limits:
          per_sender: { key: sender, count: messages, rate: 2/1h, burst: 0 }
        rules:
          - id: no-pills
            stage: data
            if: { subject: { regex: pills } }
            then: reject
          - id: throttle
            stage: rcpt
            if: { limit: per_sender }
            then: tempfail

        """

    /// A candidate with one body rule: the record alone cannot answer it.
    private static let bodyCandidate = """
        version: 1
        rules:
          - id: body-check
            stage: data
            if: { body: { regex: viagra } }
            then: reject

        """

    private struct Live {
        var postern: PosternServer
        var config: URL
        var decisionLog: URL
        var metricsPort: Int
    }

    /// Postern (plain listener, recording sink) deciding under `livePolicy`, with a decision log;
    /// `extra` is more configuration.
    private func startLive(_ extra: String = "") throws -> Live {
        let sink = try startRecordingSink()
        let policyURL = try writeConfig(Self.livePolicy, name: "live.yaml")
        let decisionLog = workDir.appendingPathComponent("decisions.log")
        let port = try Net.freePort()
        let metricsPort = try Net.freePort()
        let config = try writeConfig("""
            hostname: postern.test
            metrics: 127.0.0.1:\(metricsPort)
            listen:
              - address: 127.0.0.1:\(port)
            upstreams:
              - url: "smtp://127.0.0.1:\(sink.port)"
            policy: \(policyURL.path)
            decision_log: \(decisionLog.path)
            relay_domains: [example.test]
            # The test's client is 127.0.0.1: not trusted, so relay control applies to it.
            trusted_networks: []
            \(extra)

            """, name: "postern.yaml")
        let postern = try startPostern(arguments: ["serve", "--config", config.path], port: port, configURL: config)
        return Live(postern: postern, config: config, decisionLog: decisionLog, metricsPort: metricsPort)
    }

    /// swaks's transcript (standard output and error).
    private func send(_ live: Live, from sender: String, to recipient: String, subject: String = "hello") throws -> String {
        let result = try runSwaks(port: live.postern.port, ["--from", sender, "--to", recipient, "--header", "Subject: \(subject)"])
        return result.stdout + result.stderr
    }

    /// The decision log's records, once `count` of them are written.
    private func waitForRecords(_ url: URL, count: Int) -> [[String: Any]] {
        var records: [[String: Any]] = []
        _ = waitUntil(timeout: 10) {
            records = ((try? Data(contentsOf: url)) ?? Data()).split(separator: 0x0A).compactMap {
                try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any]
            }
            return records.count >= count
        }
        XCTAssertEqual(records.count, count, "decision records")
        return records
    }

    /// Sends the day's mail; returns the records' ids by what the test calls them.
    private func liveTraffic(_ live: Live) throws -> [String: String] {
        XCTAssertTrue(try send(live, from: "a@good.example", to: "alice@example.test").contains("250 2.0.0"))
        XCTAssertTrue(try send(live, from: "b@bad.example", to: "alice@example.test").contains("550"))
        XCTAssertTrue(try send(live, from: "c@good.example", to: "bob@example.test", subject: "cheap pills").contains("250 2.0.0"))
        for _ in 0..<3 { XCTAssertTrue(try send(live, from: "x@good.example", to: "alice@example.test").contains("250 2.0.0")) }
        XCTAssertTrue(try send(live, from: "d@good.example", to: "someone@elsewhere.test").contains("Relay access denied"))
        let records = waitForRecords(live.decisionLog, count: 7)
        var ids: [String: String] = [:]
        for record in records {
            let id = record["id"] as? String ?? ""
            switch record["mail_from"] as? String {
            case "c@good.example": ids["pills"] = id
            case "x@good.example": ids["x\(ids.keys.filter { $0.hasPrefix("x") }.count + 1)"] = id
            case "b@bad.example": ids["bad"] = id
            default: break
            }
        }
        return ids
    }

    private func replay(_ arguments: [String], config: URL) throws -> CommandResult {
        try runPostern(["replay", "--config", config.path] + arguments)
    }

    private func json(_ result: CommandResult) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    func testReplayShowsWhatTheCandidateWouldHaveDecidedDifferently() throws {
        let live = try startLive()
        let ids = try liveTraffic(live)
        let candidate = try writeConfig(Self.candidatePolicy, name: "candidate.yaml")

        let result = try replay(["--policy", candidate.path, "--json", live.decisionLog.path], config: live.config)
        XCTAssertEqual(result.status, 0, result.description)
        let report = json(result)
        XCTAssertEqual(report["records"] as? Int, 7, result.stdout)
        XCTAssertEqual(report["replayed"] as? Int, 7, result.stdout)
        XCTAssertEqual(report["changed"] as? Int, 2, result.stdout)
        XCTAssertEqual(report["unchanged"] as? Int, 4, result.stdout)
        XCTAssertEqual(report["not_evaluable"] as? Int, 1, result.stdout)
        XCTAssertEqual(report["by_change"] as? [String: Int], ["accepted->rejected": 1, "accepted->tempfailed": 1], result.stdout)
        XCTAssertEqual(report["by_rule"] as? [String: Int], ["no-pills": 1, "throttle": 1], result.stdout)
        // The sender refused at MAIL by the retired rule: its recipients are not in the log.
        XCTAssertEqual(report["not_evaluable_reasons"] as? [String: Int],
                       ["the logged policy refused MAIL; the recipients are not in the log": 1], result.stdout)
        let changes = (report["changes"] as? [[String: Any]] ?? []).map { "\($0["id"] ?? "") \($0["was"] ?? "")->\($0["now"] ?? "") \($0["rule"] ?? "")" }
        // The third message from x@ in the hour is the one the limit refuses (replayed in time order).
        XCTAssertEqual(Set(changes), ["\(ids["pills"] ?? "?") accepted->rejected no-pills", "\(ids["x3"] ?? "?") accepted->tempfailed throttle"],
                       result.stdout)

        // The same, for people.
        let text = try replay(["--policy", candidate.path, live.decisionLog.path], config: live.config)
        XCTAssertEqual(text.status, 0, text.description)
        XCTAssertTrue(text.stdout.contains("replayed 7: unchanged 4, changed 2, not evaluable 1"), text.stdout)
        XCTAssertTrue(text.stdout.contains("accepted -> rejected by no-pills  client 127.0.0.1  from <c@good.example>  to <bob@example.test>"), text.stdout)

        // The live policy itself changes nothing.
        let same = try replay(["--policy", workDir.appendingPathComponent("live.yaml").path, "--json", live.decisionLog.path], config: live.config)
        XCTAssertEqual(json(same)["changed"] as? Int, 0, same.stdout)
        XCTAssertEqual(json(same)["unchanged"] as? Int, 7, same.stdout)
    }

    func testRotatedAndCompressedLogsAreReadAndMalformedLinesSkippedWithFileAndLine() throws {
        let live = try startLive()
        _ = try liveTraffic(live)
        _ = live.postern.process.stop()
        // Rotate: the records move to decisions.log.1.gz; the current file has a broken line.
        let rotated = workDir.appendingPathComponent("decisions.log.1")
        try FileManager.default.moveItem(at: live.decisionLog, to: rotated)
        let gzip = try Command.run(URL(fileURLWithPath: "/bin/gzip"), [rotated.path])
        XCTAssertEqual(gzip.status, 0, gzip.description)
        try "{\"schema\":1,\"ts\":\"not a time\"}\n".write(to: live.decisionLog, atomically: true, encoding: .utf8)
        let candidate = try writeConfig(Self.candidatePolicy, name: "candidate.yaml")

        let result = try replay(["--policy", candidate.path, "--json"], config: live.config)
        XCTAssertEqual(result.status, 0, result.description)
        XCTAssertEqual(json(result)["records"] as? Int, 7, result.stdout)
        XCTAssertEqual(json(result)["changed"] as? Int, 2, result.stdout)
        XCTAssertEqual(json(result)["malformed"] as? Int, 1, result.stdout)
        XCTAssertTrue(result.stderr.contains("replay: skipped \(live.decisionLog.path):1: \"ts\" is not an RFC 3339 time: not a time"), result.stderr)

        // A time window: nothing is before the epoch's first day, everything is since a day ago.
        let none = try replay(["--policy", candidate.path, "--json", "--until", "1970-01-02T00:00:00Z"], config: live.config)
        XCTAssertEqual(json(none)["replayed"] as? Int, 0, none.stdout)
        let all = try replay(["--policy", candidate.path, "--json", "--since", "1d"], config: live.config)
        XCTAssertEqual(json(all)["replayed"] as? Int, 7, all.stdout)
    }

    func testContentRulesTheRecordCannotAnswerAreNotEvaluable() throws {
        let live = try startLive()
        _ = try liveTraffic(live)
        let candidate = try writeConfig(Self.bodyCandidate, name: "content.yaml")
        let result = try replay(["--policy", candidate.path, "--json", live.decisionLog.path], config: live.config)
        XCTAssertEqual(result.status, 0, result.description)
        let report = json(result)
        // The five relayed messages need their bodies; the MAIL refusal lacks its recipients; the
        // relay-control refusal is decided before data and stays.
        XCTAssertEqual(report["not_evaluable"] as? Int, 6, result.stdout)
        XCTAssertEqual(report["unchanged"] as? Int, 1, result.stdout)
        XCTAssertEqual((report["not_evaluable_reasons"] as? [String: Int])?[
            "a content rule reads more of the message than the record keeps (Subject, Message-ID)"], 5, result.stdout)
    }

    func testSampledMessagesLetReplayRunTheCandidatesContentRules() throws {
        let samples = workDir.appendingPathComponent("samples")
        let live = try startLive("samples: { directory: \(samples.path), fraction: 1, max_size: 4KB }")
        let spam = try runSwaks(port: live.postern.port, ["--from", "s@good.example", "--to", "alice@example.test", "--body", "buy viagra today"])
        XCTAssertTrue(spam.stdout.contains("250 2.0.0"), spam.description)
        let ham = try runSwaks(port: live.postern.port, ["--from", "h@good.example", "--to", "alice@example.test", "--body", "lunch at noon?"])
        XCTAssertTrue(ham.stdout.contains("250 2.0.0"), ham.description)
        let large = try runSwaks(port: live.postern.port, ["--from", "l@good.example", "--to", "alice@example.test",
                                                          "--body", String(repeating: "viagra and more words\r\n", count: 300)])
        XCTAssertTrue(large.stdout.contains("250 2.0.0"), large.description)
        let refused = try runSwaks(port: live.postern.port, ["--from", "b@bad.example", "--to", "alice@example.test"])
        XCTAssertTrue(refused.stdout.contains("550"), refused.description)
        let records = waitForRecords(live.decisionLog, count: 4)
        let id = { (sender: String) in records.first { $0["mail_from"] as? String == sender }?["id"] as? String ?? "?" }

        // Kept after the decision, in the record's day, readable by the owner only; the
        // message over max_size and the one refused at MAIL are not kept.
        var files: [String] = []
        XCTAssertTrue(waitUntil(timeout: 10) {
            files = (FileManager.default.enumerator(atPath: samples.path)?.allObjects as? [String] ?? []).filter { $0.hasSuffix(".eml") }
            return files.count == 2
        }, "samples: \(files)")
        let day = String((records.first?["ts"] as? String ?? "").prefix(10))
        XCTAssertEqual(Set(files), ["\(day)/\(id("s@good.example")).eml", "\(day)/\(id("h@good.example")).eml"])
        let spamSample = samples.appendingPathComponent("\(day)/\(id("s@good.example")).eml")
        let text = try String(contentsOf: spamSample, encoding: .utf8)
        XCTAssertTrue(text.hasPrefix("X-Postern-Sample: id=\(id("s@good.example")); decision=accepted; received="), text)
        XCTAssertTrue(text.contains("withheld=none\r\n"), text)
        XCTAssertTrue(text.contains("\r\n\r\nbuy viagra today\r\n"), text)
        let mode = try FileManager.default.attributesOfItem(atPath: spamSample.path)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)
        let metrics = try Metrics.scrape(port: live.metricsPort)
        XCTAssertEqual(Metrics.value(metrics, "postern_samples_total", ["result": "written"]), 2, metrics)
        XCTAssertEqual(Metrics.value(metrics, "postern_samples_total", ["result": "too_large"]), 1, metrics)

        // The candidate's body rule reads the samples (the configuration's samples.directory):
        // the spam it would refuse, the ham it would not; the unsampled large message stays
        // not evaluable.
        let candidate = try writeConfig(Self.bodyCandidate, name: "content.yaml")
        let result = try replay(["--policy", candidate.path, "--json", live.decisionLog.path], config: live.config)
        XCTAssertEqual(result.status, 0, result.description)
        let report = json(result)
        XCTAssertEqual(report["sampled"] as? Int, 2, result.stdout)
        XCTAssertEqual(report["changed"] as? Int, 1, result.stdout)
        XCTAssertEqual(report["unchanged"] as? Int, 1, result.stdout)
        // The large message (not sampled), and b@bad.example's MAIL (its recipients are not in the log).
        XCTAssertEqual(report["not_evaluable"] as? Int, 2, result.stdout)
        XCTAssertEqual(report["by_change"] as? [String: Int], ["accepted->rejected": 1], result.stdout)
        let changes = (report["changes"] as? [[String: Any]] ?? []).map { "\($0["id"] ?? "") \($0["was"] ?? "")->\($0["now"] ?? "")" }
        XCTAssertTrue(changes.contains("\(id("s@good.example")) accepted->rejected"), result.stdout)

        // Without the samples, the body rule cannot be decided.
        let without = try replay(["--policy", candidate.path, "--json", "--samples", "none", live.decisionLog.path], config: live.config)
        XCTAssertEqual(json(without)["sampled"] as? Int, 0, without.stdout)
        XCTAssertEqual((json(without)["not_evaluable_reasons"] as? [String: Int])?[
            "a content rule reads more of the message than the record keeps (Subject, Message-ID)"], 3, without.stdout)
        let missing = try replay(["--policy", candidate.path, "--samples", workDir.appendingPathComponent("none-here").path, live.decisionLog.path],
                                 config: live.config)
        XCTAssertEqual(missing.status, 2, missing.description)
        XCTAssertTrue(missing.stderr.contains("none-here: no such directory"), missing.stderr)
    }

    func testBadArgumentsPoliciesAndLogsExitWithStatusTwo() throws {
        let config = try writeConfig("upstreams: [{ url: \"maildir:/nonexistent\" }]\n", name: "postern.yaml")
        let candidate = try writeConfig(Self.candidatePolicy, name: "candidate.yaml")
        let broken = try writeConfig("version: 1\nrules:\n  - id: x\n    stage: nowhere\n    then: reject\n", name: "broken.yaml")

        let noPolicy = try replay([workDir.appendingPathComponent("x.log").path], config: config)
        XCTAssertEqual(noPolicy.status, 2, noPolicy.description)
        XCTAssertTrue(noPolicy.stderr.contains("replay: needs --policy CANDIDATE.yaml"), noPolicy.stderr)

        let badPolicy = try replay(["--policy", broken.path, workDir.appendingPathComponent("x.log").path], config: config)
        XCTAssertEqual(badPolicy.status, 2, badPolicy.description)
        XCTAssertTrue(badPolicy.stderr.contains("broken.yaml:4:"), badPolicy.stderr)

        let missing = try replay(["--policy", candidate.path, workDir.appendingPathComponent("nothing.log").path], config: config)
        XCTAssertEqual(missing.status, 2, missing.description)
        XCTAssertTrue(missing.stderr.contains("nothing.log: no such file"), missing.stderr)

        let directory = try replay(["--policy", candidate.path, workDir.path], config: config)
        XCTAssertEqual(directory.status, 2, directory.description)
        XCTAssertTrue(directory.stderr.contains("cannot read \(workDir.path): a directory"), directory.stderr)

        let badTime = try replay(["--policy", candidate.path, "--until", "yesterday", workDir.appendingPathComponent("x.log").path], config: config)
        XCTAssertEqual(badTime.status, 2, badTime.description)
        XCTAssertTrue(badTime.stderr.contains("--until 'yesterday' is neither a duration"), badTime.stderr)

        let noLog = try replay(["--policy", candidate.path], config: config)
        XCTAssertEqual(noLog.status, 2, noLog.description)
        XCTAssertTrue(noLog.stderr.contains("no decision log given"), noLog.stderr)

        let badLimit = try replay(["--policy", candidate.path, "--limit=many", "x.log"], config: config)
        XCTAssertEqual(badLimit.status, 2, badLimit.description)
        XCTAssertTrue(badLimit.stderr.contains("--limit 'many' is not a number of examples"), badLimit.stderr)
    }
}
