import Foundation
import Glibc

/// One HTTP GET to a running Postern's status endpoint (`postern check` asks it what a reload
/// would change): HTTP/1.0, the whole answer read until the server closes, a deadline on
/// connecting and on each read.
enum StatusQuery {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The body of a 200 answer to `GET path`.
    static func get(host: String, port: Int, path: String, timeout: Duration = .seconds(3)) throws(Failure) -> [UInt8] {
        // A status endpoint on every address is asked on loopback.
        let target = host == "0.0.0.0" ? "127.0.0.1" : host == "::" ? "::1" : host
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(target, String(port), &hints, &found) == 0, let first = found else {
            throw Failure(description: "cannot resolve \(target)")
        }
        defer { freeaddrinfo(found) }
        let descriptor = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
        guard descriptor >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        let seconds = timeout.components.seconds
        var limit = timeval(tv_sec: Int(seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        guard connect(descriptor, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            throw Failure(description: String(cString: strerror(errno)))
        }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(target)\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            throw Failure(description: "sending the request: \(String(cString: strerror(errno)))")
        }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while answer.count < 1 << 20 {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count == 0 { break }
            guard count > 0 else {
                throw Failure(description: errno == EAGAIN ? "no answer within \(seconds) s" : String(cString: strerror(errno)))
            }
            answer += buffer[0..<count]
        }
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = (0..<max(0, answer.count - 3)).first(where: { Array(answer[$0..<$0 + 4]) == separator }) else {
            throw Failure(description: "not an HTTP answer")
        }
        let statusLine = String(decoding: answer[0..<end], as: UTF8.self).split(separator: "\r\n").first ?? ""
        guard statusLine.split(separator: " ").dropFirst().first == "200" else {
            throw Failure(description: "answered \(statusLine)")
        }
        return Array(answer[(end + 4)...])
    }
}
