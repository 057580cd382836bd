import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternEngines
import PosternFilters
import PosternNative
import PosternPolicy
import PosternServer
import PosternUpstream
import ServiceLifecycle

/// The entry point. Swift concurrency runs on NIO's event loops, so a session awaiting a
/// channel future resumes on the loop that completed it, with no thread hop between them.
@main
enum PosternMain {
    static func main() {
        NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        Task {
            await Postern.main()
            exit(0)
        }
        dispatchMain()
    }
}

struct Postern: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "postern",
        abstract: "An SMTP policy gateway in front of an existing MTA.",
        version: PosternVersion.current,
        subcommands: [Serve.self, Check.self, Explain.self, Replay.self, Tail.self, Version.self]
    )
}

enum PosternVersion {
    static let current = "0.1.0"
}

/// Options shared by `serve` and `check`.
struct ConfigurationOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The YAML configuration file (default: the bundled configuration).")
    var config: String?

    @Option(name: .customLong("listen"), help: ArgumentHelp("Listen on HOST:PORT; repeat for several. Replaces the configured listeners.", valueName: "host:port"))
    var listen: [String] = []

    @Option(name: .customLong("upstream"), help: ArgumentHelp("Relay to URL (smtp://HOST:PORT or maildir:PATH); repeat for failover order. Replaces the configured upstreams.", valueName: "url"))
    var upstream: [String] = []

    @Option(help: "The name in the greeting, EHLO reply and Received headers.")
    var hostname: String?

    @Option(name: .customLong("decision-log"), help: ArgumentHelp("Write decision records (JSON lines) to PATH; - for standard output.", valueName: "path"))
    var decisionLog: String?

    @Option(name: .customLong("policy"), help: ArgumentHelp("The policy file (YAML).", valueName: "path"))
    var policy: String?

    @Option(name: .customLong("metrics"), help: ArgumentHelp("Serve /metrics, /healthz and /readyz on HOST:PORT.", valueName: "host:port"))
    var metrics: String?

    /// The configuration file with the command-line overrides applied.
    func load() throws -> PosternConfiguration {
        var configuration: PosternConfiguration
        do {
            configuration = try ConfigurationLoader.load(fileOrBundled: config)
        } catch {
            throw InvalidConfiguration(message: error.description)
        }
        if !listen.isEmpty {
            configuration.listeners = try listen.map { text in
                guard let listener = PosternConfiguration.Listener(address: text) else {
                    throw InvalidConfiguration(message: "--listen \(text): expected HOST:PORT")
                }
                return listener
            }
        }
        if !upstream.isEmpty {
            configuration.upstreams = try upstream.map { text in
                guard let target = UpstreamTarget(url: text) else {
                    throw InvalidConfiguration(message: "--upstream \(text): expected smtp://HOST[:PORT] or maildir:PATH")
                }
                return UpstreamConfiguration(target: target)
            }
        }
        if let hostname { configuration.hostname = hostname }
        if let decisionLog { configuration.decisionLog = decisionLog }
        if let policy { configuration.policy = policy }
        if let metrics {
            guard let address = PosternConfiguration.Listener(address: metrics) else {
                throw InvalidConfiguration(message: "--metrics \(metrics): expected HOST:PORT")
            }
            configuration.metrics = address
        }
        // The overrides are part of what runs: mixed into the version.
        let overrides = listen.map { "--listen \($0)" } + upstream.map { "--upstream \($0)" } + [
            hostname.map { "--hostname \($0)" }, decisionLog.map { "--decision-log \($0)" }, policy.map { "--policy \($0)" },
            metrics.map { "--metrics \($0)" },
        ].compactMap { $0 }
        if !overrides.isEmpty {
            configuration.version = PosternConfiguration.version(of: ([configuration.version ?? ""] + overrides).joined(separator: "\n"))
        }
        return configuration
    }
}

/// Configuration errors: printed as they are (`file:line:column: message`), exit code 2.
struct InvalidConfiguration: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

extension Postern {
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Accept SMTP sessions and relay accepted mail to the upstream.")

        @OptionGroup var options: ConfigurationOptions

        func run() async throws {
            let configuration: PosternConfiguration
            do {
                configuration = try options.load()
            } catch let error as InvalidConfiguration {
                FileHandle.standardError.write(Data("\(error.message)\n".utf8))
                throw ExitCode(2)
            }
            // One level for every logger, so a reload can change it.
            let level = LogLevelSetting(configuration.logLevel)
            let format = PosternLogHandler.Format(rawValue: configuration.logFormat) ?? .logfmt
            LoggingSystem.bootstrap { label in PosternLogHandler(label: label, format: format, level: level) }
            let logger = Logger(label: "postern")
            let server: PosternServer
            do {
                // SIGHUP reads the same file with the same command-line overrides.
                server = try PosternServer(configuration: configuration, logger: logger, version: PosternVersion.current,
                                           configurationSource: { [options] in try options.load() }, configurationFile: options.config,
                                           logLevel: level)
            } catch {
                logger.critical("cannot start: \(error)")
                throw ExitCode(1)
            }
            let group = ServiceGroup(
                configuration: .init(
                    services: [.init(service: server)],
                    gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger))
            do {
                try await group.run()
            } catch {
                logger.critical("stopped with an error: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate the configuration; exit 0 when valid, 2 with every error otherwise.")

        @OptionGroup var options: ConfigurationOptions

        @Flag(name: .customLong("engines"), help: "Also connect to each policy server (start each spawned one) and negotiate with each milter, and report what each offers; exit 1 when one cannot be reached.")
        var engines = false

        func run() async throws {
            do {
                let configuration = try options.load()
                // The checks `serve` makes before it binds (TLS key pair, maildirs, the policy,
                // the quarantine requirement, the decision log), creating nothing.
                let prepared: ServerPreparation
                do {
                    prepared = try ServerPreparation.validate(
                        configuration, createDirectories: false,
                        logger: Logger(label: "postern.check", factory: { _ in SwiftLogNoOpLogHandler() }),
                        metrics: PosternMetrics(version: PosternVersion.current))
                } catch {
                    throw InvalidConfiguration(message: error.description)
                }
                let services = configuration.policyServices.isEmpty ? "" : ", \(configuration.policyServices.count) policy service(s)"
                let milters = configuration.milters.isEmpty ? "" : ", \(configuration.milters.count) milter(s)"
                print("configuration OK: \(configuration.listeners.count) listener(s), \(configuration.upstreams.count) upstream(s)\(services)\(milters)")
                if let path = configuration.policy {
                    let policy = prepared.policy.policy
                    print("policy OK: \(path), \(policy.rules.count) rule(s), version \(policy.version)")
                    for line in Self.contentEngines(policy) { print(line) }
                }
                // A Postern running with this status endpoint: what a reload (SIGHUP) would change.
                if let status = configuration.metrics, !Self.showPendingReload(status: status, file: options.config) {
                    throw ExitCode(1)
                }
                if engines {
                    var unreachable = 0
                    for service in configuration.policyServices {
                        let client = PolicyServiceClient(configuration: service, group: MultiThreadedEventLoopGroup.singleton,
                                                         logger: Logger(label: "postern.check", factory: { _ in SwiftLogNoOpLogHandler() }))
                        do {
                            try await client.probe()
                            print("policy service \(service.name) (\(service.address)): reachable")
                        } catch {
                            unreachable += 1
                            FileHandle.standardError.write(Data("policy service \(service.name) (\(service.address)): \(error.detail)\n".utf8))
                        }
                    }
                    for milter in configuration.milters {
                        let filter = MilterFilter(configuration: milter, hostname: configuration.hostname, group: MultiThreadedEventLoopGroup.singleton,
                                                  logger: Logger(label: "postern.check", factory: { _ in SwiftLogNoOpLogHandler() }))
                        do {
                            let offer = try await filter.probe()
                            print("milter \(milter.name) (\(milter.address)): \(MilterFilter.describe(offer))")
                        } catch {
                            unreachable += 1
                            FileHandle.standardError.write(Data("milter \(milter.name) (\(milter.address)): \(error.detail)\n".utf8))
                        }
                    }
                    if let dns = configuration.dns {
                        let (answering, failing) = await Self.probe(dns.resolver)
                        for line in answering { print(line) }
                        for line in failing { FileHandle.standardError.write(Data("\(line)\n".utf8)) }
                        unreachable += failing.count
                    }
                    if unreachable > 0 { throw ExitCode(1) }
                }
            } catch let error as InvalidConfiguration {
                FileHandle.standardError.write(Data("\(error.message)\n".utf8))
                throw ExitCode(2)
            }
        }

        /// Asks the Postern serving `status` (`/api/configuration`) what a reload would change
        /// and prints it; false when that Postern would refuse the reload. Nothing answering
        /// there is not an error: there is nothing to compare with.
        static func showPendingReload(status: PosternConfiguration.Listener, file: String?) -> Bool {
            let body: [UInt8]
            do {
                body = try StatusQuery.get(host: status.host, port: status.port, path: "/api/configuration")
            } catch {
                print("no running Postern answers at \(status.description) (\(error)): no configuration in force to compare with")
                return true
            }
            guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
                print("the Postern at \(status.description) did not say what a reload would change")
                return true
            }
            let running = (object["config_file"] as? String).map { URL(fileURLWithPath: $0).standardizedFileURL.resolvingSymlinksInPath().path }
            let checked = file.map { URL(fileURLWithPath: $0).standardizedFileURL.resolvingSymlinksInPath().path }
            if let running, running != checked {
                print("the Postern at \(status.description) reads \(running), not this file: not compared")
                return true
            }
            if let error = object["error"] as? String {
                FileHandle.standardError.write(Data("the Postern at \(status.description) would not reload this configuration: \(error)\n".utf8))
                return false
            }
            let apply = object["apply"] as? [String] ?? [], restart = object["restart"] as? [String] ?? []
            let versions = "(in force \(object["in_force"] as? String ?? "?"), this file \(object["file"] as? String ?? "?"))"
            if apply.isEmpty && restart.isEmpty {
                print("reload: the Postern at \(status.description) runs this configuration already \(versions)")
                return true
            }
            if !apply.isEmpty { print("reload: the Postern at \(status.description) would apply \(apply.joined(separator: ", ")) \(versions)") }
            if !restart.isEmpty { print("reload: these changes need a restart: \(restart.joined(separator: ", "))") }
            return true
        }

        /// How the policy's content patterns are matched: how many body and raw patterns go
        /// through the one-pass Hyperscan scan, and each one matched by PCRE2 alone, and why.
        static func contentEngines(_ policy: Policy) -> [String] {
            let patterns = policy.rules.flatMap { rule in rule.condition.patternEngines.map { (rule.id, $0.pattern, $0.engine) } }
            guard !patterns.isEmpty else { return [] }
            let prefiltered = patterns.filter { $0.2 == .prefiltered }.count
            let counted = patterns.filter { if case .runCount = $0.2 { true } else { false } }.count
            var lines = ["content patterns: \(patterns.count), \(prefiltered) in one Hyperscan pass per message (PCRE2 confirms a hit), "
                         + (counted > 0 ? "\(counted) by a count of character runs (PCRE2 confirms a run), " : "")
                         + "\(patterns.count - prefiltered - counted) with PCRE2 alone"]
            for (rule, pattern, engine) in patterns {
                switch engine {
                case .pcre2(let why): lines.append("  rule \(rule): \(pattern) with PCRE2 alone: \(why)")
                case .runCount(let minimum): lines.append("  rule \(rule): \(pattern) by a count of runs (\(minimum) in a row)")
                case .prefiltered, .shortValues: break
                }
            }
            return lines
        }

        /// Asks each DNS server on its own (the root's NS records, which any recursive server
        /// answers; with `dnssec: validate`, validated): a line per server that answered, and
        /// one per server that did not (timeout, SERVFAIL, a failed validation).
        static func probe(_ configuration: DNSResolver.Configuration) async -> (answering: [String], failing: [String]) {
            let servers = configuration.servers.isEmpty ? [nil] : configuration.servers.map { Optional($0) }
            var answering: [String] = [], failing: [String] = []
            for server in servers {
                var single = configuration
                single.servers = server.map { [$0] } ?? []
                let label = "dns server " + (server ?? "of \(configuration.resolvConf)")
                let resolver: DNSResolver
                do { resolver = try DNSResolver(single) } catch {
                    failing.append("\(label): \(error)")
                    continue
                }
                let started = ContinuousClock.now
                let result = await resolver.lookup(".", .ns)
                let elapsed = (ContinuousClock.now - started).components
                resolver.shutdown()
                let milliseconds = elapsed.seconds * 1_000 + elapsed.attoseconds / 1_000_000_000_000_000
                switch result {
                case .success(let answer):
                    let what = answer.status == .records ? "\(answer.records.count) NS record(s) for the root" : answer.status.rawValue
                    answering.append("\(label): answers (\(what)\(answer.secure ? ", validated" : ""), \(milliseconds) ms)")
                case .failure(let error):
                    failing.append("\(label): \(error)")
                }
            }
            return (answering, failing)
        }
    }

    struct Version: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the version.")

        func run() {
            print("postern \(PosternVersion.current)")
        }
    }
}
