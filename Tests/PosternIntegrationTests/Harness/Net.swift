import Foundation
#if canImport(Glibc)
import Glibc
private let sysConnect = Glibc.connect
private let sysClose = Glibc.close
private let sysSend = Glibc.send
private let sendFlags = Int32(MSG_NOSIGNAL)
#elseif canImport(Darwin)
import Darwin
private let sysConnect = Darwin.connect
private let sysClose = Darwin.close
private let sysSend = Darwin.send
private let sendFlags: Int32 = 0
#endif

enum Net {
    private static func makeAddress(host: String, port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &addr.sin_addr)
        return addr
    }

    static func tcpSocket() -> Int32 {
        #if canImport(Glibc)
        return socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        return socket(AF_INET, SOCK_STREAM, 0)
        #endif
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close).
    static func freePort() throws -> Int {
        let fd = tcpSocket()
        guard fd >= 0 else { throw HarnessError.io("socket: errno \(errno)") }
        defer { close(fd) }
        var addr = makeAddress(host: "127.0.0.1", port: 0)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else { throw HarnessError.io("bind: errno \(errno)") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Connects (blocking, with a timeout); returns the fd or -1.
    static func connect(host: String, port: Int, timeout: Double) -> Int32 {
        let fd = tcpSocket()
        guard fd >= 0 else { return -1 }
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        var addr = makeAddress(host: host, port: port)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sysConnect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if rc != 0 {
            guard errno == EINPROGRESS else { close(fd); return -1 }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&pfd, 1, Int32(timeout * 1000)) == 1 else { close(fd); return -1 }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            guard err == 0 else { close(fd); return -1 }
        }
        _ = fcntl(fd, F_SETFL, flags)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    static func canConnect(host: String = "127.0.0.1", port: Int) -> Bool {
        let fd = connect(host: host, port: port, timeout: 0.5)
        if fd < 0 { return false }
        close(fd)
        return true
    }
}

/// One SMTP reply: code, all its lines (without CRLF), and the enhanced status code if any.
struct SMTPReply: CustomStringConvertible {
    var code: Int
    var lines: [String]

    var text: String { lines.joined(separator: "\n") }
    var description: String { text }
    /// "5.6.0" in "550 5.6.0 Bare LF" (taken from the last line).
    var enhancedCode: String? {
        guard let last = lines.last, last.count > 4 else { return nil }
        let rest = last.dropFirst(4)
        let token = rest.split(separator: " ", maxSplits: 1).first.map(String.init) ?? ""
        let parts = token.split(separator: ".")
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isNumber) }) else { return nil }
        return token
    }
    var isPositive: Bool { (200..<400).contains(code) }
}

/// A byte-exact SMTP client over a raw TCP socket, for smuggling / pipelining tests.
final class RawSMTPClient {
    private(set) var fd: Int32
    private var buffer: [UInt8] = []
    var timeout: Double
    /// Everything received, for diagnostics.
    private(set) var transcript: [UInt8] = []

    init(host: String = "127.0.0.1", port: Int, timeout: Double = 10) throws {
        self.timeout = timeout
        fd = Net.connect(host: host, port: port, timeout: timeout)
        guard fd >= 0 else { throw HarnessError.io("cannot connect to \(host):\(port)") }
    }

    deinit { close() }

    func close() {
        if fd >= 0 { _ = sysClose(fd); fd = -1 }
    }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                sysSend(fd, raw.baseAddress! + offset, bytes.count - offset, sendFlags)
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw HarnessError.io("send: errno \(errno)")
            }
            offset += n
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads more bytes into the buffer. Returns false on EOF; throws on timeout.
    private func fill(timeout: Double) throws -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let rc = poll(&pfd, 1, Int32(timeout * 1000))
        if rc == 0 { throw HarnessError.timeout("no data from server within \(timeout)s; got so far: \(printable(transcript))") }
        if rc < 0 { throw HarnessError.io("poll: errno \(errno)") }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, 0) }
        if n < 0 {
            if errno == ECONNRESET { return false }
            throw HarnessError.io("recv: errno \(errno)")
        }
        if n == 0 { return false }
        buffer += chunk[0..<n]
        transcript += chunk[0..<n]
        return true
    }

    /// One line without its CRLF, or nil at EOF.
    func readLine(timeout: Double? = nil) throws -> String? {
        while true {
            if let i = buffer.firstIndex(of: 0x0A) {
                var line = Array(buffer[..<i])
                buffer.removeFirst(i + 1)
                if line.last == 0x0D { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            if try !fill(timeout: timeout ?? self.timeout) {
                if buffer.isEmpty { return nil }
                let line = String(decoding: buffer, as: UTF8.self)
                buffer.removeAll()
                return line
            }
        }
    }

    /// One (possibly multi-line) reply. Throws at EOF.
    func readReply(timeout: Double? = nil) throws -> SMTPReply {
        var lines: [String] = []
        while true {
            guard let line = try readLine(timeout: timeout) else {
                throw HarnessError.io("connection closed while reading a reply; got \(lines)")
            }
            lines.append(line)
            let chars = Array(line)
            if chars.count < 4 || chars[3] != "-" {
                let code = Int(String(chars.prefix(3))) ?? -1
                return SMTPReply(code: code, lines: lines)
            }
        }
    }

    /// Sends `line` + CRLF and reads one reply.
    @discardableResult
    func command(_ line: String, timeout: Double? = nil) throws -> SMTPReply {
        try send(line + "\r\n")
        return try readReply(timeout: timeout)
    }

    /// Reads replies until the connection is quiet for `quiet` seconds or closes.
    func drainReplies(quiet: Double = 1.0) -> [SMTPReply] {
        var replies: [SMTPReply] = []
        while let reply = try? readReply(timeout: quiet) { replies.append(reply) }
        return replies
    }

    /// True if the peer closes the connection within `timeout` seconds (any pending data is discarded).
    func waitForClose(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            do {
                if try !fill(timeout: max(0.01, deadline.timeIntervalSinceNow)) { return true }
            } catch {
                return false
            }
        }
        return false
    }

    private func printable(_ bytes: [UInt8]) -> String {
        String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "\r", with: "\\r")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}

extension RawSMTPClient {
    /// Connects, reads the greeting and sends EHLO; throws unless they are 220 / 250.
    static func greeted(port: Int, ehlo: String = "raw.client.test", timeout: Double = 10) throws -> RawSMTPClient {
        let client = try RawSMTPClient(port: port, timeout: timeout)
        let greeting = try client.readReply()
        guard greeting.code == 220 else { throw HarnessError.failed("greeting: \(greeting)") }
        let reply = try client.command("EHLO \(ehlo)")
        guard reply.code == 250 else { throw HarnessError.failed("EHLO: \(reply)") }
        return client
    }
}

/// Random bytes for message bodies: any octet except NUL, CR, LF and the ones in `excluding`.
func randomLine(length: Int, excluding: Set<UInt8> = [], using rng: inout some RandomNumberGenerator) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(length)
    while out.count < length {
        let b = UInt8.random(in: 1...255, using: &rng)
        if b == 0x0A || b == 0x0D || excluding.contains(b) { continue }
        out.append(b)
    }
    return out
}

/// A small deterministic RNG (SplitMix64) so failures are reproducible.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
