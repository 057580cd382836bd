import Foundation
import PosternNative
import Synchronization
import XCTest

/// The libunbound resolver against a DNS server on a loopback port: it really asks it (also
/// for test. and private reverse zones, which libunbound would otherwise answer itself),
/// decodes each record type, caches by TTL, and turns silence, SERVFAIL and REFUSED into
/// temporary errors within each lookup's deadline.
final class DNSResolverTests: XCTestCase {
    private func resolver(_ server: TestDNSServer, timeout: Duration = .seconds(2), cacheSize: Int = 100,
                          observer: (@Sendable (DNSQueryEvent) -> Void)? = nil) throws -> DNSResolver {
        try DNSResolver(DNSResolver.Configuration(servers: [server.server], timeout: timeout, cacheSize: cacheSize), observer: observer)
    }

    func testEachRecordTypeIsDecoded() async throws {
        let server = try TestDNSServer([
            "mail.zone.test A": .records([.a([192, 0, 2, 25]), .a([192, 0, 2, 26])]),
            "mail.zone.test AAAA": .records([.aaaa([0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [0x25])]),
            "zone.test TXT": .records([.txt(["v=spf1 ip4:192.0.2.0/24 ", "-all"])]),
            "zone.test MX": .records([.mx(10, "mail.zone.test")]),
            "25.2.0.192.in-addr.arpa PTR": .records([.ptr("Mail.Zone.Test")]),
        ])
        let dns = try resolver(server)
        defer { dns.shutdown() }

        let a = try await dns.lookup("mail.zone.test", .a).get()
        XCTAssertEqual(a.status, .records)
        XCTAssertEqual(Set(a.records.map(\.description)), ["192.0.2.25", "192.0.2.26"])
        XCTAssertEqual(a.ttl, 300)
        XCTAssertFalse(a.secure)
        let aaaa = try await dns.lookup("mail.zone.test.", .aaaa).get()
        XCTAssertEqual(aaaa.records.map(\.description), ["2001:db8:0:0:0:0:0:25"])
        let txt = try await dns.lookup("zone.test", .txt).get()
        XCTAssertEqual(txt.records.compactMap(\.text), ["v=spf1 ip4:192.0.2.0/24 -all"])
        let mx = try await dns.lookup("zone.test", .mx).get()
        XCTAssertEqual(mx.records, [.mx(preference: 10, exchange: "mail.zone.test")])
        // A private (documentation) range's reverse zone is asked, not answered by libunbound.
        let ptr = try await dns.lookup("25.2.0.192.in-addr.arpa", .ptr).get()
        XCTAssertEqual(ptr.records, [.name("mail.zone.test")])
    }

    func testNXDOMAINAndNoDataAreAnswersNotErrors() async throws {
        let server = try TestDNSServer(["exists.zone.test A": .records([.a([192, 0, 2, 1])])])
        let dns = try resolver(server)
        defer { dns.shutdown() }
        let missing = try await dns.lookup("missing.zone.test", .a).get()
        XCTAssertEqual(missing.status, .nxdomain)
        let noData = try await dns.lookup("exists.zone.test", .txt).get()
        XCTAssertEqual(noData.status, .noData)
        XCTAssertEqual(noData.records, [])
    }

    func testAnswersAreCachedForTheirTTL() async throws {
        let server = try TestDNSServer(["cached.zone.test A": .records([.a([192, 0, 2, 7])], ttl: 60),
                                        "uncached.zone.test A": .records([.a([192, 0, 2, 8])], ttl: 0)])
        let events = Mutex<[DNSQueryEvent]>([])
        let dns = try resolver(server, observer: { event in events.withLock { $0.append(event) } })
        defer { dns.shutdown() }
        for _ in 0..<3 { _ = try await dns.lookup("cached.zone.test", .a).get() }
        XCTAssertEqual(server.queries("cached.zone.test A"), 1)
        XCTAssertEqual(events.withLock { $0.map(\.cached) }, [false, true, true])
        XCTAssertEqual(events.withLock { $0.map(\.result) }, ["records", "records", "records"])
        // A zero TTL is not kept by Postern (libunbound's own cache may still answer).
        for _ in 0..<2 { _ = try await dns.lookup("uncached.zone.test", .a).get() }
        XCTAssertEqual(events.withLock { $0.suffix(2).map(\.cached) }, [false, false])
    }

    func testASilentServerIsATimeoutWithinTheDeadline() async throws {
        let server = try TestDNSServer(["slow.zone.test A": .silent])
        let dns = try resolver(server, timeout: .milliseconds(500))
        defer { dns.shutdown() }
        let clock = ContinuousClock()
        let start = clock.now
        let result = await dns.lookup("slow.zone.test", .a)
        let elapsed = clock.now - start
        guard case .failure(let error) = result else { return XCTFail("\(result)") }
        XCTAssertEqual(error.kind, .timeout)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(450))
        XCTAssertLessThan(elapsed, .milliseconds(1500))
        // A per-lookup deadline overrides the default.
        let short = clock.now
        _ = await dns.lookup("slow.zone.test", .a, timeout: .milliseconds(100))
        XCTAssertLessThan(clock.now - short, .milliseconds(450))
    }

    func testManyLookupsInFlightEachMeetItsOwnDeadline() async throws {
        var table: [String: TestDNSServer.Behaviour] = [:]
        for i in 0..<50 { table["fast\(i).zone.test A"] = .records([.a([192, 0, 2, UInt8(i)])]) }
        table["slow.zone.test A"] = .delayed(5, [.a([192, 0, 2, 200])])
        let server = try TestDNSServer(table)
        let dns = try resolver(server, timeout: .milliseconds(800))
        defer { dns.shutdown() }
        let results = await withTaskGroup(of: (String, Result<DNSAnswer, DNSError>).self) { group in
            group.addTask { ("slow", await dns.lookup("slow.zone.test", .a)) }
            for i in 0..<50 { group.addTask { ("fast\(i)", await dns.lookup("fast\(i).zone.test", .a)) } }
            var all: [String: Result<DNSAnswer, DNSError>] = [:]
            for await (name, result) in group { all[name] = result }
            return all
        }
        for i in 0..<50 {
            XCTAssertEqual(try results["fast\(i)"]?.get().records, [.a([192, 0, 2, UInt8(i)])], "fast\(i)")
        }
        guard case .failure(let error)? = results["slow"] else { return XCTFail("\(String(describing: results["slow"]))") }
        XCTAssertEqual(error.kind, .timeout)
    }

    func testServfailAndRefusedAreTemporaryErrors() async throws {
        let server = try TestDNSServer(["broken.zone.test A": .rcode(2), "closed.zone.test A": .rcode(5)])
        let dns = try resolver(server)
        defer { dns.shutdown() }
        for name in ["broken.zone.test", "closed.zone.test"] {
            let result = await dns.lookup(name, .a)
            guard case .failure(let error) = result else { return XCTFail("\(name): \(result)") }
            XCTAssertTrue([.servfail, .refused].contains(error.kind), "\(name): \(error)")
        }
    }

    func testANameThatIsNotADNSNameFailsAtOnce() async throws {
        let server = try TestDNSServer([:])
        let dns = try resolver(server)
        defer { dns.shutdown() }
        for name in ["", "a..b.test", String(repeating: "x", count: 64) + ".test"] {
            guard case .failure(let error) = await dns.lookup(name, .a) else { return XCTFail(name) }
            XCTAssertEqual(error.kind, .failure, name)
        }
        XCTAssertEqual(server.queries(" A"), 0)
    }

    func testConfigurationErrorsNameTheProblem() throws {
        XCTAssertThrowsError(try DNSResolver(DNSResolver.Configuration(servers: ["dns.example"]))) {
            XCTAssertTrue("\($0)".contains("'dns.example' is not ADDR or ADDR:PORT"), "\($0)")
        }
        XCTAssertThrowsError(try DNSResolver(DNSResolver.Configuration(servers: ["127.0.0.1:99999"]))) {
            XCTAssertTrue("\($0)".contains("127.0.0.1:99999"), "\($0)")
        }
        XCTAssertThrowsError(try DNSResolver(DNSResolver.Configuration(servers: ["127.0.0.1"],
                                                                      dnssec: .validate(trustAnchorFile: "/nonexistent/root.key")))) {
            XCTAssertTrue("\($0)".contains("/nonexistent/root.key"), "\($0)")
        }
        XCTAssertEqual(DNSResolver.Configuration.unboundAddress("127.0.0.1:5353"), "127.0.0.1@5353")
        XCTAssertEqual(DNSResolver.Configuration.unboundAddress("[::1]:53"), "::1@53")
        XCTAssertEqual(DNSResolver.Configuration.unboundAddress("2001:db8::53"), "2001:db8::53")
        XCTAssertEqual(DNSResolver.Configuration.unboundAddress("192.0.2.53"), "192.0.2.53")
        XCTAssertNil(DNSResolver.Configuration.unboundAddress("[192.0.2.1]:53"))
    }

    func testLookupsAfterShutdownFail() async throws {
        let server = try TestDNSServer(["a.zone.test A": .records([.a([192, 0, 2, 1])])])
        let dns = try resolver(server)
        dns.shutdown()
        guard case .failure(let error) = await dns.lookup("a.zone.test", .a) else { return XCTFail("answered after shutdown") }
        XCTAssertEqual(error.kind, .failure)
    }

    func testConfirmedNamesFollowEachPTRNameToItsAddresses() async throws {
        let server = try TestDNSServer([
            "40.2.0.192.in-addr.arpa PTR": .records([.ptr("other.zone.test"), .ptr("broken.zone.test"), .ptr("mail.zone.test"), .ptr("mx.zone.test")]),
            "other.zone.test A": .records([.a([192, 0, 2, 99])]),
            "broken.zone.test A": .rcode(2),
            "mail.zone.test A": .records([.a([192, 0, 2, 40])]),
            "mx.zone.test A": .records([.a([192, 0, 2, 41]), .a([192, 0, 2, 40])]),
            "41.2.0.192.in-addr.arpa PTR": .rcode(2),
        ])
        let dns = try resolver(server)
        defer { dns.shutdown() }
        let address: [UInt8] = [192, 0, 2, 40]
        let all = await dns.confirmedNames(of: address, maximumNames: 10, firstOnly: false)
        // An RRset has no order: what comes back is compared as sets.
        XCTAssertEqual(Set(all.names ?? []), ["other.zone.test", "broken.zone.test", "mail.zone.test", "mx.zone.test"])
        XCTAssertEqual(Set(all.confirmed), ["mail.zone.test", "mx.zone.test"])
        XCTAssertTrue(all.forwardErrors, "broken.zone.test could not be asked")
        let first = await dns.confirmedNames(of: address, maximumNames: 10, firstOnly: true)
        XCTAssertEqual(first.confirmed.count, 1, "stops at the first confirmed name")
        XCTAssertTrue(["mail.zone.test", "mx.zone.test"].contains(first.confirmed.first ?? ""))
        let limited = await dns.confirmedNames(of: address, maximumNames: 0, firstOnly: false)
        XCTAssertEqual(limited.confirmed, [], "no name is followed beyond the limit")
        XCTAssertFalse(limited.forwardErrors)
        let failed = await dns.confirmedNames(of: [192, 0, 2, 41], maximumNames: 10, firstOnly: false)
        XCTAssertNil(failed.names, "the PTR lookup failed")
        let none = await dns.confirmedNames(of: [192, 0, 2, 42], maximumNames: 10, firstOnly: false)
        XCTAssertEqual(none.names, [], "NXDOMAIN: no names")
    }
}
