import Foundation
import NIOCore
import PosternSession
import SMTPCore
import XCTest

/// AUTH (RFC 4954) and STARTTLS (RFC 3207) as the session machine runs them.
final class SessionAuthTests: XCTestCase {
    static func plain(_ user: String, _ password: String) -> String {
        Data("\0\(user)\0\(password)".utf8).base64EncodedString()
    }

    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    /// A session on an `auth: always` listener whose credential check answers `outcome`
    /// (and records what it was asked).
    private func session(
        _ outcome: CredentialsOutcome = .success, delay: TimeAmount = .zero, asked: AskedCredentials? = nil
    ) async -> SessionSimulator {
        var responders = SessionSimulator.Responders()
        responders.credentials = { request in
            asked?.add(request)
            return outcome
        }
        let configuration = SessionFixture.configuration {
            $0.server.authentication = .always
            $0.authFailureDelay = delay
        }
        var session = await SessionFixture.session(configuration, responders: responders)
        _ = session.replyLines()
        return session
    }

    func testPLAINWithAnInitialResponse() async {
        let asked = AskedCredentials()
        var session = await session(.success, asked: asked)
        await session.expect("AUTH PLAIN " + Self.plain("alice", "secret"), ["235 2.7.0 Authentication successful"])
        XCTAssertEqual(asked.requests.map(\.user), ["alice"])
        XCTAssertEqual(asked.requests.first?.password, "secret")
        XCTAssertFalse("\(asked.requests[0])".contains("secret"), "a request's description never shows the password")
        XCTAssertTrue(session.counted(.authAttempt(mechanism: "PLAIN", result: "success")))
        await session.send("MAIL FROM:<a@example.org>\r\nRSET\r\n")
        _ = session.replyLines()
        XCTAssertEqual(session.lastRecord?.client.auth, "alice", "the record names the user")
        await session.expect("AUTH PLAIN " + Self.plain("alice", "secret"), ["503 5.5.1 Error: already authenticated"])
    }

    func testPLAINWithoutAnInitialResponsePromptsOnce() async {
        var session = await session()
        await session.expect("AUTH PLAIN", ["334 "])
        await session.expect(Self.plain("alice", "secret"), ["235 2.7.0 Authentication successful"])
    }

    func testLOGINPromptsForUserThenPassword() async {
        let asked = AskedCredentials()
        var session = await session(.success, asked: asked)
        await session.expect("AUTH LOGIN", ["334 VXNlcm5hbWU6"])
        await session.expect(Self.base64("bob"), ["334 UGFzc3dvcmQ6"])
        await session.expect(Self.base64("pw"), ["235 2.7.0 Authentication successful"])
        XCTAssertEqual(asked.requests.map(\.user), ["bob"])
        XCTAssertEqual(asked.requests.first?.mechanism, .login)
    }

    func testLOGINWithTheUserAsInitialResponse() async {
        let asked = AskedCredentials()
        var session = await session(.success, asked: asked)
        await session.expect("AUTH LOGIN " + Self.base64("carol"), ["334 UGFzc3dvcmQ6"])
        await session.expect(Self.base64("pw"), ["235 2.7.0 Authentication successful"])
        XCTAssertEqual(asked.requests.map(\.user), ["carol"])
    }

    func testAFailureIsAnsweredAfterTheDelayByTheClock() async {
        var session = await session(.failure(nowLockedOut: false), delay: .seconds(1))
        await session.expect("AUTH PLAIN " + Self.plain("alice", "wrong"), [], "nothing before the delay")
        await session.send("NOOP\r\n")
        XCTAssertTrue(session.replyLines().isEmpty, "pipelined commands wait for the AUTH reply")
        await session.advance(by: .milliseconds(999))
        XCTAssertTrue(session.replyLines().isEmpty)
        await session.advance(by: .milliseconds(1))
        XCTAssertEqual(session.replyLines(), ["535 5.7.8 Authentication credentials invalid", "250 2.0.0 Ok"])
        XCTAssertTrue(session.counted(.authAttempt(mechanism: "PLAIN", result: "failure")))
    }

    func testADrainDuringAnAUTHExchangeEndsTheSessionOnceItIsAnswered() async {
        var session = await session(.failure(nowLockedOut: false), delay: .seconds(1))
        await session.expect("AUTH PLAIN " + Self.plain("alice", "wrong"), [])
        await session.drain()
        XCTAssertNil(session.closed, "the exchange in progress is answered first")
        await session.advance(by: .seconds(1))
        XCTAssertEqual(session.replyLines(), ["535 5.7.8 Authentication credentials invalid",
                                              "421 4.3.2 Service shutting down, closing connection"])
        XCTAssertEqual(session.closed, .ended)
    }

    func testALockedOutAddressGets454AndFailuresAreClientErrors() async {
        var locked = await session(.lockedOut)
        await locked.expect("AUTH PLAIN " + Self.plain("alice", "secret"),
                            ["454 4.7.0 Too many failed authentication attempts, try again later"])
        XCTAssertTrue(locked.counted(.authAttempt(mechanism: "PLAIN", result: "locked_out")))
        var unavailable = await session(.unavailable)
        await unavailable.expect("AUTH PLAIN " + Self.plain("alice", "secret"), ["454 4.7.0 Temporary authentication failure"])
    }

    func testCancelUndecodableAndMalformedResponses() async {
        let asked = AskedCredentials()
        var session = await session(.failure(nowLockedOut: false), asked: asked)
        await session.expect("AUTH LOGIN", ["334 VXNlcm5hbWU6"])
        await session.expect("*", ["501 5.0.0 Authentication cancelled"])
        await session.expect("AUTH PLAIN not-base64!", ["501 5.5.2 Cannot decode response"])
        XCTAssertTrue(asked.requests.isEmpty, "nothing to check")
        // Malformed PLAIN (acting as someone else) is a failure that costs a check.
        await session.expect("AUTH PLAIN " + Data("admin\0alice\0pw".utf8).base64EncodedString(),
                             ["535 5.7.8 Authentication credentials invalid"])
        XCTAssertEqual(asked.requests.map(\.user), [""])
        XCTAssertTrue(session.counted(.authAttempt(mechanism: "LOGIN", result: "cancelled")))
    }

    func testAnOverlongSASLLineIsRefused() async {
        var session = await session()
        await session.expect("AUTH PLAIN", ["334 "])
        await session.expect(String(repeating: "A", count: 13_000), ["500 5.5.6 Authentication exchange line is too long"])
        await session.expect("NOOP", ["250 2.0.0 Ok"])
    }

    func testAUTHIsRefusedWhereItIsNotOffered() async {
        var off = await SessionFixture.session()
        _ = off.replyLines()
        await off.expect("AUTH PLAIN " + Self.plain("a", "b"), ["502 5.5.1 Error: authentication not enabled"])
        var tlsOnly = await SessionFixture.session(SessionFixture.configuration {
            $0.server.authentication = .afterTLS
            $0.server.tlsAvailable = true
        })
        _ = tlsOnly.replyLines()
        await tlsOnly.expect("AUTH PLAIN " + Self.plain("a", "b"), ["538 5.7.11 Encryption required for requested authentication mechanism"])
    }

    // MARK: STARTTLS

    func testPlaintextPipelinedAfterSTARTTLSIsDiscardedAndTheSessionStartsOver() async {
        var session = await SessionFixture.session(SessionFixture.configuration {
            $0.server.tlsAvailable = true
            $0.server.authentication = .afterTLS
        })
        _ = session.replyLines()
        await session.send("STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
        XCTAssertEqual(session.replyLines(), ["220 2.0.0 Ready to start TLS"])
        XCTAssertTrue(session.logMessages.contains("discarded plaintext pipelined after STARTTLS"))
        XCTAssertTrue(session.counted(.tlsEstablished(version: "TLSv1.3")))
        await session.expect("MAIL FROM:<a@example.org>", ["503 Error: send HELO/EHLO first"], "RFC 3207 §4.2: EHLO again, and until then no enhanced codes")
        await session.send("EHLO client.example\r\n")
        let ehlo = session.replies().first
        XCTAssertFalse(ehlo?.lines.contains("STARTTLS") ?? true)
        XCTAssertTrue(ehlo?.lines.contains("AUTH PLAIN LOGIN") ?? false, "AUTH once TLS is active")
        _ = await session.deliver("Subject: t\r\n\r\nx")
        XCTAssertTrue(session.relayed.first?.text.contains("with ESMTPS id") ?? false)
        XCTAssertTrue(session.relayed.first?.text.contains("(using TLSv1.3)") ?? false)
        XCTAssertEqual(session.lastRecord?.client.tls, "TLSv1.3")
        XCTAssertTrue(session.upstreamRequests.allSatisfy {
            if case .begin(let envelope) = $0 { return envelope.reversePath.mailbox?.localPart != "evil" } else { return true }
        })
    }

    func testAFailedHandshakeEndsTheSession() async {
        var responders = SessionSimulator.Responders()
        responders.startTLS = { nil }
        var session = await SessionFixture.session(SessionFixture.configuration { $0.server.tlsAvailable = true }, responders: responders)
        _ = session.replyLines()
        await session.send("STARTTLS\r\n")
        XCTAssertEqual(session.closed, .clientClosed)
        XCTAssertTrue(session.logMessages.contains("TLS handshake did not complete"))
    }

    func testAHandshakeThatNeverCompletesTimesOut() {
        // The machine by hand: STARTTLS asked for, and the driver never reports the handshake.
        let configuration = SessionFixture.configuration {
            $0.server.tlsAvailable = true
            $0.timeouts.tlsHandshake = .seconds(30)
        }
        var now = SessionTime(uptime: .uptimeNanoseconds(5_000_000_000), wallMilliseconds: 0)
        var machine = SessionMachine(configuration: configuration, policy: .empty, peer: SessionFixture.client, now: now)
        XCTAssertTrue(machine.connected(now: now).contains { if case .admit = $0 { return true } else { return false } })
        _ = machine.admitted(.admitted, now: now)
        _ = machine.received(ByteBuffer(string: "EHLO c.example\r\n"), now: now)
        let actions = machine.received(ByteBuffer(string: "STARTTLS\r\n"), now: now)
        XCTAssertTrue(actions.contains { if case .startTLS = $0 { return true } else { return false } })
        XCTAssertEqual(machine.deadline, now.uptime + .seconds(30))
        now = now.advanced(by: .seconds(29))
        XCTAssertTrue(machine.deadlineReached(now: now).isEmpty, "an early timer changes nothing")
        now = now.advanced(by: .seconds(1))
        let after = machine.deadlineReached(now: now)
        XCTAssertTrue(after.contains { if case .close(.ended) = $0 { return true } else { return false } })
        XCTAssertTrue(machine.isClosed)
        XCTAssertEqual(machine.deadline, .distantFuture)
    }
}

/// What a credentials responder was asked, in order.
final class AskedCredentials: @unchecked Sendable {
    private let lock = NSLock()
    private var asked: [CredentialsRequest] = []
    var requests: [CredentialsRequest] { lock.withLock { asked } }
    func add(_ request: CredentialsRequest) { lock.withLock { asked.append(request) } }
}
