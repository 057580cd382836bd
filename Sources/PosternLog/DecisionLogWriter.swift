#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Synchronization

/// Appends decision records, one JSON line each, from a dedicated thread: a slow or full
/// disk never delays an SMTP reply. One writer, with O_APPEND, writing whole lines, so lines
/// are never interleaved or cut. After each batch the writer lets records gather for
/// `gatherInterval` before it looks again: a busy server wakes it and writes at most a few
/// hundred times a second (lines in one `write(2)`), not once a message, and a record waits
/// at most that long. On a write error the lines are dropped, the error is logged and
/// counted, and mail goes on.
public final class DecisionLogWriter: @unchecked Sendable {
    public struct Error: Swift.Error, CustomStringConvertible {
        public var description: String
    }

    /// Lines waiting past this are dropped (and counted) rather than growing memory.
    public static let maximumPendingLines = 100_000
    /// How long the writer lets records gather after a batch, in microseconds.
    public static let gatherInterval: UInt32 = 2_000
    /// Lines go out in writes of about this many octets at most.
    static let writeSize = 256 * 1024

    /// The file written (a configuration reload may move it: see ``reconfigure(path:rotation:privacy:)``).
    public var path: String {
        condition.lock()
        defer { condition.unlock() }
        return configured.path
    }
    /// The writer thread's own path and rotation, taken from `configured` when it reopens.
    private var writing: (path: String, rotation: (maximumSize: Int, keep: Int)?)
    /// What the writer is to use from its next reopen on (under `condition`).
    private var configured: (path: String, rotation: (maximumSize: Int, keep: Int)?)
    private let logger: Logger
    private let onWriteError: (@Sendable () -> Void)?
    private let condition = NSCondition()
    private var pending: [String] = []
    private var closed = false
    private var finished = false
    private var descriptor: Int32
    private var writeErrorCount = 0
    private var droppedCount = 0
    private var reopenRequested = false
    /// Built-in size-based rotation: past `maximumSize` bytes the file becomes `PATH.1` (older
    /// ones shift to `.2`…) and a new one starts; `keep` files are kept. Off when nil.
    public var rotation: (maximumSize: Int, keep: Int)? {
        condition.lock()
        defer { condition.unlock() }
        return configured.rotation
    }
    private var currentSize = 0

    /// Applied to every record before it is written.
    public var privacy: DecisionLogPrivacy { privacySetting.withLock { $0 } }
    private let privacySetting: Mutex<DecisionLogPrivacy>

    /// Opens (creating) `path` for appending; `-` means standard output.
    /// `onWriteError` is called (on the writer's thread) for every line that fails.
    public init(path: String, logger: Logger, rotation: (maximumSize: Int, keep: Int)? = nil,
                privacy: DecisionLogPrivacy = DecisionLogPrivacy(), onWriteError: (@Sendable () -> Void)? = nil) throws(Error) {
        writing = (path, path == "-" ? nil : rotation)
        configured = writing
        self.privacySetting = Mutex(privacy)
        self.logger = logger
        self.onWriteError = onWriteError
        if path == "-" {
            descriptor = STDOUT_FILENO
        } else {
            descriptor = try Self.open(path)
            var info = stat()
            if fstat(descriptor, &info) == 0 { currentSize = Int(info.st_size) }
        }
        let thread = Thread { [unowned self] in self.drain() }
        thread.name = "postern-decision-log"
        thread.start()
    }

    /// Opens `path` for appending, creating it and its directory when missing (the bundled
    /// default logs to var/decisions.log).
    private static func open(_ path: String) throws(Error) -> Int32 {
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty && !FileManager.default.fileExists(atPath: parent) {
            try? FileManager.default.createDirectory(
                atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        }
        let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else {
            throw Error(description: "cannot open decision log \(path): \(String(cString: strerror(errno)))")
        }
        return descriptor
    }

    /// Whether `path` can be opened for appending (created when missing), as a reload checks
    /// before it moves the log there.
    public static func check(path: String) throws(Error) {
        Glibc.close(try open(path))
    }

    /// A configuration reload's settings. The privacy options apply to the next record; the
    /// writer moves to `path` (when it is another file) and its rotation after what is pending
    /// is written to the file in use, as ``reopen()`` does. Standard output stays standard
    /// output: moving the log to or from it needs a restart.
    public func reconfigure(path: String, rotation: (maximumSize: Int, keep: Int)?, privacy: DecisionLogPrivacy) {
        privacySetting.withLock { $0 = privacy }
        condition.lock()
        defer { condition.unlock() }
        guard configured.path != "-", path != "-" else { return }
        configured = (path, rotation)
        reopenRequested = true
        condition.signal()
    }

    deinit {
        if descriptor > STDERR_FILENO { Glibc.close(descriptor) }
    }

    public func record(_ record: DecisionRecord) {
        let line = privacySetting.withLock { $0 }.apply(to: record).jsonLine()
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return }
        guard pending.count < Self.maximumPendingLines else {
            droppedCount += 1
            return
        }
        pending.append(line)
        condition.signal()
    }

    /// Write errors and lines dropped because the writer fell behind.
    public var failures: (writeErrors: Int, dropped: Int) {
        condition.lock()
        defer { condition.unlock() }
        return (writeErrorCount, droppedCount)
    }

    /// Closes and reopens the file at its path after what is pending is written: after
    /// logrotate has moved it away (`postrotate` sends SIGUSR1). No record is lost.
    public func reopen() {
        condition.lock()
        reopenRequested = true
        condition.signal()
        condition.unlock()
    }

    /// Writes what is pending, then stops.
    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        while !finished { condition.wait() }
        condition.unlock()
    }

    private func drain() {
        while true {
            condition.lock()
            while pending.isEmpty && !closed && !reopenRequested { condition.wait() }
            let reopenNow = reopenRequested
            reopenRequested = false
            let next = configured
            if pending.isEmpty && closed {
                finished = true
                condition.broadcast()
                condition.unlock()
                return
            }
            let batch = pending
            pending.removeAll(keepingCapacity: true)
            let closing = closed
            condition.unlock()
            write(batch)
            if reopenNow {
                let moved = next.path != writing.path
                writing = next
                reopenFile(moved: moved)
            }
            if !closing { usleep(Self.gatherInterval) }
        }
    }

    /// On the writer thread: a new descriptor for the path (created if missing).
    private func reopenFile(moved: Bool = false) {
        let path = writing.path
        guard path != "-" else { return }
        let fresh: Int32
        do {
            fresh = try Self.open(path)
        } catch {
            logger.error("cannot reopen the decision log; still writing to the old file", metadata: [
                "path": "\(path)", "error": "\(error)",
            ])
            return
        }
        Glibc.close(descriptor)
        descriptor = fresh
        var info = stat()
        currentSize = fstat(descriptor, &info) == 0 ? Int(info.st_size) : 0
        logger.notice(moved ? "decision log moved" : "decision log reopened", metadata: ["path": "\(path)"])
    }

    /// On the writer thread: PATH → PATH.1 → … → PATH.keep (the oldest is removed).
    private func rotateIfNeeded(adding count: Int) {
        let path = writing.path
        guard let rotation = writing.rotation, currentSize > 0, currentSize + count > rotation.maximumSize else { return }
        if rotation.keep > 0 {
            unlink("\(path).\(rotation.keep)")
            if rotation.keep > 1 {
                for index in stride(from: rotation.keep - 1, through: 1, by: -1) {
                    rename("\(path).\(index)", "\(path).\(index + 1)")
                }
            }
            rename(path, "\(path).1")
        } else {
            unlink(path)
        }
        reopenFile()
    }

    /// On the writer thread: the lines in as few writes as rotation and `writeSize` allow.
    private func write(_ lines: [String]) {
        var chunk: [UInt8] = []
        var count = 0
        func flush() {
            guard count > 0 else { return }
            writeOut(chunk, lines: count)
            chunk.removeAll(keepingCapacity: true)
            count = 0
        }
        for line in lines {
            let size = line.utf8.count
            if let rotation = writing.rotation, count > 0, currentSize + chunk.count + size > rotation.maximumSize { flush() }
            if count == 0 { rotateIfNeeded(adding: size) }
            chunk.append(contentsOf: line.utf8)
            count += 1
            if chunk.count >= Self.writeSize { flush() }
        }
        flush()
    }

    private func writeOut(_ bytes: [UInt8], lines: Int) {
        let result = bytes.withUnsafeBufferPointer { bytes -> Int in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return -Int(errno)
                }
                offset += written
            }
            return offset
        }
        if result > 0 { currentSize += result }
        if result < 0 {
            condition.lock()
            let before = writeErrorCount
            writeErrorCount += lines
            let count = writeErrorCount
            condition.unlock()
            for _ in 0..<lines { onWriteError?() }
            if before == 0 || before / 1000 != count / 1000 {
                logger.error("decision log write failed; mail goes on", metadata: [
                    "path": "\(writing.path)", "error": "\(String(cString: strerror(Int32(-result))))", "failures": "\(count)",
                ])
            }
        }
    }
}
