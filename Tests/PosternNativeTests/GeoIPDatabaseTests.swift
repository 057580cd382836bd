import Dispatch
import Foundation
import PosternNative
import XCTest

/// Lookups against fixtures made by `Fixtures/make-fixtures.pl` (always present), and
/// against MaxMind's own test databases in `../shared/testdata/geoip` when present.
final class GeoIPDatabaseTests: XCTestCase {
    // MARK: Own fixtures

    func testCountryAndContinent() throws {
        let db = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        XCTAssertEqual(
            try db.lookup("192.0.2.1"),
            GeoIPRecord(countryCode: "GB", registeredCountryCode: "GB", continentCode: "EU", prefixLength: 24)
        )
        XCTAssertEqual(try db.lookup("198.51.100.1")?.countryCode, "SE")
        XCTAssertEqual(
            try db.lookup("198.51.100.200"),
            GeoIPRecord(countryCode: "US", registeredCountryCode: "US", continentCode: "NA", prefixLength: 25)
        )
        // Only the registered country is known.
        XCTAssertEqual(try db.lookup("203.0.113.77"), GeoIPRecord(registeredCountryCode: "JP", prefixLength: 24))
    }

    func testIPv6() throws {
        let db = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        XCTAssertEqual(
            try db.lookup("2001:db8:1::25"),
            GeoIPRecord(countryCode: "DE", registeredCountryCode: "DE", continentCode: "EU", prefixLength: 48)
        )
        XCTAssertEqual(try db.lookup("2001:db8:2:ffff:ffff:ffff:ffff:ffff")?.continentCode, "SA")
        XCTAssertNil(try db.lookup("2001:db8:4::1"))
    }

    func testIPv4MappedIPv6IsLookedUpAsIPv4() throws {
        let db = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        let record = try XCTUnwrap(try db.lookup("::ffff:192.0.2.9"))
        XCTAssertEqual(record.countryCode, "GB")
        XCTAssertEqual(record.prefixLength, 24)
        XCTAssertEqual(GeoIPAddress("::ffff:192.0.2.9")?.mappedIPv4, GeoIPAddress("192.0.2.9"))
        XCTAssertNil(GeoIPAddress("::192.0.2.9")?.mappedIPv4)
    }

    func testAutonomousSystems() throws {
        let db = try GeoIPDatabase(path: fixture("postern-asn.mmdb"))
        XCTAssertEqual(
            try db.lookup("192.0.2.200"),
            GeoIPRecord(autonomousSystemNumber: 64496, autonomousSystemOrganization: "Example Transit Ltd", prefixLength: 24)
        )
        // Above 2^31: the number is unsigned.
        XCTAssertEqual(try db.lookup("198.51.100.7")?.autonomousSystemNumber, 4_200_000_001)
        let unicode = try XCTUnwrap(try db.lookup("2001:db8:1::1"))
        XCTAssertEqual(unicode.autonomousSystemNumber, 64511)
        XCTAssertEqual(unicode.autonomousSystemOrganization, "Exämple Ünicode GmbH")
        XCTAssertNil(unicode.countryCode)
        let noOrganisation = try XCTUnwrap(try db.lookup("2001:db8:2::1"))
        XCTAssertEqual(noOrganisation.autonomousSystemNumber, 65551)
        XCTAssertNil(noOrganisation.autonomousSystemOrganization)
    }

    func testUnknownAddressesAreNilNotErrors() throws {
        let country = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        let asn = try GeoIPDatabase(path: fixture("postern-asn.mmdb"))
        for address in ["127.0.0.1", "10.1.2.3", "192.168.0.1", "0.0.0.0", "255.255.255.255", "::1", "::", "fe80::1"] {
            XCTAssertNil(try country.lookup(address), address)
            XCTAssertNil(try asn.lookup(address), address)
        }
        XCTAssertNil(try asn.lookup("203.0.113.5"))  // in the country file only
        XCTAssertNil(try country.lookup("2001:db8:3::1"))  // an entry with none of our fields
    }

    func testIPv4OnlyDatabase() throws {
        let db = try GeoIPDatabase(path: fixture("postern-ipv4-only.mmdb"))
        XCTAssertEqual(db.metadata.ipVersion, 4)
        XCTAssertEqual(try db.lookup("192.0.2.1")?.countryCode, "NL")
        XCTAssertEqual(try db.lookup("192.0.2.1")?.prefixLength, 24)
        XCTAssertEqual(try db.lookup("::ffff:192.0.2.1")?.countryCode, "NL")
        XCTAssertNil(try db.lookup("2001:db8:1::1"))  // IPv6 in an IPv4 tree: unknown
    }

    func testAddressesAsBytes() throws {
        let db = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        XCTAssertEqual(try db.lookup(bytes: [192, 0, 2, 1])?.countryCode, "GB")
        var v6 = [UInt8](repeating: 0, count: 16)
        v6[0...5] = [0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01]
        XCTAssertEqual(try db.lookup(bytes: v6)?.countryCode, "DE")
        XCTAssertEqual(GeoIPAddress(bytes: v6)?.description, "2001:db8:1::")
        XCTAssertEqual(GeoIPAddress("192.0.2.1")?.bytes, [192, 0, 2, 1])
        XCTAssertThrowsError(try db.lookup(bytes: [1, 2, 3, 4, 5])) { error in
            XCTAssertEqual((error as? GeoIPError)?.kind, .invalidAddress)
        }
    }

    func testInvalidAddressTextIsACallerError() throws {
        let db = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        for text in ["", "example.org", "192.0.2", "192.0.2.256", "[::1]", "fe80::1%eth0", " 192.0.2.1"] {
            XCTAssertNil(GeoIPAddress(text), text)
            XCTAssertThrowsError(try db.lookup(text), text) { error in
                XCTAssertEqual((error as? GeoIPError)?.kind, .invalidAddress)
            }
        }
    }

    func testMetadata() throws {
        let db = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        let metadata = db.metadata
        XCTAssertEqual(metadata.databaseType, "Postern-Test-Country")
        XCTAssertEqual(metadata.buildEpoch, 1_700_000_000)
        XCTAssertEqual(metadata.ipVersion, 6)
        XCTAssertEqual(metadata.recordSize, 24)
        XCTAssertEqual(metadata.binaryFormatMajorVersion, 2)
        XCTAssertEqual(metadata.binaryFormatMinorVersion, 0)
        XCTAssertEqual(metadata.languages, ["en"])
        XCTAssertEqual(metadata.descriptions, ["en": "Postern test fixture: countries"])
        XCTAssertGreaterThan(metadata.nodeCount, 0)
        XCTAssertFalse(GeoIPDatabase.libraryVersion.isEmpty)
    }

    // MARK: Files that are not usable databases

    func testMissingFileNamesTheFile() {
        let path = "/nonexistent/postern/GeoLite2-Country.mmdb"
        XCTAssertThrowsError(try GeoIPDatabase(path: path)) { error in
            guard let error = error as? GeoIPError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.kind, .cannotOpen)
            XCTAssertEqual(error.path, path)
            XCTAssertTrue(error.description.contains(path), error.description)
            XCTAssertTrue(error.description.contains("No such file or directory"), error.description)
        }
    }

    func testUnreadablePathIsAnError() throws {
        let directory = try fixture("")  // a directory, not a file
        XCTAssertThrowsError(try GeoIPDatabase(path: directory)) { error in
            guard let error = error as? GeoIPError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.kind, .cannotOpen)
            XCTAssertTrue(error.description.contains(directory), error.description)
        }
    }

    func testFilesThatAreNotDatabases() throws {
        for name in ["postern-not-a-database.mmdb", "postern-truncated.mmdb", "make-fixtures.pl"] {
            let path = try fixture(name)
            for verification in [GeoIPDatabase.Verification.metadata, .full] {
                XCTAssertThrowsError(try GeoIPDatabase(path: path, verification: verification), name) { error in
                    guard let error = error as? GeoIPError else { return XCTFail("\(error)") }
                    XCTAssertEqual(error.kind, .invalidDatabase)
                    XCTAssertTrue(error.description.contains(path), error.description)
                    XCTAssertTrue(error.description.contains("invalid metadata"), error.description)
                }
            }
        }
    }

    func testCorruptRecordIsFoundByFullVerification() throws {
        let path = try fixture("postern-corrupt-data.mmdb")
        XCTAssertThrowsError(try GeoIPDatabase(path: path)) { error in
            guard let error = error as? GeoIPError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.kind, .invalidDatabase)
            XCTAssertTrue(error.description.contains(path), error.description)
            XCTAssertTrue(error.message.contains("bad data"), error.message)
        }
        // Opened without verification, the intact records still read.
        let db = try GeoIPDatabase(path: path, verification: .metadata)
        XCTAssertEqual(try db.lookup("192.0.2.1")?.countryCode, "GB")
    }

    // MARK: Concurrency and cost

    func testConcurrentLookupsFromEightThreads() throws {
        let db = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        let expectations: [(String, String?)] = [
            ("192.0.2.1", "GB"), ("198.51.100.1", "SE"), ("198.51.100.129", "US"),
            ("2001:db8:1::1", "DE"), ("127.0.0.1", nil), ("::ffff:192.0.2.3", "GB"),
        ]
        let failures = Counter()
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for round in 0..<2_000 {
                let (address, country) = expectations[(thread + round) % expectations.count]
                if (try? db.lookup(address))??.countryCode != country { failures.increment() }
            }
        }
        XCTAssertEqual(failures.value, 0)
    }

    func testLookupsAreCheap() throws {
        let db = try GeoIPDatabase(path: fixture("postern-country.mmdb"))
        let address = try XCTUnwrap(GeoIPAddress("198.51.100.200"))
        let rounds = 20_000
        let clock = ContinuousClock()
        var found = 0
        let elapsed = try clock.measure {
            for _ in 0..<rounds where try db.lookup(address) != nil { found += 1 }
        }
        XCTAssertEqual(found, rounds)
        let perLookup = elapsed / rounds
        print("GeoIP lookup: \(perLookup) each")
        // Generous (debug build, shared CI box): the point is "not milliseconds".
        XCTAssertLessThan(perLookup, .microseconds(200))
    }

    // MARK: MaxMind's own test databases (when present)

    func testMaxMindCountryDatabase() throws {
        let db = try GeoIPDatabase(path: shared("GeoIP2-Country-Test.mmdb"))
        XCTAssertEqual(db.metadata.databaseType, "GeoIP2-Country")
        XCTAssertGreaterThan(db.metadata.buildEpoch, 1_000_000_000)
        let gb = try XCTUnwrap(try db.lookup("81.2.69.142"))
        XCTAssertEqual(gb.countryCode, "GB")
        XCTAssertEqual(gb.continentCode, "EU")
        XCTAssertEqual(try db.lookup("89.160.20.112")?.countryCode, "SE")
        XCTAssertEqual(try db.lookup("175.16.199.0")?.countryCode, "CN")
        XCTAssertEqual(try db.lookup("216.160.83.56")?.continentCode, "NA")
        XCTAssertEqual(try db.lookup("67.43.156.0")?.countryCode, "BT")
        XCTAssertNil(try db.lookup("127.0.0.1"))
        XCTAssertNil(try db.lookup("::1"))
    }

    func testMaxMindCityDatabase() throws {
        let db = try GeoIPDatabase(path: shared("GeoIP2-City-Test.mmdb"))
        XCTAssertEqual(try db.lookup("81.2.69.142")?.countryCode, "GB")
        XCTAssertEqual(try db.lookup("89.160.20.112")?.countryCode, "SE")
        XCTAssertNil(try db.lookup("127.0.0.1"))
    }

    func testMaxMindASNDatabase() throws {
        let db = try GeoIPDatabase(path: shared("GeoLite2-ASN-Test.mmdb"))
        XCTAssertEqual(db.metadata.databaseType, "GeoLite2-ASN")
        let google = try XCTUnwrap(try db.lookup("1.0.0.1"))
        XCTAssertEqual(google.autonomousSystemNumber, 15169)
        XCTAssertEqual(google.autonomousSystemOrganization, "Google Inc.")
        XCTAssertNil(google.countryCode)
        XCTAssertEqual(try db.lookup("1.128.0.1")?.autonomousSystemNumber, 1221)
        XCTAssertEqual(try db.lookup("1.128.0.1")?.autonomousSystemOrganization, "Telstra Pty Ltd")
        XCTAssertNil(try db.lookup("127.0.0.1"))
    }

    func testMaxMindBrokenDatabasesAreErrorsNamingTheFile() throws {
        for name in ["GeoIP2-City-Test-Broken-Double-Format.mmdb", "GeoIP2-City-Test-Invalid-Node-Count.mmdb"] {
            let path = try shared(name)
            XCTAssertThrowsError(try GeoIPDatabase(path: path), name) { error in
                guard let error = error as? GeoIPError else { return XCTFail("\(error)") }
                XCTAssertEqual(error.kind, .invalidDatabase)
                XCTAssertTrue(error.description.contains(path), error.description)
                XCTAssertFalse(error.message.isEmpty)
            }
        }
    }

    // MARK: Helpers

    private func fixture(_ name: String) throws -> String {
        let directory = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil))
        return name.isEmpty ? directory.path : directory.appendingPathComponent(name).path
    }

    /// MaxMind's test data beside the repository (`../shared/testdata/geoip`), or where
    /// `POSTERN_GEOIP_TESTDATA` points; skips the test when absent.
    private func shared(_ name: String) throws -> String {
        let directory: URL
        if let override = ProcessInfo.processInfo.environment["POSTERN_GEOIP_TESTDATA"] {
            directory = URL(fileURLWithPath: override)
        } else {
            directory = URL(fileURLWithPath: #filePath)
                .deletingLastPathComponent()  // PosternNativeTests
                .deletingLastPathComponent()  // Tests
                .deletingLastPathComponent()  // repository
                .deletingLastPathComponent()
                .appendingPathComponent("shared/testdata/geoip")
        }
        let path = directory.appendingPathComponent(name).path
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw XCTSkip("MaxMind test database not present: \(path)")
        }
        return path
    }
}
