import Glibc
import SMTPCore

/// What systemd hands a service and hears from it, without linking libsystemd: the listening
/// sockets of socket activation (sd_listen_fds(3)) and readiness notifications (sd_notify(3)).
enum Systemd {
    /// A listening socket passed by the service manager.
    struct InheritedSocket: Sendable, Equatable {
        var descriptor: Int32
        /// `FileDescriptorName=` of the socket unit (`unknown` when it has none).
        var name: String
        /// The address it is bound to, when it is a TCP socket.
        var address: IPAddress?
        var port: Int?
    }

    /// The first descriptor passed (SD_LISTEN_FDS_START).
    static let firstDescriptor: Int32 = 3

    /// The sockets passed in `LISTEN_FDS` when `LISTEN_PID` is this process, as
    /// sd_listen_fds(1) takes them: the variables are removed (a child process must not take
    /// them too) and each descriptor is marked close-on-exec.
    static func takeListeningSockets() -> [InheritedSocket] {
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pid = environment("LISTEN_PID").flatMap({ Int32($0) }), pid == getpid(),
              let count = environment("LISTEN_FDS").flatMap({ Int32($0) }), count > 0, count < 1024 else { return [] }
        let names = environment("LISTEN_FDNAMES")?.split(separator: ":", omittingEmptySubsequences: false).map(String.init) ?? []
        return (0..<count).map { index in
            let descriptor = firstDescriptor + index
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            let (address, port) = boundAddress(descriptor)
            return InheritedSocket(descriptor: descriptor, name: Int(index) < names.count ? names[Int(index)] : "unknown",
                                   address: address, port: port)
        }
    }

    /// The inherited socket for a listener on `host`:`port`: the one bound to that address
    /// and port (`0.0.0.0` and `::` match only themselves).
    static func socket(for host: String, port: Int, in sockets: [InheritedSocket]) -> InheritedSocket? {
        guard let address = IPAddress(host) else { return nil }
        return sockets.first { $0.address == address && $0.port == port }
    }

    private static func boundAddress(_ descriptor: Int32) -> (IPAddress?, Int?) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard result == 0 else { return (nil, nil) }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        func decoded() -> String { String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                    var raw = address.pointee.sin_addr
                    inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
                    return (IPAddress(decoded()), Int(UInt16(bigEndian: address.pointee.sin_port)))
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    var raw = address.pointee.sin6_addr
                    inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
                    return (IPAddress(decoded()), Int(UInt16(bigEndian: address.pointee.sin6_port)))
                }
            }
        default:
            return (nil, nil)
        }
    }

    /// Sends `state` (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=…`, one per line) to the
    /// service manager's `NOTIFY_SOCKET`, a datagram socket (a path, or `@name` in the
    /// abstract namespace). Nothing without the variable. Returns whether it was sent.
    @discardableResult
    static func notify(_ state: String) -> Bool {
        guard let path = environment("NOTIFY_SOCKET"), !path.isEmpty, path.utf8.count < 108 else { return false }
        let descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes.first == 0 ? 0 : 1))
        let message = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                message.withUnsafeBytes { sendto(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), socketAddress, length) }
            }
        }
        return sent == message.count
    }

    /// Whether a service manager listens for notifications (`NOTIFY_SOCKET` is set).
    static var isNotifying: Bool {
        !(environment("NOTIFY_SOCKET") ?? "").isEmpty
    }

    /// `MONOTONIC_USEC=` for `RELOADING=1` (systemd 253 and later ask for it).
    static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }

    private static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}
