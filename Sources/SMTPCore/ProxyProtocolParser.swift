import NIOCore

/// An address and port, as a PROXY header gives them.
public struct ProxyEndpoint: Hashable, Sendable {
    public var address: IPAddress
    public var port: Int
    public init(_ address: IPAddress, _ port: Int) {
        self.address = address
        self.port = port
    }
}

/// The addresses a PROXY protocol header carries (HAProxy's spec, versions 1 and 2).
public struct ProxyHeader: Hashable, Sendable {
    /// The original client; nil for `UNKNOWN` / `LOCAL` (health checks): use the peer address.
    public var source: ProxyEndpoint?
    public var destination: ProxyEndpoint?

    public init(source: ProxyEndpoint?, destination: ProxyEndpoint?) {
        self.source = source
        self.destination = destination
    }
}

/// Parses a PROXY protocol v1 or v2 header from the start of a connection.
public enum ProxyProtocolParser {
    public struct Error: Swift.Error, Hashable, CustomStringConvertible {
        public var reason: String
        public var description: String { "bad PROXY protocol header: \(reason)" }
    }

    /// v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// v1 lines are at most 107 octets including CRLF.
    static let v1MaximumLength = 107
    /// v2 headers past this are refused (TLVs included).
    static let v2MaximumLength = 16 + 2048

    /// Consumes a complete header and returns it; nil when more bytes are needed.
    public static func parse(_ buffer: inout ByteBuffer) throws(Error) -> ProxyHeader? {
        let view = buffer.readableBytesView
        guard let first = view.first else { return nil }
        if first == 0x0D {
            let known = min(view.count, v2Signature.count)
            guard view.prefix(known).elementsEqual(v2Signature.prefix(known)) else { throw Error(reason: "not a PROXY header") }
            guard view.count >= 16 else { return nil }
            return try parseV2(&buffer)
        }
        let v1Prefix = Array("PROXY ".utf8)
        let known = min(view.count, v1Prefix.count)
        guard view.prefix(known).elementsEqual(v1Prefix.prefix(known)) else { throw Error(reason: "not a PROXY header") }
        guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count >= v1MaximumLength { throw Error(reason: "v1 line too long") }
            return nil
        }
        let length = newline - buffer.readerIndex + 1
        guard length <= v1MaximumLength, length >= 2, view[newline - 1] == UInt8(ascii: "\r") else {
            throw Error(reason: "v1 line not terminated by CRLF within 107 octets")
        }
        // US-ASCII only (HAProxy's spec §2.1). Checked on octets: a combining mark after a
        // space would otherwise join it into one Character, and the words would split wrongly.
        guard view[view.startIndex..<(newline - 1)].allSatisfy({ (0x20...0x7E).contains($0) }) else {
            throw Error(reason: "v1 line has a byte outside printable US-ASCII")
        }
        let line = buffer.readString(length: length - 2)!
        buffer.moveReaderIndex(forwardBy: 2)
        return try parseV1(line)
    }

    // PROXY TCP4 192.0.2.1 198.51.100.1 56324 25
    private static func parseV1(_ line: String) throws(Error) -> ProxyHeader {
        let words = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard words.count >= 2 else { throw Error(reason: "v1 line has no protocol") }
        if words[1] == "UNKNOWN" { return ProxyHeader(source: nil, destination: nil) }
        guard words.count == 6, words[1] == "TCP4" || words[1] == "TCP6" else { throw Error(reason: "v1 expects TCP4/TCP6 and 4 fields") }
        guard let source = IPAddress(words[2]), let destination = IPAddress(words[3]),
              source.isIPv6 == (words[1] == "TCP6"), destination.isIPv6 == (words[1] == "TCP6") else {
            throw Error(reason: "v1 addresses do not match \(words[1])")
        }
        guard let sourcePort = port(words[4]), let destinationPort = port(words[5]) else { throw Error(reason: "v1 bad port") }
        return ProxyHeader(source: ProxyEndpoint(source, sourcePort), destination: ProxyEndpoint(destination, destinationPort))
    }

    private static func port(_ text: String) -> Int? {
        guard !text.isEmpty, text.count <= 5, text.allSatisfy({ $0 >= "0" && $0 <= "9" }),
              !(text.count > 1 && text.hasPrefix("0")), let value = Int(text), value <= 65535 else { return nil }
        return value
    }

    private static func parseV2(_ buffer: inout ByteBuffer) throws(Error) -> ProxyHeader? {
        let start = buffer.readerIndex
        let versionCommand = buffer.getInteger(at: start + 12, as: UInt8.self)!
        let family = buffer.getInteger(at: start + 13, as: UInt8.self)!
        let length = Int(buffer.getInteger(at: start + 14, as: UInt16.self)!)
        guard versionCommand >> 4 == 2 else { throw Error(reason: "v2 version is not 2") }
        guard 16 + length <= v2MaximumLength else { throw Error(reason: "v2 header too long") }
        guard buffer.readableBytes >= 16 + length else { return nil }
        buffer.moveReaderIndex(forwardBy: 16)
        var payload = buffer.readSlice(length: length)!
        switch versionCommand & 0x0F {
        case 0x0: return ProxyHeader(source: nil, destination: nil) // LOCAL: health check
        case 0x1: break // PROXY
        default: throw Error(reason: "v2 unknown command")
        }
        switch family {
        case 0x11, 0x12: // TCP or UDP over IPv4
            guard payload.readableBytes >= 12, let src = payload.readBytes(length: 4), let dst = payload.readBytes(length: 4),
                  let sport = payload.readInteger(as: UInt16.self), let dport = payload.readInteger(as: UInt16.self) else {
                throw Error(reason: "v2 IPv4 addresses truncated")
            }
            return ProxyHeader(source: ProxyEndpoint(IPAddress(bytes: src)!, Int(sport)), destination: ProxyEndpoint(IPAddress(bytes: dst)!, Int(dport)))
        case 0x21, 0x22: // over IPv6
            guard payload.readableBytes >= 36, let src = payload.readBytes(length: 16), let dst = payload.readBytes(length: 16),
                  let sport = payload.readInteger(as: UInt16.self), let dport = payload.readInteger(as: UInt16.self) else {
                throw Error(reason: "v2 IPv6 addresses truncated")
            }
            return ProxyHeader(source: ProxyEndpoint(IPAddress(bytes: src)!, Int(sport)), destination: ProxyEndpoint(IPAddress(bytes: dst)!, Int(dport)))
        case 0x00: // UNSPEC
            return ProxyHeader(source: nil, destination: nil)
        default:
            throw Error(reason: "v2 unsupported address family \(family)")
        }
    }
}
