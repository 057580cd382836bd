import CUnbound
import Foundation
import Synchronization

/// The ub_ctx, deleted when the last owner lets it go. libunbound's context is thread-safe
/// for ub_resolve_async/ub_cancel from any thread with ub_process on another.
final class Context: @unchecked Sendable {
    let ctx: OpaquePointer

    init(_ ctx: OpaquePointer) { self.ctx = ctx }
    deinit { ub_ctx_delete(ctx) }
}

/// One lookup in flight. libunbound holds one retained reference (its `mydata`), released by
/// the callback or by a successful ub_cancel, never both.
final class PendingLookup: @unchecked Sendable {
    let type: DNSRecordType
    let deadline: ContinuousClock.Instant
    /// libunbound's id, once ub_resolve_async returned (0 before).
    let asyncID = Atomic<Int32>(0)
    weak var thread: ResolverThread?
    private let state = Mutex<CheckedContinuation<Result<DNSAnswer, DNSError>, Never>?>(nil)

    init(type: DNSRecordType, deadline: ContinuousClock.Instant, continuation: CheckedContinuation<Result<DNSAnswer, DNSError>, Never>) {
        self.type = type
        self.deadline = deadline
        state.withLock { $0 = continuation }
    }

    /// Resumes the lookup once; later calls do nothing. True when this call resumed it.
    @discardableResult
    func finish(_ result: Result<DNSAnswer, DNSError>) -> Bool {
        guard let continuation = state.withLock({ state -> CheckedContinuation<Result<DNSAnswer, DNSError>, Never>? in
            defer { state = nil }
            return state
        }) else { return false }
        continuation.resume(returning: result)
        return true
    }
}

/// Waits on libunbound's descriptor (answers) and a wake pipe (new lookups, stop), with a
/// poll timeout at the nearest deadline.
final class ResolverThread: @unchecked Sendable {
    private let context: Context
    private let fd: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// `closed`: the wake pipe is closed (the loop has ended). `wake()` writes under this lock, so
    /// it never writes into a pipe whose reader is gone (SIGPIPE) or into a reused descriptor.
    private let pending = Mutex<(lookups: [ObjectIdentifier: PendingLookup], stopped: Bool, closed: Bool)>(([:], false, false))
    private var thread: Thread?

    struct PipeError: Error, CustomStringConvertible {
        var description: String
    }

    init(context: Context, fd: Int32) throws {
        self.context = context
        self.fd = fd
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw PipeError(description: String(cString: strerror(errno))) }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        _ = fcntl(wakeRead, F_SETFL, fcntl(wakeRead, F_GETFL) | O_NONBLOCK)
        _ = fcntl(wakeWrite, F_SETFL, fcntl(wakeWrite, F_GETFL) | O_NONBLOCK)
        let thread = Thread { [self] in self.run() }
        thread.name = "postern-dns"
        self.thread = thread
        thread.start()
    }

    func stop() {
        guard let lookups = pending.withLock({ state -> [PendingLookup]? in
            guard !state.stopped else { return nil }
            state.stopped = true
            defer { state.lookups = [:] }
            return Array(state.lookups.values)
        }) else { return }
        wake()
        for lookup in lookups { lookup.finish(.failure(DNSError(.failure, "the resolver was shut down"))) }
    }

    private func wake() {
        pending.withLock { state in
            guard !state.closed else { return }
            var byte: UInt8 = 1
            _ = write(wakeWrite, &byte, 1)
        }
    }

    func resolve(_ name: String, _ type: DNSRecordType, deadline: ContinuousClock.Instant) async -> Result<DNSAnswer, DNSError> {
        await withCheckedContinuation { continuation in
            let lookup = PendingLookup(type: type, deadline: deadline, continuation: continuation)
            lookup.thread = self
            let admitted = pending.withLock { state -> Bool in
                guard !state.stopped else { return false }
                state.lookups[ObjectIdentifier(lookup)] = lookup
                return true
            }
            guard admitted else {
                lookup.finish(.failure(DNSError(.failure, "the resolver was shut down")))
                return
            }
            let retained = Unmanaged.passRetained(lookup).toOpaque()
            var id: Int32 = 0
            let status = ub_resolve_async(context.ctx, name, Int32(type.rawValue), 1, retained, resolverCallback, &id)
            if status != 0 {
                Unmanaged<PendingLookup>.fromOpaque(retained).release()
                remove(lookup)
                lookup.finish(.failure(DNSError(.failure, String(cString: ub_strerror(status)))))
                return
            }
            lookup.asyncID.store(id, ordering: .releasing)
            wake()  // a nearer deadline
        }
    }

    func remove(_ lookup: PendingLookup) {
        _ = pending.withLock { $0.lookups.removeValue(forKey: ObjectIdentifier(lookup)) }
    }

    private func run() {
        var drain = [UInt8](repeating: 0, count: 64)
        while true {
            let (stopped, nearest) = pending.withLock { state in (state.stopped, state.lookups.values.map(\.deadline).min()) }
            if stopped { break }
            var timeoutMs: Int32 = 1_000
            if let nearest {
                let left = nearest - ContinuousClock.now
                let ms = left.components.seconds * 1_000 + left.components.attoseconds / 1_000_000_000_000_000
                timeoutMs = Int32(max(0, min(1_000, ms + 1)))
            }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, timeoutMs)
            if ready > 0 {
                if fds[1].revents != 0 { while read(wakeRead, &drain, drain.count) > 0 {} }
                if fds[0].revents != 0 { _ = ub_process(context.ctx) }
            }
            expire()
        }
        pending.withLock { state in
            state.closed = true
            close(wakeRead)
            close(wakeWrite)
        }
    }

    /// Lookups past their deadline: resumed with a timeout, and cancelled in libunbound.
    private func expire() {
        let now = ContinuousClock.now
        let late = pending.withLock { state -> [PendingLookup] in
            let late = state.lookups.values.filter { $0.deadline <= now }
            for lookup in late { state.lookups.removeValue(forKey: ObjectIdentifier(lookup)) }
            return late
        }
        for lookup in late {
            lookup.finish(.failure(DNSError(.timeout, "no answer within the deadline")))
            // Cancelled: the callback will not run, so its reference is released here.
            if ub_cancel(context.ctx, lookup.asyncID.load(ordering: .acquiring)) == 0 { Unmanaged.passUnretained(lookup).release() }
        }
    }
}

/// libunbound's callback, on the resolver thread (inside ub_process).
private let resolverCallback: ub_callback_type = { data, status, result in
    guard let data else { return }
    let lookup = Unmanaged<PendingLookup>.fromOpaque(data).takeRetainedValue()
    defer { if let result { ub_resolve_free(result) } }
    let outcome: Result<DNSAnswer, DNSError>
    if status != 0 {
        outcome = .failure(DNSError(status == UB_SERVFAIL.rawValue ? .servfail : .failure, String(cString: ub_strerror(status))))
    } else if let result {
        outcome = DNSResolver.decode(result.pointee, type: lookup.type)
    } else {
        outcome = .failure(DNSError(.failure, "no result"))
    }
    lookup.finish(outcome)
    lookup.thread?.remove(lookup)
}
