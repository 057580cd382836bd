import NIOCore

/// A channel handler's one timer, re-armed lazily: moving the deadline later schedules
/// nothing; a timer that fires before the deadline re-arms itself for what is left. So a
/// deadline that moves with every read or reply costs one scheduled task per timeout, not
/// a cancel and a schedule per event. The handler owns the scheduling (it has the context).
public struct DeadlineTimer {
    public enum Firing: Equatable {
        /// The deadline has passed.
        case expired
        /// It moved later meanwhile: schedule again for this time.
        case rearm(NIODeadline)
        /// There is no deadline any more.
        case idle
    }

    /// When the timer should go off; `.distantFuture`: never.
    public private(set) var deadline = NIODeadline.distantFuture
    private var scheduled: Scheduled<Void>?
    private var firesAt = NIODeadline.distantFuture

    public init() {}

    /// Sets the deadline. Returns when a timer must be scheduled (then call `armed`), or nil
    /// when the one already armed will do.
    public mutating func move(to deadline: NIODeadline) -> NIODeadline? {
        self.deadline = deadline
        guard deadline != .distantFuture, scheduled == nil || firesAt > deadline else { return nil }
        return deadline
    }

    /// The task scheduled for `when` after `move` or `fired` asked for one.
    public mutating func armed(_ task: Scheduled<Void>, at when: NIODeadline) {
        scheduled?.cancel()
        scheduled = task
        firesAt = when
    }

    /// The scheduled task ran at `now`.
    public mutating func fired(now: NIODeadline) -> Firing {
        scheduled = nil
        firesAt = .distantFuture
        guard deadline != .distantFuture else { return .idle }
        guard now >= deadline else { return .rearm(deadline) }
        deadline = .distantFuture
        return .expired
    }

    public mutating func cancel() {
        scheduled?.cancel()
        scheduled = nil
        firesAt = .distantFuture
        deadline = .distantFuture
    }
}
