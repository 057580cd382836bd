import NIOCore
import SMTPCore

/// Message content being received: DATA up to its final dot, or one BDAT chunk (RFC 3030).
/// Tracks what the content scan found and the time budget of the content (the data timeout,
/// the session time and the minimum data rate).
struct ContentReceiver: Sendable {
    enum Kind: Sendable {
        /// DATA: framed until `CRLF . CRLF`.
        case data
        /// A BDAT chunk: `remaining` raw octets. Not `accepted`: read and dropped, then `refusal`.
        case chunk(remaining: Int, last: Bool, accepted: Bool, refusal: SMTPReply?)
    }

    var kind: Kind
    /// When this piece of content started (the data rate is judged from it).
    let started: NIODeadline
    /// Octets of this piece received so far.
    var octets = 0

    init(_ kind: Kind, at now: NIODeadline) {
        self.kind = kind
        self.started = now
    }

    /// When the content must have moved on: the data timeout since the last bytes, the session
    /// time, and with `min_data_rate` the grace plus what the octets so far have earned.
    func deadline(lastActivity: NIODeadline, configuration: SessionConfiguration, session: NIODeadline) -> NIODeadline {
        var deadline = min(lastActivity + configuration.timeouts.data, session)
        if let rate = rateDeadline(configuration) { deadline = min(deadline, rate) }
        return deadline
    }

    /// The defence whose deadline has passed at `now`, if one has; nil for a plain data timeout.
    func defenceDue(at now: NIODeadline, configuration: SessionConfiguration, session: NIODeadline) -> (String, SMTPReply)? {
        if now >= session { return ("session_time", SessionReplies.sessionTimeExceeded) }
        if let rate = rateDeadline(configuration), now >= rate { return ("min_data_rate", SessionReplies.dataRateTooLow) }
        return nil
    }

    /// `min_data_rate`: once `data_rate_grace` has passed since the content started, the
    /// client must have sent `min_data_rate` octets per second of the time beyond the grace.
    private func rateDeadline(_ configuration: SessionConfiguration) -> NIODeadline? {
        let rate = configuration.minimumDataRate
        guard rate > 0 else { return nil }
        let earned = TimeAmount.nanoseconds(Int64(Double(octets) / Double(rate) * 1e9))
        return started + configuration.dataRateGrace + earned
    }
}

/// What a transaction's message content amounts to so far (across BDAT chunks).
struct MessageProgress: Sendable {
    /// Octets received (past the size limit they are counted, not kept).
    var size = 0
    /// BDAT content is checked for what DATA framing catches (bare CR/LF, NUL, long lines).
    var inspector: LineEndingInspector
    /// BDAT: the spool was started for this transaction.
    var spooling = false

    init(textLineLength: Int, bareLineEndings: SMTPInputFramer.BareLineEndingPolicy) {
        inspector = LineEndingInspector(maximumLineLength: textLineLength, normalising: bareLineEndings == .normalise)
    }
}
