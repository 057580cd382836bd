import Foundation
import XCTest

// MARK: - Recording sink (Fixtures/recording_sink.py)

/// One message recorded by the recording sink.
struct RecordedMessage {
    var name: String
    var data: Data
    var envelope: [String: Any]

    var seq: Int { envelope["seq"] as? Int ?? 0 }
    var mailFrom: String? { envelope["mail_from"] as? String }
    var mailParams: [String] { envelope["mail_params"] as? [String] ?? [] }
    var rcpts: [String] { envelope["rcpts"] as? [String] ?? [] }
    var rcptParams: [[String]] { envelope["rcpt_params"] as? [[String]] ?? [] }
    var helo: String? { envelope["helo"] as? String }
    var via: String? { envelope["via"] as? String }
    var tls: Bool { envelope["tls"] as? Bool ?? false }
    /// The TLS version the upstream transaction negotiated (`TLSv1.3`), when it used STARTTLS.
    var tlsVersion: String? { envelope["tls_version"] as? String }
    var text: String { String(decoding: data, as: UTF8.self) }

    /// The message split into the `Received:` block Postern prepends and the rest.
    var split: (received: [UInt8], body: [UInt8])? { splitReceivedHeader([UInt8](data)) }
}

/// Splits a leading `Received: from …` header (plus its TAB/space continuation lines) from
/// the rest of the message. Returns nil if the data does not start with `Received: from `.
func splitReceivedHeader(_ bytes: [UInt8]) -> (received: [UInt8], body: [UInt8])? {
    let prefix = Array("Received: from ".utf8)
    guard bytes.starts(with: prefix) else { return nil }
    var i = 0
    // Advance line by line (CRLF-terminated); stop at the first line that is not a continuation.
    func lineEnd(from start: Int) -> Int? {
        var j = start
        while j + 1 < bytes.count {
            if bytes[j] == 0x0D && bytes[j + 1] == 0x0A { return j + 2 }
            j += 1
        }
        return nil
    }
    guard var next = lineEnd(from: 0) else { return nil }
    i = next
    while i < bytes.count, bytes[i] == 0x09 || bytes[i] == 0x20 {
        guard let end = lineEnd(from: i) else { return nil }
        next = end
        i = next
    }
    return (Array(bytes[..<i]), Array(bytes[i...]))
}

final class RecordingSink: @unchecked Sendable {
    let port: Int
    let dir: URL
    let process: ManagedProcess

    init(port: Int, dir: URL, process: ManagedProcess) {
        self.port = port
        self.dir = dir
        self.process = process
    }

    /// The complete messages recorded so far (a message is complete once its .json exists).
    func messages() -> [RecordedMessage] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { $0.hasPrefix("msg-") && $0.hasSuffix(".json") }.sorted().compactMap { json in
            let base = String(json.dropLast(5))
            guard let meta = try? Data(contentsOf: dir.appendingPathComponent(json)),
                  let obj = try? JSONSerialization.jsonObject(with: meta) as? [String: Any],
                  let data = try? Data(contentsOf: dir.appendingPathComponent(base + ".eml"))
            else { return nil }
            return RecordedMessage(name: base, data: data, envelope: obj)
        }
    }

    var messageCount: Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { $0.hasPrefix("msg-") && $0.hasSuffix(".json") }.count
    }

    /// Waits until at least `count` messages are recorded (or `timeout`), then returns them all.
    @discardableResult
    func waitForMessages(_ count: Int, timeout: Double = 10) -> [RecordedMessage] {
        waitUntil(timeout: timeout) { messageCount >= count }
        return messages()
    }

    /// The sink's per-connection transcript (C:/S: lines prefixed with a connection number).
    var transcript: String {
        (try? String(contentsOf: dir.appendingPathComponent("transcript.log"), encoding: .utf8)) ?? ""
    }
}

extension IntegrationTestCase {
    /// Starts Fixtures/recording_sink.py on a free port. `options`: e.g.
    /// ["--reject-rcpt", "bad@=550 5.1.1 No such user"], ["--drop-after-rcpt"], ["--greeting-code", "421"].
    func startRecordingSink(_ options: [String] = [], name: String = "sink") throws -> RecordingSink {
        let python = try requirePython()
        let dir = try makeDirectory(name)
        let process = try launch(name, python, [Paths.fixture("recording_sink.py").path,
                                                "--port", "0", "--dir", dir.path] + options)
        try process.waitForOutput(containing: "READY ", timeout: 15)
        guard let line = process.stdout.split(separator: "\n").first(where: { $0.hasPrefix("READY ") }),
              let port = Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces))
        else { throw HarnessError.failed("cannot parse sink port from: \(process.stdout)") }
        return RecordingSink(port: port, dir: dir, process: process)
    }
}

// MARK: - Postfix smtp-sink

final class PostfixSMTPSink: @unchecked Sendable {
    let port: Int
    let process: ManagedProcess

    init(port: Int, process: ManagedProcess) {
        self.port = port
        self.process = process
    }

    /// The last `mesg=N` counter smtp-sink -c printed (messages whose "." was received).
    var messageCount: Int {
        let out = process.stdout
        guard let range = out.range(of: "mesg=", options: .backwards) else { return 0 }
        return Int(out[range.upperBound...].prefix { $0.isNumber }) ?? 0
    }
}

extension IntegrationTestCase {
    /// Starts Postfix's smtp-sink (`-c` counters) on a free port.
    func startSMTPSink(_ options: [String] = [], backlog: Int = 1000) throws -> PostfixSMTPSink {
        let exe = try requireTool("smtp-sink")
        let port = try Net.freePort()
        let user = getuid() == 0 ? ["-u", "root"] : []
        let process = try launch("smtp-sink", exe,
                                 ["-c"] + user + options + ["127.0.0.1:\(port)", "\(backlog)"])
        try process.waitForPort(port, timeout: 10)
        return PostfixSMTPSink(port: port, process: process)
    }
}

// MARK: - Postern

struct PosternConfig {
    var port: Int
    var hostname = "postern.test"
    /// Upstream URLs in order, e.g. "smtp://127.0.0.1:2526" or "maildir:/tmp/x".
    var upstreams: [String]
    /// Extra lines under each upstream entry (indented by the generator), e.g. ["tls: \"off\""].
    var upstreamExtra: [String] = []
    /// Extra lines under the listener entry, e.g. ["require_tls: true"].
    var listenerExtra: [String] = []
    /// Extra top-level YAML appended verbatim.
    var extra: String = ""

    var yaml: String {
        var s = "hostname: \(hostname)\nlisten:\n  - address: 127.0.0.1:\(port)\n"
        for line in listenerExtra { s += "    \(line)\n" }
        s += "upstreams:\n"
        for url in upstreams {
            s += "  - url: \"\(url)\"\n"
            for line in upstreamExtra { s += "    \(line)\n" }
        }
        s += "log_level: debug\n"
        if !extra.isEmpty { s += extra.hasSuffix("\n") ? extra : extra + "\n" }
        return s
    }
}

final class PosternServer: @unchecked Sendable {
    let port: Int
    let process: ManagedProcess
    let configURL: URL?

    init(port: Int, process: ManagedProcess, configURL: URL?) {
        self.port = port
        self.process = process
        self.configURL = configURL
    }

    var log: String { process.output }
}

extension IntegrationTestCase {
    func posternBinary() throws -> URL { try Paths.posternBinary() }

    /// Writes a config file into the work directory.
    func writeConfig(_ yaml: String, name: String = "postern.yaml") throws -> URL {
        let url = workDir.appendingPathComponent(name)
        try yaml.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    /// `postern serve --config <file>` with the given config; waits until it listens.
    func startPostern(_ config: PosternConfig, name: String = "postern") throws -> PosternServer {
        let url = try writeConfig(config.yaml, name: "\(name).yaml")
        return try startPostern(arguments: ["serve", "--config", url.path], port: config.port,
                                name: name, configURL: url)
    }

    /// `postern <arguments>`; waits until it prints `listening on 127.0.0.1:<port>` (or the
    /// port accepts connections).
    func startPostern(arguments: [String], port: Int, name: String = "postern",
                      configURL: URL? = nil, currentDirectory: URL? = nil) throws -> PosternServer {
        let exe = try posternBinary()
        let process = try launch(name, exe, arguments, currentDirectory: currentDirectory ?? workDir)
        let marker = "listening on 127.0.0.1:\(port)"
        let start = Date()
        let ready = waitUntil(timeout: 20, interval: 0.05) {
            if !process.isRunning { return true }
            if process.output.contains(marker) { return true }
            // Fall back to probing the port if the log line is not there after a while.
            return Date().timeIntervalSince(start) > 3 && Net.canConnect(port: port)
        }
        if !process.isRunning {
            throw HarnessError.failed("postern exited before listening: \(arguments)\n\(process.tail())")
        }
        if !ready {
            throw HarnessError.timeout("postern not listening on 127.0.0.1:\(port) after 20s\n\(process.tail())")
        }
        return PosternServer(port: port, process: process, configURL: configURL)
    }

    /// Runs a short-lived `postern` command (check, version).
    func runPostern(_ arguments: [String], timeout: Double = 30) throws -> CommandResult {
        try Command.run(try posternBinary(), arguments, currentDirectory: workDir, timeout: timeout)
    }

    /// A recording sink plus a Postern relaying to it: the common setup.
    func startPosternWithSink(sinkOptions: [String] = [], configure: (inout PosternConfig) -> Void = { _ in })
        throws -> (postern: PosternServer, sink: RecordingSink) {
        let sink = try startRecordingSink(sinkOptions)
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(sink.port)"])
        configure(&config)
        let postern = try startPostern(config)
        return (postern, sink)
    }
}

// MARK: - swaks, python, openssl

extension CommandResult {
    /// The server reply lines in a swaks transcript ("<-  250 ok", "<** 550 …", TLS "<~ …").
    var swaksReplies: [String] {
        output.split(separator: "\n").compactMap { line -> String? in
            for p in ["<-  ", "<** ", "<~  ", "<~* "] where line.hasPrefix(p) {
                return String(line.dropFirst(p.count))
            }
            return nil
        }
    }
}

extension IntegrationTestCase {
    /// Runs swaks against 127.0.0.1:`port` with extra arguments. Exit 0 = every step accepted.
    func runSwaks(port: Int, _ arguments: [String], timeout: Double = 30) throws -> CommandResult {
        let exe = try requireTool("swaks")
        return try Command.run(exe, ["--server", "127.0.0.1:\(port)", "--helo", "client.test",
                                     "--timeout", "20"] + arguments, timeout: timeout)
    }

    /// `python3 <fixture script> args…`
    func runPython(script: String, _ arguments: [String], timeout: Double = 60) throws -> CommandResult {
        let python = try requirePython()
        return try Command.run(python, [Paths.fixture(script).path] + arguments, timeout: timeout)
    }

    /// `python3 -c <code> args…` (sys.argv[1:] = arguments).
    func runPython(code: String, _ arguments: [String] = [], timeout: Double = 60) throws -> CommandResult {
        let python = try requirePython()
        return try Command.run(python, ["-c", code] + arguments, timeout: timeout)
    }

    /// A fresh self-signed certificate for CN=localhost (and SAN localhost, 127.0.0.1).
    func makeSelfSignedCertificate(name: String = "tls") throws -> (certificate: URL, key: URL) {
        let openssl = try requireTool("openssl")
        let dir = try makeDirectory(name)
        let cert = dir.appendingPathComponent("cert.pem"), key = dir.appendingPathComponent("key.pem")
        let result = try Command.run(openssl, [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", key.path, "-out", cert.path,
        ], timeout: 60)
        guard result.status == 0 else { throw HarnessError.failed("openssl req failed\n\(result)") }
        return (cert, key)
    }
}

// MARK: - A real Postfix (Fixtures/postfix/start_postfix.sh)

final class PostfixInstance: @unchecked Sendable {
    let dir: URL
    let port: Int
    let domain: String

    init(dir: URL, port: Int, domain: String) {
        self.dir = dir
        self.port = port
        self.domain = domain
    }

    var maillog: String { (try? String(contentsOf: dir.appendingPathComponent("maillog"), encoding: .utf8)) ?? "" }

    /// Messages delivered to `user`'s Maildir (new/ and cur/).
    func deliveredMessages(user: String) -> [Data] {
        var out: [Data] = []
        for sub in ["new", "cur"] {
            let d = dir.appendingPathComponent("mail/\(user)/\(sub)")
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: d.path)) ?? []).sorted()
            out += names.compactMap { try? Data(contentsOf: d.appendingPathComponent($0)) }
        }
        return out
    }
}

extension IntegrationTestCase {
    /// Starts a private Postfix on a free port (users alice, bob, carol, dave, test, postmaster
    /// @postfix.test; others get 550 5.1.1). Stopped in teardown.
    func startPostfix(domain: String = "postfix.test") throws -> PostfixInstance {
        _ = try requireTool("postfix")
        guard getuid() == 0 else { throw XCTSkip("a private Postfix instance needs root") }
        let sh = URL(fileURLWithPath: "/bin/sh")
        let dir = try makeDirectory("postfix")
        let port = try Net.freePort()
        let stop = Paths.fixture("postfix/stop_postfix.sh").path
        onTeardown {
            _ = try? Command.run(sh, [stop, dir.path], timeout: 30)
        }
        let result = try Command.run(sh, [Paths.fixture("postfix/start_postfix.sh").path, dir.path, "\(port)", domain],
                                     timeout: 60)
        guard result.status == 0, result.stdout.contains("READY \(port)") else {
            throw HarnessError.failed("start_postfix.sh failed\n\(result)")
        }
        return PostfixInstance(dir: dir, port: port, domain: domain)
    }
}
