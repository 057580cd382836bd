/// A rate limit as the policy writes it: `rate` events per `period`, plus `burst` extra
/// events that may be spent at once.
///
/// Policy YAML: `per_ip: { key: client_ip, count: messages, rate: 100/1h, burst: 20 }`.
/// The rate text is parsed by ``init?(parsing:burst:)``; the burst is a separate field.
///
/// ## Semantics (GCRA, the exact formula)
///
/// All arithmetic is integer, in attoseconds (`Duration`'s own resolution):
///
/// ```
/// T   = ceil(period / rate)          emission interval: one event's share of the period
/// L   = (rate + burst) × T           capacity: how far ahead of `now` the TAT may run
/// TAT = theoretical arrival time     per key; a key never seen (or idle) has TAT ≤ now
///
/// request(cost n) at `now`:
///   base   = max(TAT, now)
///   newTAT = base + n × T
///   allowed  ⇔ newTAT − now ≤ L      then TAT := newTAT
///   refused  ⇔ otherwise             TAT unchanged (a refusal consumes nothing),
///                                    retryAfter = newTAT − L − now  (> 0)
///   remaining = ⌊(L − (TAT − now)) / T⌋ after the decision, for cost-1 events
/// ```
///
/// In classic GCRA terms the delay-variation tolerance is `τ = L − T = (rate + burst − 1) × T`,
/// and a conforming cell satisfies `TAT − now ≤ τ` *before* adding its own `T`. We state
/// it with `L` because that makes the contract readable: with `burst: 0`, exactly `rate`
/// events fit in one period.
///
/// Consequences, for `rate: 10/1m, burst: 0` (`T = 6 s`, `L = 60 s`):
/// - from an idle start, 10 events at the same instant are allowed, the 11th is refused
///   with `retryAfter = 6 s`;
/// - exactly 6 s later one more is allowed (the limit recovers at one event per `T`);
///   after a full minute of silence all 10 are available again;
/// - a request whose cost exceeds `rate + burst` can never fit and is refused with
///   `retryAfter == nil`.
///
/// Over any window of length `w`, at most `rate + burst + ⌊w / T⌋` events are allowed
/// (for cost-1 events), so the long-run rate is exactly `rate / period`; `T` is rounded up,
/// so rounding can only make the limit (by at most one attosecond per event) stricter.
public struct RateLimitSpec: Hashable, Sendable, CustomStringConvertible {
    /// Events (or units: bytes, recipients) per ``period``. At least 1.
    public let rate: Int
    /// The period over which ``rate`` applies. Between 1 ms and 3650 days.
    public let period: Duration
    /// Extra events allowed at once on top of ``rate``. At least 0.
    public let burst: Int

    /// The largest accepted `rate` and `burst` (2^50, about 10^15 — a petabyte of bytes).
    public static let maximumCount = 1 << 50
    /// The shortest accepted period.
    public static let minimumPeriod = Duration.milliseconds(1)
    /// The longest accepted period (ten years of days).
    public static let maximumPeriod = Duration.seconds(3650 * 86_400)

    /// The largest accepted capacity `L` (2^100 attoseconds, about 40 000 years), so that
    /// every time computation fits in `Int128`.
    public static let maximumCapacityAttoseconds: Int128 = 1 << 100

    /// Returns nil when `rate < 1`, `burst < 0`, either exceeds ``maximumCount``, the
    /// period is outside ``minimumPeriod`` … ``maximumPeriod``, or the capacity
    /// `(rate + burst) × T` exceeds ``maximumCapacityAttoseconds`` (an absurd burst).
    public init?(rate: Int, period: Duration, burst: Int = 0) {
        guard rate >= 1, rate <= Self.maximumCount, burst >= 0, burst <= Self.maximumCount,
              period >= Self.minimumPeriod, period <= Self.maximumPeriod else { return nil }
        self.rate = rate
        self.period = period
        self.burst = burst
        let (capacity, overflow) = Int128(rate + burst).multipliedReportingOverflow(by: emissionIntervalAttoseconds)
        guard !overflow, capacity <= Self.maximumCapacityAttoseconds else { return nil }
    }

    /// Parses rate text such as `100/1h`, `10/1m`, `5/30s`, `1000/1d`, `20/500ms`.
    ///
    /// Grammar: `<count> "/" [<amount>] <unit>`, with optional spaces around the slash and
    /// between amount and unit. Units: `ms`, `s`, `m`, `h`, `d`, and the words
    /// `second(s)`, `minute(s)`, `hour(s)`, `day(s)` (case-insensitive). A missing amount
    /// means 1 (`10/m` = `10/1m`). Returns nil on anything else, or when the values are out
    /// of range (see ``init?(rate:period:burst:)``).
    public init?(parsing text: String, burst: Int = 0) {
        guard let (rate, period) = Self.parseRate(text) else { return nil }
        self.init(rate: rate, period: period, burst: burst)
    }

    /// The rate as policy text, in the largest unit that divides the period: `10/1m`.
    public var rateText: String { "\(rate)/\(Self.format(period))" }

    /// `10/1m`, or `10/1m burst 5` when there is a burst.
    public var description: String { burst == 0 ? rateText : "\(rateText) burst \(burst)" }

    // MARK: - GCRA parameters (attoseconds)

    /// The emission interval `T = ceil(period / rate)`, in attoseconds (at least 1).
    public var emissionIntervalAttoseconds: Int128 {
        let p = Self.attoseconds(period)
        let r = Int128(rate)
        return Swift.max(1, (p + r - 1) / r)
    }

    /// The emission interval `T` as a `Duration`.
    public var emissionInterval: Duration { Self.duration(emissionIntervalAttoseconds) }

    /// The capacity `L = (rate + burst) × T`, in attoseconds.
    public var capacityAttoseconds: Int128 { Int128(rate + burst) * emissionIntervalAttoseconds }

    // MARK: - Helpers

    static func attoseconds(_ duration: Duration) -> Int128 {
        let (seconds, attos) = duration.components
        return Int128(seconds) * 1_000_000_000_000_000_000 + Int128(attos)
    }

    static func duration(_ attoseconds: Int128) -> Duration {
        let perSecond: Int128 = 1_000_000_000_000_000_000
        let (q, r) = attoseconds.quotientAndRemainder(dividingBy: perSecond)
        return Duration(secondsComponent: Int64(q), attosecondsComponent: Int64(r))
    }

    private static let units: [(suffixes: [String], seconds: Int64, attoseconds: Int64)] = [
        (["ms", "millisecond", "milliseconds"], 0, 1_000_000_000_000_000),
        (["s", "sec", "second", "seconds"], 1, 0),
        (["m", "min", "minute", "minutes"], 60, 0),
        (["h", "hour", "hours"], 3600, 0),
        (["d", "day", "days"], 86_400, 0),
    ]

    private static func parseRate(_ text: String) -> (Int, Duration)? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        let countText = parts[0].trimmingSpaces
        guard !countText.isEmpty, countText.allSatisfy(\.isASCIIDigit), countText.count <= 18,
              let count = Int(countText) else { return nil }
        let periodText = parts[1].trimmingSpaces
        let digits = periodText.prefix(while: \.isASCIIDigit)
        let unitText = periodText.dropFirst(digits.count).trimmingSpaces.lowercased()
        guard digits.count <= 9 else { return nil }
        let amount = digits.isEmpty ? 1 : Int64(digits)!
        guard amount >= 1,
              let unit = units.first(where: { $0.suffixes.contains(unitText) }) else { return nil }
        let period = unit.seconds > 0
            ? Duration.seconds(amount * unit.seconds)
            : Duration.milliseconds(amount)
        return (count, period)
    }

    private static func format(_ period: Duration) -> String {
        let attos = attoseconds(period)
        let ms: Int128 = 1_000_000_000_000_000
        for (suffix, size) in [("d", ms * 86_400_000), ("h", ms * 3_600_000), ("m", ms * 60_000), ("s", ms * 1000), ("ms", ms)]
        where attos % size == 0 {
            return "\(attos / size)\(suffix)"
        }
        return "\(period)"
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { self >= "0" && self <= "9" }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var result = self
        while result.first == " " || result.first == "\t" { result = result.dropFirst() }
        while result.last == " " || result.last == "\t" { result = result.dropLast() }
        return result
    }
}
