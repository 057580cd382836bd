#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// One decision record as read back from the log: the fields `postern tail` shows, filters and
/// counts, plus the original line (passed through unchanged by `--json`).
public struct LoggedDecision: Sendable, Equatable {
    public struct ShadowHit: Sendable, Equatable {
        public var rule: String
        public var action: String
        public init(rule: String, action: String) {
            self.rule = rule
            self.action = action
        }
    }

    /// The line as written, without its newline.
    public var line: String
    /// `ts`, milliseconds since the Unix epoch.
    public var timestamp: Int64
    public var id: String?
    public var session: String?
    public var clientIP: String
    public var clientCountry: String?
    /// `mail_from`: nil when there was no MAIL (a connection refused early); "" for the null sender.
    public var mailFrom: String?
    public var recipients: [String]
    /// `accepted`, `rejected`, `tempfailed`, `discarded`, `quarantined` or `aborted` (kept as
    /// written, so a decision added later still reads).
    public var decision: String
    public var stage: String?
    public var rule: String?
    public var reason: String?
    public var replyCode: Int?
    public var replyEnhanced: String?
    public var replyText: String?
    public var shadow: [ShadowHit]
    /// What `postern replay` rebuilds a transaction from (the rest of the record).
    public var details = Details()

    /// The record's other facts about the transaction.
    public struct Details: Sendable, Equatable {
        public var clientPort = 0
        public var helo: String?
        /// The TLS version, when the session used STARTTLS.
        public var tls: String?
        public var auth: String?
        public var asn: Int?
        public var clientName: String?
        public var clientNameStatus: String?
        /// `client.dnsbl`: each list that listed the client (`code`) or failed (`error`).
        public var dnsLists: [(name: String, result: String, detail: String, weight: Double)] = []
        /// The reply each recipient got, in the order of `recipients`.
        public var recipientReplies: [String?] = []
        public var size: Int?
        public var messageID: String?
        public var subject: String?
        public var upstreamHost: String?

        public init() {}

        public static func == (lhs: Details, rhs: Details) -> Bool {
            lhs.clientPort == rhs.clientPort && lhs.helo == rhs.helo && lhs.tls == rhs.tls && lhs.auth == rhs.auth && lhs.asn == rhs.asn
                && lhs.clientName == rhs.clientName && lhs.clientNameStatus == rhs.clientNameStatus
                && lhs.dnsLists.elementsEqual(rhs.dnsLists, by: { $0 == $1 }) && lhs.recipientReplies == rhs.recipientReplies
                && lhs.size == rhs.size && lhs.messageID == rhs.messageID && lhs.subject == rhs.subject && lhs.upstreamHost == rhs.upstreamHost
        }
    }

    public init(
        line: String, timestamp: Int64, id: String? = nil, session: String? = nil, clientIP: String,
        clientCountry: String? = nil, mailFrom: String? = nil, recipients: [String] = [], decision: String,
        stage: String? = nil, rule: String? = nil, reason: String? = nil, replyCode: Int? = nil,
        replyEnhanced: String? = nil, replyText: String? = nil, shadow: [ShadowHit] = []
    ) {
        self.line = line
        self.timestamp = timestamp
        self.id = id
        self.session = session
        self.clientIP = clientIP
        self.clientCountry = clientCountry
        self.mailFrom = mailFrom
        self.recipients = recipients
        self.decision = decision
        self.stage = stage
        self.rule = rule
        self.reason = reason
        self.replyCode = replyCode
        self.replyEnhanced = replyEnhanced
        self.replyText = replyText
        self.shadow = shadow
    }

    /// Why a line is not a schema-1 decision record.
    public struct Malformed: Error, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// Parses one line (without its newline); `keepLine: false` leaves `line` empty (a reader
    /// that holds many records and never prints them).
    public static func parse(line: String, keepLine: Bool = true) throws(Malformed) -> LoggedDecision {
        let object: [String: Any]
        do {
            guard let parsed = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw Malformed("not a JSON object")
            }
            object = parsed
        } catch let error as Malformed {
            throw error
        } catch {
            throw Malformed("not JSON: \(preview(line))")
        }
        guard let schema = integer(object["schema"]) else {
            throw Malformed("no \"schema\" field (not a decision record)")
        }
        guard schema == DecisionRecord.schemaVersion else {
            throw Malformed("schema \(schema), expected \(DecisionRecord.schemaVersion)")
        }
        guard let ts = object["ts"] as? String else { throw Malformed("no \"ts\" field") }
        guard let timestamp = Timestamps.parseRFC3339(ts) else { throw Malformed("\"ts\" is not an RFC 3339 time: \(ts)") }
        guard let decision = object["decision"] as? String, !decision.isEmpty else {
            throw Malformed("no \"decision\" field")
        }
        guard let client = object["client"] as? [String: Any], let ip = client["ip"] as? String else {
            throw Malformed("no \"client.ip\" field")
        }
        let recipients = (object["rcpts"] as? [Any] ?? []).compactMap { entry -> String? in
            if let entry = entry as? [String: Any] { return entry["address"] as? String }
            return entry as? String
        }
        let shadow = (object["shadow"] as? [Any] ?? []).compactMap { entry -> ShadowHit? in
            guard let entry = entry as? [String: Any], let rule = entry["rule"] as? String else { return nil }
            return ShadowHit(rule: rule, action: entry["action"] as? String ?? "?")
        }
        let reply = object["reply"] as? [String: Any]
        var logged = LoggedDecision(
            line: keepLine ? line : "", timestamp: timestamp, id: object["id"] as? String, session: object["session"] as? String,
            clientIP: ip, clientCountry: client["country"] as? String, mailFrom: object["mail_from"] as? String,
            recipients: recipients, decision: decision, stage: object["stage"] as? String,
            rule: object["rule"] as? String, reason: object["reason"] as? String,
            replyCode: integer(reply?["code"]), replyEnhanced: reply?["enhanced"] as? String,
            replyText: reply?["text"] as? String, shadow: shadow)
        var details = Details()
        details.clientPort = integer(client["port"]) ?? 0
        details.helo = client["helo"] as? String
        details.tls = client["tls"] as? String
        details.auth = client["auth"] as? String
        details.asn = integer(client["asn"])
        details.clientName = client["name"] as? String
        details.clientNameStatus = client["name_status"] as? String
        details.dnsLists = (client["dnsbl"] as? [Any] ?? []).compactMap { entry -> (name: String, result: String, detail: String, weight: Double)? in
            guard let entry = entry as? [String: Any], let name = entry["name"] as? String, let result = entry["result"] as? String else { return nil }
            let detail = (entry["code"] as? String) ?? (entry["error"] as? String) ?? ""
            return (name, result, detail, entry["weight"] as? Double ?? integer(entry["weight"]).map(Double.init) ?? 0)
        }
        details.recipientReplies = (object["rcpts"] as? [Any] ?? []).compactMap { entry -> String?? in
            if let entry = entry as? [String: Any] { return entry["address"] is String ? .some(entry["reply"] as? String) : nil }
            return entry is String ? .some(nil) : nil
        }
        details.size = integer(object["size"])
        details.messageID = object["message_id"] as? String
        details.subject = object["subject"] as? String
        details.upstreamHost = (object["upstream"] as? [String: Any])?["host"] as? String
        logged.details = details
        return logged
    }

    private static func integer(_ value: Any?) -> Int? {
        guard let value, !(value is String) else { return nil }
        if let number = value as? Int { return number }
        if let number = value as? Double, number == number.rounded(), abs(number) < 1e15 { return Int(number) }
        return nil
    }

    static func preview(_ line: String) -> String {
        let printable = String(line.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) })
        return printable.count > 60 ? String(printable.prefix(60)) + "…" : printable
    }
}

/// What reading the log yields: a record, or a line to skip (with its 1-based number).
public enum DecisionLogEvent: Sendable, Equatable {
    case record(LoggedDecision)
    case malformed(line: Int, reason: String)

    /// `skipping line N: reason` (the command prefixes its name).
    public var warning: String? {
        if case .malformed(let line, let reason) = self { return "skipping line \(line): \(reason)" }
        return nil
    }

    public var record: LoggedDecision? {
        if case .record(let record) = self { return record }
        return nil
    }
}

/// Splits bytes into lines and parses each. A line counts once its newline has arrived; what
/// is left at `finish()` (a last line cut short) is reported as malformed.
public struct DecisionLogParser: Sendable {
    private var pending: [UInt8] = []
    /// Lines seen so far (the number of the last complete line).
    public private(set) var lineNumber = 0
    /// Whether each record keeps its line (`LoggedDecision.line`).
    private let keepLines: Bool

    /// `linesBefore`: lines of the file before the first byte fed (a reader that parses a
    /// file in pieces numbers each piece's lines as in the file).
    public init(keepLines: Bool = true, linesBefore: Int = 0) {
        self.keepLines = keepLines
        lineNumber = linesBefore
    }

    /// Whether part of a line is waiting for its newline.
    public var hasPartialLine: Bool { !pending.isEmpty }

    public mutating func feed<Bytes: Sequence>(_ bytes: Bytes) -> [DecisionLogEvent] where Bytes.Element == UInt8 {
        pending.append(contentsOf: bytes)
        guard let lastNewline = pending.lastIndex(of: 0x0A) else { return [] }
        var events: [DecisionLogEvent] = []
        var start = 0
        while start <= lastNewline {
            let end = pending[start...lastNewline].firstIndex(of: 0x0A)!
            var line = pending[start..<end]
            if line.last == 0x0D { line = line.dropLast() }
            lineNumber += 1
            if let event = Self.event(for: line, number: lineNumber, keepLine: keepLines) { events.append(event) }
            start = end + 1
        }
        pending.removeSubrange(0...lastNewline)
        return events
    }

    /// The end of the input: a partial last line is malformed.
    public mutating func finish() -> [DecisionLogEvent] {
        guard !pending.isEmpty else { return [] }
        lineNumber += 1
        let text = String(decoding: pending, as: UTF8.self)
        pending = []
        return [.malformed(line: lineNumber, reason: "incomplete line without a newline at the end: \(LoggedDecision.preview(text))")]
    }

    private static func event(for line: ArraySlice<UInt8>, number: Int, keepLine: Bool) -> DecisionLogEvent? {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { return nil }
        let text = String(decoding: line, as: UTF8.self)
        do {
            return .record(try LoggedDecision.parse(line: text, keepLine: keepLine))
        } catch {
            return .malformed(line: number, reason: error.description)
        }
    }
}

/// Reading a decision log: the whole file at once, or following it as it grows and rotates.
public enum DecisionLogReader {
    public struct OpenError: Error, CustomStringConvertible {
        public var path: String
        public var reason: String
        public var description: String { "cannot open \(path): \(reason)" }
    }

    /// Every line of the file, parsed; a partial last line is malformed.
    public static func read(path: String) throws(OpenError) -> [DecisionLogEvent] {
        let follower = try DecisionLogFollower(path: path)
        return follower.poll() + follower.finish()
    }

    /// Parses text already in memory (tests, stdin).
    public static func parse(_ text: String) -> [DecisionLogEvent] {
        var parser = DecisionLogParser()
        return parser.feed(Array(text.utf8)) + parser.finish()
    }
}

/// Follows a log like `tail -F`: each `poll()` returns the lines appended since the last one.
/// When the path is replaced by another file (a rotation: inode or device changes) the old
/// file is read to its end first, then the new one from its start; when the file shrinks
/// (truncated) it is read again from the start. A line without its newline yet waits for it.
public final class DecisionLogFollower {
    public let path: String
    private var descriptor: Int32 = -1
    private var device: UInt64 = 0
    private var inode: UInt64 = 0
    private var offset: Int64 = 0
    private var parser = DecisionLogParser()

    /// Opens the file; it must exist.
    public init(path: String) throws(DecisionLogReader.OpenError) {
        self.path = path
        if !openPath() {
            throw DecisionLogReader.OpenError(path: path, reason: String(cString: strerror(errno)))
        }
        var info = stat()
        if fstat(descriptor, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
            close(descriptor)
            descriptor = -1
            throw DecisionLogReader.OpenError(path: path, reason: "is a directory")
        }
    }

    deinit {
        if descriptor >= 0 { close(descriptor) }
    }

    /// The records (and malformed lines) appended since the last poll.
    public func poll() -> [DecisionLogEvent] {
        var events: [DecisionLogEvent] = []
        var current = stat()
        let pathExists = stat(path, &current) == 0
        if descriptor >= 0 {
            if pathExists && (UInt64(current.st_ino) != inode || UInt64(current.st_dev) != device) {
                // Replaced: finish the old file (lines written before the rename), then switch.
                events += readAvailable()
                events += parser.finish()
                close(descriptor)
                descriptor = -1
                _ = openPath()
            } else {
                var info = stat()
                if fstat(descriptor, &info) == 0 && Int64(info.st_size) < offset {
                    // Truncated: start over from the beginning.
                    _ = lseek(descriptor, 0, SEEK_SET)
                    offset = 0
                    parser = DecisionLogParser()
                }
            }
        } else if pathExists {
            _ = openPath()
        }
        events += readAvailable()
        return events
    }

    /// The end of following (or of a one-shot read): a partial last line is malformed.
    public func finish() -> [DecisionLogEvent] {
        parser.finish()
    }

    private func openPath() -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            close(fd)
            return false
        }
        descriptor = fd
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        offset = 0
        parser = DecisionLogParser()
        return true
    }

    private func readAvailable() -> [DecisionLogEvent] {
        guard descriptor >= 0 else { return [] }
        var events: [DecisionLogEvent] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            offset += Int64(count)
            events += parser.feed(buffer[0..<count])
        }
        return events
    }
}

/// RFC 3339 times to and from milliseconds since the epoch, without Foundation's formatters.
public enum Timestamps {
    /// `2026-11-23T19:11:38.123Z`, `2026-11-23T20:11:38+01:00`, `2026-11-23 19:11:38Z`; the
    /// fraction is optional (milliseconds kept); the offset is required.
    public static func parseRFC3339(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20 else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for index in range {
                let byte = bytes[index]
                guard byte >= 0x30 && byte <= 0x39 else { return nil }
                value = value * 10 + Int(byte - 0x30)
            }
            return value
        }
        guard let year = number(0..<4), bytes[4] == 0x2D, let month = number(5..<7), bytes[7] == 0x2D,
              let day = number(8..<10), [0x54, 0x74, 0x20].contains(bytes[10]),
              let hour = number(11..<13), bytes[13] == 0x3A, let minute = number(14..<16), bytes[16] == 0x3A,
              let second = number(17..<19),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second <= 60
        else { return nil }
        var index = 19
        var millis = 0
        if index < bytes.count && bytes[index] == 0x2E {
            index += 1
            var digits = 0
            while index < bytes.count, bytes[index] >= 0x30 && bytes[index] <= 0x39 {
                if digits < 3 {
                    millis = millis * 10 + Int(bytes[index] - 0x30)
                    digits += 1
                }
                index += 1
            }
            guard digits > 0 else { return nil }
            while digits < 3 {
                millis *= 10
                digits += 1
            }
        }
        guard index < bytes.count else { return nil }
        var offsetSeconds = 0
        if bytes[index] == 0x5A || bytes[index] == 0x7A {
            index += 1
        } else if bytes[index] == 0x2B || bytes[index] == 0x2D {
            guard index + 6 == bytes.count, let hours = number(index + 1..<index + 3), bytes[index + 3] == 0x3A,
                  let minutes = number(index + 4..<index + 6), hours < 24, minutes < 60 else { return nil }
            offsetSeconds = (hours * 3600 + minutes * 60) * (bytes[index] == 0x2D ? -1 : 1)
            index += 6
        } else {
            return nil
        }
        guard index == bytes.count else { return nil }
        let days = daysSinceEpoch(year: year, month: month, day: day)
        let seconds = days * 86400 + Int64(hour * 3600 + minute * 60 + second - offsetSeconds)
        return seconds * 1000 + Int64(millis)
    }

    /// Howard Hinnant's days-from-civil (proleptic Gregorian).
    public static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = Int64((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1)
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
