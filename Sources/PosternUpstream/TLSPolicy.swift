import NIOSSL

/// Which TLS versions, TLS 1.2 cipher suites and key-exchange groups a side of Postern
/// negotiates (`tls.min_version`, `tls.ciphers`, `tls.curves`, and `tls_policy:` of an
/// upstream). The default is Mozilla's "intermediate" profile: TLS 1.2 and 1.3, AEAD suites
/// with forward secrecy only, X25519, P-256 and P-384. TLS 1.3's suites are not configurable
/// (BoringSSL fixes them; all are AEAD with forward secrecy).
///
/// Names are checked here, against what BoringSSL supports, before they reach it: a cipher
/// string it cannot use would stop the process inside swift-nio-ssl.
public struct TLSPolicy: Hashable, Sendable {
    public enum Version: String, Hashable, Sendable, CaseIterable {
        case tls10 = "1.0", tls11 = "1.1", tls12 = "1.2", tls13 = "1.3"

        var nio: TLSVersion {
            switch self {
            case .tls10: .tlsv1
            case .tls11: .tlsv11
            case .tls12: .tlsv12
            case .tls13: .tlsv13
            }
        }
    }

    public var minimumVersion: Version = .tls12
    /// TLS 1.2 (and older) cipher suites by their OpenSSL names; nil: the default for the
    /// minimum version (`defaultCiphers(for:)`).
    public var ciphers: [String]?
    /// Key-exchange groups (`X25519`, `P-256`, …); nil: X25519, P-256, P-384.
    public var curves: [String]?

    public init(minimumVersion: Version = .tls12, ciphers: [String]? = nil, curves: [String]? = nil) {
        self.minimumVersion = minimumVersion
        self.ciphers = ciphers
        self.curves = curves
    }

    /// Mozilla's "intermediate" TLS 1.2 suites that BoringSSL has (it has no DHE suites).
    public static let intermediateCiphers = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ]

    /// What TLS 1.0 and 1.1 can use (CBC with SHA-1, forward secrecy kept), added to the
    /// default when `min_version` is below 1.2: otherwise those versions would have no suite.
    public static let legacyCiphers = [
        "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
    ]

    /// Every TLS 1.2-and-older suite BoringSSL supports (and a `ciphers:` list may name).
    public static let supportedCiphers: Set<String> = Set(intermediateCiphers + legacyCiphers + [
        "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA", "DES-CBC3-SHA",
    ])

    /// The groups a `curves:` list may name, by every name they go by.
    public static let supportedCurves: [String: NIOTLSCurve] = [
        "x25519": .x25519, "p-256": .secp256r1, "prime256v1": .secp256r1, "secp256r1": .secp256r1,
        "p-384": .secp384r1, "secp384r1": .secp384r1, "p-521": .secp521r1, "secp521r1": .secp521r1,
        "x25519mlkem768": .x25519_MLKEM768,
    ]

    public static let defaultCurves = ["X25519", "P-256", "P-384"]

    public static func defaultCiphers(for version: Version) -> [String] {
        version < .tls12 ? intermediateCiphers + legacyCiphers : intermediateCiphers
    }

    /// The suites in force.
    public var effectiveCiphers: [String] { ciphers ?? Self.defaultCiphers(for: minimumVersion) }

    /// Why `names` is not a usable `ciphers:` list, or nil.
    public static func cipherProblem(_ names: [String]) -> String? {
        if names.isEmpty { return "names no cipher suite" }
        let unknown = names.filter { !supportedCiphers.contains($0) }
        guard unknown.isEmpty else {
            return "'\(unknown[0])' is not a TLS 1.2 cipher suite this build supports (one of: \(supportedCiphers.sorted().joined(separator: ", ")))"
        }
        return nil
    }

    /// Why `names` is not a usable `curves:` list, or nil.
    public static func curveProblem(_ names: [String]) -> String? {
        if names.isEmpty { return "names no group" }
        guard let unknown = names.first(where: { supportedCurves[$0.lowercased()] == nil }) else { return nil }
        return "'\(unknown)' is not a group this build supports (one of: X25519, P-256, P-384, P-521, X25519MLKEM768)"
    }

    /// `configuration` restricted to this policy. The names must have passed the checks above.
    public func apply(to configuration: inout TLSConfiguration) {
        configuration.minimumTLSVersion = minimumVersion.nio
        configuration.cipherSuites = effectiveCiphers.joined(separator: ":")
        configuration.curves = (curves ?? Self.defaultCurves).compactMap { Self.supportedCurves[$0.lowercased()] }
    }
}

extension TLSPolicy.Version: Comparable {
    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}
