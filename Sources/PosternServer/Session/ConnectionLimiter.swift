import SMTPCore
import Synchronization

/// Counts open sessions in all and per client address; refuses past the limits.
public final class ConnectionLimiter: Sendable {
    public enum Refusal: Sendable, Equatable {
        case total(Int)
        case perAddress(Int)
    }

    private let state: Mutex<(total: Int, perAddress: [IPAddress: Int], maximumTotal: Int, maximumPerAddress: Int)>

    public init(maximumTotal: Int, maximumPerAddress: Int) {
        state = Mutex((0, [:], maximumTotal, maximumPerAddress))
    }

    /// New limits (a configuration reload): sessions already open keep their slots; new ones
    /// are judged by these.
    public func setLimits(maximumTotal: Int, maximumPerAddress: Int) {
        state.withLock {
            $0.maximumTotal = maximumTotal
            $0.maximumPerAddress = maximumPerAddress
        }
    }

    /// Takes a slot for `address`, or says which limit refuses it. A taken slot must be released.
    public func acquire(_ address: IPAddress) -> Refusal? {
        state.withLock { state in
            if state.total >= state.maximumTotal { return .total(state.maximumTotal) }
            let current = state.perAddress[address, default: 0]
            if current >= state.maximumPerAddress { return .perAddress(state.maximumPerAddress) }
            state.total += 1
            state.perAddress[address] = current + 1
            return nil
        }
    }

    public func release(_ address: IPAddress) {
        state.withLock { state in
            state.total -= 1
            let remaining = state.perAddress[address, default: 1] - 1
            state.perAddress[address] = remaining > 0 ? remaining : nil
        }
    }

    public var openSessions: Int { state.withLock { $0.total } }
}
