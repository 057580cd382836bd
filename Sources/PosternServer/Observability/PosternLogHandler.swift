#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import PosternLog
import Synchronization

/// The level of every handler the logging bootstrap makes: one value, so a configuration
/// reload (`log_level`) changes it for every logger at once, those already made included.
public final class LogLevelSetting: Sendable {
    private let index: Atomic<Int>

    public init(_ level: Logger.Level) {
        index = Atomic(Logger.Level.allCases.firstIndex(of: level) ?? 2)
    }

    public var level: Logger.Level {
        get { Logger.Level.allCases[index.load(ordering: .relaxed)] }
        set { index.store(Logger.Level.allCases.firstIndex(of: newValue) ?? 2, ordering: .relaxed) }
    }
}

/// Diagnostic log lines on stderr, one per event: logfmt (`ts=… level=info msg="…" key=value`)
/// or JSON, with the session and transaction ids as keys (`smtp.session.id`,
/// `smtp.transaction.id`), so lines about one session can be grepped together.
public struct PosternLogHandler: LogHandler {
    public enum Format: String, Sendable { case logfmt, json }

    /// The shared level (see ``LogLevelSetting``), unless this handler's was set.
    public var logLevel: Logger.Level {
        get { ownLevel ?? setting?.level ?? .info }
        set { ownLevel = newValue }
    }
    private var ownLevel: Logger.Level?
    private let setting: LogLevelSetting?
    public var metadata: Logger.Metadata = [:]
    public let label: String
    public let format: Format
    private let output: @Sendable (String) -> Void

    public init(label: String, format: Format, level: LogLevelSetting? = nil,
                output: @escaping @Sendable (String) -> Void = PosternLogHandler.standardError) {
        self.label = label
        self.format = format
        self.setting = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        write(level: event.level, message: event.message, metadata: event.metadata, error: event.error)
    }

    public func log(
        level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?,
        source: String, file: String, function: String, line: UInt
    ) {
        write(level: level, message: message, metadata: explicit, error: nil)
    }

    private func write(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, error: (any Error)?) {
        var all = metadata
        if let explicit { all.merge(explicit) { $1 } }
        if let error { all["error"] = "\(error)" }
        let fields = all.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
        let ts = DecisionRecord.rfc3339(milliseconds: Int64(Date().timeIntervalSince1970 * 1000))
        output(Self.render(format: format, ts: ts, level: level.rawValue, message: "\(message)", fields: fields))
    }

    /// One line, without the newline.
    static func render(format: Format, ts: String, level: String, message: String, fields: [(String, String)]) -> String {
        switch format {
        case .logfmt:
            var line = "ts=\(ts) level=\(level) msg=\(logfmtValue(message))"
            for (key, value) in fields { line += " \(key)=\(logfmtValue(value))" }
            return line
        case .json:
            var object: [String: String] = ["ts": ts, "level": level, "msg": message]
            for (key, value) in fields { object[key] = value }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            return String(decoding: data, as: UTF8.self)
        }
    }

    /// Bare when it can be; quoted (with `"` and `\` escaped, control characters as \n \t …)
    /// when it has spaces, quotes, `=` or control characters.
    static func logfmtValue(_ value: String) -> String {
        let needsQuotes = value.isEmpty || value.utf8.contains {
            $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "=") || $0 == UInt8(ascii: "\\") || $0 < 32
        }
        guard needsQuotes else { return value }
        var quoted = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": quoted += "\\\""
            case "\\": quoted += "\\\\"
            case "\n": quoted += "\\n"
            case "\r": quoted += "\\r"
            case "\t": quoted += "\\t"
            case _ where scalar.value < 32: quoted += "\\u{\(String(scalar.value, radix: 16))}"
            default: quoted.unicodeScalars.append(scalar)
            }
        }
        return quoted + "\""
    }

    /// Writes a line and a newline to stderr in one write(2) (the rest after a short write),
    /// so lines never interleave.
    public static let standardError: @Sendable (String) -> Void = { line in
        var text = line + "\n"
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return  // nowhere left to say it
                }
                offset += written
            }
        }
    }
}
