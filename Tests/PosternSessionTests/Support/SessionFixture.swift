import NIOCore
import PosternFilters
import PosternLog
import PosternMIME
import PosternPolicy
import PosternSession
import SMTPCore
import XCTest

/// Building blocks for transcript tests: a configuration with the server's defaults, policies
/// compiled from YAML with the built-in filters, responders that run the real policy engine
/// and the real MIME parser.
enum SessionFixture {
    static let client = ClientEndpoint(address: IPAddress("192.0.2.10")!, port: 40_000)
    static let loopback = ClientEndpoint(address: IPAddress("127.0.0.1")!, port: 40_001)

    /// The session settings of a default configuration (hostname `mx.test`), adjusted.
    static func configuration(
        proxyProtocol: Bool = false, relayDomains: [String] = ["example.org"],
        trusted: [String] = ["127.0.0.0/8", "::1/128"], _ adjust: (inout Settings) -> Void = { _ in }
    ) -> SessionConfiguration {
        var settings = Settings()
        adjust(&settings)
        return SessionConfiguration(
            server: settings.server, timeouts: settings.timeouts, bareLineEndings: settings.bareLineEndings,
            minimumDataRate: settings.minimumDataRate, dataRateGrace: settings.dataRateGrace, proxyProtocol: proxyProtocol,
            proxyTrustedNetworks: [IPNetwork("127.0.0.0/8")!, IPNetwork("::1/128")!],
            relayControl: RelayControl(relayDomains: relayDomains, trustedNetworks: trusted.compactMap(IPNetwork.init)),
            authFailureDelay: settings.authFailureDelay, forbidImproperPipelining: settings.forbidImproperPipelining)
    }

    struct Settings {
        var server = SMTPServerConfiguration(hostname: "mx.test")
        var timeouts = SessionTimeouts()
        var bareLineEndings: SMTPInputFramer.BareLineEndingPolicy = .reject
        var minimumDataRate = 0
        var dataRateGrace: TimeAmount = .seconds(30)
        var authFailureDelay: TimeAmount = .seconds(1)
        var forbidImproperPipelining = true
    }

    static func policy(_ yaml: String, file: StaticString = #filePath, line: UInt = #line) -> Policy {
        do {
            return try BuiltinFilters.compiler.compile(yaml: yaml, file: "policy.yaml")
        } catch {
            XCTFail("policy does not compile: \(error)", file: file, line: line)
            return .empty
        }
    }

    /// Responders whose policy is `policy` evaluated for real, and whose store parses the
    /// message as the server does.
    static func responders(_ policy: Policy, checks: [any StageCheck] = []) -> SessionSimulator.Responders {
        var responders = SessionSimulator.Responders()
        let pipeline = StagePipeline(policy: policy, checks: checks)
        responders.evaluate = { request in await pipeline.evaluate(request.stage, facts: request.facts) }
        responders.store = { content, parse, headers in
            .success(StoredMessage(size: content.count, parsed: parse ? MIMEMessage.parse(content, headerSection: headers) : nil))
        }
        return responders
    }

    /// A simulator, connected and greeted (EHLO unless `hello` is nil).
    static func session(
        _ configuration: SessionConfiguration = configuration(), policy: Policy = .empty, peer: ClientEndpoint = client,
        responders: SessionSimulator.Responders? = nil, hello: String? = "EHLO client.example"
    ) async -> SessionSimulator {
        var session = SessionSimulator(configuration: configuration, policy: policy, peer: peer,
                                       responders: responders ?? Self.responders(policy))
        await session.connect()
        if let hello { await session.send(hello + "\r\n") }
        return session
    }
}

extension SessionSimulator {
    /// Sends one command line and returns the replies it produced.
    mutating func command(_ line: String) async -> [String] {
        await send(line + "\r\n")
        return replyLines()
    }

    /// Sends `line` and checks the replies it got.
    mutating func expect(_ line: String, _ expected: [String], _ message: String = "", file: StaticString = #filePath, line number: UInt = #line) async {
        let got = await command(line)
        XCTAssertEqual(got, expected, message.isEmpty ? line : message, file: file, line: number)
    }

    /// Sends `line` and checks that its one reply starts with `prefix`.
    mutating func expectPrefix(_ line: String, _ prefix: String, file: StaticString = #filePath, line number: UInt = #line) async {
        let got = await command(line)
        XCTAssertEqual(got.count, 1, "\(line): \(got)", file: file, line: number)
        XCTAssertTrue(got.first?.hasPrefix(prefix) ?? false, "\(line): \(got)", file: file, line: number)
    }

    /// MAIL, RCPT (each), DATA and the message (dot-stuffing is the caller's); the final reply.
    mutating func deliver(from: String = "alice@example.org", to: [String] = ["bob@example.org"], _ message: String) async -> String? {
        await send("MAIL FROM:<\(from)>\r\n" + to.map { "RCPT TO:<\($0)>\r\n" }.joined() + "DATA\r\n")
        let envelope = replyLines()
        guard envelope.last?.hasPrefix("354") == true else { return envelope.last }
        await send(message + "\r\n.\r\n")
        return replyLines().last
    }

    /// The decision of each record, in order.
    var decisions: [String] { records.map(\.decision.rawValue) }

    var lastRecord: DecisionRecord? { records.last }

    /// Whether the machine asked for `event` to be counted.
    func counted(_ event: SessionEvent) -> Bool { events.contains(event) }

    /// The log lines' messages.
    var logMessages: [String] { logs.map(\.message) }

    var stagesEvaluated: [PolicyStage] {
        actions.compactMap { if case .evaluate(let request) = $0 { return request.stage } else { return nil } }
    }
}
