import Glibc
import Foundation
import NIOCore
import NIOPosix
import SMTPCore

/// A Maildir as a delivery target: the quarantine, or an upstream of its own.
public final class MaildirTarget: DeliveryTarget {
    private let maildir: MaildirRelaySession

    /// Creates `tmp`, `new` and `cur` when missing.
    public init(path: String, hostname: String) throws(UpstreamError) {
        maildir = try MaildirRelaySession(path: path, hostname: hostname)
    }

    public func begin(_ envelope: DeliveryEnvelope) async throws(UpstreamError) -> DeliveryStart {
        let reply = try await maildir.mail(envelope.reversePath, envelope.parameters)
        return DeliveryStart(reply: reply, delivery: ConnectionDelivery(maildir) { _ in }, upstream: maildir.upstreamName)
    }

    public func etrn(_ node: String, client: ClientIdentity) async throws(UpstreamError) -> SMTPReply {
        try await maildir.etrn(node)
    }

    public func finish() async {}
}

/// Local delivery into a Maildir (tmp → fsync → new), for setups with no MTA behind Postern
/// and for the bundled default configuration. Lines are stored with LF endings, as Maildir
/// readers expect; the envelope is recorded in `Return-Path:` and `Delivered-To:` headers.
/// The file work (open, write, fsync, rename, the directory's fsync) runs on NIO's blocking
/// thread pool: it must not stall an event loop.
public final class MaildirRelaySession: UpstreamConnection {
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

    public func message(_ message: OutgoingMessage) async throws(UpstreamError) -> SMTPReply {
        defer { reversePath = nil; recipients = [] }
        let name = "\(Int(Date().timeIntervalSince1970)).P\(getpid())Q\(Self.counter.next()).\(hostname)"
        var envelope = ByteBuffer()
        envelope.writeString("Return-Path: \(reversePath?.description ?? "<>")\n")
        for recipient in recipients { envelope.writeString("Delivered-To: \(recipient.mailbox?.description ?? "postmaster")\n") }
        let write = MaildirWrite(directory: path, name: name, envelope: envelope, message: message)
        do {
            try await NIOThreadPool.singleton.runIfActive { try write.run() }
        } catch let error as UpstreamError {
            throw error
        } catch {
            throw UpstreamError(.localError, "cannot store \(name) in \(path): \(error)")
        }
        return SMTPReply(250, EnhancedStatusCode(2, 0, 0), "Ok: delivered as \(name)")
    }

    public func reset() async {
        reversePath = nil
        recipients = []
    }

    public func close() async {}

    var isReused: Bool { false }

    var keepable: SMTPUpstreamSession? { nil }

    /// A Maildir has no queue to flush.
    public func etrn(_ node: String) async throws(UpstreamError) -> SMTPReply {
        throw UpstreamError(.unsupported(.etrn), "\(upstreamName) has no queue for \(node)")
    }

    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func next() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value }
    }
}

/// One message written into a Maildir, on a thread that may block: `tmp/NAME`, fsync, renamed
/// to `new/NAME`, `new` fsynced. The message's spool is read here while the session waits.
private struct MaildirWrite: @unchecked Sendable {
    let directory: String
    let name: String
    let envelope: ByteBuffer
    let message: OutgoingMessage

    func run() throws {
        let temporary = "\(directory)/tmp/\(name)"
        let final = "\(directory)/new/\(name)"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard descriptor >= 0 else { throw UpstreamError(.localError, "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        var ok = false
        defer {
            Glibc.close(descriptor)
            if !ok { unlink(temporary) }
        }
        var converter = LineEndingConverter()
        try FileDescriptorWriter.writeAll(envelope, to: descriptor)
        try FileDescriptorWriter.writeAll(converter.convert(message.prefix), to: descriptor)
        try message.content.forEachChunkSynchronously(from: message.skipping) { chunk in
            try FileDescriptorWriter.writeAll(converter.convert(chunk), to: descriptor)
        }
        try FileDescriptorWriter.writeAll(converter.finish(), to: descriptor)
        guard fsync(descriptor) == 0, rename(temporary, final) == 0 else {
            throw UpstreamError(.localError, "cannot store \(final): \(String(cString: strerror(errno)))")
        }
        ok = true
        let newDirectory = open("\(directory)/new", O_RDONLY)
        if newDirectory >= 0 { fsync(newDirectory); Glibc.close(newDirectory) }
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
