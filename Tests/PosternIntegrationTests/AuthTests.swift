import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// AUTH PLAIN and LOGIN (RFC 4954) with real clients: swaks over STARTTLS, Python smtplib,
/// and raw sockets for the error paths. Credentials: Fixtures/auth/credentials (alice is
/// yescrypt, bob SHA-512, carol SHA-256; the passwords are in that file's comments).
final class AuthTests: IntegrationTestCase, @unchecked Sendable {
    static let alice = (user: "alice", password: "alice-Secret-7q")
    static let bob = (user: "bob", password: "bob-Secret-8r")
    static let carol = (user: "carol", password: "carol-Secret-9s")
    static let untrusted = "203.0.113.50"

    /// Postern with four listeners, all relaying to a recording sink, `relay_domains: [local.test]`:
    /// 0: PROXY, auth tls (the default) · 1: PROXY, auth always · 2: plain, auth off · 3: plain, auth always.
    private struct AuthServer {
        var server: TrustServer
        var sink: RecordingSink
        var credentials: URL
        var tlsProxy: Int { server.listeners[0].port }
        var alwaysProxy: Int { server.listeners[1].port }
        var off: Int { server.listeners[2].port }
        var alwaysPlain: Int { server.listeners[3].port }
    }

    private func startAuthServer(auth: String = "", limits: String = "") throws -> AuthServer {
        let (cert, key) = try makeSelfSignedCertificate()
        let sink = try startRecordingSink()
        let credentials = try copyCredentialsFixture()
        var extra = """
        relay_domains: [local.test]
        tls:
          certificate: \(cert.path)
          private_key: \(key.path)
        auth:
          credentials: \(credentials.path)

        """
        extra += auth.isEmpty ? "  failure_delay: 100ms\n" : auth
        extra += limits
        let server = try startTrustServer(
            listeners: [try .proxy(), try .proxy(["auth: always"]), try .plain(["auth: \"off\""]), try .plain(["auth: always"])],
            upstreams: ["smtp://127.0.0.1:\(sink.port)"], extra: extra)
        return AuthServer(server: server, sink: sink, credentials: credentials)
    }

    /// swaks through a PROXY listener as `source`.
    private func swaks(_ port: Int, source: String = AuthTests.untrusted, _ arguments: [String]) throws -> CommandResult {
        try runSwaks(port: port, [
            "--proxy-version", "1", "--proxy-family", "TCP4",
            "--proxy-source", source, "--proxy-source-port", "40000",
            "--proxy-dest", "127.0.0.1", "--proxy-dest-port", "25",
        ] + arguments)
    }

    /// Python smtplib through a PROXY listener: connects as `source`, `login()` (or the
    /// given mechanism), sends one message; prints a JSON summary.
    private static let smtplibClient = #"""
    import json, smtplib, socket, sys
    port, source, user, password, mech, rcpt = sys.argv[1:7]
    class ProxySMTP(smtplib.SMTP):
        def _get_socket(self, host, port, timeout):
            s = socket.create_connection((host, port), timeout)
            s.sendall(("PROXY TCP4 %s 127.0.0.1 40123 25\r\n" % source).encode())
            return s
    out = {}
    s = ProxySMTP("127.0.0.1", int(port), timeout=20)
    s.ehlo("python.client.test")
    out["auth_advertised"] = s.has_extn("auth")
    out["auth_mechanisms"] = s.esmtp_features.get("auth", "")
    try:
        if mech == "login()":
            code, text = s.login(user, password)
        else:
            s.user, s.password = user, password
            initial = mech.endswith("+ir")
            name = mech.replace("+ir", "")
            code, text = s.auth(name, getattr(s, "auth_" + name.lower()), initial_response_ok=initial)
        out["auth"] = [code, text.decode()]
    except smtplib.SMTPAuthenticationError as e:
        out["auth"] = [e.smtp_code, e.smtp_error.decode()]
        s.quit()
        print(json.dumps(out))
        sys.exit(0)
    try:
        refused = s.sendmail("sender@client.test", [rcpt], "Subject: smtplib %s\r\n\r\nhello\r\n" % mech)
        out["sendmail"] = "ok"
    except smtplib.SMTPRecipientsRefused as e:
        out["sendmail"] = {k: [v[0], v[1].decode()] for k, v in e.recipients.items()}
    s.quit()
    print(json.dumps(out))
    """#

    private func smtplib(_ port: Int, source: String = AuthTests.untrusted, user: String, password: String, mechanism: String,
                         recipient: String = "friend@remote.test") throws -> [String: Any] {
        let result = try runPython(code: Self.smtplibClient, ["\(port)", source, user, password, mechanism, recipient])
        XCTAssertEqual(result.status, 0, result.description)
        return (try? JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any]) ?? ["error": result.description]
    }

    // MARK: - swaks over STARTTLS

    func testSwaksAuthOverSTARTTLSRelaysFromAnUntrustedAddress() throws {
        let s = try startAuthServer()
        for (mechanism, user) in [("PLAIN", Self.alice), ("LOGIN", Self.bob)] {
            let result = try swaks(s.tlsProxy, ["--tls", "--auth", mechanism, "--auth-user", user.user,
                                                "--auth-password", user.password, "--from", "sender@client.test",
                                                "--to", "friend@remote.test", "--header", "Subject: swaks \(mechanism)"])
            XCTAssertEqual(result.status, 0, result.description)
            let replies = result.swaksReplies
            XCTAssertTrue(replies.contains { $0.hasPrefix("250-AUTH PLAIN LOGIN") || $0.hasPrefix("250 AUTH PLAIN LOGIN") },
                          "AUTH not advertised after STARTTLS: \(replies)")
            XCTAssertTrue(replies.contains { $0.hasPrefix("235 2.7.0") }, "\(mechanism): \(replies)")
        }
        let messages = s.sink.waitForMessages(2)
        XCTAssertEqual(messages.map(\.rcpts), [["friend@remote.test"], ["friend@remote.test"]])
        XCTAssertTrue(messages.allSatisfy { !$0.mailParams.contains { $0.uppercased().hasPrefix("AUTH=") } },
                      "AUTH= reached the upstream: \(messages.map(\.mailParams))")

        // The decision records name the user, under the PROXY address.
        for user in ["alice", "bob"] {
            let record = DecisionLog.waitForRecord(s.server.decisionLog) { DecisionLog.client($0)["auth"] as? String == user }
            XCTAssertEqual(record?["decision"] as? String, "accepted", DecisionLog.describe(s.server.decisionLog))
            XCTAssertEqual(record.map { DecisionLog.client($0)["ip"] as? String }, Self.untrusted)
        }
        let successes = Metrics.waitForValue(port: s.server.metricsPort, "postern_auth_attempts_total",
                                             ["mechanism": "PLAIN", "result": "success"], atLeast: 1)
        XCTAssertEqual(successes, 1)
        XCTAssertEqual(Metrics.value(try Metrics.scrape(port: s.server.metricsPort), "postern_auth_attempts_total",
                                     ["mechanism": "LOGIN", "result": "success"]), 1)
    }

    func testSwaksWrongPasswordIs535AndNothingIsRelayed() throws {
        let s = try startAuthServer()
        let result = try swaks(s.tlsProxy, ["--tls", "--auth", "PLAIN", "--auth-user", "alice",
                                            "--auth-password", "wrong-password", "--from", "sender@client.test",
                                            "--to", "friend@remote.test"])
        XCTAssertNotEqual(result.status, 0, result.description)
        XCTAssertTrue(result.swaksReplies.contains { $0.hasPrefix("535 5.7.8") }, result.description)
        sleep(seconds: 0.3)
        XCTAssertEqual(s.sink.messageCount, 0)
        XCTAssertEqual(Metrics.waitForValue(port: s.server.metricsPort, "postern_auth_attempts_total",
                                            ["mechanism": "PLAIN", "result": "failure"], atLeast: 1), 1)
    }

    // MARK: - Offered where and when

    func testAuthBeforeSTARTTLSOnATLSListenerIs538AndNotAdvertised() throws {
        let s = try startAuthServer()
        let client = try RawSMTPClient.proxied(port: s.tlsProxy, source: Self.untrusted, ehlo: nil)
        let ehlo = try client.command("EHLO raw.client.test")
        XCTAssertTrue(ehlo.lines.contains { $0.dropFirst(4).uppercased() == "STARTTLS" }, ehlo.text)
        XCTAssertFalse(ehlo.lines.contains { $0.dropFirst(4).uppercased().hasPrefix("AUTH") }, "AUTH advertised before TLS: \(ehlo.text)")
        let auth = try client.command("AUTH PLAIN " + plainResponse(user: Self.alice.user, password: Self.alice.password))
        XCTAssertEqual(auth.code, 538, auth.text)
        XCTAssertEqual(auth.enhancedCode, "5.7.11", auth.text)
        // Still unauthenticated: a remote recipient is refused.
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        let rcpt = try client.command("RCPT TO:<friend@remote.test>")
        XCTAssertEqual(rcpt.code, 554, rcpt.text)
        XCTAssertEqual(rcpt.enhancedCode, "5.7.1", rcpt.text)
        // AUTH= on MAIL is still a known parameter on a listener that offers AUTH later.
        _ = try client.command("RSET")
        XCTAssertEqual(try client.command("MAIL FROM:<a@client.test> AUTH=<>").code, 250)
    }

    func testAlwaysListenerAdvertisesWithoutTLSAndOffListenerRefuses() throws {
        let s = try startAuthServer()
        let always = try RawSMTPClient.greeted(port: s.alwaysPlain)
        let ehlo = try always.command("EHLO raw.client.test")
        XCTAssertTrue(ehlo.lines.contains { $0.dropFirst(4) == "AUTH PLAIN LOGIN" }, ehlo.text)
        XCTAssertEqual(try always.command("AUTH PLAIN " + plainResponse(user: "carol", password: Self.carol.password)).code, 235,
                       "SHA-256-crypt user")

        let off = try RawSMTPClient.greeted(port: s.off)
        let offEhlo = try off.command("EHLO raw.client.test")
        XCTAssertFalse(offEhlo.lines.contains { $0.dropFirst(4).uppercased().hasPrefix("AUTH") }, offEhlo.text)
        let refused = try off.command("AUTH PLAIN " + plainResponse(user: Self.alice.user, password: Self.alice.password))
        XCTAssertEqual(refused.code, 502, refused.text)
        XCTAssertEqual(refused.enhancedCode, "5.5.1", refused.text)
        // AUTH= is an unknown MAIL parameter where AUTH is not offered.
        let mail = try off.command("MAIL FROM:<a@client.test> AUTH=<>")
        XCTAssertTrue((500..<600).contains(mail.code), mail.text)
    }

    // MARK: - Python smtplib

    func testPythonSmtplibLoginPlainAndLoginWithYescryptAndSHA512Users() throws {
        let s = try startAuthServer()
        let cases: [((user: String, password: String), String)] = [
            (Self.alice, "login()"), (Self.bob, "login()"),
            (Self.alice, "PLAIN+ir"), (Self.bob, "PLAIN"),
            (Self.alice, "LOGIN+ir"), (Self.bob, "LOGIN"),
        ]
        for (user, mechanism) in cases {
            let out = try smtplib(s.alwaysProxy, user: user.user, password: user.password, mechanism: mechanism)
            XCTAssertEqual(out["auth_advertised"] as? Bool, true, "\(out)")
            XCTAssertEqual((out["auth"] as? [Any])?.first as? Int, 235, "\(user.user) \(mechanism): \(out)")
            XCTAssertEqual(out["sendmail"] as? String, "ok", "\(user.user) \(mechanism): \(out)")
        }
        let wrong = try smtplib(s.alwaysProxy, user: "bob", password: "not-bobs", mechanism: "login()")
        XCTAssertEqual((wrong["auth"] as? [Any])?.first as? Int, 535, "\(wrong)")
        let unknown = try smtplib(s.alwaysProxy, user: "nobody", password: "whatever", mechanism: "LOGIN")
        XCTAssertEqual((unknown["auth"] as? [Any])?.first as? Int, 535, "\(unknown)")
        let messages = s.sink.waitForMessages(cases.count)
        XCTAssertEqual(messages.count, cases.count)
        XCTAssertTrue(messages.allSatisfy { $0.rcpts == ["friend@remote.test"] })
    }

    func testUnauthenticatedUntrustedClientStillCannotRelay() throws {
        let s = try startAuthServer()
        let client = try RawSMTPClient.proxied(port: s.alwaysProxy, source: Self.untrusted)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        let rcpt = try client.command("RCPT TO:<friend@remote.test>")
        XCTAssertEqual(rcpt.code, 554, rcpt.text)
        XCTAssertEqual(rcpt.enhancedCode, "5.7.1", rcpt.text)
        XCTAssertTrue(rcpt.text.contains("Relay access denied"), rcpt.text)
        XCTAssertEqual(try client.command("RCPT TO:<user@local.test>").code, 250, "a relay domain is still served")
        // A failed AUTH does not open the relay either.
        _ = try client.command("RSET")
        XCTAssertEqual(try client.command("AUTH PLAIN " + plainResponse(user: "alice", password: "nope")).code, 535)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<friend@remote.test>").code, 554)
        sleep(seconds: 0.3)
        XCTAssertEqual(s.sink.messageCount, 0)
    }

    // MARK: - The exchange, step by step (raw)

    func testExchangeRepliesAndErrorPaths() throws {
        let s = try startAuthServer()
        let c = try RawSMTPClient.proxied(port: s.alwaysProxy, source: Self.untrusted)

        XCTAssertEqual(try c.command("AUTH CRAM-MD5").code, 504)
        let unknown = try c.command("AUTH GSSAPI")
        XCTAssertEqual(unknown.enhancedCode, "5.5.4", unknown.text)
        XCTAssertEqual(try c.command("AUTH").code, 501, "AUTH without a mechanism")

        // Cancelled exchanges: "*" after a 334 (RFC 4954 §4).
        let plainPrompt = try c.command("AUTH PLAIN")
        XCTAssertEqual(plainPrompt.code, 334, plainPrompt.text)
        let cancelled = try c.command("*")
        XCTAssertEqual(cancelled.code, 501, cancelled.text)
        XCTAssertEqual(cancelled.enhancedCode, "5.0.0", cancelled.text)
        let loginPrompt = try c.command("AUTH LOGIN")
        XCTAssertEqual(loginPrompt.text, "334 VXNlcm5hbWU6")
        XCTAssertEqual(try c.command(base64(Array("alice".utf8))).text, "334 UGFzc3dvcmQ6")
        XCTAssertEqual(try c.command("*").code, 501, "cancelled at the password prompt")

        // Undecodable base64.
        _ = try c.command("AUTH PLAIN")
        let bad = try c.command("!!!not-base64!!!")
        XCTAssertEqual(bad.code, 501, bad.text)
        XCTAssertEqual(bad.enhancedCode, "5.5.2", bad.text)
        // An empty response, and an authorisation identity that is not the user.
        XCTAssertEqual(try c.command("AUTH PLAIN =").code, 535)
        let authzid = base64(Array("bob\0alice\0\(Self.alice.password)".utf8))
        XCTAssertEqual(try c.command("AUTH PLAIN " + authzid).code, 535, "authzid other than the user")

        // AUTH inside a transaction.
        XCTAssertEqual(try c.command("MAIL FROM:<sender@client.test>").code, 250)
        let inTransaction = try c.command("AUTH PLAIN " + plainResponse(user: "alice", password: Self.alice.password))
        XCTAssertEqual(inTransaction.code, 503, inTransaction.text)
        XCTAssertEqual(inTransaction.enhancedCode, "5.5.1", inTransaction.text)
        XCTAssertEqual(try c.command("RSET").code, 250)
        c.close()

        // A fresh session (the one above has used up errors): LOGIN with the user name as
        // initial response, then AUTH again is 503, then MAIL with AUTH=<> and AUTH=xtext.
        let d = try RawSMTPClient.proxied(port: s.alwaysProxy, source: "203.0.113.51")
        // A response line over RFC 4954's 12288 octets.
        XCTAssertEqual(try d.command("AUTH PLAIN").code, 334)
        let long = try d.command(String(repeating: "QUFB", count: 4000))
        XCTAssertEqual(long.code, 500, long.text)
        XCTAssertEqual(long.enhancedCode, "5.5.6", long.text)
        XCTAssertEqual(try d.command("NOOP").code, 250, "session unusable after a long response")
        XCTAssertEqual(try d.command("AUTH LOGIN " + base64(Array("alice".utf8))).text, "334 UGFzc3dvcmQ6")
        let ok = try d.command(base64(Array(Self.alice.password.utf8)))
        XCTAssertEqual(ok.code, 235, ok.text)
        XCTAssertEqual(ok.enhancedCode, "2.7.0", ok.text)
        let again = try d.command("AUTH PLAIN " + plainResponse(user: "bob", password: Self.bob.password))
        XCTAssertEqual(again.code, 503, again.text)
        XCTAssertEqual(try d.command("MAIL FROM:<a@b.test> AUTH=<>").code, 250)
        XCTAssertEqual(try d.command("RCPT TO:<friend@remote.test>").code, 250, "authenticated: relay anywhere")
        XCTAssertEqual(try d.sendMessage("Subject: auth empty\r\n\r\nx\r\n").code, 250)
        XCTAssertEqual(try d.command("MAIL FROM:<b@b.test> AUTH=alice+40client.test").code, 250)
        XCTAssertEqual(try d.command("RCPT TO:<other@remote.test>").code, 250)
        XCTAssertEqual(try d.sendMessage("Subject: auth xtext\r\n\r\nx\r\n").code, 250)
        let messages = s.sink.waitForMessages(2)
        XCTAssertEqual(messages.map(\.mailFrom), ["a@b.test", "b@b.test"])
        XCTAssertTrue(messages.allSatisfy { !$0.mailParams.contains { $0.uppercased().hasPrefix("AUTH=") } },
                      "AUTH= forwarded: \(messages.map(\.mailParams))")
        let record = DecisionLog.waitForRecord(s.server.decisionLog) { $0["mail_from"] as? String == "a@b.test" }
        XCTAssertEqual(record.map { DecisionLog.client($0)["auth"] as? String }, "alice")
    }

    // MARK: - Lockout and failure delay

    func testLockoutAfterThreeFailuresAndFailureDelay() throws {
        let s = try startAuthServer(auth: "  failure_delay: 300ms\n  lockout_failures: 3\n  lockout_window: 10m\n  lockout_duration: 15m\n")
        let attacker = "203.0.113.66"
        let c = try RawSMTPClient.proxied(port: s.alwaysProxy, source: attacker)
        for i in 1...3 {
            let start = Date()
            let reply = try c.command("AUTH PLAIN " + plainResponse(user: "alice", password: "guess-\(i)"))
            let elapsed = Date().timeIntervalSince(start)
            XCTAssertEqual(reply.code, 535, reply.text)
            XCTAssertEqual(reply.enhancedCode, "5.7.8", reply.text)
            XCTAssertGreaterThanOrEqual(elapsed, 0.3, "failure \(i) answered after \(elapsed)s, before failure_delay")
        }
        // Locked out: even the right password, and in a new session from the same address.
        let locked = try c.command("AUTH PLAIN " + plainResponse(user: "alice", password: Self.alice.password))
        XCTAssertEqual(locked.code, 454, locked.text)
        XCTAssertEqual(locked.enhancedCode, "4.7.0", locked.text)
        c.close()
        let c2 = try RawSMTPClient.proxied(port: s.alwaysProxy, source: attacker, sourcePort: 40999)
        let locked2 = try c2.command("AUTH LOGIN " + base64(Array("bob".utf8)))
        // The lockout may answer at once, or after the exchange.
        if locked2.code == 334 {
            let after = try c2.command(base64(Array(Self.bob.password.utf8)))
            XCTAssertEqual(after.code, 454, after.text)
        } else {
            XCTAssertEqual(locked2.code, 454, locked2.text)
        }
        // Another address is not affected.
        let other = try RawSMTPClient.proxied(port: s.alwaysProxy, source: "203.0.113.67")
        XCTAssertEqual(try other.command("AUTH PLAIN " + plainResponse(user: "alice", password: Self.alice.password)).code, 235)
        // A success is quick (no delay on success).
        let quick = try RawSMTPClient.proxied(port: s.alwaysProxy, source: "203.0.113.68")
        let start = Date()
        XCTAssertEqual(try quick.command("AUTH PLAIN " + plainResponse(user: "bob", password: Self.bob.password)).code, 235)
        XCTAssertLessThan(Date().timeIntervalSince(start), 2.0)
        XCTAssertGreaterThanOrEqual(Metrics.waitForValue(port: s.server.metricsPort, "postern_auth_attempts_total",
                                                         ["result": "locked_out"], atLeast: 1) ?? 0, 1)
    }

    // MARK: - Secrets stay secret

    func testPasswordsNeverAppearInTheLogOrTheDecisionLog() throws {
        let s = try startAuthServer()
        let secret = "Sup3r-Secret-Canary-4711"
        // Successful and failed exchanges of every shape, at debug level.
        let a = try RawSMTPClient.proxied(port: s.alwaysProxy, source: Self.untrusted)
        XCTAssertEqual(try a.command("AUTH PLAIN " + plainResponse(user: "alice", password: secret)).code, 535)
        XCTAssertEqual(try a.command("AUTH LOGIN").code, 334)
        XCTAssertEqual(try a.command(base64(Array("alice".utf8))).code, 334)
        XCTAssertEqual(try a.command(base64(Array(secret.utf8))).code, 535)
        XCTAssertEqual(try a.command("AUTH PLAIN").code, 334)
        XCTAssertEqual(try a.command(plainResponse(user: "bob", password: secret)).code, 535)
        XCTAssertEqual(try a.command("AUTH PLAIN " + plainResponse(user: "alice", password: Self.alice.password)).code, 235)
        XCTAssertEqual(try a.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try a.command("RCPT TO:<friend@remote.test>").code, 250)
        XCTAssertEqual(try a.sendMessage("Subject: secret\r\n\r\nx\r\n").code, 250)
        _ = try a.command("QUIT")
        let swaksResult = try swaks(s.tlsProxy, ["--tls", "--auth", "LOGIN", "--auth-user", "bob", "--auth-password", secret,
                                                 "--from", "s@client.test", "--to", "friend@remote.test"])
        XCTAssertTrue(swaksResult.swaksReplies.contains { $0.hasPrefix("535") }, swaksResult.description)
        XCTAssertNotNil(DecisionLog.waitForRecord(s.server.decisionLog) { DecisionLog.client($0)["auth"] as? String == "alice" })
        sleep(seconds: 0.5)

        let log = s.server.log
        XCTAssertTrue(log.contains("AUTH"), "the debug log does not mention AUTH at all; is it at debug level?")
        let decisions = (try? String(contentsOf: s.server.decisionLog, encoding: .utf8)) ?? ""
        let forbidden = [
            secret, Self.alice.password, base64(Array(secret.utf8)), base64(Array(Self.alice.password.utf8)),
            plainResponse(user: "alice", password: secret), plainResponse(user: "bob", password: secret),
            plainResponse(user: "alice", password: Self.alice.password),
        ]
        for text in forbidden {
            XCTAssertFalse(log.contains(text), "Postern's log contains a credential: \(text)")
            XCTAssertFalse(decisions.contains(text), "the decision log contains a credential: \(text)")
        }
    }

    // MARK: - The upstream learns the user

    func testAuthenticatedUserReachesPostfixThroughXCLIENT() throws {
        let postfix = try startPostfix()
        let credentials = try copyCredentialsFixture()
        let server = try startTrustServer(
            listeners: [try .proxy(["auth: always"])], upstreams: ["smtp://127.0.0.1:\(postfix.port)"],
            extra: "relay_domains: [local.test]\nauth:\n  credentials: \(credentials.path)\n")
        let client = try RawSMTPClient.proxied(port: server.port, source: Self.untrusted)
        // postfix.test is not a relay domain: only the authenticated user may send there.
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<alice@postfix.test>").code, 554)
        XCTAssertEqual(try client.command("RSET").code, 250)
        XCTAssertEqual(try client.command("AUTH PLAIN " + plainResponse(user: "bob", password: Self.bob.password)).code, 235)
        XCTAssertEqual(try client.command("MAIL FROM:<sender@client.test> AUTH=<>").code, 250)
        XCTAssertEqual(try client.command("RCPT TO:<alice@postfix.test>").code, 250)
        XCTAssertEqual(try client.sendMessage("Subject: as bob\r\n\r\nhello\r\n", timeout: 20).code, 250)
        XCTAssertEqual(try client.command("QUIT").code, 221)
        XCTAssertTrue(waitUntil(timeout: 15) { postfix.deliveredMessages(user: "alice").count == 1 }, postfix.maillog)
        // XCLIENT ADDR and LOGIN: Postfix logs the real client and the user with the message.
        XCTAssertTrue(postfix.maillog.contains("client=unknown[\(Self.untrusted)], sasl_method=XCLIENT, sasl_username=bob"),
                      "Postfix did not learn the client and the user:\n\(postfix.maillog)")
        XCTAssertFalse(postfix.maillog.contains(Self.bob.password))
    }

    // MARK: - Reload

    func testCredentialsFileEditedThenSIGHUPTheNewPasswordWorks() throws {
        let s = try startAuthServer(auth: "  failure_delay: 0s\n  lockout_failures: 100\n")
        let newPassword = "alice-Changed-3t"
        let hash = try sha512CryptHash(newPassword)
        XCTAssertEqual(try authCode(s.alwaysPlain, user: "alice", password: newPassword), 535, "new password before the edit")
        var text = try String(contentsOf: s.credentials, encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            line.hasPrefix("alice:") ? "alice:\(hash)" : String(line)
        }
        text = lines.joined(separator: "\n") + "dave:\(try sha512CryptHash("dave-Secret-5u"))\n"
        try text.write(to: s.credentials, atomically: true, encoding: .utf8)
        s.server.postern.process.signal(SIGHUP)
        XCTAssertTrue(waitUntil(timeout: 10) { s.server.log.contains("credentials reloaded") }, s.server.postern.process.tail())
        XCTAssertEqual(try authCode(s.alwaysPlain, user: "alice", password: newPassword), 235, "new password after SIGHUP")
        XCTAssertEqual(try authCode(s.alwaysPlain, user: "alice", password: Self.alice.password), 535, "old password after SIGHUP")
        XCTAssertEqual(try authCode(s.alwaysPlain, user: "dave", password: "dave-Secret-5u"), 235, "a user added")
        XCTAssertEqual(try authCode(s.alwaysPlain, user: "bob", password: Self.bob.password), 235, "an unchanged user")

        // A broken file keeps the previous credentials.
        try "alice:not-a-hash\n".write(to: s.credentials, atomically: true, encoding: .utf8)
        s.server.postern.process.signal(SIGHUP)
        XCTAssertTrue(waitUntil(timeout: 10) { s.server.log.contains("credentials reload failed") }, s.server.postern.process.tail())
        XCTAssertEqual(try authCode(s.alwaysPlain, user: "alice", password: newPassword), 235, "after a broken reload")
        XCTAssertTrue(s.server.postern.process.isRunning)
    }

    private func authCode(_ port: Int, user: String, password: String) throws -> Int {
        let c = try RawSMTPClient.greeted(port: port)
        defer { c.close() }
        return try c.command("AUTH PLAIN " + plainResponse(user: user, password: password)).code
    }
}
