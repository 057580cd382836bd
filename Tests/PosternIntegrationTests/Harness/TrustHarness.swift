import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Helpers for the trust and abuse tests (relay control, AUTH, ETRN, connection defences,
// hostile input): a Postern with several listeners, a decision log and a metrics port;
// clients that arrive through a PROXY header; reading records, metrics and memory.

/// One listener of a `TrustServer`: its port and the extra lines under it.
struct TrustListener {
    var port: Int
    var lines: [String]

    /// A `proxy_protocol: true` listener (clients present the address they choose).
    static func proxy(_ extra: [String] = []) throws -> TrustListener {
        TrustListener(port: try Net.freePort(), lines: ["proxy_protocol: true"] + extra)
    }

    /// A plain listener (the client is 127.0.0.1, which is trusted by default).
    static func plain(_ extra: [String] = []) throws -> TrustListener {
        TrustListener(port: try Net.freePort(), lines: extra)
    }
}

/// A running Postern with its listeners, decision log and metrics port.
struct TrustServer {
    var postern: PosternServer
    var listeners: [TrustListener]
    var decisionLog: URL
    var metricsPort: Int
    var configURL: URL

    /// The first listener's port.
    var port: Int { listeners[0].port }
    var pid: Int32 { postern.process.pid }
    var log: String { postern.log }
}

extension IntegrationTestCase {
    /// Starts `postern serve` with `listeners` (the first one is waited for by its log line, the
    /// others by their ports), `upstreams`, a decision log, a metrics port and `extra` YAML.
    func startTrustServer(listeners: [TrustListener], upstreams: [String], extra: String = "",
                          logLevel: String = "debug", name: String = "postern") throws -> TrustServer {
        let decisionLog = workDir.appendingPathComponent("\(name)-decisions.log")
        var metricsPort = try Net.freePort()
        while listeners.contains(where: { $0.port == metricsPort }) { metricsPort = try Net.freePort() }
        var yaml = "hostname: postern.test\nlisten:\n"
        for listener in listeners {
            yaml += "  - address: 127.0.0.1:\(listener.port)\n"
            for line in listener.lines { yaml += "    \(line)\n" }
        }
        yaml += "upstreams:\n"
        for url in upstreams { yaml += "  - url: \"\(url)\"\n" }
        yaml += "log_level: \(logLevel)\n"
        yaml += "decision_log: \(decisionLog.path)\n"
        yaml += "metrics: 127.0.0.1:\(metricsPort)\n"
        if !extra.isEmpty { yaml += extra.hasSuffix("\n") ? extra : extra + "\n" }
        let configURL = try writeConfig(yaml, name: "\(name).yaml")
        let postern = try startPostern(arguments: ["serve", "--config", configURL.path], port: listeners[0].port,
                                       name: name, configURL: configURL)
        for listener in listeners.dropFirst() { try postern.process.waitForPort(listener.port, timeout: 10) }
        try postern.process.waitForPort(metricsPort, timeout: 10)
        return TrustServer(postern: postern, listeners: listeners, decisionLog: decisionLog,
                           metricsPort: metricsPort, configURL: configURL)
    }

    /// The credentials fixture (Fixtures/auth/credentials) copied into the work directory,
    /// so a test may rewrite it.
    func copyCredentialsFixture() throws -> URL {
        let url = workDir.appendingPathComponent("credentials")
        try? FileManager.default.removeItem(at: url)
        try FileManager.default.copyItem(at: Paths.fixture("auth/credentials"), to: url)
        return url
    }

    /// `openssl passwd -6 <password>`: a SHA-512-crypt hash made now.
    func sha512CryptHash(_ password: String) throws -> String {
        let openssl = try requireTool("openssl")
        let result = try Command.run(openssl, ["passwd", "-6", password], timeout: 30)
        let hash = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard result.status == 0, hash.hasPrefix("$6$") else { throw HarnessError.failed("openssl passwd -6\n\(result)") }
        return hash
    }
}

// MARK: - Clients

extension RawSMTPClient {
    /// Connects, sends a PROXY v1 header naming `source`, reads the greeting (must be 220)
    /// and, unless `ehlo` is nil, sends EHLO (must be 250).
    /// Connected, with a PROXY v1 header from `source` sent: the greeting is the caller's to read.
    static func viaProxy(port: Int, source: String, timeout: Double = 10) throws -> RawSMTPClient {
        let client = try RawSMTPClient(port: port, timeout: timeout)
        try client.send("PROXY TCP4 \(source) 127.0.0.1 40000 25\r\n")
        return client
    }

    static func proxied(port: Int, source: String, sourcePort: Int = 40000, ehlo: String? = "proxied.client.test",
                        timeout: Double = 10) throws -> RawSMTPClient {
        let client = try RawSMTPClient(port: port, timeout: timeout)
        try client.send("PROXY TCP4 \(source) 127.0.0.1 \(sourcePort) 25\r\n")
        let greeting = try client.readReply()
        guard greeting.code == 220 else { throw HarnessError.failed("greeting for \(source): \(greeting)") }
        if let ehlo {
            let reply = try client.command("EHLO \(ehlo)")
            guard reply.code == 250 else { throw HarnessError.failed("EHLO from \(source): \(reply)") }
        }
        return client
    }

    /// Sends `body` (already CRLF-terminated lines, no final dot) after DATA/354, then the
    /// final dot, and returns the final reply.
    func sendMessage(_ body: String, timeout: Double? = nil) throws -> SMTPReply {
        let data = try command("DATA")
        guard data.code == 354 else { return data }
        try send(body + ".\r\n")
        return try readReply(timeout: timeout)
    }
}

extension IntegrationTestCase {
    /// Base64 of `text`'s UTF-8 bytes.
    func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    /// The SASL PLAIN response for `user`/`password` (empty authorisation identity).
    func plainResponse(user: String, password: String) -> String {
        base64([0] + Array(user.utf8) + [0] + Array(password.utf8))
    }
}

// MARK: - Decision log and metrics

enum DecisionLog {
    static func records(_ url: URL) -> [[String: Any]] {
        guard let data = try? Data(contentsOf: url) else { return [] }
        return data.split(separator: 0x0A).compactMap {
            try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any]
        }
    }

    /// Waits for a record matching `predicate` (records are written a moment after the reply).
    static func waitForRecord(_ url: URL, timeout: Double = 10,
                              where predicate: ([String: Any]) -> Bool) -> [String: Any]? {
        var found: [String: Any]?
        waitUntil(timeout: timeout) {
            found = records(url).first(where: predicate)
            return found != nil
        }
        return found
    }

    static func client(_ record: [String: Any]) -> [String: Any] { record["client"] as? [String: Any] ?? [:] }

    /// address → reply of each recipient entry.
    static func recipientReplies(_ record: [String: Any]) -> [String: String] {
        var out: [String: String] = [:]
        for r in record["rcpts"] as? [[String: Any]] ?? [] {
            if let a = r["address"] as? String { out[a] = r["reply"] as? String ?? "" }
        }
        return out
    }

    static func describe(_ url: URL) -> String {
        records(url).map { "\($0)" }.joined(separator: "\n")
    }
}

enum Metrics {
    /// GET /metrics from 127.0.0.1:`port` (HTTP/1.0, read until the server closes).
    static func scrape(port: Int) throws -> String {
        try get(port: port, path: "/metrics", headers: true)
    }

    /// GET `path` from the status endpoint on 127.0.0.1:`port`: the answer (with its status
    /// line and headers when `headers`), after a 200.
    static func get(port: Int, path: String, headers: Bool = false) throws -> String {
        let client = try RawSMTPClient(port: port, timeout: 5)
        defer { client.close() }
        try client.send("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        var lines: [String] = []
        while let line = try client.readLine() { lines.append(line) }
        guard let status = lines.first, status.contains(" 200") else {
            throw HarnessError.failed("\(path): \(lines.prefix(5))")
        }
        return (headers ? lines : Array(lines.drop { !$0.isEmpty }.dropFirst())).joined(separator: "\n")
    }

    /// The value of the sample `name{labels}` (labels matched as a subset), or nil.
    static func value(_ text: String, _ name: String, _ labels: [String: String] = [:]) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name) {
            let rest = line.dropFirst(name.count)
            guard let first = rest.first, first == "{" || first == " " else { continue }
            var labelText = ""
            var valueText = rest
            if first == "{" {
                guard let close = rest.firstIndex(of: "}") else { continue }
                labelText = String(rest[rest.index(after: rest.startIndex)..<close])
                valueText = rest[rest.index(after: close)...]
            }
            let matches = labels.allSatisfy { key, value in labelText.contains("\(key)=\"\(value)\"") }
            guard matches, let number = Double(valueText.trimmingCharacters(in: .whitespaces)) else { continue }
            return number
        }
        return nil
    }

    /// Polls the metrics port until `name{labels}` is at least `minimum`; returns the last value.
    @discardableResult
    static func waitForValue(port: Int, _ name: String, _ labels: [String: String] = [:], atLeast minimum: Double,
                             timeout: Double = 5) -> Double? {
        var last: Double?
        waitUntil(timeout: timeout, interval: 0.1) {
            last = (try? scrape(port: port)).flatMap { value($0, name, labels) }
            return (last ?? -1) >= minimum
        }
        return last
    }
}

// MARK: - Process memory

enum ProcessMemory {
    /// VmRSS of `pid` in KiB, from /proc/<pid>/status (nil where there is no /proc).
    static func residentKiB(pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "")
        }
        return nil
    }
}

/// Runs `body` on a background thread; `wait()` returns its error (if any) once it ends.
final class BackgroundTask: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var error: Error?

    init(_ body: @escaping @Sendable () throws -> Void) {
        Thread.detachNewThread { [self] in
            do { try body() } catch { self.error = error }
            done.signal()
        }
    }

    /// Waits up to `timeout` seconds; throws the task's error, or a timeout.
    func wait(timeout: Double) throws {
        guard done.wait(timeout: .now() + timeout) == .success else {
            throw HarnessError.timeout("background task still running after \(timeout)s")
        }
        if let error { throw error }
    }
}

/// Hands a non-Sendable value to another thread; the caller guarantees the two threads use
/// it safely (a RawSMTPClient: one thread only sends, the other only reads).
final class UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

extension RawSMTPClient {
    /// Runs `body` with this client on a background thread: for writers that must not wait
    /// for the reader (pipelined floods whose replies would otherwise fill the socket buffers).
    func inBackground(_ body: @escaping (RawSMTPClient) throws -> Void) -> BackgroundTask {
        let box = UncheckedBox((self, body))
        return BackgroundTask { try box.value.1(box.value.0) }
    }
}

// MARK: - Postfix

extension PostfixInstance {
    /// `postconf -c <etc> -e setting…` then `postfix -c <etc> reload` (the smtpd processes
    /// restart with the new settings a moment later).
    func reconfigure(_ settings: [String]) throws {
        guard let postconf = Paths.tool("postconf"), let postfix = Paths.tool("postfix") else {
            throw HarnessError.missing("postconf/postfix")
        }
        let etc = dir.appendingPathComponent("etc").path
        let set = try Command.run(postconf, ["-c", etc, "-e"] + settings, timeout: 30)
        guard set.status == 0 else { throw HarnessError.failed("postconf -e\n\(set)") }
        let reload = try Command.run(postfix, ["-c", etc, "reload"], timeout: 30)
        guard reload.status == 0 else { throw HarnessError.failed("postfix reload\n\(reload)") }
    }

    /// All messages in every Maildir of this instance (any user).
    func allDeliveredMessages() -> [(user: String, data: Data)] {
        let mail = dir.appendingPathComponent("mail")
        let users = ((try? FileManager.default.contentsOfDirectory(atPath: mail.path)) ?? []).sorted()
        return users.flatMap { user in deliveredMessages(user: user).map { (user, $0) } }
    }
}

extension IntegrationTestCase {
    /// A PROXY listener relaying to `sink` with `policy` and a resolver asking only
    /// 127.0.0.1:`dnsPort` (client names off unless `dns` says otherwise). `dns`: more
    /// `dns:` settings (`"timeout: 1s, spf: false"`); `extra`: more configuration lines.
    func startDNSServer(policy: URL, dnsPort: Int, sink: RecordingSink, dns: String = "timeout: 2s",
                        extra: String = "", listener: TrustListener? = nil, name: String = "postern") throws -> TrustServer {
        try startTrustServer(
            listeners: [try listener ?? .proxy()], upstreams: ["smtp://127.0.0.1:\(sink.port)"],
            extra: (extra.isEmpty ? "" : extra + "\n") + "policy: \(policy.path)\n"
                + "dns: { servers: [\"127.0.0.1:\(dnsPort)\"], verify_client_names: false, \(dns) }\n",
            name: name)
    }
}
