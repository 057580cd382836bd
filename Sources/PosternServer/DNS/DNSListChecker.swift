import Logging
import PosternNative
import PosternPolicy
import SMTPCore
import Synchronization

/// The policy's DNS lists, asked in parallel (postscreen's DNSBL checks): client lists when
/// a client connects, domain lists for its HELO name or sender domain; each list's answer
/// within the resolver's timeout (or `dnsbl_wait`). A refusal code
/// (127.255.255.x, 127.0.0.255) or a failed lookup is an error for that list, never a
/// listing; each list's refusal is logged once per process.
public final class DNSListChecker: Sendable {
    let resolver: DNSResolver
    let logger: Logger
    private let warned = Mutex<Set<String>>([])

    public init(resolver: DNSResolver, logger: Logger) {
        self.resolver = resolver
        self.logger = logger
    }

    /// One result per list of `lookup`, in its order; `timeout` shortens each list's lookup
    /// (never beyond the resolver's own timeout).
    public func check(_ lookup: DNSListLookup, timeout: Duration? = nil) async -> [DNSListResult] {
        let timeout = timeout.map { min($0, resolver.configuration.timeout) }
        return await withTaskGroup(of: (Int, DNSListResult).self) { group in
            for (index, list) in lookup.lists.enumerated() {
                group.addTask { (index, await self.check(list, lookup, timeout: timeout)) }
            }
            var results = [DNSListResult?](repeating: nil, count: lookup.lists.count)
            for await (index, result) in group { results[index] = result }
            return results.compactMap { $0 }
        }
    }

    private func check(_ list: DNSList, _ lookup: DNSListLookup, timeout: Duration?) async -> DNSListResult {
        let query: String? = switch list.lookup {
        case .client: list.query(for: lookup.client)
        case .helo: lookup.helo.flatMap(list.query(forDomain:))
        case .senderDomain: lookup.senderDomain.flatMap(list.query(forDomain:))
        }
        guard let query else { return DNSListResult(list: list.name, outcome: .skipped, weight: 0) }
        switch await resolver.lookup(query, .a, timeout: timeout) {
        case .failure(let error):
            return DNSListResult(list: list.name, outcome: .error(error.description), weight: 0)
        case .success(let answer):
            let codes = answer.records.compactMap { record -> UInt32? in
                guard case .a(let octets) = record else { return nil }
                return octets.reduce(0) { $0 << 8 | UInt32($1) }
            }
            if let refusal = codes.first(where: DNSList.isError) {
                let text = DNSList.Returns(low: refusal, high: refusal).description
                let first = warned.withLock { $0.insert(list.name).inserted }
                if first {
                    logger.warning("a DNS list refused the query: its answers are errors, not listings", metadata: [
                        "dnsbl": "\(list.name)", "zone": "\(list.zone)", "code": "\(text)",
                    ])
                }
                return DNSListResult(list: list.name, outcome: .error("refused (\(text))"), weight: 0)
            }
            let listed = codes.filter(list.lists)
            return listed.isEmpty ? DNSListResult(list: list.name, outcome: .notListed, weight: 0)
                : DNSListResult(list: list.name, outcome: .listed(listed), weight: list.weight)
        }
    }
}
