import Foundation
import SMTPCore

/// Decoding of the SASL responses Postern serves (RFC 4616 PLAIN, and LOGIN).
public enum SASL {
    /// What a client response line was.
    public enum Response: Equatable, Sendable {
        case data([UInt8])
        /// `*`: the client cancelled the exchange (RFC 4954 §4).
        case cancelled
        case undecodable
    }

    /// A base64 response line; `=` is an empty response.
    public static func decode(_ line: String) -> Response {
        if line == "*" { return .cancelled }
        if line == "=" { return .data([]) }
        guard let data = Data(base64Encoded: line) else { return .undecodable }
        return .data(Array(data))
    }

    /// PLAIN: `[authzid] NUL authcid NUL passwd`. An authorisation identity other than the
    /// user's own is refused (nil), as is anything malformed.
    public static func plain(_ bytes: [UInt8]) -> (user: String, password: String)? {
        let parts = bytes.split(separator: 0, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[1].isEmpty,
              let authzid = String(validating: parts[0], as: UTF8.self),
              let user = String(validating: parts[1], as: UTF8.self),
              let password = String(validating: parts[2], as: UTF8.self) else { return nil }
        guard authzid.isEmpty || authzid == user else { return nil }
        return (user, password)
    }

    /// LOGIN's prompts, base64 of "Username:" and "Password:".
    public static let usernamePrompt = "VXNlcm5hbWU6"
    public static let passwordPrompt = "UGFzc3dvcmQ6"
}

/// One SASL exchange (RFC 4954 §4) in progress: which response the session waits for.
struct SASLExchange: Sendable {
    enum Step: Sendable {
        /// PLAIN without an initial response: the one response.
        case plainResponse
        /// LOGIN: the user name, then the password.
        case loginUser
        case loginPassword(user: [UInt8])
    }

    /// What a response line leads to.
    enum Next: Sendable {
        /// Send `334 challenge` and wait for the next line.
        case prompt(String)
        /// The credentials are complete (nil: malformed, a failure without a known user).
        case credentials(Credentials?)
        /// `*` or undecodable base64: the exchange ends with this reply.
        case refused(SASL.Response)
    }

    struct Credentials: Sendable {
        var user: String
        var password: String
    }

    let mechanism: SASLMechanism
    private(set) var step: Step

    /// Starts an exchange; `initialResponse` is the text after the mechanism, when sent.
    static func start(_ mechanism: SASLMechanism, initialResponse: String?) -> (SASLExchange, Next) {
        switch mechanism {
        case .plain:
            var exchange = SASLExchange(mechanism: .plain, step: .plainResponse)
            guard let initialResponse else { return (exchange, .prompt("")) }
            let next = exchange.respond(initialResponse)
            return (exchange, next)
        case .login:
            var exchange = SASLExchange(mechanism: .login, step: .loginUser)
            guard let initialResponse else { return (exchange, .prompt(SASL.usernamePrompt)) }
            // The user name came with the command (RFC 4954 §4): on to the password.
            let next = exchange.respond(initialResponse)
            return (exchange, next)
        }
    }

    /// The client's response line.
    mutating func respond(_ line: String) -> Next {
        let response = SASL.decode(line)
        guard case .data(let bytes) = response else { return .refused(response) }
        switch step {
        case .plainResponse:
            return .credentials(SASL.plain(bytes).map { Credentials(user: $0.user, password: $0.password) })
        case .loginUser:
            step = .loginPassword(user: bytes)
            return .prompt(SASL.passwordPrompt)
        case .loginPassword(let userBytes):
            guard let user = String(validating: userBytes, as: UTF8.self), !user.isEmpty,
                  let password = String(validating: bytes, as: UTF8.self) else { return .credentials(nil) }
            return .credentials(Credentials(user: user, password: password))
        }
    }
}
