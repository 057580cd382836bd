import CUnbound
import Foundation
import Synchronization

/// One asynchronous, caching resolver for the whole process, on libunbound (threaded mode:
/// no fork). Lookups are `async` and never block a caller's thread: a resolver thread waits
/// on libunbound's file descriptor and on each lookup's deadline, and resumes the lookup
/// with the answer or with a timeout (the query is then cancelled in libunbound).
public final class DNSResolver: Sendable {
    public struct Configuration: Sendable, Hashable {
        public enum DNSSEC: Sendable, Hashable {
            case off
            /// Validate against the trust anchors in this file (unbound's `auto-trust-anchor-file` format
            /// or plain DS/DNSKEY records, e.g. Debian's /usr/share/dns/root.key).
            case validate(trustAnchorFile: String)
        }

        /// `ADDR`, `ADDR:PORT` or `[IPv6]:PORT`; empty: the servers of /etc/resolv.conf.
        public var servers: [String]
        /// The default deadline of each lookup.
        public var timeout: Duration
        public var dnssec: DNSSEC
        /// Answers kept in Postern's cache (each for its TTL); libunbound keeps its own cache too.
        public var cacheSize: Int
        /// resolv.conf to read when `servers` is empty.
        public var resolvConf: String

        public init(servers: [String] = [], timeout: Duration = .seconds(5), dnssec: DNSSEC = .off, cacheSize: Int = 10_000,
                    resolvConf: String = "/etc/resolv.conf") {
            self.servers = servers
            self.timeout = timeout
            self.dnssec = dnssec
            self.cacheSize = cacheSize
            self.resolvConf = resolvConf
        }

        /// `ADDR[:PORT]` as unbound's `ADDR@PORT`; nil when it is not an IP address with an optional port.
        public static func unboundAddress(_ server: String) -> String? {
            var host = server
            var port: String?
            if server.hasPrefix("[") {
                guard let close = server.firstIndex(of: "]") else { return nil }
                host = String(server[server.index(after: server.startIndex)..<close])
                let rest = server[server.index(after: close)...]
                if !rest.isEmpty {
                    guard rest.hasPrefix(":") else { return nil }
                    port = String(rest.dropFirst())
                }
                guard host.contains(":") else { return nil }
            } else if server.filter({ $0 == ":" }).count == 1, let colon = server.firstIndex(of: ":") {
                host = String(server[..<colon])
                port = String(server[server.index(after: colon)...])
            }
            var v4 = in_addr(), v6 = in6_addr()
            guard inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 else { return nil }
            if let port {
                guard let number = Int(port), (1...65535).contains(number) else { return nil }
                return "\(host)@\(number)"
            }
            return host
        }
    }

    public struct SetupError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    public let configuration: Configuration
    private let context: Context
    private let thread: ResolverThread
    private let cache: AnswerCache
    private let observer: (@Sendable (DNSQueryEvent) -> Void)?

    public init(_ configuration: Configuration, observer: (@Sendable (DNSQueryEvent) -> Void)? = nil) throws(SetupError) {
        self.configuration = configuration
        self.observer = observer
        guard let ctx = ub_ctx_create() else { throw SetupError(description: "libunbound could not create a context") }
        func check(_ status: Int32, _ what: String) throws(SetupError) {
            if status != 0 {
                ub_ctx_delete(ctx)
                throw SetupError(description: "\(what): \(String(cString: ub_strerror(status)))")
            }
        }
        try check(ub_ctx_async(ctx, 1), "threaded mode")
        // Servers on loopback (a local unbound, a test server) are asked; the zones libunbound
        // would otherwise answer itself (test., the reverse zones of private ranges) are asked too
        // when the servers are named: the operator's servers decide.
        try check(ub_ctx_set_option(ctx, "do-not-query-localhost:", "no"), "do-not-query-localhost")
        if configuration.servers.isEmpty {
            try check(ub_ctx_resolvconf(ctx, configuration.resolvConf), "reading \(configuration.resolvConf)")
        } else {
            try check(ub_ctx_set_option(ctx, "unblock-lan-zones:", "yes"), "unblock-lan-zones")
            try check(ub_ctx_set_option(ctx, "insecure-lan-zones:", "yes"), "insecure-lan-zones")
            for server in configuration.servers {
                guard let address = Configuration.unboundAddress(server) else {
                    ub_ctx_delete(ctx)
                    throw SetupError(description: "'\(server)' is not ADDR or ADDR:PORT (an IP address; [IPv6]:PORT)")
                }
                try check(ub_ctx_set_fwd(ctx, address), "server \(server)")
            }
        }
        if case .validate(let file) = configuration.dnssec {
            guard FileManager.default.isReadableFile(atPath: file) else {
                ub_ctx_delete(ctx)
                throw SetupError(description: "the trust anchor file \(file) cannot be read")
            }
            try check(ub_ctx_add_ta_file(ctx, file), "the trust anchor file \(file)")
        }
        let megabytes = max(1, configuration.cacheSize / 2_000)
        try check(ub_ctx_set_option(ctx, "msg-cache-size:", "\(megabytes)m"), "msg-cache-size")
        try check(ub_ctx_set_option(ctx, "rrset-cache-size:", "\(megabytes * 2)m"), "rrset-cache-size")
        if !configuration.servers.isEmpty {
            // Last: adding a zone finalizes the context (no more options after it).
            try check(ub_ctx_zone_add(ctx, "test.", "transparent"), "the test. zone")
        }
        let fd = ub_fd(ctx)
        guard fd >= 0 else {
            ub_ctx_delete(ctx)
            throw SetupError(description: "libunbound gave no file descriptor")
        }
        context = Context(ctx)
        cache = AnswerCache(capacity: configuration.cacheSize)
        do {
            thread = try ResolverThread(context: context, fd: fd)
        } catch {
            throw SetupError(description: "the resolver thread: \(error)")
        }
    }

    deinit {
        thread.stop()
    }

    /// Stops the resolver thread; lookups in flight end with `failure`. Idempotent.
    public func shutdown() {
        thread.stop()
    }

    /// Looks `name` up (an A-label name, with or without the trailing dot), within `timeout`
    /// (default: the configured one).
    public func lookup(_ name: String, _ type: DNSRecordType, timeout: Duration? = nil) async -> Result<DNSAnswer, DNSError> {
        let started = ContinuousClock.now
        let key = AnswerCache.Key(name: name.lowercased().hasSuffix(".") ? String(name.lowercased().dropLast()) : name.lowercased(),
                                  type: type)
        if let answer = cache.get(key, now: started) {
            observer?(DNSQueryEvent(name: key.name, type: type, result: answer.status.rawValue, seconds: 0, cached: true,
                                    summary: Self.summary(.success(answer))))
            return .success(answer)
        }
        let result: Result<DNSAnswer, DNSError>
        if key.name.isEmpty, name == "." {
            result = await thread.resolve(".", type, deadline: started + (timeout ?? configuration.timeout))
        } else if key.name.isEmpty || key.name.utf8.count > 253 || key.name.split(separator: ".", omittingEmptySubsequences: false).contains(where: { $0.isEmpty || $0.utf8.count > 63 }) {
            result = .failure(DNSError(.failure, "'\(name)' is not a DNS name"))
        } else {
            result = await thread.resolve(key.name, type, deadline: started + (timeout ?? configuration.timeout))
        }
        if case .success(let answer) = result, answer.ttl > 0 {
            cache.put(key, answer, until: started + .seconds(answer.ttl))
        }
        let elapsed = (ContinuousClock.now - started).components
        let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
        let label = switch result {
        case .success(let answer): answer.status.rawValue
        case .failure(let error): error.kind.rawValue
        }
        observer?(DNSQueryEvent(name: key.name, type: type, result: label, seconds: seconds, cached: false, summary: Self.summary(result)))
        return result
    }

    /// Forward-confirmed reverse DNS, for Postfix-style client names and SPF's validated
    /// names (RFC 7208 §5.5): the PTR names of `address`, then the A (or AAAA) records of
    /// each of the first `maximumNames`, in order, until `firstOnly` finds one that includes
    /// the address. `timeout` bounds the whole walk (default: each lookup its own deadline).
    public func confirmedNames(of address: [UInt8], maximumNames: Int, firstOnly: Bool,
                               timeout: Duration? = nil) async -> ConfirmedNames {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        func left() -> Duration? { deadline.map { max(.zero, $0 - ContinuousClock.now) } }
        let names: [String]
        switch await lookup(ReverseDNS.pointer(address), .ptr, timeout: left()) {
        case .failure: return ConfirmedNames(names: nil)
        case .success(let answer): names = answer.records.compactMap { if case .name(let name) = $0 { name } else { nil } }
        }
        var found = ConfirmedNames(names: names)
        for name in names.prefix(maximumNames) {
            switch await lookup(name, address.count == 16 ? .aaaa : .a, timeout: left()) {
            case .failure: found.forwardErrors = true
            case .success(let answer):
                let matches = answer.records.contains { record in
                    switch record {
                    case .a(let octets), .aaaa(let octets): octets == address
                    default: false
                    }
                }
                if matches {
                    found.confirmed.append(name)
                    if firstOnly { return found }
                }
            }
        }
        return found
    }

    static func summary(_ result: Result<DNSAnswer, DNSError>) -> String {
        switch result {
        case .failure(let error): return error.description
        case .success(let answer):
            let text = switch answer.status {
            case .nxdomain: "NXDOMAIN"
            case .noData: "no records"
            case .records: answer.records.map(\.description).joined(separator: ", ")
            }
            return answer.secure ? text + " (validated)" : text
        }
    }
}

extension DNSResolver {
    static func decode(_ result: ub_result, type: DNSRecordType) -> Result<DNSAnswer, DNSError> {
        if result.bogus != 0 {
            let why = result.why_bogus.map { String(cString: $0) } ?? "validation failed"
            return .failure(DNSError(.bogus, why))
        }
        switch result.rcode {
        case 0:
            break
        case 3:
            return .success(DNSAnswer(status: .nxdomain, ttl: Int(max(0, result.ttl)), secure: result.secure != 0))
        case 2:
            return .failure(DNSError(.servfail, "SERVFAIL"))
        case 5:
            return .failure(DNSError(.refused, "REFUSED"))
        default:
            return .failure(DNSError(.refused, "rcode \(result.rcode)"))
        }
        guard result.havedata != 0, let data = result.data, let lengths = result.len else {
            return .success(DNSAnswer(status: .noData, ttl: Int(max(0, result.ttl)), secure: result.secure != 0))
        }
        var records: [DNSRecord] = []
        var index = 0
        while let item = data[index] {
            let length = Int(lengths[index])
            let bytes = [UInt8](UnsafeRawBufferPointer(start: item, count: length))
            records.append(DNSRecord.decode(type, bytes))
            index += 1
        }
        return .success(DNSAnswer(status: .records, records: records, ttl: Int(max(0, result.ttl)), secure: result.secure != 0))
    }
}
