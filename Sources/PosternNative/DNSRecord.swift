import Foundation

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
