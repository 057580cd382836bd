import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternNative
import SMTPCore
import Synchronization

/// A problem in the credentials file, with its position.
public struct CredentialsError: Error, CustomStringConvertible, Sendable {
    public var file: String
    public var line: Int
    public var message: String
    public var description: String { "\(file):\(line): \(message)" }
}

/// The credentials file: one `user:hash` per line, the hash in crypt(3) form as `mkpasswd`
/// (`mkpasswd -m yescrypt`) or `openssl passwd -6` write it. Blank lines and `#` comments
/// are ignored; fields after a second colon (as in `/etc/shadow`) are ignored.
public enum CredentialsFile {
    public static func load(path: String) throws(CredentialsError) -> [String: String] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw CredentialsError(file: path, line: 1, message: "cannot read the credentials file: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(CredentialsError) -> [String: String] {
        var users: [String: String] = [:]
        var number = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count >= 2, !fields[0].isEmpty else {
                throw CredentialsError(file: file, line: number, message: "expected user:hash")
            }
            let user = String(fields[0])
            let hash = String(fields[1])
            guard !user.contains(where: { $0.isWhitespace }), user.utf8.count <= 255 else {
                throw CredentialsError(file: file, line: number, message: "user name '\(user)' has spaces or is too long")
            }
            guard PasswordHash.isSupported(hash) else {
                throw CredentialsError(file: file, line: number, message:
                    "user '\(user)': not a supported crypt(3) hash (use yescrypt $y$ from `mkpasswd -m yescrypt` or SHA-512 $6$ from `openssl passwd -6`)")
            }
            guard users[user] == nil else {
                throw CredentialsError(file: file, line: number, message: "user '\(user)' is listed twice")
            }
            users[user] = hash
        }
        return users
    }
}

/// Checks SASL credentials against the credentials file, slows and locks out guessing.
///
/// - The file is read at start, on SIGHUP and when it changes; a file that fails to load
///   keeps the previous credentials (and is logged with its line).
/// - Hashes are verified on NIO's blocking thread pool: yescrypt costs tens of
///   milliseconds, which must not stall an event loop. An unknown user costs the same as a
///   wrong password, so user names cannot be probed by timing.
/// - Per client address, `lockoutFailures` failures within `lockoutWindow` lock AUTH out for
///   `lockoutDuration`. The table is bounded; the oldest entries go first.
public final class Authenticator: Sendable {
    public enum Outcome: Sendable, Equatable {
        case success
        case failure
        /// No usable credentials (the file never loaded).
        case unavailable
    }

    /// The settings in force (a configuration reload may change them).
    public var settings: PosternConfiguration.Authentication { current.withLock { $0 } }
    private let current: Mutex<PosternConfiguration.Authentication>
    private let logger: Logger
    private let credentials: Mutex<[String: String]?>
    private let failures: Mutex<[IPAddress: Failures]>
    private let clock: @Sendable () -> ContinuousClock.Instant
    /// The most client addresses tracked for lockout.
    static let maximumTracked = 100_000

    private struct Failures {
        var times: [ContinuousClock.Instant] = []
        var lockedUntil: ContinuousClock.Instant?
    }

    /// A valid hash of an unguessable value, verified for unknown users.
    private static let decoy = "$6$postern.decoy$sIj04LL1LMhbgFajZT4XcPhkj2EL5q3gvozommAxUThxTuHqs5hF10kVwjUf41eOake0qlLUqhNqT2s62Uxh0."

    public init(settings: PosternConfiguration.Authentication, logger: Logger,
                clock: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }) {
        self.current = Mutex(settings)
        self.logger = logger
        self.clock = clock
        self.failures = Mutex([:])
        do {
            credentials = Mutex(try CredentialsFile.load(path: settings.credentials))
        } catch {
            logger.error("credentials not loaded; AUTH answers 454 until they are", metadata: ["error": "\(error)"])
            credentials = Mutex(nil)
        }
    }

    /// Rereads the credentials file; on an error the previous credentials stay.
    @discardableResult
    public func reload() -> Bool {
        let path = settings.credentials
        do {
            let users = try CredentialsFile.load(path: path)
            credentials.withLock { $0 = users }
            logger.notice("credentials reloaded", metadata: ["file": "\(path)", "users": "\(users.count)"])
            return true
        } catch {
            logger.error("credentials reload failed; the previous credentials stay", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// A configuration reload's settings: the failure delay and lockout apply from the next
    /// attempt (failures counted so far are kept), and another credentials file is read now.
    public func update(settings: PosternConfiguration.Authentication) {
        let previous = current.withLock { current in
            defer { current = settings }
            return current
        }
        if previous.credentials != settings.credentials { reload() }
    }

    /// Verifies `password` for `user`, off the event loop.
    public func verify(user: String, password: String) async -> Outcome {
        guard let users = credentials.withLock({ $0 }) else { return .unavailable }
        let hash = users[user]
        let matched: Bool
        do {
            matched = try await NIOThreadPool.singleton.runIfActive {
                let ok = PasswordHash.verify(password, against: hash ?? Self.decoy)
                return ok && hash != nil
            }
        } catch {
            return .unavailable
        }
        return matched ? .success : .failure
    }

    /// Whether AUTH from `address` is locked out now.
    public func isLockedOut(_ address: IPAddress) -> Bool {
        let now = clock()
        return failures.withLock { table in
            guard let until = table[address]?.lockedUntil else { return false }
            if until > now { return true }
            table[address] = nil
            return false
        }
    }

    /// Counts a failure; true when it locks the address out.
    @discardableResult
    public func recordFailure(_ address: IPAddress) -> Bool {
        let now = clock()
        let settings = self.settings
        let window = Duration.nanoseconds(settings.lockoutWindow.nanoseconds)
        let lockout = Duration.nanoseconds(settings.lockoutDuration.nanoseconds)
        return failures.withLock { table in
            if table[address] == nil && table.count >= Self.maximumTracked {
                // Drop entries whose failures are all outside the window and not locked.
                table = table.filter { _, entry in
                    (entry.lockedUntil.map { $0 > now } ?? false) || entry.times.contains { now - $0 < window }
                }
                if table.count >= Self.maximumTracked, let any = table.keys.first { table[any] = nil }
            }
            var entry = table[address] ?? Failures()
            entry.times = entry.times.filter { now - $0 < window } + [now]
            var locked = false
            if entry.times.count >= settings.lockoutFailures {
                entry.lockedUntil = now + lockout
                entry.times = []
                locked = true
            }
            table[address] = entry
            return locked
        }
    }

    /// A success clears the address's failures.
    public func recordSuccess(_ address: IPAddress) {
        failures.withLock { _ = $0.removeValue(forKey: address) }
    }

    /// Reloads when the credentials file changes (see ``FileWatch``); SIGHUP is the
    /// server's, which reloads the policy and the credentials together.
    func watchFile() -> DispatchSourceTimer {
        FileWatch.watch({ [self] in [settings.credentials] }) { [self] in
            logger.notice("credentials file changed: reloading")
            reload()
        }
    }
}
