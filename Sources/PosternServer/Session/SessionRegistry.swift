import NIOCore
import SMTPNIO
import Synchronization

/// The sessions in progress, so shutdown can ask each to drain and, past the grace
/// period, close what is left.
public final class SessionRegistry: Sendable {
    private let state = Mutex<(next: Int, channels: [Int: Channel], draining: Bool)>((0, [:], false))

    public init() {}

    /// Registers a session; returns its key, and whether shutdown has already begun.
    public func register(_ channel: Channel) -> (key: Int, draining: Bool) {
        state.withLock { state in
            state.next += 1
            state.channels[state.next] = channel
            return (state.next, state.draining)
        }
    }

    public func unregister(_ key: Int) {
        _ = state.withLock { $0.channels.removeValue(forKey: key) }
    }

    public var count: Int { state.withLock { $0.channels.count } }

    /// Asks every session to finish its transaction and say 421.
    public func drainAll() {
        let channels = state.withLock { state in
            state.draining = true
            return Array(state.channels.values)
        }
        for channel in channels {
            channel.pipeline.fireUserInboundEventTriggered(SMTPDrainRequest())
        }
    }

    /// Closes every session still open.
    public func closeAll() {
        let channels = state.withLock { Array($0.channels.values) }
        for channel in channels { channel.close(promise: nil) }
    }
}
