import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternEngines
import PosternFilters
import PosternMIME
import PosternNative
import PosternPolicy
import PosternServer
import SMTPCore
import Synchronization

extension Postern {
    /// `postern explain`: evaluates a policy offline (no server, no network) for one made-up
    /// session, with the walk a real session drives (relay control from the configuration
    /// first at RCPT), and prints every rule with what it did and why.
    struct Explain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show, rule by rule, how the policy would decide a transaction (offline).",
            discussion: """
                Walks the stages as a session does: connect; helo (with --helo); mail (with --from); \
                rcpt once per --to, relay control first (relay_domains and trusted_networks of --config); \
                data (with a message file). Stops where a session would stop. \
                Exit status: 0 accepted, 1 refused (rejected, tempfailed, discarded), 2 bad arguments \
                or policy errors.
                """)

        @Option(name: .customLong("policy"), help: ArgumentHelp("The policy file (YAML); default: the configuration's policy.", valueName: "path"))
        var policy: String?

        @Option(name: .shortAndLong, help: ArgumentHelp("The configuration whose relay_domains, trusted_networks and policy apply (default: the bundled configuration).", valueName: "file"))
        var config: String?

        @Option(name: .customLong("client-ip"), help: ArgumentHelp("The client's IP address. Required.", valueName: "ip"))
        var clientIP: String?

        @Option(help: ArgumentHelp("The EHLO/HELO name.", valueName: "name"))
        var helo: String?

        @Option(help: ArgumentHelp("The envelope sender (MAIL FROM); '<>' is the null sender.", valueName: "address"))
        var from: String?

        @Option(help: ArgumentHelp("An envelope recipient (RCPT TO); repeat for several.", valueName: "address"))
        var to: [String] = []

        @Option(name: .customLong("auth-user"), help: ArgumentHelp("The authenticated (SASL) user.", valueName: "user"))
        var authUser: String?

        @Flag(help: "The session is under STARTTLS.")
        var tls = false

        @Argument(help: ArgumentHelp("The message (RFC 5322, e.g. a .eml file) for data-stage rules.", valueName: "message.eml"))
        var message: String?

        @Flag(name: .customLong("engines"), help: "Also ask the configuration's policy servers and milters (they see a made-up session) and show each answer.")
        var engines = false

        func run() async throws {
            let (compiled, policyPath, relayControl, prepared, configuration): (Policy, String, RelayControl, SessionExplanation.Input, PosternConfiguration)
            do {
                (compiled, policyPath, relayControl, prepared, configuration) = try prepare()
            } catch let error as InvalidConfiguration {
                FileHandle.standardError.write(Data("\(error.message)\n".utf8))
                throw ExitCode(2)
            }
            var checks: [any StageCheck] = []
            var milters: [MilterCheck] = []
            var services: [PolicyServiceClient] = []
            // DNS, as `serve` does it, when the configuration has a resolver: every answer is shown.
            var input = prepared
            var nameLines: [String] = []
            var resolver: DNSResolver?
            var spfCheck: SPFCheck?
            let seen = Mutex<[String]>([])
            let spf = Mutex<String?>(nil)
            if let dns = configuration.dns {
                do {
                    resolver = try DNSResolver(dns.resolver, observer: { event in
                        seen.withLock { $0.append("dns: \(event.type) \(event.name) -> \(event.summary)\(event.cached ? " (cached)" : "")") }
                    })
                } catch {
                    FileHandle.standardError.write(Data("dns: \(error)\n".utf8))
                    throw ExitCode(2)
                }
                if let resolver {
                    let quiet = Logger(label: "postern.explain", factory: { _ in SwiftLogNoOpLogHandler() })
                    // Every list at once: the client's, and the domain lists for --helo and --from.
                    var senderDomain: String?
                    if case .mailbox(let mailbox)? = input.sender { senderDomain = mailbox.domain.description }
                    let client = input.client
                    let lookup = DNSListLookup(lists: compiled.dnsLists, client: client, helo: input.helo, senderDomain: senderDomain)
                    async let name = dns.verifyClientNames ? ClientNameVerifier(resolver: resolver, timeout: dns.resolver.timeout).verify(client) : nil
                    async let listed = DNSListChecker(resolver: resolver, logger: quiet).check(lookup)
                    input.clientName = await name
                    input.dnsLists = await listed
                    if dns.spf {
                        // The walk runs it at MAIL, once; what it found is printed with the DNS answers.
                        // A walk that ends before MAIL runs it after (below).
                        spfCheck = SPFCheck(evaluator: SPFEvaluator(resolver: resolver), authservID: dns.authservID ?? configuration.hostname,
                                               lookupTimeout: dns.resolver.timeout, observe: { finding in
                            spf.withLock { $0 = "spf: \(finding.effects.result ?? "temperror") (\(finding.detail.drop { $0 != ":" }.dropFirst(2)))" }
                        })
                        checks.append(spfCheck!)
                    }
                    if let name = input.clientName { nameLines.append("client name: \(name)") }
                    for list in input.dnsLists {
                        switch list.outcome {
                        case .listed(let codes):
                            let text = codes.map { DNSList.Returns(low: $0, high: $0).description }.joined(separator: ", ")
                            nameLines.append("dnsbl \(list.list): listed \(text) (weight \(list.weight.scoreText))")
                        case .error(let detail): nameLines.append("dnsbl \(list.list): error: \(detail)")
                        case .notListed, .skipped: break
                        }
                    }
                }
            }
            if engines {
                let quiet = Logger(label: "postern.explain", factory: { _ in SwiftLogNoOpLogHandler() })
                services = configuration.policyServices.map { PolicyServiceClient(configuration: $0, group: MultiThreadedEventLoopGroup.singleton, logger: quiet) }
                milters = configuration.milters.map {
                    MilterFilter(configuration: $0, hostname: configuration.hostname, group: MultiThreadedEventLoopGroup.singleton, logger: quiet).session()
                }
                checks += services.map { PolicyServiceCheck(client: $0) } + milters.map { $0 as any StageCheck }
            }
            let explanation = await SessionExplanation.explain(compiled, relayControl: relayControl, input: input, checks: checks,
                                                               message: engines ? messageDraft(input) : nil)
            if let spfCheck, input.sender != nil, spf.withLock({ $0 == nil }) {
                var facts = TransactionFacts(transactionID: "explain", clientAddress: input.client, clientPort: 0, helo: input.helo,
                                             tls: input.tls, authUser: input.authUser, recipients: input.recipients)
                facts.sender = input.sender
                _ = try? await spfCheck.check(.mail, facts: facts)
            }
            for milter in milters { await milter.close() }
            for service in services { service.close() }
            var report = explanation.report(policyPath: policyPath, policy: compiled)
            let dnsLines = seen.withLock { $0 } + (spf.withLock { $0 }.map { [$0] } ?? []) + nameLines
            report.insert(contentsOf: dnsLines, at: min(1, report.count))
            resolver?.shutdown()
            print(report.joined(separator: "\n"))
            if explanation.refused { throw ExitCode(1) }
        }

        /// Checks the arguments, loads the configuration, compiles the policy, reads the message.
        private func prepare() throws -> (Policy, String, RelayControl, SessionExplanation.Input, PosternConfiguration) {
            let configuration: PosternConfiguration
            do {
                configuration = try ConfigurationLoader.load(fileOrBundled: config)
            } catch {
                throw InvalidConfiguration(message: error.description)
            }
            guard let policyPath = policy ?? configuration.policy else {
                throw InvalidConfiguration(message: "explain needs --policy PATH (or a configuration with policy:)")
            }
            guard let clientText = clientIP else { throw InvalidConfiguration(message: "explain needs --client-ip IP") }
            let trimmed = clientText.hasPrefix("[") && clientText.hasSuffix("]") ? String(clientText.dropFirst().dropLast()) : clientText
            guard let address = IPAddress(trimmed) else {
                throw InvalidConfiguration(message: "--client-ip '\(clientText)' is not an IP address (e.g. 192.0.2.10 or 2001:db8::10)")
            }
            if let helo, helo.isEmpty || helo.contains(where: { $0.isWhitespace }) {
                throw InvalidConfiguration(message: "--helo '\(helo)' is not a HELO name (one word, e.g. mail.example.org or [192.0.2.10])")
            }
            let sender = try from.map(Self.reversePath)
            let recipients = try to.map(Self.forwardPath)
            var messageInput: (size: Int, parsed: any PolicyMessage)?
            if let message {
                guard let data = FileManager.default.contents(atPath: message) else {
                    throw InvalidConfiguration(message: "cannot read the message file \(message)")
                }
                messageInput = (data.count, MIMEMessage.parse(Self.crlf(data.prefix(Self.contentScanLimit))))
            }
            let compiled: Policy
            do {
                compiled = try BuiltinFilters.compiler.compile(path: policyPath)
            } catch {
                throw InvalidConfiguration(message: error.description)
            }
            let relayControl = RelayControl(relayDomains: configuration.relayDomains, trustedNetworks: configuration.trustedNetworks)
            let input = SessionExplanation.Input(
                client: address, helo: helo, sender: sender, recipients: recipients, authUser: authUser, tls: tls, message: messageInput)
            return (compiled, policyPath, relayControl, input, configuration)
        }

        /// The message file as the milters see it at data.
        private func messageDraft(_ input: SessionExplanation.Input) -> MessageDraft? {
            guard let message, let data = FileManager.default.contents(atPath: message) else { return nil }
            let bytes = Self.crlf(data)
            let (fields, length) = MessageDraft.parseHeaderSection(bytes) ?? (MessageDraft.parseHeaderSection(bytes + [0x0D, 0x0A, 0x0D, 0x0A])
                .map { ($0.fields, min($0.length, bytes.count)) } ?? ([], 0))
            return MessageDraft(fields: fields, body: .replaced(ByteBuffer(bytes: bytes[length...])), sender: input.sender ?? .null,
                                recipients: input.recipients)
        }

        /// As much of a message as a session's content rules look at.
        static var contentScanLimit: Int { Policy.contentScanLimit }

        /// The message with CRLF line ends, as a session hands it to the policy.
        static func crlf(_ bytes: Data) -> [UInt8] {
            var out: [UInt8] = []
            out.reserveCapacity(bytes.count + bytes.count / 32)
            var previous: UInt8 = 0
            for byte in bytes {
                if byte == 0x0A && previous != 0x0D { out.append(0x0D) }
                out.append(byte)
                previous = byte
            }
            return out
        }

        static func reversePath(_ text: String) throws -> ReversePath {
            guard let path = ReversePath(text: text) else {
                throw InvalidConfiguration(message: "--from '\(text)' is not an address (local@domain, or '<>' for the null sender)")
            }
            return path
        }

        static func forwardPath(_ text: String) throws -> ForwardPath {
            guard let path = ForwardPath(text: text) else {
                throw InvalidConfiguration(message: "--to '\(text)' is not an address (local@domain or postmaster)")
            }
            return path
        }
    }
}
