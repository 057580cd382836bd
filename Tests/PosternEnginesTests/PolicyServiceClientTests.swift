import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternPolicy
@testable import PosternEngines
import SMTPCore
import XCTest

/// The policy-service client against a scripted server over real sockets, and a spawned one over pipes.
final class PolicyServiceClientTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private let logger = Logger(label: "postern.test", factory: { _ in SwiftLogNoOpLogHandler() })

    override func setUp() { group = MultiThreadedEventLoopGroup(numberOfThreads: 1) }
    override func tearDown() { try? group.syncShutdownGracefully() }

    private func client(_ port: Int, timeout: Duration = .seconds(5), maximumConnections: Int = 16) -> PolicyServiceClient {
        PolicyServiceClient(configuration: PolicyServiceConfiguration(
            name: "fake", address: .inet(host: "127.0.0.1", port: port), timeout: timeout, maximumConnections: maximumConnections),
            group: group, logger: logger)
    }

    private let request = PolicyDelegation.encode([("request", "smtpd_access_policy"), ("recipient", "a@b.example")])

    func testRequestsShareOnePersistentConnection() async throws {
        let server = try await FakePolicyServer(group: group) { _ in "action=DUNNO\n\n" }
        let client = client(server.port)
        for _ in 0..<3 {
            let action = try await client.ask(request)
            XCTAssertEqual(action, "DUNNO")
        }
        XCTAssertEqual(server.connections, 1)
        XCTAssertEqual(server.requests.map { $0["recipient"] }, ["a@b.example", "a@b.example", "a@b.example"])
        client.close()
        await server.stop()
    }

    func testAConnectionTheServerClosedIsRetriedOnceOnAFreshOne() async throws {
        let server = try await FakePolicyServer(group: group) { request in request["recipient"] == "close@b.example" ? "CLOSE" : "action=OK\n\n" }
        let client = client(server.port)
        let first = try await client.ask(request)
        XCTAssertEqual(first, "OK")
        // The server hangs up on this one: it was a reused connection, so once more on a new one…
        let closing = PolicyDelegation.encode([("recipient", "close@b.example")])
        do {
            _ = try await client.ask(closing)
            XCTFail("the server never answers that request")
        } catch {
            XCTAssertEqual(error.kind, .closed)
        }
        XCTAssertEqual(server.requests.filter { $0["recipient"] == "close@b.example" }.count, 2, "one retry, no more")
        let after = try await client.ask(request)
        XCTAssertEqual(after, "OK")
        client.close()
        await server.stop()
    }

    func testASilentServerTimesOutAndItsLateAnswerIsNeverReadAsTheNextOne() async throws {
        let server = try await FakePolicyServer(group: group) { request in request["recipient"] == "slow@b.example" ? nil : "action=REJECT fast\n\n" }
        let client = client(server.port, timeout: .milliseconds(300))
        do {
            _ = try await client.ask(PolicyDelegation.encode([("recipient", "slow@b.example")]))
            XCTFail("no answer comes")
        } catch {
            XCTAssertEqual(error.kind, .timeout)
        }
        let next = try await client.ask(request)
        XCTAssertEqual(next, "REJECT fast")
        XCTAssertEqual(server.connections, 2, "the timed-out connection was closed")
        client.close()
        await server.stop()
    }

    func testGarbageIsAProtocolError() async throws {
        let server = try await FakePolicyServer(group: group) { _ in "this is not an answer\n\n" }
        let client = client(server.port)
        do {
            _ = try await client.ask(request)
            XCTFail("garbage accepted")
        } catch {
            XCTAssertEqual(error.kind, .protocolError)
            XCTAssertTrue(error.detail.contains("without '='"), error.detail)
        }
        client.close()
        await server.stop()
    }

    func testAServerThatIsDownIsAConnectError() async throws {
        let server = try await FakePolicyServer(group: group) { _ in "action=OK\n\n" }
        let port = server.port
        await server.stop()
        let client = client(port)
        do {
            _ = try await client.ask(request)
            XCTFail("nothing listens")
        } catch {
            XCTAssertEqual(error.kind, .connect)
            XCTAssertTrue(error.detail.contains("Connection refused"), error.detail)
        }
    }

    func testAtTheConnectionLimitRequestsWaitForAConnection() async throws {
        let server = try await FakePolicyServer(group: group) { _ in "action=DUNNO\n\n" }
        let client = client(server.port, maximumConnections: 1)
        try await withThrowingTaskGroup(of: String.self) { tasks in
            let request = self.request
            for _ in 0..<8 { tasks.addTask { try await client.ask(request) } }
            for try await action in tasks { XCTAssertEqual(action, "DUNNO") }
        }
        XCTAssertEqual(server.connections, 1)
        XCTAssertEqual(server.requests.count, 8)
        XCTAssertEqual(client.openConnections, 1)
        client.close()
        do {
            _ = try await client.ask(request)
            XCTFail("a closed client asked")
        } catch {
            XCTAssertEqual(error.kind, .closed)
        }
        await server.stop()
    }

    func testASpawnedServerIsAskedOverItsStandardInputAndOutput() async throws {
        let directory = NSTemporaryDirectory() + "postern-spawn-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let script = directory + "/policy.py"
        try """
        import sys
        attrs = {}
        for line in sys.stdin:
            line = line.rstrip("\\n")
            if line:
                name, _, value = line.partition("=")
                attrs[name] = value
                continue
            print("action=PREPEND X-Spawned: " + attrs.get("recipient", "?") + "\\n", flush=True)
            attrs = {}
        """.write(toFile: script, atomically: true, encoding: .utf8)
        let client = PolicyServiceClient(configuration: PolicyServiceConfiguration(
            name: "spawned", address: .spawn(["/usr/bin/python3", script]), timeout: .seconds(10)), group: group, logger: logger)
        let first = try await client.ask(request)
        XCTAssertEqual(first, "PREPEND X-Spawned: a@b.example")
        let second = try await client.ask(PolicyDelegation.encode([("recipient", "c@d.example")]))
        XCTAssertEqual(second, "PREPEND X-Spawned: c@d.example")
        XCTAssertEqual(client.openConnections, 1, "one process served both")
        let pids = client.spawnedProcesses
        XCTAssertEqual(pids.count, 1)
        client.close()
        // Closing its pipes ends the server, and it is waited for: no process, no zombie, is left.
        let gone = await eventually { pids.allSatisfy { kill($0, 0) != 0 } }
        XCTAssertTrue(gone, "process \(pids) still there: \((try? String(contentsOfFile: "/proc/\(pids[0])/stat", encoding: .utf8)) ?? "")")
    }

    private func eventually(_ condition: () -> Bool) async -> Bool {
        for _ in 0..<250 {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }

    // MARK: The check

    func testTheCheckSendsWhatPostfixSendsAtRCPT() throws {
        var facts = TransactionFacts(transactionID: "T1ABC", clientAddress: IPAddress("192.0.2.7")!, clientPort: 4321, helo: "client.example",
                                     tls: true, authUser: nil, sender: .mailbox(Mailbox(localPart: "a", domain: "b.example")),
                                     recipient: .mailbox(Mailbox(localPart: "r", domain: "d.example")), size: 1234)
        facts.protocolName = "ESMTP"
        facts.tlsVersion = "TLSv1.3"
        let attributes = Dictionary(uniqueKeysWithValues: PolicyServiceCheck.attributes(.rcpt, facts: facts).map { ($0.name, $0.value ?? "") })
        XCTAssertEqual(attributes["request"], "smtpd_access_policy")
        XCTAssertEqual(attributes["protocol_state"], "RCPT")
        XCTAssertEqual(attributes["protocol_name"], "ESMTP")
        XCTAssertEqual(attributes["helo_name"], "client.example")
        XCTAssertEqual(attributes["sender"], "a@b.example")
        XCTAssertEqual(attributes["recipient"], "r@d.example")
        XCTAssertEqual(attributes["recipient_count"], "0")
        XCTAssertEqual(attributes["client_address"], "192.0.2.7")
        XCTAssertEqual(attributes["client_port"], "4321")
        XCTAssertEqual(attributes["client_name"], "unknown")
        XCTAssertEqual(attributes["instance"], "T1ABC")
        XCTAssertEqual(attributes["queue_id"], "T1ABC")
        XCTAssertEqual(attributes["size"], "1234")
        XCTAssertEqual(attributes["encryption_protocol"], "TLSv1.3")
        // At end of message: the count, and the recipient only when there is one.
        facts.recipients = [ForwardPath.mailbox(Mailbox(localPart: "r", domain: "d.example")), .mailbox(Mailbox(localPart: "s", domain: "d.example"))]
        let data = Dictionary(uniqueKeysWithValues: PolicyServiceCheck.attributes(.data, facts: facts).map { ($0.name, $0.value ?? "") })
        XCTAssertEqual(data["protocol_state"], "END-OF-MESSAGE")
        XCTAssertEqual(data["recipient_count"], "2")
        XCTAssertEqual(data["recipient"], "")
        // The null sender is empty.
        facts.sender = ReversePath.null
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: PolicyServiceCheck.attributes(.mail, facts: facts).map { ($0.name, $0.value ?? "") })["sender"], "")
    }

    func testActionsBecomeFindings() throws {
        XCTAssertEqual(try PolicyServiceCheck.finding(PolicyAction("OK"), text: "OK").verdict, .accept)
        XCTAssertEqual(try PolicyServiceCheck.finding(PolicyAction("DUNNO"), text: "DUNNO").verdict, .pass)
        XCTAssertEqual(try PolicyServiceCheck.finding(PolicyAction("HOLD x"), text: "HOLD x").verdict, .quarantine)
        XCTAssertEqual(try PolicyServiceCheck.finding(PolicyAction("DISCARD"), text: "DISCARD").verdict, .discard)
        XCTAssertEqual(try PolicyServiceCheck.finding(PolicyAction("521 bye"), text: "521 bye").verdict,
                       .reject(SMTPReply(521, EnhancedStatusCode(5, 7, 1), "bye")))
        let prepend = try PolicyServiceCheck.finding(PolicyAction("PREPEND X-A: b"), text: "PREPEND X-A: b")
        XCTAssertEqual(prepend.headers, [AddedHeader(name: "X-A", value: "b")])
        XCTAssertThrowsError(try PolicyServiceCheck.finding(PolicyAction("FILTER smtp:x"), text: "FILTER smtp:x")) {
            XCTAssertEqual("\($0)", "an action Postern cannot carry out: FILTER smtp:x")
        }
    }

    func testAddressesParse() {
        XCTAssertEqual(PolicyServiceConfiguration.Address(parsing: "inet:127.0.0.1:10040"), .inet(host: "127.0.0.1", port: 10040))
        XCTAssertEqual(PolicyServiceConfiguration.Address(parsing: "inet:[::1]:10040"), .inet(host: "::1", port: 10040))
        XCTAssertEqual(PolicyServiceConfiguration.Address(parsing: "unix:/run/policy.sock"), .unix(path: "/run/policy.sock"))
        for bad in ["inet:127.0.0.1", "inet::10040", "inet:h:0", "tcp:h:1", "unix:", "inet:h:70000"] {
            XCTAssertNil(PolicyServiceConfiguration.Address(parsing: bad), bad)
        }
    }
}
