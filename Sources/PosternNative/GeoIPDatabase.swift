import CMaxMindDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An open MaxMind DB file (GeoIP2 / GeoLite2 Country, City or ASN, or any database
/// using the same field names), memory-mapped and read-only.
///
/// Thread safety: after `init`, libmaxminddb never writes to the `MMDB_s` it opened
/// with `MMDB_MODE_MMAP`, and lookups only read the mapping, so one database serves
/// any number of concurrent readers. The mapping is released in `deinit`.
///
/// Cost: a lookup walks at most 128 tree nodes and reads a handful of map keys;
/// microseconds, no allocation inside libmaxminddb.
public final class GeoIPDatabase: @unchecked Sendable {
    // @unchecked: `mmdb` is written by MMDB_open in init and by MMDB_close in deinit only.

    /// How much of the file to check when opening it.
    public enum Verification: Sendable, Hashable {
        /// Only what `MMDB_open` checks: the metadata and the section sizes. Opening is
        /// instant, but a corrupt record is only found when a lookup reaches it.
        case metadata
        /// Also read every search-tree node and decode every data record once, so a
        /// corrupt file is refused at open time (reload time), not at lookup time.
        /// Linear in the file's size: for a country or ASN database, well under a
        /// second. The default, because databases are opened off the hot path.
        case full
    }

    /// The path the database was opened from.
    public let path: String
    /// The database's metadata section.
    public let metadata: GeoIPMetadata

    private let mmdb: UnsafeMutablePointer<MMDB_s>

    /// Opens and memory-maps the database at `path`.
    ///
    /// - Throws: ``GeoIPError`` naming `path` with libmaxminddb's message when the file
    ///   is missing, unreadable, not a MaxMind DB, or (with ``Verification/full``)
    ///   corrupt anywhere in its tree or data.
    public init(path: String, verification: Verification = .full) throws(GeoIPError) {
        let mmdb = UnsafeMutablePointer<MMDB_s>.allocate(capacity: 1)
        mmdb.initialize(to: MMDB_s())
        errno = 0
        let status = MMDB_open(path, UInt32(MMDB_MODE_MMAP), mmdb)
        let savedErrno = errno
        guard status == MMDB_SUCCESS else {
            // MMDB_open cleans up after itself on failure.
            mmdb.deallocate()
            let unreadable = status == MMDB_FILE_OPEN_ERROR || status == MMDB_IO_ERROR
            var message = Self.message(for: status)
            if unreadable && savedErrno != 0 {
                message += " (\(String(cString: strerror(savedErrno))))"
            }
            throw GeoIPError(kind: unreadable ? .cannotOpen : .invalidDatabase, path: path, code: status, message: message)
        }
        self.path = path
        self.mmdb = mmdb
        self.metadata = GeoIPMetadata(mmdb.pointee.metadata)
        if verification == .full {
            // On throw, deinit runs (all stored properties are set) and closes the file.
            try verify()
        }
    }

    deinit {
        MMDB_close(mmdb)
        mmdb.deallocate()
    }

    /// The libmaxminddb version, e.g. "1.7.1".
    public static var libraryVersion: String { String(cString: MMDB_lib_version()) }

    // MARK: Lookups

    /// What the database knows about `address`; nil when the address is unknown to it
    /// (loopback, private and unallocated space are normally absent, IPv6 in an
    /// IPv4-only database) or the entry carries none of ``GeoIPRecord``'s fields.
    /// An IPv4-mapped IPv6 address is looked up as the IPv4 address it carries.
    ///
    /// - Throws: ``GeoIPError`` only when the database itself is corrupt where the
    ///   lookup led; an unknown address is never an error.
    public func lookup(_ address: GeoIPAddress) throws(GeoIPError) -> GeoIPRecord? {
        let address = address.mappedIPv4 ?? address
        if !address.isIPv4 && metadata.ipVersion == 4 { return nil }

        var status: Int32 = MMDB_SUCCESS
        let result = Self.withSockaddr(address) { MMDB_lookup_sockaddr(mmdb, $0, &status) }
        if status == MMDB_IPV6_LOOKUP_IN_IPV4_DATABASE_ERROR { return nil }
        guard status == MMDB_SUCCESS else { throw lookupError(status, address) }
        guard result.found_entry else { return nil }

        var prefix = Int(result.netmask)
        // In an IPv6 tree, IPv4 lives under ::/96; report the IPv4 prefix length.
        if address.isIPv4 && metadata.ipVersion == 6 { prefix = max(0, prefix - 96) }

        var entry = result.entry
        let record = GeoIPRecord(
            countryCode: try string(&entry, FieldPath.countryISOCode, address),
            registeredCountryCode: try string(&entry, FieldPath.registeredCountryISOCode, address),
            continentCode: try string(&entry, FieldPath.continentCode, address),
            autonomousSystemNumber: try unsigned(&entry, FieldPath.autonomousSystemNumber, address),
            autonomousSystemOrganization: try string(&entry, FieldPath.autonomousSystemOrganization, address),
            prefixLength: prefix
        )
        return record.isEmpty ? nil : record
    }

    /// Looks up an address given as text (`"192.0.2.1"`, `"2001:db8::1"`).
    ///
    /// - Throws: ``GeoIPError`` of kind ``GeoIPError/Kind/invalidAddress`` when `text`
    ///   is not an IP address, or as ``lookup(_:)-(GeoIPAddress)``.
    public func lookup(_ text: String) throws(GeoIPError) -> GeoIPRecord? {
        guard let address = GeoIPAddress(text) else {
            throw GeoIPError(kind: .invalidAddress, path: path, code: nil, message: "not an IP address: \(text)")
        }
        return try lookup(address)
    }

    /// Looks up an address given as 4 or 16 bytes in network order.
    ///
    /// - Throws: ``GeoIPError`` of kind ``GeoIPError/Kind/invalidAddress`` for any other
    ///   byte count, or as ``lookup(_:)-(GeoIPAddress)``.
    public func lookup(bytes: some Collection<UInt8>) throws(GeoIPError) -> GeoIPRecord? {
        guard let address = GeoIPAddress(bytes: bytes) else {
            throw GeoIPError(kind: .invalidAddress, path: path, code: nil,
                             message: "an IP address is 4 or 16 bytes, not \(bytes.count)")
        }
        return try lookup(address)
    }

    // MARK: Reading fields

    private func value(
        _ entry: inout MMDB_entry_s, _ path: FieldPath, _ address: GeoIPAddress
    ) throws(GeoIPError) -> MMDB_entry_data_s? {
        var data = MMDB_entry_data_s()
        let status = MMDB_aget_value(&entry, &data, path.pointer)
        switch status {
        case MMDB_SUCCESS:
            return data.has_data ? data : nil
        case MMDB_LOOKUP_PATH_DOES_NOT_MATCH_DATA_ERROR:
            return nil  // the record has no such field
        default:
            throw lookupError(status, address)
        }
    }

    private func string(
        _ entry: inout MMDB_entry_s, _ path: FieldPath, _ address: GeoIPAddress
    ) throws(GeoIPError) -> String? {
        guard let data = try value(&entry, path, address),
              data.type == UInt32(MMDB_DATA_TYPE_UTF8_STRING),
              let chars = data.utf8_string
        else { return nil }
        // Not NUL-terminated: the length is data_size.
        let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(chars), count: Int(data.data_size))
        return String(decoding: bytes, as: UTF8.self)
    }

    private func unsigned(
        _ entry: inout MMDB_entry_s, _ path: FieldPath, _ address: GeoIPAddress
    ) throws(GeoIPError) -> UInt32? {
        guard let data = try value(&entry, path, address) else { return nil }
        switch Int32(data.type) {
        case MMDB_DATA_TYPE_UINT16: return UInt32(data.uint16)
        case MMDB_DATA_TYPE_UINT32: return data.uint32
        case MMDB_DATA_TYPE_UINT64: return UInt32(exactly: data.uint64)
        case MMDB_DATA_TYPE_INT32: return UInt32(exactly: data.int32)
        default: return nil
        }
    }

    private func lookupError(_ status: Int32, _ address: GeoIPAddress) -> GeoIPError {
        GeoIPError(kind: .invalidDatabase, path: path, code: status,
                   message: "looking up \(address): \(Self.message(for: status))")
    }

    // MARK: Verification

    /// Reads every node and decodes every distinct data record once. Nodes are visited
    /// by number, not by walking the tree, so aliased subtrees (::ffff:0:0/96 → IPv4)
    /// cannot loop.
    private func verify() throws(GeoIPError) {
        let nodeCount = metadata.nodeCount
        var decoded = Set<UInt32>()
        var node = MMDB_search_node_s()
        for number in 0..<nodeCount {
            let status = MMDB_read_node(mmdb, number, &node)
            guard status == MMDB_SUCCESS else {
                throw GeoIPError(kind: .invalidDatabase, path: path, code: status,
                                 message: "search tree node \(number): \(Self.message(for: status))")
            }
            for (type, entry) in [(node.left_record_type, node.left_record_entry),
                                  (node.right_record_type, node.right_record_entry)] {
                switch Int32(type) {
                case MMDB_RECORD_TYPE_DATA:
                    guard decoded.insert(entry.offset).inserted else { continue }
                    var entry = entry
                    var list: UnsafeMutablePointer<MMDB_entry_data_list_s>?
                    let status = MMDB_get_entry_data_list(&entry, &list)
                    MMDB_free_entry_data_list(list)
                    guard status == MMDB_SUCCESS else {
                        throw GeoIPError(kind: .invalidDatabase, path: path, code: status,
                                         message: "data record at offset \(entry.offset): \(Self.message(for: status))")
                    }
                case MMDB_RECORD_TYPE_INVALID:
                    throw GeoIPError(kind: .invalidDatabase, path: path, code: MMDB_CORRUPT_SEARCH_TREE_ERROR,
                                     message: "search tree node \(number) points outside the file: "
                                         + Self.message(for: MMDB_CORRUPT_SEARCH_TREE_ERROR))
                default:
                    continue  // another node, or empty
                }
            }
        }
    }

    // MARK: Helpers

    private static func message(for status: Int32) -> String {
        String(cString: MMDB_strerror(status))
    }

    private static func withSockaddr<R>(_ address: GeoIPAddress, _ body: (UnsafePointer<sockaddr>) -> R) -> R {
        if address.isIPv4 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: address.bytes) }
            return withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body)
            }
        } else {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: address.bytes) }
            return withUnsafePointer(to: &sin6) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body)
            }
        }
    }
}

/// A NULL-terminated array of C strings naming a field, for `MMDB_aget_value`; built
/// once from static strings so a lookup allocates nothing to name its fields.
private final class FieldPath: @unchecked Sendable {
    // @unchecked: the buffer is written in init, freed in deinit, read-only between.
    let pointer: UnsafeMutablePointer<UnsafePointer<CChar>?>

    init(_ keys: StaticString...) {
        pointer = .allocate(capacity: keys.count + 1)
        for (index, key) in keys.enumerated() {
            (pointer + index).initialize(to: UnsafeRawPointer(key.utf8Start).assumingMemoryBound(to: CChar.self))
        }
        (pointer + keys.count).initialize(to: nil)
    }

    deinit { pointer.deallocate() }

    static let countryISOCode = FieldPath("country", "iso_code")
    static let registeredCountryISOCode = FieldPath("registered_country", "iso_code")
    static let continentCode = FieldPath("continent", "code")
    static let autonomousSystemNumber = FieldPath("autonomous_system_number")
    static let autonomousSystemOrganization = FieldPath("autonomous_system_organization")
}

/// What a GeoIP database says about one address. Country databases fill the country
/// and continent fields, ASN databases the AS fields; City databases the same as Country.
public struct GeoIPRecord: Sendable, Hashable {
    /// ISO 3166-1 alpha-2 code of the country the address is in (`country.iso_code`).
    public var countryCode: String?
    /// ISO 3166-1 alpha-2 code of the country the network is registered in
    /// (`registered_country.iso_code`); may differ from ``countryCode`` or be the only one present.
    public var registeredCountryCode: String?
    /// Two-letter continent code: AF, AN, AS, EU, NA, OC, SA (`continent.code`).
    public var continentCode: String?
    /// Autonomous system number (`autonomous_system_number`).
    public var autonomousSystemNumber: UInt32?
    /// Autonomous system organisation (`autonomous_system_organization`).
    public var autonomousSystemOrganization: String?
    /// Length of the network prefix the entry covers, in the address's own family
    /// (0–32 for IPv4, 0–128 for IPv6): every address in that network gets the same record.
    public var prefixLength: Int

    public init(
        countryCode: String? = nil,
        registeredCountryCode: String? = nil,
        continentCode: String? = nil,
        autonomousSystemNumber: UInt32? = nil,
        autonomousSystemOrganization: String? = nil,
        prefixLength: Int
    ) {
        self.countryCode = countryCode
        self.registeredCountryCode = registeredCountryCode
        self.continentCode = continentCode
        self.autonomousSystemNumber = autonomousSystemNumber
        self.autonomousSystemOrganization = autonomousSystemOrganization
        self.prefixLength = prefixLength
    }

    /// No field Postern reads is present.
    var isEmpty: Bool {
        countryCode == nil && registeredCountryCode == nil && continentCode == nil
            && autonomousSystemNumber == nil && autonomousSystemOrganization == nil
    }
}

/// A MaxMind DB's metadata section.
public struct GeoIPMetadata: Sendable, Hashable {
    /// E.g. "GeoIP2-Country", "GeoLite2-ASN".
    public var databaseType: String
    /// When the database was built, in seconds since 1970-01-01T00:00:00Z.
    public var buildEpoch: UInt64
    /// 4 or 6: the address family of the search tree (a 6 tree also holds IPv4).
    public var ipVersion: Int
    /// Number of nodes in the search tree.
    public var nodeCount: UInt32
    /// Bits per search-tree record (24, 28 or 32).
    public var recordSize: Int
    /// Binary format version, major and minor.
    public var binaryFormatMajorVersion: Int
    public var binaryFormatMinorVersion: Int
    /// Locales the database has names for, e.g. ["en", "de"].
    public var languages: [String]
    /// Descriptions by language.
    public var descriptions: [String: String]

    init(_ raw: MMDB_metadata_s) {
        databaseType = raw.database_type.map { String(cString: $0) } ?? ""
        buildEpoch = raw.build_epoch
        ipVersion = Int(raw.ip_version)
        nodeCount = raw.node_count
        recordSize = Int(raw.record_size)
        binaryFormatMajorVersion = Int(raw.binary_format_major_version)
        binaryFormatMinorVersion = Int(raw.binary_format_minor_version)
        var languages: [String] = []
        if let names = raw.languages.names {
            for index in 0..<raw.languages.count {
                if let name = names[index] { languages.append(String(cString: name)) }
            }
        }
        self.languages = languages
        var descriptions: [String: String] = [:]
        if let list = raw.description.descriptions {
            for index in 0..<raw.description.count {
                guard let item = list[index], let language = item.pointee.language,
                      let text = item.pointee.description
                else { continue }
                descriptions[String(cString: language)] = String(cString: text)
            }
        }
        self.descriptions = descriptions
    }
}

/// A GeoIP database that could not be opened or read, naming the file.
public struct GeoIPError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The file is missing or cannot be read (or mapped: a directory, a device).
        case cannotOpen
        /// The file is not a MaxMind DB, or is corrupt.
        case invalidDatabase
        /// The address given to a lookup is not an IP address (a caller error).
        case invalidAddress
    }

    public var kind: Kind
    /// The database file.
    public var path: String
    /// libmaxminddb's status code (MMDB_*_ERROR), when it reported one.
    public var code: Int32?
    /// libmaxminddb's message, with context.
    public var message: String

    public var description: String {
        "GeoIP database \(path): \(message)"
    }
}
