import Foundation
import NIOCore
import Yams

/// One problem in a configuration file, located as `file:line:column`.
public struct ConfigurationError: Error, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public var message: String

    public var description: String { "\(file):\(line):\(column): \(message)" }

    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }
}

/// Every problem found in a configuration, reported together.
public struct ConfigurationErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ConfigurationError]

    public init(errors: [ConfigurationError]) {
        self.errors = errors
    }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// Walks the YAML node tree, collecting every error with its position.
public struct YAMLReader {
    public let file: String
    public var errors: [ConfigurationError] = []

    public init(file: String) {
        self.file = file
    }

    public mutating func fail(_ node: Node?, _ message: String) {
        let mark = node?.mark
        errors.append(ConfigurationError(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, message: message))
    }

    /// A mapping's entries by key; unknown keys and duplicates are errors.
    public mutating func mapping(_ node: Node, _ what: String, keys: Set<String>) -> [String: Node] {
        guard case .mapping(let mapping) = node else {
            fail(node, "\(what) must be a mapping")
            return [:]
        }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.scalar?.string else {
                fail(key, "\(what): keys must be strings")
                continue
            }
            guard keys.contains(name) else {
                fail(key, "unknown key '\(name)' in \(what) (expected one of: \(keys.sorted().joined(separator: ", ")))")
                continue
            }
            if result[name] != nil { fail(key, "duplicate key '\(name)' in \(what)") }
            result[name] = value
        }
        return result
    }

    public mutating func sequence(_ node: Node, _ what: String) -> [Node] {
        guard case .sequence(let sequence) = node else {
            fail(node, "\(what) must be a list")
            return []
        }
        return Array(sequence)
    }

    public mutating func string(_ node: Node, _ what: String) -> String? {
        guard let scalar = node.scalar, node.tag.rawValue != Tag.Name.null.rawValue || !scalar.string.isEmpty else {
            fail(node, "\(what) must be a string")
            return nil
        }
        return scalar.string
    }

    public mutating func bool(_ node: Node, _ what: String) -> Bool? {
        guard let value = node.bool else {
            fail(node, "\(what) must be true or false")
            return nil
        }
        return value
    }

    public mutating func integer(_ node: Node, _ what: String, range: ClosedRange<Int>) -> Int? {
        guard let value = node.int, range.contains(value) else {
            fail(node, "\(what) must be an integer in \(range.lowerBound)...\(range.upperBound)")
            return nil
        }
        return value
    }

    /// `30s`, `5m`, `1h`, `7d`, `250ms`, or a plain number of seconds.
    public mutating func duration(_ node: Node, _ what: String) -> TimeAmount? {
        guard let text = node.scalar?.string, let value = Self.parseDuration(text) else {
            fail(node, "\(what) must be a duration such as 30s, 5m, 1h or 250ms")
            return nil
        }
        return value
    }

    /// `25MiB`, `100KB`, `1GB`, or a plain number of bytes.
    public mutating func size(_ node: Node, _ what: String) -> Int? {
        guard let text = node.scalar?.string, let value = Self.parseSize(text), value > 0 else {
            fail(node, "\(what) must be a size such as 25MiB, 100KB or 1048576")
            return nil
        }
        return value
    }

    public static func parseDuration(_ text: String) -> TimeAmount? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isNumber }
        guard !digits.isEmpty, digits.count <= 9, let value = Int64(digits) else { return nil }
        let nanosecondsPerUnit: Int64
        switch trimmed.dropFirst(digits.count).lowercased() {
        case "", "s": nanosecondsPerUnit = 1_000_000_000
        case "ms": nanosecondsPerUnit = 1_000_000
        case "m": nanosecondsPerUnit = 60_000_000_000
        case "h": nanosecondsPerUnit = 3_600_000_000_000
        case "d": nanosecondsPerUnit = 86_400_000_000_000
        default: return nil
        }
        // 999999999h is longer than TimeAmount holds (about 292 years): not a duration.
        let (nanoseconds, overflow) = value.multipliedReportingOverflow(by: nanosecondsPerUnit)
        return overflow ? nil : .nanoseconds(nanoseconds)
    }

    public static func parseSize(_ text: String) -> Int? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isNumber }
        guard !digits.isEmpty, digits.count <= 12, let value = Int(digits) else { return nil }
        let multiplier: Int
        switch trimmed.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased() {
        case "", "b": multiplier = 1
        case "kb": multiplier = 1000
        case "kib", "k": multiplier = 1024
        case "mb": multiplier = 1000 * 1000
        case "mib", "m": multiplier = 1024 * 1024
        case "gb": multiplier = 1000 * 1000 * 1000
        case "gib", "g": multiplier = 1024 * 1024 * 1024
        default: return nil
        }
        return value * multiplier
    }
}

extension YAMLReader {
    /// Parses `yaml` into a node tree, or the syntax error with its position.
    public static func compose(_ yaml: String, file: String) throws(ConfigurationErrors) -> Node? {
        do {
            return try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            switch error {
            case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
                throw ConfigurationErrors(errors: [ConfigurationError(file: file, line: mark.line, column: mark.column, message: "YAML syntax: \(problem)")])
            default:
                throw ConfigurationErrors(errors: [ConfigurationError(file: file, line: 1, column: 1, message: "YAML: \(error)")])
            }
        } catch {
            throw ConfigurationErrors(errors: [ConfigurationError(file: file, line: 1, column: 1, message: "\(error)")])
        }
    }
}
