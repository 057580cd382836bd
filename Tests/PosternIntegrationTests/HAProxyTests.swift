import Foundation
import XCTest

/// Debian's HAProxy in front of two Postern instances, configured like
/// Deploy/haproxy/haproxy.cfg: TCP mode, PROXY v2 to each instance, HTTP health checks on
/// each instance's /readyz.
final class HAProxyTests: IntegrationTestCase, @unchecked Sendable {
    /// The client's source address, and HAProxy's on the backend side: a decision record
    /// that shows the client's proves the PROXY header was used.
    static let clientAddress = "127.0.0.2"
    static let haproxyAddress = "127.0.0.3"

    struct Instance {
        var server: PosternServer
        var metricsPort: Int
        var decisionLog: URL
        var records: [[String: Any]] { DeployFilesTests.readRecords(decisionLog) }
    }

    func startInstance(_ name: String, sinkPort: Int) throws -> Instance {
        let metricsPort = try Net.freePort()
        let decisionLog = workDir.appendingPathComponent("\(name)-decisions.log")
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(sinkPort)"])
        config.hostname = "\(name).postern.test"
        config.listenerExtra = ["proxy_protocol: true"]
        config.extra = "metrics: 127.0.0.1:\(metricsPort)\ndecision_log: \(decisionLog.path)\n"
        let server = try startPostern(config, name: name)
        return Instance(server: server, metricsPort: metricsPort, decisionLog: decisionLog)
    }

    /// Deploy/haproxy/haproxy.cfg with the test's addresses: the frontend on `port`, the
    /// server lines pointed at the instances (SMTP port, metrics port for the check) with
    /// `source 127.0.0.3`, checks every 300ms instead of 2s, no syslog/chroot/user.
    func haproxyConfig(port: Int, instances: [Instance]) throws -> String {
        let shipped = try String(contentsOf: DeployFilesTests.deploy.appendingPathComponent("haproxy/haproxy.cfg"),
                                 encoding: .utf8)
        var servers = instances.makeIterator()
        var out: [String] = []
        for line in shipped.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("#") { continue }
            if ["log /dev/log", "chroot ", "user ", "group "].contains(where: trimmed.hasPrefix) { continue }
            if trimmed.hasPrefix("bind ") {
                out.append("    bind 127.0.0.1:\(port)")
            } else if trimmed.hasPrefix("default-server ") {
                out.append("    " + trimmed.replacingOccurrences(of: "inter 2s", with: "inter 300ms"))
            } else if trimmed.hasPrefix("server ") {
                guard let instance = servers.next() else { continue }
                var fields = trimmed.split(separator: " ").map(String.init)
                XCTAssertGreaterThanOrEqual(fields.count, 3, line)
                fields[2] = "127.0.0.1:\(instance.server.port)"
                let options = fields.joined(separator: " ").replacingOccurrences(of: "port 9125", with: "port \(instance.metricsPort)")
                out.append("    \(options) source \(Self.haproxyAddress)")
            } else {
                out.append(line)
            }
        }
        XCTAssertNil(servers.next(), "the shipped configuration has fewer server lines than instances")
        return out.joined(separator: "\n") + "\n"
    }

    func startHAProxy(instances: [Instance]) throws -> (process: ManagedProcess, port: Int) {
        let haproxy = try requireTool("haproxy")
        let port = try Net.freePort()
        let config = try writeConfig(try haproxyConfig(port: port, instances: instances), name: "haproxy.cfg")
        let check = try Command.run(haproxy, ["-c", "-f", config.path], timeout: 30)
        XCTAssertEqual(check.status, 0, check.description)
        // -db: stay in the foreground, messages on stderr.
        let process = try launch("haproxy", haproxy, ["-db", "-f", config.path])
        try process.waitForPort(port, timeout: 15)
        return (process, port)
    }

    /// Sends `count` messages, one connection each, from 127.0.0.2; returns the final replies.
    func sendMessages(port: Int, count: Int, tag: String) throws -> [String] {
        let code = """
            import smtplib, sys
            port, count, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
            for i in range(count):
                try:
                    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20,
                                      source_address=("\(Self.clientAddress)", 0)) as s:
                        msg = "Subject: %s %d\\r\\nMessage-ID: <%s-%d@client.test>\\r\\n\\r\\nhello\\r\\n" % (tag, i, tag, i)
                        s.sendmail("alice@client.test", ["bob@example.test"], msg)
                        print("OK %s-%d" % (tag, i))
                except Exception as e:
                    print("FAIL %s-%d %r" % (tag, i, e))
            """
        let result = try runPython(code: code, ["\(port)", "\(count)", tag], timeout: 120)
        XCTAssertEqual(result.status, 0, result.description)
        return result.stdout.split(separator: "\n").map(String.init)
    }

    func testMailThroughHAProxyReachesTheUpstreamThroughBothInstancesWithTheRealClientAddress() throws {
        _ = try requireTool("haproxy")
        let sink = try startRecordingSink()
        let instances = [try startInstance("postern1", sinkPort: sink.port), try startInstance("postern2", sinkPort: sink.port)]
        let haproxy = try startHAProxy(instances: instances)

        let results = try sendMessages(port: haproxy.port, count: 10, tag: "both")
        XCTAssertEqual(results.filter { $0.hasPrefix("OK ") }.count, 10, results.joined(separator: "\n") + haproxy.process.tail())
        let messages = sink.waitForMessages(10, timeout: 20)
        XCTAssertEqual(messages.count, 10)

        // Round robin: both instances relayed mail, and every record names the real client.
        var records: [[[String: Any]]] = []
        XCTAssertTrue(waitUntil(timeout: 10) {
            records = instances.map(\.records)
            return records.map(\.count).reduce(0, +) >= 10
        }, "decision records: \(records)")
        for (index, instanceRecords) in records.enumerated() {
            XCTAssertGreaterThan(instanceRecords.count, 0, "postern\(index + 1) relayed nothing")
            for record in instanceRecords {
                let client = record["client"] as? [String: Any]
                XCTAssertEqual(client?["ip"] as? String, Self.clientAddress, "\(record)")
                XCTAssertEqual(record["decision"] as? String, "accepted", "\(record)")
            }
        }
        XCTAssertEqual(records.map(\.count).reduce(0, +), 10)
        // The Received header each instance added names the client, never HAProxy.
        for message in messages {
            let received = String(decoding: message.split?.received ?? [], as: UTF8.self)
            XCTAssertTrue(received.contains("[\(Self.clientAddress)]"), received)
            XCTAssertFalse(received.contains(Self.haproxyAddress), received)
        }
        XCTAssertEqual(Set(messages.compactMap { $0.text.contains("by postern1.postern.test") ? 1 : $0.text.contains("by postern2.postern.test") ? 2 : nil }), [1, 2])
        XCTAssertFalse(instances.contains { $0.server.log.contains(Self.haproxyAddress) },
                       "HAProxy's address appears in a Postern log")
    }

    func testAStoppedInstanceIsMarkedDownAndMailFlowsThroughTheOther() throws {
        _ = try requireTool("haproxy")
        let sink = try startRecordingSink()
        let instances = [try startInstance("postern1", sinkPort: sink.port), try startInstance("postern2", sinkPort: sink.port)]
        let haproxy = try startHAProxy(instances: instances)
        let warmup = try sendMessages(port: haproxy.port, count: 2, tag: "warmup")
        XCTAssertEqual(warmup.filter { $0.hasPrefix("OK ") }.count, 2, warmup.joined(separator: "\n"))

        instances[0].server.process.stop()
        XCTAssertTrue(waitUntil(timeout: 15) { haproxy.process.output.contains("postern/postern1 is DOWN") },
                      "HAProxy did not mark postern1 down:\n\(haproxy.process.tail())")
        XCTAssertFalse(haproxy.process.output.contains("postern/postern2 is DOWN"), haproxy.process.tail())
        let before = instances[1].records.count

        let results = try sendMessages(port: haproxy.port, count: 6, tag: "failover")
        XCTAssertEqual(results.filter { $0.hasPrefix("OK ") }.count, 6, results.joined(separator: "\n"))
        XCTAssertEqual(sink.waitForMessages(8, timeout: 20).count, 8)
        XCTAssertTrue(waitUntil(timeout: 10) { instances[1].records.count == before + 6 },
                      "postern2 has \(instances[1].records.count - before) new records, expected 6")
    }
}
