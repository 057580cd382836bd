import Foundation
import Glibc
import Logging
import NIOSSL
import PosternLog
import PosternNative
import PosternPolicy
import PosternUpstream

/// What `postern serve` checks and prepares before it binds a port, in one place.
/// `PosternServer.init` runs it creating what is missing (Maildir directories, the decision
/// log); `postern check` runs the same checks creating nothing, so a configuration that
/// `check` passes is one `serve` starts with.
///
/// Checked: the TLS certificate and key (readable PEM, and the key is the certificate's);
/// every Maildir (upstream `maildir:` targets and `quarantine`) is, or can be made, a
/// writable directory with `tmp`, `new` and `cur`; the policy compiles, with the rate-limit
/// store `limits_store` names; quarantine rules have a `quarantine:` Maildir; the decision
/// log can be opened for appending; the sample store's directory is, or can be made, a
/// writable directory. Every problem found is reported, one per line.
public struct ServerPreparation: Sendable {
    /// The STARTTLS context, when `tls:` is configured.
    public let tlsContext: NIOSSLContext?
    /// The compiled policy, in the store that reloads it.
    public let policy: PolicyStore
    /// The open decision log, when `decision_log` is configured; always nil when
    /// `createDirectories` is false (a check opens nothing for writing).
    public let decisionLog: DecisionLogWriter?
    /// The resolver, when `dns:` is configured.
    public let resolver: DNSResolver?
    /// The sample store, when `samples:` is configured; always nil when `createDirectories`
    /// is false.
    public let samples: SampleStore?

    /// Runs every check. With `createDirectories`, missing Maildir directories are created
    /// and the decision log is opened (created when missing), as `serve` needs them; without
    /// it nothing is created, and a missing path must be creatable: its nearest existing
    /// ancestor a directory Postern may write in.
    public static func validate(
        _ configuration: PosternConfiguration, createDirectories: Bool, logger: Logger, metrics: PosternMetrics
    ) throws(PosternServer.StartupError) -> ServerPreparation {
        var problems: [String] = []
        var tlsContext: NIOSSLContext?
        if let files = configuration.tls {
            switch makeTLSContext(files) {
            case .success(let context): tlsContext = context
            case .failure(let problem): problems.append(problem.description)
            }
        }
        var maildirs: [(key: String, path: String)] = configuration.upstreams.compactMap { upstream in
            if case .maildir(let path) = upstream.target { return ("upstream maildir:\(path)", path) }
            return nil
        }
        if let quarantine = configuration.quarantine { maildirs.append(("quarantine", quarantine)) }
        for (key, path) in maildirs {
            if let problem = maildirProblem(path, create: createDirectories) { problems.append("\(key): \(problem)") }
        }
        let policy: PolicyStore?
        do {
            let rateLimitStore = configuration.limitsStore.makeStore(logger: logger, metrics: metrics)
            policy = try PolicyStore(path: configuration.policy, logger: logger, metrics: metrics, rateLimitStore: rateLimitStore)
        } catch {
            problems.append("the policy has errors:\n\(error.description)")
            policy = nil
        }
        if let compiled = policy?.policy, compiled.quarantines, configuration.quarantine == nil {
            let rules = compiled.rules.filter { $0.mode == .enforce && $0.action == .quarantine }.map(\.id)
            problems.append("the policy has quarantine rules (\(rules.joined(separator: ", "))) but no quarantine: Maildir is configured")
        }
        if let compiled = policy?.policy, !compiled.dnsLists.isEmpty, configuration.dns == nil {
            problems.append("the policy has dnsbl: lists (\(compiled.dnsLists.map(\.name).joined(separator: ", "))) but no dns: resolver is configured")
        }
        var resolver: DNSResolver?
        if let dns = configuration.dns {
            do {
                resolver = try DNSResolver(dns.resolver, observer: { metrics.dnsQuery($0) })
            } catch {
                problems.append("dns: \(error.description)")
            }
        }
        var decisionLog: DecisionLogWriter?
        if let path = configuration.decisionLog {
            if !createDirectories {
                if let problem = appendableFileProblem(path) { problems.append("decision_log \(path): \(problem)") }
            } else if problems.isEmpty {
                // Opened last, and only when nothing else failed: the writer starts a thread.
                do {
                    decisionLog = try DecisionLogWriter(
                        path: path, logger: logger, rotation: configuration.decisionLogRotation,
                        privacy: configuration.decisionLogPrivacy, onWriteError: { metrics.decisionLogWriteError() })
                } catch {
                    problems.append("decision_log: \(error.description)")
                }
            }
        }
        var samples: SampleStore?
        if let sampling = configuration.samples {
            if !createDirectories {
                if let problem = directoryProblem(sampling.directory) { problems.append("samples.directory: \(problem)") }
            } else if problems.isEmpty {
                do {
                    samples = try SampleStore(sampling, privacy: configuration.decisionLogPrivacy, logger: logger,
                                              counted: { metrics.sample($0) })
                } catch {
                    problems.append("samples.directory: \(error.description)")
                }
            }
        }
        guard problems.isEmpty, let policy else {
            throw PosternServer.StartupError(description: problems.joined(separator: "\n"))
        }
        return ServerPreparation(tlsContext: tlsContext, policy: policy, decisionLog: decisionLog, resolver: resolver, samples: samples)
    }

    /// A problem, as text, for `Result`.
    struct Problem: Error, CustomStringConvertible {
        var description: String
    }

    /// The certificate chain and the key parsed, and a server context made from them, which
    /// fails when the key is not the leaf certificate's.
    static func makeTLSContext(_ files: PosternConfiguration.TLSFiles) -> Result<NIOSSLContext, Problem> {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(files.certificate)
        } catch {
            return .failure(Problem(description: "tls.certificate \(files.certificate): not a PEM certificate (\(error))"))
        }
        guard !chain.isEmpty else {
            return .failure(Problem(description: "tls.certificate \(files.certificate): no certificate in the file"))
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem)
        } catch {
            return .failure(Problem(description: "tls.private_key \(files.privateKey): not a PEM private key (\(error))"))
        }
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { NIOSSLCertificateSource.certificate($0) }, privateKey: .privateKey(key))
        files.policy.apply(to: &tls)
        do {
            return .success(try NIOSSLContext(configuration: tls))
        } catch NIOSSLError.failedToLoadPrivateKey {
            // BoringSSL refuses a key whose public half is not the leaf certificate's.
            return .failure(Problem(description:
                "tls.private_key \(files.privateKey) does not match the certificate in tls.certificate \(files.certificate)"))
        } catch {
            return .failure(Problem(description:
                "cannot use tls.certificate \(files.certificate) with tls.private_key \(files.privateKey): \(error)"))
        }
    }

    /// Why the Maildir at `path` cannot be delivered into, or nil. With `create`, missing
    /// directories are made first (`MaildirRelaySession.prepare`, as delivery does); either
    /// way the Maildir and its `tmp`, `new` and `cur` must then be, or be creatable as,
    /// writable directories.
    static func maildirProblem(_ path: String, create: Bool) -> String? {
        if create {
            do { try MaildirRelaySession.prepare(path) } catch { return error.detail }
        }
        for directory in [path, path + "/tmp", path + "/new", path + "/cur"] {
            if let problem = directoryProblem(directory) { return problem }
        }
        return nil
    }

    /// Why `path` is not a directory Postern can write in, and cannot be made one; nil when
    /// it is, or when it is missing and its nearest existing ancestor is a writable directory.
    static func directoryProblem(_ path: String) -> String? {
        switch inspect(path) {
        case .directory(let accessError) where accessError == 0: return nil
        case .directory(let accessError): return "\(path) is not writable (\(String(cString: strerror(accessError))))"
        case .other: return "\(path) exists and is not a directory"
        case .unreachable(let error): return "cannot look at \(path): \(String(cString: strerror(error)))"
        case .missing: return creationProblem(path)
        }
    }

    /// Why a file cannot be opened for appending at `path` (creating it when missing), or nil.
    static func appendableFileProblem(_ path: String) -> String? {
        guard path != "-" else { return nil }
        switch inspect(path) {
        case .directory: return "\(path) is a directory"
        case .other:
            return access(path, W_OK) == 0 ? nil : "\(path) is not writable (\(String(cString: strerror(errno))))"
        case .unreachable(let error): return "cannot look at \(path): \(String(cString: strerror(error)))"
        case .missing: return creationProblem(path)
        }
    }

    /// For a missing `path`: why it cannot be created, judged by its nearest existing ancestor.
    private static func creationProblem(_ path: String) -> String? {
        var ancestor = parent(of: path)
        while true {
            switch inspect(ancestor) {
            case .directory(let accessError) where accessError == 0: return nil
            case .directory(let accessError):
                return "cannot create \(path): \(ancestor) is not writable (\(String(cString: strerror(accessError))))"
            case .other: return "cannot create \(path): \(ancestor) is not a directory"
            case .unreachable(let error): return "cannot create \(path): \(ancestor): \(String(cString: strerror(error)))"
            case .missing:
                let next = parent(of: ancestor)
                guard next != ancestor else { return "cannot create \(path): no existing directory above it" }
                ancestor = next
            }
        }
    }

    private enum Entry {
        /// With the error `access(W_OK | X_OK)` gave, 0 when it may be written in.
        case directory(accessError: Int32)
        case other
        case missing
        case unreachable(Int32)
    }

    private static func inspect(_ path: String) -> Entry {
        var info = stat()
        guard stat(path, &info) == 0 else {
            // ENOTDIR: a file where a directory should be; the walk up finds and names it.
            return errno == ENOENT || errno == ENOTDIR ? .missing : .unreachable(errno)
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { return .other }
        return .directory(accessError: access(path, W_OK | X_OK) == 0 ? 0 : errno)
    }

    private static func parent(of path: String) -> String {
        let parent = (path as NSString).deletingLastPathComponent
        return parent.isEmpty ? "." : parent
    }
}
