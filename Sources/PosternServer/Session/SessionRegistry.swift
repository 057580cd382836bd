import NIOCore
import SMTPNIO
import Synchronization

/// The connections in progress: every open connection (so the server can wait for the last
/// to end, and close what is left past the grace period) and, among them, the admitted
/// sessions (so shutdown can ask each to drain).
public final class SessionRegistry: Sendable {
    private struct State {
        var next = 0
        /// Admitted sessions, by the key `register` returned.
        var sessions: [Int: Channel] = [:]
        /// Every connection whose session has not ended, by the key `opened` returned.
        var connections: [Int: Channel] = [:]
        var draining = false
        /// Waiting for `connections` to be empty.
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    public init() {}

    /// Registers an admitted session; returns its key, and whether shutdown has already begun.
    public func register(_ channel: Channel) -> (key: Int, draining: Bool) {
        state.withLock { state in
            state.next += 1
            state.sessions[state.next] = channel
            return (state.next, state.draining)
        }
    }

    public func unregister(_ key: Int) {
        _ = state.withLock { $0.sessions.removeValue(forKey: key) }
    }

    /// Admitted sessions in progress.
    public var count: Int { state.withLock { $0.sessions.count } }

    /// A connection was accepted; `ended` with the key once its session is over.
    public func opened(_ channel: Channel) -> Int {
        state.withLock { state in
            state.next += 1
            state.connections[state.next] = channel
            return state.next
        }
    }

    /// The session of a connection is over (its slot released, its upstream connection returned).
    public func ended(_ key: Int) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.connections.removeValue(forKey: key)
            guard state.connections.isEmpty else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once every connection opened so far has ended.
    public func waitUntilAllEnded() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.connections.isEmpty { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Asks every session to finish its transaction and say 421.
    public func drainAll() {
        let channels = state.withLock { state in
            state.draining = true
            return Array(state.sessions.values)
        }
        for channel in channels {
            channel.pipeline.fireUserInboundEventTriggered(SMTPDrainRequest())
        }
    }

    /// Closes every connection still open, admitted or not.
    public func closeAll() {
        let channels = state.withLock { Array($0.connections.values) }
        for channel in channels { channel.close(promise: nil) }
    }
}
