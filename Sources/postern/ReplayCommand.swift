import ArgumentParser
import Foundation
import PosternFilters
import PosternLog
import PosternPolicy
import PosternServer

extension Postern {
    /// `postern replay`: yesterday's mail against a candidate policy, offline.
    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replay logged transactions against a candidate policy and show what it would have decided differently (offline).",
            discussion: """
                Reads decision logs (default: the configuration's decision_log and its rotated files beside it, .gz \
                included), rebuilds each transaction from its record and walks it through the candidate policy as \
                serve does, relay control from --config first. Rate limits are replayed in time order on the records' \
                clock, in memory (a configured Redis is never touched). What a record does not hold is not guessed: \
                a content rule that needs more of the message than its Subject and Message-ID, or a transaction the \
                logged policy refused before it was complete, counts as not evaluable. With a sample store \
                (the configuration's samples.directory, or --samples), a sampled transaction is replayed with its \
                message, and the content rules read it (except what the sample's privacy treatment withheld). \
                Exit status: 0 when it ran (whatever changed); 2 for bad arguments, policy errors or unreadable logs. \
                A malformed line is skipped, counted and named (file:line) on standard error.
                """)

        @Option(name: .customLong("policy"), help: ArgumentHelp("The candidate policy file (YAML). Required.", valueName: "path"))
        var policy: String?

        @Option(name: .shortAndLong, help: ArgumentHelp("The configuration whose relay_domains, trusted_networks and decision_log apply (default: the bundled configuration).", valueName: "file"))
        var config: String?

        @Option(help: ArgumentHelp("Only records since then: 24h, 30m, 7d, or an RFC 3339 time.", valueName: "when"))
        var since: String?

        @Option(help: ArgumentHelp("Only records before then: a duration ago (2h) or an RFC 3339 time.", valueName: "when"))
        var until: String?

        @Option(help: ArgumentHelp("The sample store's directory (default: the configuration's samples.directory; 'none': read no samples).", valueName: "dir"))
        var samples: String?

        @Flag(help: "Print one JSON object (records, replayed, changed, not_evaluable, by_change, by_rule, changes).")
        var json = false

        @Option(help: ArgumentHelp("Examples shown per kind of change (0: all). Default 10.", valueName: "n"))
        var limit: String?

        @Argument(help: ArgumentHelp("Decision logs to read (default: the configured one and its rotated files).", valueName: "decisions.log"))
        var logs: [String] = []

        func run() async throws {
            func fail(_ message: String) -> ExitCode {
                FileHandle.standardError.write(Data("replay: \(message)\n".utf8))
                return ExitCode(2)
            }
            guard let policyPath = policy else { throw fail("needs --policy CANDIDATE.yaml") }
            guard let examples = limit.map({ Int($0) }) ?? 10, examples >= 0 else {
                throw fail("--limit '\(limit ?? "")' is not a number of examples (0 or more; 0 keeps all)")
            }
            let configuration: PosternConfiguration
            do {
                configuration = try ConfigurationLoader.load(fileOrBundled: config)
            } catch {
                throw fail("\(error)")
            }
            var window: (since: Int64?, until: Int64?) = (nil, nil)
            do {
                window.since = try since.map { try DecisionRecordFilter.parseSince($0) }
                window.until = try until.map { try DecisionRecordFilter.parseSince($0, option: "--until") }
            } catch {
                throw fail("\(error)")
            }
            let clock = ManualRateLimitClock()
            let candidate: Policy
            do {
                let store = InMemoryRateLimitStore(maximumKeys: 10_000_000, clock: clock)
                candidate = try BuiltinFilters.compiler(rateLimitStore: store).compile(path: policyPath)
            } catch {
                throw fail("\(error)")
            }
            let paths: [String]
            if !logs.isEmpty {
                paths = logs
            } else if let configured = configuration.decisionLog, configured != "-" {
                paths = PolicyReplayRun.logFiles(rotatedFrom: configured)
            } else {
                throw fail("no decision log given, and the configuration has no decision_log file")
            }
            var report = PolicyReplayRun.Report()
            let records: [LoggedDecision]
            do {
                records = try await PolicyReplayRun.read(paths, into: &report)
            } catch {
                throw fail("\(error)")
            }
            for line in report.malformed.prefix(20) { FileHandle.standardError.write(Data("replay: skipped \(line)\n".utf8)) }
            if report.malformed.count > 20 {
                FileHandle.standardError.write(Data("replay: skipped \(report.malformed.count - 20) more malformed lines\n".utf8))
            }
            let run = PolicyReplayRun(policy: candidate, relayControl: RelayControl(relayDomains: configuration.relayDomains,
                                                                                 trustedNetworks: configuration.trustedNetworks),
                                      clock: clock, since: window.since, until: window.until, examples: examples,
                                      samples: samples == "none" ? nil : samples ?? configuration.samples?.directory)
            if let directory = run.samples, !FileManager.default.fileExists(atPath: directory) {
                // Named on the command line: a mistake. Configured: serve has not kept a sample yet.
                if samples != nil { throw fail("--samples \(directory): no such directory") }
                FileHandle.standardError.write(Data("replay: the sample store \(directory) does not exist yet; replaying without samples\n".utf8))
            }
            await run.run(records, report: &report)
            for line in report.unreadableSamples.prefix(20) { FileHandle.standardError.write(Data("replay: sample skipped: \(line)\n".utf8)) }
            print(json ? report.json(policy: policyPath, version: candidate.version) : report.text(policy: policyPath, version: candidate.version))
        }
    }
}
