import Glibc
import Foundation
import NIOCore
import SMTPCore

/// Local delivery into a Maildir (tmp → fsync → new), for setups with no MTA behind Postern
/// and for the bundled default configuration. Lines are stored with LF endings, as Maildir
/// readers expect; the envelope is recorded in `Return-Path:` and `Delivered-To:` headers.
public final class MaildirRelaySession: RelaySession {
    public let path: String
    public let upstreamName: String
    private let hostname: String
    private var reversePath: ReversePath?
    private var recipients: [ForwardPath] = []
    private static let counter = Counter()

    public init(path: String, hostname: String) throws(UpstreamError) {
        self.path = path
        self.upstreamName = "maildir:\(path)"
        self.hostname = hostname
        try Self.prepare(path)
    }

    public var isUsable: Bool { true }

    /// Creates `tmp`, `new` and `cur` when missing.
    public static func prepare(_ path: String) throws(UpstreamError) {
        for sub in ["", "/tmp", "/new", "/cur"] {
            do {
                try FileManager.default.createDirectory(atPath: path + sub, withIntermediateDirectories: true)
            } catch {
                throw UpstreamError(.localError, "cannot create maildir \(path + sub): \(error.localizedDescription)")
            }
        }
    }

    public func mail(_ path: ReversePath, _ parameters: MailParameters) async throws(UpstreamError) -> SMTPReply {
        reversePath = path
        recipients = []
        return SMTPReply(250, EnhancedStatusCode(2, 1, 0), "Ok")
    }

    public func recipient(_ path: ForwardPath, _ parameters: RecipientParameters) async throws(UpstreamError) -> SMTPReply {
        recipients.append(path)
        return SMTPReply(250, EnhancedStatusCode(2, 1, 5), "Ok")
    }

    public func message(header: ByteBuffer, content: MessageSpool, chunked: Bool) async throws(UpstreamError) -> SMTPReply {
        defer { reversePath = nil; recipients = [] }
        let name = "\(Int(Date().timeIntervalSince1970)).P\(getpid())Q\(Self.counter.next()).\(hostname)"
        let temporary = "\(path)/tmp/\(name)"
        let final = "\(path)/new/\(name)"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard descriptor >= 0 else { throw UpstreamError(.localError, "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        var ok = false
        defer {
            Glibc.close(descriptor)
            if !ok { unlink(temporary) }
        }
        var envelope = ByteBuffer()
        envelope.writeString("Return-Path: \(reversePath?.description ?? "<>")\n")
        for recipient in recipients { envelope.writeString("Delivered-To: \(recipient.mailbox?.description ?? "postmaster")\n") }
        var converter = LineEndingConverter()
        do {
            try write(envelope, to: descriptor)
            try write(converter.convert(header), to: descriptor)
            try await content.forEachChunk { chunk in try self.write(converter.convert(chunk), to: descriptor) }
            try write(converter.finish(), to: descriptor)
        } catch let error as UpstreamError {
            throw error
        } catch {
            throw UpstreamError(.localError, "\(error)")
        }
        guard fsync(descriptor) == 0, rename(temporary, final) == 0 else {
            throw UpstreamError(.localError, "cannot store \(final): \(String(cString: strerror(errno)))")
        }
        ok = true
        let directory = open("\(path)/new", O_RDONLY)
        if directory >= 0 { fsync(directory); Glibc.close(directory) }
        return SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok: delivered as \(name)")
    }

    public func reset() async {
        reversePath = nil
        recipients = []
    }

    public func close() async {}

    public var isReused: Bool { false }

    /// A Maildir has no queue to flush.
    public func etrn(_ node: String) async throws(UpstreamError) -> SMTPReply {
        SMTPReply(458, EnhancedStatusCode(4, 5, 0), "Unable to queue messages for node \(node): the upstream is a Maildir")
    }

    private func write(_ bytes: ByteBuffer, to descriptor: Int32) throws(UpstreamError) {
        var remaining = bytes
        while remaining.readableBytes > 0 {
            let written = remaining.withUnsafeReadableBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw UpstreamError(.localError, "write to maildir failed: \(String(cString: strerror(errno)))")
            }
            remaining.moveReaderIndex(forwardBy: written)
        }
    }

    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func next() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value }
    }
}

/// CRLF → LF across chunk boundaries.
struct LineEndingConverter {
    private var pendingCR = false

    mutating func convert(_ input: ByteBuffer) -> ByteBuffer {
        var output = ByteBuffer()
        output.reserveCapacity(input.readableBytes + 1)
        for byte in input.readableBytesView {
            if pendingCR {
                pendingCR = false
                if byte != UInt8(ascii: "\n") { output.writeInteger(UInt8(ascii: "\r")) }
            }
            if byte == UInt8(ascii: "\r") { pendingCR = true; continue }
            output.writeInteger(byte)
        }
        return output
    }

    mutating func finish() -> ByteBuffer {
        var output = ByteBuffer()
        if pendingCR { output.writeInteger(UInt8(ascii: "\r")) }
        pendingCR = false
        return output
    }
}
