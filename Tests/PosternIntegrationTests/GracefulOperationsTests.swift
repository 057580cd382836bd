import Foundation
import XCTest

/// Stopping and reloading under load: 20 client sessions send continuously while Postern gets
/// SIGTERM (drain) or SIGHUP (policy reload).
final class GracefulOperationsTests: IntegrationTestCase, @unchecked Sendable {
    struct LoadReport {
        var transactions: [[String: Any]]
        var sessions: [[String: Any]]
        var stallers: [[String: Any]]
    }

    /// Starts the load client (`loadClientScript`) with `arguments`; returns it and its report file.
    func startLoadClient(port: Int, _ arguments: [String]) throws -> (process: ManagedProcess, report: URL) {
        let python = try requirePython()
        let script = workDir.appendingPathComponent("load_client.py")
        try Self.loadClientScript.write(to: script, atomically: true, encoding: .utf8)
        let report = workDir.appendingPathComponent("load-report.json")
        let process = try launch("load-client", python, [script.path, "--port", "\(port)", "--out", report.path] + arguments)
        try process.waitForOutput(containing: "STARTED", timeout: 15)
        return (process, report)
    }

    func finish(_ client: (process: ManagedProcess, report: URL), timeout: Double = 60) throws -> LoadReport {
        XCTAssertNotNil(client.process.waitForExit(timeout: timeout), "the load client did not finish\n\(client.process.tail())")
        let data = try Data(contentsOf: client.report)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        return LoadReport(transactions: object["transactions"] as? [[String: Any]] ?? [],
                          sessions: object["sessions"] as? [[String: Any]] ?? [],
                          stallers: object["stallers"] as? [[String: Any]] ?? [])
    }

    /// The Message-IDs of the messages the sink recorded.
    func recordedMessageIDs(_ sink: RecordingSink) -> Set<String> {
        Set(sink.messages().compactMap { message in
            message.text.split(separator: "\r\n").first { $0.hasPrefix("Message-ID: ") }.map { String($0.dropFirst(12)) }
        })
    }

    func records(_ url: URL) -> [[String: Any]] { DeployFilesTests.readRecords(url) }

    // MARK: - SIGTERM

    func testSIGTERMUnderLoadLosesNothingAnsweredWith250AndExitsWithinTheGracePeriod() throws {
        let grace = 4.0
        let sink = try startRecordingSink()
        let decisions = workDir.appendingPathComponent("decisions.log")
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(sink.port)"])
        config.extra = """
            shutdown_grace_period: \(Int(grace))s
            decision_log: \(decisions.path)
            limits:
              max_connections_per_ip: 500
            """
        let postern = try startPostern(config)
        // 20 senders, plus one client that stops in the middle of its message: only the
        // grace period ends that one.
        let client = try startLoadClient(port: postern.port, ["--sessions", "20", "--stallers", "1", "--max-seconds", "40"])
        XCTAssertTrue(waitUntil(timeout: 20) { sink.messageCount >= 40 }, "little mail flows: \(sink.messageCount)\n\(postern.process.tail())")
        sleep(seconds: 1)

        let signalled = Date()
        postern.process.signal(SIGTERM)
        let status = postern.process.waitForExit(timeout: grace + 15)
        let elapsed = Date().timeIntervalSince(signalled)
        XCTAssertEqual(status, 0, postern.process.tail())
        XCTAssertLessThanOrEqual(elapsed, grace + 2, "exit took \(elapsed)s with shutdown_grace_period \(grace)s")
        XCTAssertGreaterThanOrEqual(elapsed, grace - 0.5, "the stalled transaction should have been given the grace period")

        let report = try finish(client)
        let accepted = report.transactions.filter { $0["final"] as? Int == 250 }
        XCTAssertGreaterThan(accepted.count, 40)
        print("[integration] SIGTERM under load: \(report.transactions.count) transactions, \(accepted.count) answered 250, "
            + "\(report.sessions.count) sessions; exit \(String(format: "%.2f", elapsed))s after SIGTERM (grace \(grace)s)")
        // Every 250 the clients saw is at the upstream.
        let atSink = recordedMessageIDs(sink)
        let missing = accepted.compactMap { $0["msgid"] as? String }.filter { !atSink.contains($0) }
        XCTAssertEqual(missing, [], "answered 250 but not relayed")
        // Every other transaction got a 4xx or lost its connection: never a 5xx, never silence.
        for transaction in report.transactions where transaction["final"] as? Int != 250 {
            if let code = transaction["final"] as? Int {
                XCTAssertTrue((400..<500).contains(code), "\(transaction)")
            } else {
                XCTAssertNotNil(transaction["error"], "a transaction with neither a reply nor an error: \(transaction)")
            }
        }
        // Transactions in flight at the signal were finished, not cut: some 250s came after it.
        let finishedAfter = accepted.filter { ($0["end"] as? Double ?? 0) > signalled.timeIntervalSince1970 }
        XCTAssertGreaterThan(finishedAfter.count, 0, "no transaction in flight finished after SIGTERM")
        // Idle sessions were told why they were closed.
        XCTAssertTrue(report.sessions.contains { ($0["end"] as? String ?? "").contains("421 4.3.2") },
                      "no session got 421 4.3.2: \(report.sessions.prefix(5))")
        // The stalled client was disconnected once the grace period was over, with no 250.
        let staller = try XCTUnwrap(report.stallers.first)
        XCTAssertTrue(staller["closed"] as? Bool == true || staller["error"] != nil, "\(staller)")
        XCTAssertFalse((staller["replies"] as? [String] ?? []).contains { $0.hasPrefix("250 2.0.0") && $0.contains("queued") }, "\(staller)")
        XCTAssertFalse(recordedMessageIDs(sink).isEmpty)
        XCTAssertFalse(sink.messages().contains { $0.text.contains("Subject: stalled") }, "half a message was relayed")

        // The decision log was flushed before exit: one accepted record per 250.
        let acceptedRecords = Set(records(decisions).filter { $0["decision"] as? String == "accepted" }
            .compactMap { $0["message_id"] as? String })
        XCTAssertEqual(acceptedRecords, Set(accepted.compactMap { $0["msgid"] as? String }))
    }

    // MARK: - SIGHUP

    static let policyBefore = """
        version: 1
        rules:
          - id: blocked-sender
            stage: mail
            if: { sender: blocked@nowhere.test }
            then: reject
        """
    static let policyAfter = policyBefore + """

          - id: reload-marker
            stage: data
            if: { subject: { regex: 'RELOAD-MARKER' } }
            then: reject
            reply: "550 5.7.1 marker refused by the new policy"
        """

    func policyVersion(config: URL) throws -> String {
        let result = try runPostern(["check", "--config", config.path])
        XCTAssertEqual(result.status, 0, result.description)
        let marker = try XCTUnwrap(result.stdout.range(of: "version "), result.description)
        return String(result.stdout[marker.upperBound...].prefix { !$0.isWhitespace })
    }

    func testSIGHUPUnderLoadDropsNoSessionAndNewSessionsUseTheNewPolicy() throws {
        let sink = try startRecordingSink()
        let decisions = workDir.appendingPathComponent("decisions.log")
        let policy = workDir.appendingPathComponent("policy.yaml")
        try Self.policyBefore.write(to: policy, atomically: true, encoding: .utf8)
        var config = PosternConfig(port: try Net.freePort(), upstreams: ["smtp://127.0.0.1:\(sink.port)"])
        config.extra = """
            policy: \(policy.path)
            decision_log: \(decisions.path)
            limits:
              max_connections_per_ip: 500
            """
        let postern = try startPostern(config)
        let configURL = try XCTUnwrap(postern.configURL)
        let oldVersion = try policyVersion(config: configURL)

        let stopFile = workDir.appendingPathComponent("stop"), reloadFile = workDir.appendingPathComponent("reloaded")
        // Sessions of 4 messages each, every 3rd message carries the marker subject.
        let client = try startLoadClient(port: postern.port, [
            "--sessions", "20", "--per-session", "4", "--marker-every", "3",
            "--stop-file", stopFile.path, "--reload-file", reloadFile.path, "--max-seconds", "40",
        ])
        XCTAssertTrue(waitUntil(timeout: 20) { sink.messageCount >= 40 }, "little mail flows: \(sink.messageCount)")

        // Swap the policy atomically and reload it.
        let staged = workDir.appendingPathComponent("policy.yaml.new")
        try Self.policyAfter.write(to: staged, atomically: true, encoding: .utf8)
        XCTAssertEqual(rename(staged.path, policy.path), 0)
        postern.process.signal(SIGHUP)
        XCTAssertTrue(waitUntil(timeout: 10) { postern.log.contains("policy reloaded") }, postern.process.tail())
        let newVersion = try policyVersion(config: configURL)
        XCTAssertNotEqual(newVersion, oldVersion)
        XCTAssertTrue(postern.log.contains(newVersion), "the reload log line names the new version")
        XCTAssertTrue(FileManager.default.createFile(atPath: reloadFile.path, contents: nil))
        let sentBeforeReload = sink.messageCount
        XCTAssertTrue(waitUntil(timeout: 20) { sink.messageCount >= sentBeforeReload + 60 }, "mail stopped after the reload")
        XCTAssertTrue(FileManager.default.createFile(atPath: stopFile.path, contents: nil))
        let report = try finish(client)
        XCTAssertTrue(postern.process.isRunning, postern.process.tail())

        print("[integration] SIGHUP under load: \(report.transactions.count) transactions in \(report.sessions.count) sessions, "
            + "\(report.sessions.filter { $0["post_reload"] as? Bool == true }.count) sessions after the reload")
        // No session was dropped: each ended with our QUIT and the server's 221.
        XCTAssertGreaterThanOrEqual(report.sessions.count, 20)
        for session in report.sessions {
            XCTAssertEqual(session["end"] as? String, "quit 221", "\(session)")
        }
        // Ordinary mail always got 250; marker mail 250 under the old policy, 550 under the new.
        let postReloadMarkers = report.transactions.filter { $0["post_reload"] as? Bool == true && $0["marker"] as? Bool == true }
        XCTAssertGreaterThanOrEqual(postReloadMarkers.count, 5)
        for transaction in report.transactions {
            XCTAssertNil(transaction["error"], "\(transaction)")
            let final = transaction["final"] as? Int
            let last = (transaction["replies"] as? [String])?.last ?? ""
            if transaction["marker"] as? Bool != true {
                XCTAssertEqual(final, 250, "\(transaction)")
            } else if transaction["post_reload"] as? Bool == true {
                XCTAssertEqual(last, "550 5.7.1 marker refused by the new policy", "\(transaction)")
            } else {
                XCTAssertTrue(final == 250 || last == "550 5.7.1 marker refused by the new policy", "\(transaction)")
            }
        }
        XCTAssertTrue(report.transactions.contains { $0["post_reload"] as? Bool == false && $0["marker"] as? Bool == true && $0["final"] as? Int == 250 },
                      "the old policy let marker mail through before the reload")
        let accepted = Set(report.transactions.filter { $0["final"] as? Int == 250 }.compactMap { $0["msgid"] as? String })
        XCTAssertEqual(accepted.subtracting(recordedMessageIDs(sink)), [], "answered 250 but not relayed")

        // Decision records: one policy version per session; sessions started after the reload
        // name the new version.
        var all: [[String: Any]] = []
        XCTAssertTrue(waitUntil(timeout: 10) {
            all = records(decisions)
            return all.count >= report.transactions.count
        }, "\(all.count) records for \(report.transactions.count) transactions")
        var byMessageID: [String: [String: Any]] = [:]
        var versionsBySession: [String: Set<String>] = [:]
        for record in all {
            if let id = record["message_id"] as? String { byMessageID[id] = record }
            if let session = record["session"] as? String, let version = record["policy_version"] as? String {
                versionsBySession[session, default: []].insert(version)
            }
        }
        XCTAssertEqual(Set(versionsBySession.values.flatMap { $0 }), [oldVersion, newVersion])
        XCTAssertEqual(versionsBySession.filter { $0.value.count != 1 }.count, 0, "a session changed policy mid-way")
        for transaction in report.transactions where transaction["post_reload"] as? Bool == true {
            let id = transaction["msgid"] as? String ?? ""
            let record = byMessageID[id]
            XCTAssertEqual(record?["policy_version"] as? String, newVersion, "\(id): \(record ?? [:])")
            if transaction["marker"] as? Bool == true {
                XCTAssertEqual(record?["decision"] as? String, "rejected")
                XCTAssertEqual(record?["rule"] as? String, "reload-marker")
            }
        }
    }

    /// A client that sends continuously (`--sessions` threads), stalls (`--stallers`), and
    /// writes what every transaction got as JSON. Standard library only.
    static let loadClientScript = #"""
"""Continuous SMTP load for Postern's graceful-operation tests (standard library only).

    load_client.py --port P --out FILE [--sessions 20] [--per-session N] [--stallers K]
                   [--stop-file F] [--reload-file F] [--marker-every M] [--max-seconds S]

Each of --sessions threads connects, says EHLO and sends messages back to back (a new
Message-ID each) until --stop-file exists; with --per-session N it says QUIT after N
messages and reconnects. A refused connection ends the thread (the server has stopped
listening). Every --marker-every'th message has the subject "RELOAD-MARKER". A session
started once --reload-file exists is marked post_reload. --stallers threads send MAIL, RCPT,
DATA and half a message, then wait for the server to close. Writes a JSON report to --out:
{"transactions": [...], "sessions": [...], "stallers": [...]}.
"""
import argparse
import json
import os
import socket
import threading
import time


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def reply(self):
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("connection closed by the server after %r" % lines)
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def command(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def message(worker, n, msgid, marker):
    subject = "RELOAD-MARKER %d-%d" % (worker, n) if marker else "load %d-%d" % (worker, n)
    body = "".join("line %d of message %s: %s\r\n" % (i, msgid, "x" * 60) for i in range(12))
    return ("From: <load%d@client.test>\r\nTo: <sink@example.test>\r\nSubject: %s\r\n"
            "Message-ID: %s\r\n\r\n%s.\r\n" % (worker, subject, msgid, body)).encode()


def worker(args, index, transactions, sessions, lock, deadline):
    n = 0
    while not os.path.exists(args.stop_file) and time.time() < deadline:
        session = {"worker": index, "post_reload": os.path.exists(args.reload_file),
                   "start": time.time(), "end": None, "transactions": 0}
        try:
            conn = Conn(args.port)
        except OSError as error:
            session["end"] = "refused: %s" % error
            with lock:
                sessions.append(session)
            return
        tx = None
        try:
            code, text = conn.reply()
            if code != 220:
                session["end"] = "greeting: " + text
                raise StopIteration
            code, text = conn.command("EHLO load.client.test")
            if code != 250:
                session["end"] = "ehlo: " + text
                raise StopIteration
            while not os.path.exists(args.stop_file) and time.time() < deadline:
                if args.per_session and session["transactions"] >= args.per_session:
                    break
                n += 1
                session["transactions"] += 1
                msgid = "<w%d-%d.%d@load.client.test>" % (index, n, os.getpid())
                marker = args.marker_every > 0 and n % args.marker_every == 0
                tx = {"worker": index, "msgid": msgid, "marker": marker, "session_start": session["start"],
                      "post_reload": session["post_reload"], "replies": [], "final": None}
                with lock:
                    transactions.append(tx)
                for line in ("MAIL FROM:<load%d@client.test>" % index, "RCPT TO:<sink@example.test>", "DATA"):
                    code, text = conn.command(line)
                    tx["replies"].append(text)
                    if code >= 400:
                        tx["final"] = code
                        break
                if tx["final"] is None:
                    conn.sock.sendall(message(index, n, msgid, marker))
                    code, text = conn.reply()
                    tx["replies"].append(text)
                    tx["final"] = code
                tx["end"] = time.time()
                if tx["final"] == 421:
                    session["end"] = "421: " + tx["replies"][-1]
                    break
                if tx["final"] != 250 and len(tx["replies"]) <= 3:
                    conn.command("RSET")  # refused before the message: reset the envelope
                tx = None
            if session["end"] is None:
                code, text = conn.command("QUIT")
                session["end"] = "quit %d" % code
        except StopIteration:
            pass
        except (EOFError, OSError) as error:
            session["end"] = "disconnected: %s" % error
            if tx is not None:
                tx["error"] = str(error)
                tx["end"] = time.time()
        finally:
            conn.close()
            session["stop"] = time.time()
            with lock:
                sessions.append(session)


def staller(args, index, stallers, lock, deadline):
    record = {"staller": index, "replies": [], "closed": False}
    with lock:
        stallers.append(record)
    try:
        conn = Conn(args.port)
        record["replies"].append(conn.reply()[1])
        for line in ("EHLO stall.client.test", "MAIL FROM:<stall@client.test>", "RCPT TO:<sink@example.test>", "DATA"):
            record["replies"].append(conn.command(line)[1])
        conn.sock.sendall(b"Subject: stalled\r\n\r\nhalf a message\r\n")
        record["stalled_at"] = time.time()
        conn.sock.settimeout(max(1.0, deadline - time.time()))
        try:
            while True:
                code, text = conn.reply()
                record["replies"].append(text)
        except EOFError:
            record["closed"] = True
            record["closed_at"] = time.time()
    except (OSError, EOFError) as error:
        record["error"] = str(error)
        record["closed_at"] = time.time()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--per-session", type=int, default=0)
    ap.add_argument("--stallers", type=int, default=0)
    ap.add_argument("--stop-file", default="/nonexistent/stop")
    ap.add_argument("--reload-file", default="/nonexistent/reload")
    ap.add_argument("--marker-every", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=60)
    args = ap.parse_args()
    deadline = time.time() + args.max_seconds
    transactions, sessions, stallers, lock = [], [], [], threading.Lock()
    threads = [threading.Thread(target=staller, args=(args, i, stallers, lock, deadline)) for i in range(args.stallers)]
    threads += [threading.Thread(target=worker, args=(args, i, transactions, sessions, lock, deadline))
                for i in range(args.sessions)]
    for t in threads:
        t.start()
    print("STARTED", flush=True)
    for t in threads:
        t.join()
    with open(args.out + ".tmp", "w") as f:
        json.dump({"transactions": transactions, "sessions": sessions, "stallers": stallers}, f)
    os.rename(args.out + ".tmp", args.out)
    print("DONE %d transactions" % len(transactions), flush=True)


main()
"""#
}
