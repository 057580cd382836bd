import CUnbound
import Foundation
import Synchronization

/// The DNS record types Postern asks for.
public enum DNSRecordType: UInt16, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case a = 1
    case ns = 2
    case cname = 5
    case ptr = 12
    case mx = 15
    case txt = 16
    case aaaa = 28

    public var description: String {
        switch self {
        case .a: "A"
        case .ns: "NS"
        case .cname: "CNAME"
        case .ptr: "PTR"
        case .mx: "MX"
        case .txt: "TXT"
        case .aaaa: "AAAA"
        }
    }
}

/// Names made of an address, as reverse DNS and DNS lists write them.
public enum ReverseDNS {
    /// `7.2.0.192.ZONE` for 192.0.2.7 (4 octets), or the 32 nibbles, last first, for 16 octets.
    public static func name(_ address: [UInt8], under zone: String) -> String {
        let labels = address.count == 4 ? address.reversed().map(String.init)
            : address.reversed().flatMap { [String($0 & 0x0F, radix: 16), String($0 >> 4, radix: 16)] }
        return (labels + [zone]).joined(separator: ".")
    }

    /// The PTR name of an address: under `in-addr.arpa` or `ip6.arpa`.
    public static func pointer(_ address: [UInt8]) -> String {
        name(address, under: address.count == 4 ? "in-addr.arpa" : "ip6.arpa")
    }
}

/// What `DNSResolver.confirmedNames` found.
public struct ConfirmedNames: Sendable, Hashable {
    /// The PTR names; nil when the PTR lookup failed (a timeout, SERVFAIL).
    public var names: [String]?
    /// The names whose forward records include the address, in PTR order.
    public var confirmed: [String] = []
    /// Some forward lookup failed (so a name could not be confirmed or refuted).
    public var forwardErrors = false
}

/// One record of an answer, decoded from its rdata.
public enum DNSRecord: Sendable, Hashable, CustomStringConvertible {
    /// Four octets.
    case a([UInt8])
    /// Sixteen octets.
    case aaaa([UInt8])
    /// The character-strings of one TXT record, in order (an SPF record is their concatenation).
    case txt([[UInt8]])
    /// A host name (PTR, CNAME, NS), lower-cased, without the trailing dot.
    case name(String)
    case mx(preference: UInt16, exchange: String)
    /// An rdata that could not be decoded for its type.
    case malformed

    public var description: String {
        switch self {
        case .a(let octets): return octets.map(String.init).joined(separator: ".")
        case .aaaa(let octets):
            return stride(from: 0, to: 16, by: 2).map { String(UInt16(octets[$0]) << 8 | UInt16(octets[$0 + 1]), radix: 16) }
                .joined(separator: ":")
        case .txt(let strings): return strings.map { "\"" + String(decoding: $0, as: UTF8.self) + "\"" }.joined(separator: " ")
        case .name(let name): return name
        case .mx(let preference, let exchange): return "\(preference) \(exchange)"
        case .malformed: return "(malformed)"
        }
    }

    /// A TXT record's strings joined (RFC 7208 §3.3), as text.
    public var text: String? {
        guard case .txt(let strings) = self else { return nil }
        return String(decoding: strings.joined(), as: UTF8.self)
    }

    static func decode(_ type: DNSRecordType, _ rdata: [UInt8]) -> DNSRecord {
        switch type {
        case .a: return rdata.count == 4 ? .a(rdata) : .malformed
        case .aaaa: return rdata.count == 16 ? .aaaa(rdata) : .malformed
        case .txt:
            var strings: [[UInt8]] = []
            var index = 0
            while index < rdata.count {
                let length = Int(rdata[index])
                guard index + 1 + length <= rdata.count else { return .malformed }
                strings.append(Array(rdata[(index + 1)..<(index + 1 + length)]))
                index += 1 + length
            }
            return .txt(strings)
        case .ptr, .cname, .ns:
            return decodeName(rdata[...]).map { .name($0.name) } ?? .malformed
        case .mx:
            guard rdata.count >= 3, let (exchange, _) = decodeName(rdata[2...]) else { return .malformed }
            return .mx(preference: UInt16(rdata[0]) << 8 | UInt16(rdata[1]), exchange: exchange)
        }
    }

    /// An uncompressed wire-format name (libunbound's rdata has no compression pointers).
    static func decodeName(_ bytes: ArraySlice<UInt8>) -> (name: String, end: Int)? {
        var labels: [String] = []
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let length = Int(bytes[index])
            if length == 0 { return (labels.joined(separator: ".").lowercased(), index + 1) }
            guard length < 64, index + 1 + length <= bytes.endIndex else { return nil }
            labels.append(String(decoding: bytes[(index + 1)..<(index + 1 + length)], as: UTF8.self))
            index += 1 + length
        }
        return nil
    }
}

/// What a lookup found.
public struct DNSAnswer: Sendable, Hashable {
    public enum Status: String, Sendable, Hashable {
        /// Records of the type asked for.
        case records
        /// The name exists, without records of that type.
        case noData = "nodata"
        case nxdomain
    }

    public var status: Status
    public var records: [DNSRecord]
    /// Seconds the answer may be cached.
    public var ttl: Int
    /// DNSSEC validated it (always false with validation off).
    public var secure: Bool

    public init(status: Status, records: [DNSRecord] = [], ttl: Int = 0, secure: Bool = false) {
        self.status = status
        self.records = records
        self.ttl = ttl
        self.secure = secure
    }
}

/// A lookup that found nothing usable: always temporary for the policy (a rule can tempfail
/// or ignore it), never "not listed".
public struct DNSError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        /// No answer before the lookup's deadline.
        case timeout
        /// The server said SERVFAIL (or the resolver could not get an answer from any server).
        case servfail
        /// The server refused the query (REFUSED) or answered another error code.
        case refused
        /// DNSSEC validation failed.
        case bogus
        /// The resolver itself failed (out of memory, sockets, a name that is not a DNS name).
        case failure
    }

    public var kind: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { "\(kind.rawValue): \(detail)" }
}

/// What one lookup cost, for the metrics.
public struct DNSQueryEvent: Sendable {
    public var name: String
    public var type: DNSRecordType
    /// `records`, `nodata`, `nxdomain`, or the error kind.
    public var result: String
    public var seconds: Double
    /// Answered from Postern's cache, without asking libunbound.
    public var cached: Bool
    /// The answer in a few words: the records, `NXDOMAIN`, `no records`, or the error.
    public var summary: String
}

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

// MARK: - libunbound's context and the resolver thread

/// The ub_ctx, deleted when the last owner lets it go. libunbound's context is thread-safe
/// for ub_resolve_async/ub_cancel from any thread with ub_process on another.
final class Context: @unchecked Sendable {
    let ctx: OpaquePointer

    init(_ ctx: OpaquePointer) { self.ctx = ctx }
    deinit { ub_ctx_delete(ctx) }
}

/// One lookup in flight. libunbound holds one retained reference (its `mydata`), released by
/// the callback or by a successful ub_cancel, never both.
final class PendingLookup: @unchecked Sendable {
    let type: DNSRecordType
    let deadline: ContinuousClock.Instant
    /// libunbound's id, once ub_resolve_async returned (0 before).
    let asyncID = Atomic<Int32>(0)
    weak var thread: ResolverThread?
    private let state = Mutex<CheckedContinuation<Result<DNSAnswer, DNSError>, Never>?>(nil)

    init(type: DNSRecordType, deadline: ContinuousClock.Instant, continuation: CheckedContinuation<Result<DNSAnswer, DNSError>, Never>) {
        self.type = type
        self.deadline = deadline
        state.withLock { $0 = continuation }
    }

    /// Resumes the lookup once; later calls do nothing. True when this call resumed it.
    @discardableResult
    func finish(_ result: Result<DNSAnswer, DNSError>) -> Bool {
        guard let continuation = state.withLock({ state -> CheckedContinuation<Result<DNSAnswer, DNSError>, Never>? in
            defer { state = nil }
            return state
        }) else { return false }
        continuation.resume(returning: result)
        return true
    }
}

/// Waits on libunbound's descriptor (answers) and a wake pipe (new lookups, stop), with a
/// poll timeout at the nearest deadline.
final class ResolverThread: @unchecked Sendable {
    private let context: Context
    private let fd: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// `closed`: the wake pipe is closed (the loop has ended). `wake()` writes under this lock, so
    /// it never writes into a pipe whose reader is gone (SIGPIPE) or into a reused descriptor.
    private let pending = Mutex<(lookups: [ObjectIdentifier: PendingLookup], stopped: Bool, closed: Bool)>(([:], false, false))
    private var thread: Thread?

    struct PipeError: Error, CustomStringConvertible {
        var description: String
    }

    init(context: Context, fd: Int32) throws {
        self.context = context
        self.fd = fd
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw PipeError(description: String(cString: strerror(errno))) }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        _ = fcntl(wakeRead, F_SETFL, fcntl(wakeRead, F_GETFL) | O_NONBLOCK)
        _ = fcntl(wakeWrite, F_SETFL, fcntl(wakeWrite, F_GETFL) | O_NONBLOCK)
        let thread = Thread { [self] in self.run() }
        thread.name = "postern-dns"
        self.thread = thread
        thread.start()
    }

    func stop() {
        guard let lookups = pending.withLock({ state -> [PendingLookup]? in
            guard !state.stopped else { return nil }
            state.stopped = true
            defer { state.lookups = [:] }
            return Array(state.lookups.values)
        }) else { return }
        wake()
        for lookup in lookups { lookup.finish(.failure(DNSError(.failure, "the resolver was shut down"))) }
    }

    private func wake() {
        pending.withLock { state in
            guard !state.closed else { return }
            var byte: UInt8 = 1
            _ = write(wakeWrite, &byte, 1)
        }
    }

    func resolve(_ name: String, _ type: DNSRecordType, deadline: ContinuousClock.Instant) async -> Result<DNSAnswer, DNSError> {
        await withCheckedContinuation { continuation in
            let lookup = PendingLookup(type: type, deadline: deadline, continuation: continuation)
            lookup.thread = self
            let admitted = pending.withLock { state -> Bool in
                guard !state.stopped else { return false }
                state.lookups[ObjectIdentifier(lookup)] = lookup
                return true
            }
            guard admitted else {
                lookup.finish(.failure(DNSError(.failure, "the resolver was shut down")))
                return
            }
            let retained = Unmanaged.passRetained(lookup).toOpaque()
            var id: Int32 = 0
            let status = ub_resolve_async(context.ctx, name, Int32(type.rawValue), 1, retained, resolverCallback, &id)
            if status != 0 {
                Unmanaged<PendingLookup>.fromOpaque(retained).release()
                remove(lookup)
                lookup.finish(.failure(DNSError(.failure, String(cString: ub_strerror(status)))))
                return
            }
            lookup.asyncID.store(id, ordering: .releasing)
            wake()  // a nearer deadline
        }
    }

    func remove(_ lookup: PendingLookup) {
        _ = pending.withLock { $0.lookups.removeValue(forKey: ObjectIdentifier(lookup)) }
    }

    private func run() {
        var drain = [UInt8](repeating: 0, count: 64)
        while true {
            let (stopped, nearest) = pending.withLock { state in (state.stopped, state.lookups.values.map(\.deadline).min()) }
            if stopped { break }
            var timeoutMs: Int32 = 1_000
            if let nearest {
                let left = nearest - ContinuousClock.now
                let ms = left.components.seconds * 1_000 + left.components.attoseconds / 1_000_000_000_000_000
                timeoutMs = Int32(max(0, min(1_000, ms + 1)))
            }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, timeoutMs)
            if ready > 0 {
                if fds[1].revents != 0 { while read(wakeRead, &drain, drain.count) > 0 {} }
                if fds[0].revents != 0 { _ = ub_process(context.ctx) }
            }
            expire()
        }
        pending.withLock { state in
            state.closed = true
            close(wakeRead)
            close(wakeWrite)
        }
    }

    /// Lookups past their deadline: resumed with a timeout, and cancelled in libunbound.
    private func expire() {
        let now = ContinuousClock.now
        let late = pending.withLock { state -> [PendingLookup] in
            let late = state.lookups.values.filter { $0.deadline <= now }
            for lookup in late { state.lookups.removeValue(forKey: ObjectIdentifier(lookup)) }
            return late
        }
        for lookup in late {
            lookup.finish(.failure(DNSError(.timeout, "no answer within the deadline")))
            // Cancelled: the callback will not run, so its reference is released here.
            if ub_cancel(context.ctx, lookup.asyncID.load(ordering: .acquiring)) == 0 { Unmanaged.passUnretained(lookup).release() }
        }
    }
}

/// libunbound's callback, on the resolver thread (inside ub_process).
private let resolverCallback: ub_callback_type = { data, status, result in
    guard let data else { return }
    let lookup = Unmanaged<PendingLookup>.fromOpaque(data).takeRetainedValue()
    defer { if let result { ub_resolve_free(result) } }
    let outcome: Result<DNSAnswer, DNSError>
    if status != 0 {
        outcome = .failure(DNSError(status == UB_SERVFAIL.rawValue ? .servfail : .failure, String(cString: ub_strerror(status))))
    } else if let result {
        outcome = DNSResolver.decode(result.pointee, type: lookup.type)
    } else {
        outcome = .failure(DNSError(.failure, "no result"))
    }
    lookup.finish(outcome)
    lookup.thread?.remove(lookup)
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

// MARK: - Postern's answer cache

/// Answers by (name, type) until their TTL passes; at most `capacity` of them.
final class AnswerCache: Sendable {
    struct Key: Hashable, Sendable {
        var name: String
        var type: DNSRecordType
    }

    private struct Entry {
        var answer: DNSAnswer
        var expires: ContinuousClock.Instant
    }

    private let capacity: Int
    private let entries = Mutex<[Key: Entry]>([:])

    init(capacity: Int) { self.capacity = max(0, capacity) }

    func get(_ key: Key, now: ContinuousClock.Instant) -> DNSAnswer? {
        entries.withLock { map in
            guard let entry = map[key] else { return nil }
            if entry.expires <= now {
                map[key] = nil
                return nil
            }
            return entry.answer
        }
    }

    /// When full: the expired entries go, then (if still full) a tenth of the rest.
    func put(_ key: Key, _ answer: DNSAnswer, until expires: ContinuousClock.Instant) {
        guard capacity > 0 else { return }
        entries.withLock { map in
            if map[key] == nil, map.count >= capacity {
                let now = ContinuousClock.now
                map = map.filter { $0.value.expires > now }
                if map.count >= capacity {
                    for victim in map.keys.prefix(max(1, capacity / 10)) { map[victim] = nil }
                }
            }
            map[key] = Entry(answer: answer, expires: expires)
        }
    }
}
