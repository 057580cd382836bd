import NIOCore

/// The time an input happened, as the driver read it: the session machine never reads a
/// clock. `uptime` orders deadlines; `wallMilliseconds` (since the Unix epoch) dates the
/// Received header and the decision records.
public struct SessionTime: Sendable, Hashable {
    public var uptime: NIODeadline
    public var wallMilliseconds: Int64

    public init(uptime: NIODeadline, wallMilliseconds: Int64) {
        self.uptime = uptime
        self.wallMilliseconds = wallMilliseconds
    }

    /// `amount` later on both clocks (for tests and simulations).
    public func advanced(by amount: TimeAmount) -> SessionTime {
        SessionTime(uptime: uptime + amount, wallMilliseconds: wallMilliseconds + amount.nanoseconds / 1_000_000)
    }
}
