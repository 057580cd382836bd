import Foundation
import Synchronization

/// An authoritative DNS server for the resolver's tests, on 127.0.0.1 over UDP (answers are
/// small: no truncation). A table maps (name, type) to an answer: records, NXDOMAIN, an rcode
/// (SERVFAIL, REFUSED), silence, or a delay. Every query it receives is counted.
final class TestDNSServer: @unchecked Sendable {
    enum Answer {
        case a([UInt8])
        case aaaa([UInt8])
        /// One TXT record of these strings.
        case txt([String])
        case ptr(String)
        case mx(UInt16, String)
    }

    enum Behaviour {
        case records([Answer], ttl: UInt32 = 300)
        case nxdomain
        case rcode(UInt8)
        /// Never answers.
        case silent
        /// Answers after this many seconds.
        case delayed(Double, [Answer])
    }

    let port: Int
    private let socket: Int32
    private let table: [String: Behaviour]
    private let counts = Mutex<[String: Int]>([:])
    private let stopped = Atomic<Bool>(false)

    /// Keys: "name TYPE" with the name lower-case, without the trailing dot ("a.test A").
    init(_ table: [String: Behaviour]) throws {
        self.table = table
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        socket = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in serve() }
        thread.start()
    }

    deinit { stop() }

    var server: String { "127.0.0.1:\(port)" }

    func stop() {
        if !stopped.exchange(true, ordering: .relaxed) {
            // The serving thread sees the flag within its 100 ms receive timeout, then closes.
        }
    }

    /// Queries received for "name TYPE".
    func queries(_ key: String) -> Int { counts.withLock { $0[key] ?? 0 } }

    private static let types: [UInt16: String] = [1: "A", 2: "NS", 5: "CNAME", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA"]

    private func serve() {
        var buffer = [UInt8](repeating: 0, count: 1500)
        while !stopped.load(ordering: .relaxed) {
            var peer = sockaddr_storage()
            var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let count = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(socket, &buffer, buffer.count, 0, $0, &peerLength) }
            }
            guard count > 12 else { continue }
            let query = Array(buffer[0..<count])
            guard let (name, type, questionEnd) = Self.question(query) else { continue }
            let key = "\(name) \(Self.types[type] ?? String(type))"
            counts.withLock { $0[key, default: 0] += 1 }
            let behaviour = table[key] ?? (table.keys.contains { $0.hasPrefix(name + " ") } ? .records([]) : .nxdomain)
            let send: @Sendable ([UInt8]) -> Void = { [socket, peer, peerLength] reply in
                var peer = peer
                _ = withUnsafeMutablePointer(to: &peer) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(socket, reply, reply.count, 0, $0, peerLength) }
                }
            }
            switch behaviour {
            case .silent: continue
            case .nxdomain: send(Self.reply(query, questionEnd: questionEnd, rcode: 3, answers: [], type: type, ttl: 0))
            case .rcode(let rcode): send(Self.reply(query, questionEnd: questionEnd, rcode: rcode, answers: [], type: type, ttl: 0))
            case .records(let answers, let ttl): send(Self.reply(query, questionEnd: questionEnd, rcode: 0, answers: answers, type: type, ttl: ttl))
            case .delayed(let seconds, let answers):
                let reply = Self.reply(query, questionEnd: questionEnd, rcode: 0, answers: answers, type: type, ttl: 300)
                DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { send(reply) }
            }
        }
        close(socket)
    }

    private static func question(_ packet: [UInt8]) -> (String, UInt16, Int)? {
        var index = 12
        var labels: [String] = []
        while index < packet.count {
            let length = Int(packet[index])
            if length == 0 { break }
            guard index + 1 + length < packet.count else { return nil }
            labels.append(String(decoding: packet[(index + 1)...(index + length)], as: UTF8.self).lowercased())
            index += 1 + length
        }
        guard index + 5 <= packet.count else { return nil }
        let type = UInt16(packet[index + 1]) << 8 | UInt16(packet[index + 2])
        return (labels.joined(separator: "."), type, index + 5)
    }

    private static func encodeName(_ name: String) -> [UInt8] {
        var out: [UInt8] = []
        for label in name.split(separator: ".") {
            out.append(UInt8(label.utf8.count))
            out += label.utf8
        }
        return out + [0]
    }

    private static func reply(_ query: [UInt8], questionEnd: Int, rcode: UInt8, answers: [Answer], type: UInt16, ttl: UInt32) -> [UInt8] {
        var out = Array(query[0..<2])
        out += [0x84 | (query[2] & 0x01), rcode]  // QR, AA, RD copied; RA off
        out += [0, 1, 0, UInt8(answers.count), 0, 0, 0, 0]
        out += query[12..<questionEnd]
        for answer in answers {
            let (rrType, rdata): (UInt16, [UInt8]) = switch answer {
            case .a(let octets): (1, octets)
            case .aaaa(let octets): (28, octets)
            case .txt(let strings): (16, strings.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) })
            case .ptr(let name): (12, encodeName(name))
            case .mx(let preference, let name): (15, [UInt8(preference >> 8), UInt8(preference & 0xFF)] + encodeName(name))
            }
            out += [0xC0, 0x0C]  // the question's name
            out += [UInt8(rrType >> 8), UInt8(rrType & 0xFF), 0, 1]
            out += [UInt8(ttl >> 24), UInt8((ttl >> 16) & 0xFF), UInt8((ttl >> 8) & 0xFF), UInt8(ttl & 0xFF)]
            out += [UInt8(rdata.count >> 8), UInt8(rdata.count & 0xFF)] + rdata
        }
        return out
    }
}
