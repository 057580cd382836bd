import Foundation
import Logging
import SMTPCore
import Synchronization
import XCTest

@testable import PosternServer

final class AuthenticationTests: XCTestCase {
    // `mkpasswd -m yescrypt 'correct horse'`, `openssl passwd -6 -salt abcdefgh secret`.
    let yescrypt = "$y$j9T$okFuhCLHXd/vHgzBXh3r1.$rsPF2eEhS2Q9x.wDVyrTg3Ar2mUaCq80VpsWTdIopY4"
    let sha512 = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."

    private func temporaryFile(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "postern-credentials-\(UUID().uuidString)"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testCredentialsFileParses() throws {
        let users = try CredentialsFile.parse("# users\n\nalice:\(yescrypt)\n  bob:\(sha512):18000:0:99999:7:::\n", file: "users")
        XCTAssertEqual(users, ["alice": yescrypt, "bob": sha512])
    }

    func testCredentialsFileErrorsNameTheLine() {
        let cases: [(String, Int, String)] = [
            ("alice\n", 1, "expected user:hash"),
            ("# ok\nalice:\(yescrypt)\nbob:plaintext\n", 3, "not a supported crypt(3) hash"),
            ("alice:\(yescrypt)\nalice:\(sha512)\n", 2, "listed twice"),
            (":\(sha512)\n", 1, "expected user:hash"),
            ("al ice:\(sha512)\n", 1, "has spaces"),
        ]
        for (text, line, message) in cases {
            XCTAssertThrowsError(try CredentialsFile.parse(text, file: "users")) { error in
                let problem = error as? CredentialsError
                XCTAssertEqual(problem?.line, line, text)
                XCTAssertTrue(problem?.description.hasPrefix("users:\(line): ") ?? false, "\(String(describing: problem))")
                XCTAssertTrue(problem?.message.contains(message) ?? false, "\(String(describing: problem))")
            }
        }
        XCTAssertThrowsError(try CredentialsFile.load(path: "/nonexistent/users")) { error in
            XCTAssertTrue("\(error)".contains("cannot read"))
        }
    }

    func testVerifyLockoutAndReload() async throws {
        let path = try temporaryFile("alice:\(yescrypt)\nbob:\(sha512)\n")
        var settings = PosternConfiguration.Authentication(credentials: path)
        settings.lockoutFailures = 3
        settings.lockoutWindow = .seconds(60)
        settings.lockoutDuration = .seconds(300)
        let now = Mutex(ContinuousClock.now)
        let authenticator = Authenticator(settings: settings, logger: Logger(label: "test"), clock: { now.withLock { $0 } })

        let aliceOK = await authenticator.verify(user: "alice", password: "correct horse")
        XCTAssertEqual(aliceOK, .success)
        let bobOK = await authenticator.verify(user: "bob", password: "secret")
        XCTAssertEqual(bobOK, .success)
        let wrong = await authenticator.verify(user: "alice", password: "secret")
        XCTAssertEqual(wrong, .failure)
        let unknown = await authenticator.verify(user: "mallory", password: "secret")
        XCTAssertEqual(unknown, .failure)

        let client = IPAddress("192.0.2.7")!
        let other = IPAddress("192.0.2.8")!
        XCTAssertFalse(authenticator.recordFailure(client))
        XCTAssertFalse(authenticator.recordFailure(client))
        XCTAssertFalse(authenticator.isLockedOut(client))
        XCTAssertTrue(authenticator.recordFailure(client), "the third failure locks out")
        XCTAssertTrue(authenticator.isLockedOut(client))
        XCTAssertFalse(authenticator.isLockedOut(other))
        now.withLock { $0 += .seconds(299) }
        XCTAssertTrue(authenticator.isLockedOut(client))
        now.withLock { $0 += .seconds(2) }
        XCTAssertFalse(authenticator.isLockedOut(client), "the lockout ends")

        // Failures outside the window do not add up.
        XCTAssertFalse(authenticator.recordFailure(other))
        XCTAssertFalse(authenticator.recordFailure(other))
        now.withLock { $0 += .seconds(61) }
        XCTAssertFalse(authenticator.recordFailure(other))
        authenticator.recordSuccess(other)
        XCTAssertFalse(authenticator.recordFailure(other))

        // A broken file keeps the old credentials; a good one replaces them.
        try "alice:broken\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertFalse(authenticator.reload())
        let stillAlice = await authenticator.verify(user: "alice", password: "correct horse")
        XCTAssertEqual(stillAlice, .success)
        try "carol:\(sha512)\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertTrue(authenticator.reload())
        let aliceGone = await authenticator.verify(user: "alice", password: "correct horse")
        XCTAssertEqual(aliceGone, .failure)
        let carol = await authenticator.verify(user: "carol", password: "secret")
        XCTAssertEqual(carol, .success)
    }

    func testAReloadsSettingsApplyFromTheNextAttemptAndAnotherFileIsRead() async throws {
        let first = try temporaryFile("alice:\(sha512)\n")
        let second = try temporaryFile("bob:\(sha512)\n")
        var settings = PosternConfiguration.Authentication(credentials: first)
        settings.lockoutFailures = 5
        let authenticator = Authenticator(settings: settings, logger: Logger(label: "test"))
        let client = IPAddress("192.0.2.9")!
        XCTAssertFalse(authenticator.recordFailure(client))
        XCTAssertFalse(authenticator.recordFailure(client))

        // Fewer failures allowed: the failures counted so far are kept, so the third locks out.
        settings.lockoutFailures = 3
        authenticator.update(settings: settings)
        XCTAssertEqual(authenticator.settings.lockoutFailures, 3)
        XCTAssertTrue(authenticator.recordFailure(client))
        let alice = await authenticator.verify(user: "alice", password: "secret")
        XCTAssertEqual(alice, .success, "the same file is not read again")

        // Another credentials file: read at once.
        settings.credentials = second
        authenticator.update(settings: settings)
        let aliceGone = await authenticator.verify(user: "alice", password: "secret")
        XCTAssertEqual(aliceGone, .failure)
        let bob = await authenticator.verify(user: "bob", password: "secret")
        XCTAssertEqual(bob, .success)
    }

    func testUnreadableCredentialsMeanUnavailable() async {
        let authenticator = Authenticator(settings: .init(credentials: "/nonexistent/users"), logger: Logger(label: "test"))
        let outcome = await authenticator.verify(user: "alice", password: "x")
        XCTAssertEqual(outcome, .unavailable)
    }
}
