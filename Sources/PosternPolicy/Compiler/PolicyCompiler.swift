import Foundation
import PosternNative
import Yams

/// A named list from the policy (`lists:`), entries trimmed, comments and blank lines dropped.
public struct PolicyList: Hashable, Sendable {
    public var name: String
    public var entries: [String]
    public init(name: String, entries: [String]) {
        self.name = name
        self.entries = entries
    }
}

/// Things conditions share within one compiled policy (an open GeoIP database, a limit's
/// store), built once at compile time, off the hot path.
public final class PolicyResources: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: any Sendable] = [:]

    public init() {}

    /// The resource under `key`, made by `make` the first time; nil when `make` fails.
    public func value<Value: Sendable>(_ key: String, make: () -> Value?) -> Value? {
        lock.lock()
        defer { lock.unlock() }
        if let existing = values[key] as? Value { return existing }
        guard let made = make() else { return nil }
        values[key] = made
        return made
    }
}

/// A rate limit from `limits:` (`per_ip: { key: client_ip, count: messages, rate: 100/1h, burst: 20 }`).
public struct PolicyLimit: Sendable {
    public var name: String
    public var fields: RateLimitKeyFields
    public var counter: RateLimitCounter
    public var spec: RateLimitSpec
    public var prefixes: RateLimitNetworkPrefixes
}

/// What a condition factory gets: the YAML reader (to report errors at their position),
/// the policy's lists, limits, `geoip:` database paths, the rate-limit store and shared resources.
public struct ConditionCompileContext {
    public var reader: YAMLReader
    public let lists: [String: PolicyList]
    public let limits: [String: PolicyLimit]
    /// `dnsbl:` lists by name, in policy order.
    public let dnsLists: [DNSList]
    /// `dnsbl_wait:`: whether connect and helo rules can know the client lists' answers.
    public let dnsListWait: DNSListWait
    public let rateLimitStore: any RateLimitStore
    /// `geoip:` entries (`country`, `asn`) with their absolute paths and where they were written.
    public let geoipDatabases: [String: (path: String, node: Node)]
    public let resources: PolicyResources
    /// Compiles a nested condition (for combinators and wrappers).
    let compileNested: (Node, inout ConditionCompileContext) -> (any PolicyCondition)?

    /// The list named by `node`, or an error at `node`.
    public mutating func list(_ node: Node) -> PolicyList? {
        guard let name = reader.string(node, "a list name") else { return nil }
        guard let list = lists[name] else {
            let known = lists.keys.sorted()
            reader.fail(node, "unknown list '\(name)'" + (known.isEmpty ? " (no lists are defined)" : " (defined: \(known.joined(separator: ", ")))"))
            return nil
        }
        return list
    }

    public mutating func condition(_ node: Node) -> (any PolicyCondition)? {
        compileNested(node, &self)
    }
}

/// Builds a condition from its YAML value; reports problems through the context's reader.
public typealias ConditionFactory = @Sendable (_ value: Node, _ context: inout ConditionCompileContext) -> (any PolicyCondition)?

/// The conditions a policy may use, by name. Built-in filters register here; adding one
/// needs no change to the compiler or the engine.
public struct ConditionRegistry: Sendable {
    private var factories: [String: ConditionFactory] = [:]

    public init() {}

    public mutating func register(_ name: String, _ factory: @escaping ConditionFactory) {
        factories[name] = factory
    }

    public var names: [String] { factories.keys.sorted() }

    func factory(_ name: String) -> ConditionFactory? { factories[name] }
}

/// Turns policy YAML into a validated `Policy`, reporting every problem at once as
/// `file:line:column: message`.
public struct PolicyCompiler: Sendable {
    public let registry: ConditionRegistry
    /// Where `limit:` conditions count. It outlives the policy, so a reload keeps the counts.
    public let rateLimitStore: any RateLimitStore
    /// Includes deeper than this are refused (and loops with them).
    public static let maximumIncludeDepth = 8

    public init(registry: ConditionRegistry, rateLimitStore: any RateLimitStore = InMemoryRateLimitStore()) {
        self.registry = registry
        self.rateLimitStore = rateLimitStore
    }

    public func compile(path: String) throws(ConfigurationErrors) -> Policy {
        var state = State()
        let documents = loadDocuments(path: path, includedFrom: nil, depth: 0, state: &state)
        let policy = build(documents, state: &state)
        guard state.errors.isEmpty else { throw ConfigurationErrors(errors: state.errors) }
        return policy
    }

    public func compile(yaml: String, file: String) throws(ConfigurationErrors) -> Policy {
        var state = State()
        state.hashInput.append(contentsOf: yaml.utf8)
        let root: Node?
        do { root = try YAMLReader.compose(yaml, file: file) } catch { throw error }
        var documents: [(String, Node?)] = [(file, root)]
        documents += includes(of: root, file: file, depth: 0, state: &state)
        let policy = build(documents, state: &state)
        guard state.errors.isEmpty else { throw ConfigurationErrors(errors: state.errors) }
        return policy
    }

    private struct State {
        var errors: [ConfigurationError] = []
        var visited: Set<String> = []
        var hashInput: [UInt8] = []
        var files: Set<String> = []
    }

    private static let topLevelKeys: Set<String> = ["version", "include", "lists", "geoip", "limits", "dnsbl", "dnsbl_wait", "rules"]

    /// Every path a policy names (includes, list `file:`, `geoip:` databases) goes through
    /// here: a relative path is relative to the directory of the file that names it, and the
    /// result is standardised (absolute, `.`, `..` and doubled slashes removed, lexically), so
    /// `Policy.files` names each file one way.
    public static func resolve(_ path: String, relativeTo file: String) -> String {
        let url = path.hasPrefix("/")
            ? URL(fileURLWithPath: path)
            : URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent(path)
        return url.standardizedFileURL.path
    }

    private func loadDocuments(path: String, includedFrom: (YAMLReader, Node)?, depth: Int, state: inout State) -> [(String, Node?)] {
        let canonical = URL(fileURLWithPath: path).standardizedFileURL.path
        if let (reader, node) = includedFrom {
            var reader = reader
            if depth > Self.maximumIncludeDepth {
                reader.fail(node, "includes nested deeper than \(Self.maximumIncludeDepth)")
            } else if state.visited.contains(canonical) {
                reader.fail(node, "include loop: \(path) is already included")
            }
            if !reader.errors.isEmpty {
                state.errors += reader.errors
                return []
            }
        }
        state.visited.insert(canonical)
        state.files.insert(canonical)
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            if let (reader, node) = includedFrom {
                var reader = reader
                reader.fail(node, "cannot read \(path): \(error.localizedDescription)")
                state.errors += reader.errors
            } else {
                state.errors.append(ConfigurationError(file: path, line: 1, column: 1, message: "cannot read file: \(error.localizedDescription)"))
            }
            return []
        }
        state.hashInput.append(contentsOf: text.utf8)
        do {
            let root = try YAMLReader.compose(text, file: path)
            return [(path, root)] + includes(of: root, file: path, depth: depth, state: &state)
        } catch {
            state.errors += error.errors
            return []
        }
    }

    private func includes(of root: Node?, file: String, depth: Int, state: inout State) -> [(String, Node?)] {
        guard let root, case .mapping(let mapping) = root, let includeNode = mapping["include"] else { return [] }
        var reader = YAMLReader(file: file)
        var documents: [(String, Node?)] = []
        for entry in reader.sequence(includeNode, "include") {
            guard let relative = reader.string(entry, "an include path") else { continue }
            let path = Self.resolve(relative, relativeTo: file)
            documents += loadDocuments(path: path, includedFrom: (YAMLReader(file: file), entry), depth: depth + 1, state: &state)
        }
        state.errors += reader.errors
        return documents
    }

    private func build(_ documents: [(String, Node?)], state: inout State) -> Policy {
        let resources = PolicyResources()
        // Lists first (from every file), so rules anywhere can name them.
        var lists: [String: PolicyList] = [:]
        var listFiles: [String] = []
        var geoip: [String: (path: String, node: Node)] = [:]
        var geoipFiles: [String: String] = [:]
        var limits: [String: PolicyLimit] = [:]
        var dnsLists: [DNSList] = []
        var dnsListWait = DNSListWait.connect(nil)
        var ruleNodes: [(YAMLReader, Node)] = []
        for (file, root) in documents {
            var reader = YAMLReader(file: file)
            guard let root else { continue }
            let top = reader.mapping(root, "the policy", keys: Self.topLevelKeys)
            if let version = top["version"], reader.integer(version, "version", range: 1...1) == nil {}
            if let listsNode = top["lists"], case .mapping(let mapping) = listsNode {
                for (key, value) in mapping {
                    guard let name = reader.string(key, "a list name") else { continue }
                    if lists[name] != nil { reader.fail(key, "list '\(name)' is defined twice") }
                    if let list = list(named: name, value, file: file, reader: &reader) { lists[name] = list }
                    if case .mapping(let entries) = value, let fileNode = entries["file"], let relative = fileNode.scalar?.string {
                        listFiles.append(Self.resolve(relative, relativeTo: file))
                    }
                }
            } else if let listsNode = top["lists"] {
                reader.fail(listsNode, "lists must be a mapping of names to { file: PATH } or { items: [...] }")
            }
            if let geoipNode = top["geoip"] {
                for (key, value) in reader.mapping(geoipNode, "geoip", keys: ["country", "asn"]) {
                    guard let relative = reader.string(value, "geoip.\(key)") else { continue }
                    let path = Self.resolve(relative, relativeTo: file)
                    geoip[key] = (path, value)
                    geoipFiles[key] = file
                }
            }
            if let limitsNode = top["limits"], case .mapping(let mapping) = limitsNode {
                for (key, value) in mapping {
                    guard let name = reader.string(key, "a limit name") else { continue }
                    if limits[name] != nil { reader.fail(key, "limit '\(name)' is defined twice") }
                    if let limit = limit(named: name, value, reader: &reader) { limits[name] = limit }
                }
            } else if let limitsNode = top["limits"] {
                reader.fail(limitsNode, "limits must be a mapping of names to { key:, count:, rate:, burst: }")
            }
            if let dnsblNode = top["dnsbl"] {
                for entry in reader.sequence(dnsblNode, "dnsbl") {
                    guard let list = dnsList(entry, reader: &reader) else { continue }
                    if dnsLists.contains(where: { $0.name == list.name }) {
                        reader.fail(entry, "DNS list '\(list.name)' is defined twice")
                    } else {
                        dnsLists.append(list)
                    }
                }
            }
            if let waitNode = top["dnsbl_wait"] {
                if waitNode.scalar?.string == "mail" {
                    dnsListWait = .mail
                } else if let amount = reader.duration(waitNode, "dnsbl_wait (or mail)") {
                    if amount.nanoseconds > 0 {
                        dnsListWait = .connect(.nanoseconds(amount.nanoseconds))
                    } else {
                        reader.fail(waitNode, "dnsbl_wait must be longer than 0s (or mail, to decide at the mail stage)")
                    }
                }
            }
            if let rulesNode = top["rules"] {
                for rule in reader.sequence(rulesNode, "rules") { ruleNodes.append((YAMLReader(file: file), rule)) }
            }
            state.errors += reader.errors
        }
        // The databases are opened (and verified) here, once: a bad file is an error whether
        // or not a rule uses it; conditions share the open database through `resources`.
        var databases = PolicyGeoIP()
        for (key, entry) in geoip.sorted(by: { $0.key < $1.key }) {
            var failure: String?
            let database = resources.value("geoip:\(entry.path)") { () -> GeoIPDatabase? in
                do { return try GeoIPDatabase(path: entry.path) } catch {
                    failure = "\(error)"
                    return nil
                }
            }
            if let database {
                if key == "country" { databases.country = database } else { databases.asn = database }
            } else {
                var reader = YAMLReader(file: geoipFiles[key] ?? "policy")
                reader.fail(entry.node, failure ?? "cannot open GeoIP database \(entry.path)")
                state.errors += reader.errors
            }
        }
        var rules: [PolicyRule] = []
        var seen: Set<String> = []
        for (reader, node) in ruleNodes {
            var context = ConditionCompileContext(
                reader: reader, lists: lists, limits: limits, dnsLists: dnsLists, dnsListWait: dnsListWait, rateLimitStore: rateLimitStore, geoipDatabases: geoip,
                resources: resources, compileNested: { node, context in
                self.condition(node, context: &context)
            })
            if case .mapping(let mapping) = node, let idNode = mapping["id"], let id = idNode.scalar?.string,
               !seen.insert(id).inserted {
                context.reader.fail(idNode, "duplicate rule id '\(id)'")
            }
            if let rule = rule(node, context: &context) { rules.append(rule) }
            state.errors += context.reader.errors
        }
        // Referenced files (lists, databases) are part of the version too.
        for path in Set(geoip.values.map(\.path)).sorted() {
            if let bytes = FileManager.default.contents(atPath: path) { state.hashInput.append(contentsOf: bytes.prefix(1 << 20)) }
        }
        for path in listFiles {
            if let bytes = FileManager.default.contents(atPath: path) { state.hashInput.append(contentsOf: bytes) }
        }
        let files = state.files.union(listFiles).union(geoip.values.map(\.path))
        var policy = Policy(version: Self.hash(state.hashInput), rules: rules, files: files.sorted(),
                            geoip: geoip.isEmpty ? nil : databases)
        policy.dnsLists = dnsLists
        policy.dnsListWait = dnsListWait
        return policy
    }

    /// One `dnsbl:` entry: `{ name, zone, returns: [...], weight, ipv6, lookup }`.
    private func dnsList(_ node: Node, reader: inout YAMLReader) -> DNSList? {
        let entries = reader.mapping(node, "a DNS list", keys: ["name", "zone", "returns", "weight", "ipv6", "lookup"])
        guard let nameNode = entries["name"], let name = reader.string(nameNode, "name"), let zoneNode = entries["zone"],
              let zone = reader.string(zoneNode, "zone") else {
            if entries["name"] == nil || entries["zone"] == nil { reader.fail(node, "a DNS list needs a name and a zone") }
            return nil
        }
        let trimmed = zone.lowercased().hasSuffix(".") ? String(zone.lowercased().dropLast()) : zone.lowercased()
        guard trimmed.contains("."), trimmed.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ !$0.isEmpty && $0.count < 64 }) else {
            reader.fail(zoneNode, "zone '\(zone)' is not a DNS name (zen.spamhaus.org)")
            return nil
        }
        var list = DNSList(name: name, zone: trimmed)
        if let returnsNode = entries["returns"] {
            for item in reader.sequence(returnsNode, "returns") {
                guard let text = reader.string(item, "a return code") else { continue }
                guard let range = DNSList.Returns.parse(text), range.low >> 24 == 127 else {
                    reader.fail(item, "return code '\(text)' is not 127.X.Y.Z, 127.X.Y.Z-N or 127.X.Y.Z/BITS")
                    continue
                }
                list.returns.append(range)
            }
        }
        if let weightNode = entries["weight"] {
            if let text = weightNode.scalar?.string, let weight = Double(text) { list.weight = weight } else {
                reader.fail(weightNode, "weight must be a number (negative for an allow list)")
            }
        }
        if let ipv6Node = entries["ipv6"], let ipv6 = reader.bool(ipv6Node, "ipv6") { list.ipv6 = ipv6 }
        if let lookupNode = entries["lookup"], let text = reader.string(lookupNode, "lookup") {
            if let lookup = DNSList.Lookup(rawValue: text) { list.lookup = lookup } else {
                reader.fail(lookupNode, "lookup must be client, helo or sender_domain")
            }
        }
        return list
    }

    private func list(named name: String, _ node: Node, file: String, reader: inout YAMLReader) -> PolicyList? {
        let entries = reader.mapping(node, "list '\(name)'", keys: ["file", "items"])
        switch (entries["file"], entries["items"]) {
        case (let fileNode?, nil):
            guard let relative = reader.string(fileNode, "file") else { return nil }
            let path = Self.resolve(relative, relativeTo: file)
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                reader.fail(fileNode, "cannot read list file \(path)")
                return nil
            }
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
                let content = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
                return content.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            return PolicyList(name: name, entries: lines.filter { !$0.isEmpty })
        case (nil, let itemsNode?):
            let items = reader.sequence(itemsNode, "items").compactMap { reader.string($0, "a list item") }
            return PolicyList(name: name, entries: items)
        default:
            reader.fail(node, "list '\(name)' needs exactly one of file: or items:")
            return nil
        }
    }

    private func limit(named name: String, _ node: Node, reader: inout YAMLReader) -> PolicyLimit? {
        let entries = reader.mapping(node, "limit '\(name)'", keys: ["key", "count", "rate", "burst", "ipv4_prefix", "ipv6_prefix"])
        var fields: RateLimitKeyFields?
        if let keyNode = entries["key"], let text = reader.string(keyNode, "key") {
            fields = RateLimitKeyFields(parsing: text)
            if fields == nil {
                reader.fail(keyNode, "key must be one or more of \(RateLimitKeyField.allCases.map(\.rawValue).joined(separator: ", ")) joined by +")
            }
        } else {
            reader.fail(node, "limit '\(name)' needs key: (e.g. client_ip, sender_domain, client_ip+sender)")
        }
        var counter = RateLimitCounter.messages
        if let countNode = entries["count"], let text = reader.string(countNode, "count") {
            if let parsed = RateLimitCounter(rawValue: text) { counter = parsed } else {
                reader.fail(countNode, "count must be connections, messages, recipients or bytes")
            }
        }
        var burst = 0
        if let burstNode = entries["burst"], let value = reader.integer(burstNode, "burst", range: 0...1_000_000_000) { burst = value }
        var spec: RateLimitSpec?
        if let rateNode = entries["rate"], let text = reader.string(rateNode, "rate") {
            spec = RateLimitSpec(parsing: text, burst: burst)
            if spec == nil { reader.fail(rateNode, "rate must be COUNT/PERIOD, e.g. 100/1h, 10/1m, 5/30s") }
        } else {
            reader.fail(node, "limit '\(name)' needs rate: (e.g. 100/1h)")
        }
        var prefixes = RateLimitNetworkPrefixes()
        if let v4 = entries["ipv4_prefix"], let value = reader.integer(v4, "ipv4_prefix", range: 8...32) { prefixes.ipv4 = value }
        if let v6 = entries["ipv6_prefix"], let value = reader.integer(v6, "ipv6_prefix", range: 16...128) { prefixes.ipv6 = value }
        guard let fields, let spec else { return nil }
        return PolicyLimit(name: name, fields: fields, counter: counter, spec: spec, prefixes: prefixes)
    }

    private func rule(_ node: Node, context: inout ConditionCompileContext) -> PolicyRule? {
        let keys: Set<String> = ["id", "stage", "if", "then", "reply", "mode", "header", "tag", "score"]
        let entries = context.reader.mapping(node, "a rule", keys: keys)
        guard !entries.isEmpty else { return nil }
        // Every part is checked, so one mistake does not hide the next.
        let errorsBefore = context.reader.errors.count
        var id = "?"
        if let idNode = entries["id"], let text = context.reader.string(idNode, "id"), !text.isEmpty {
            id = text
        } else {
            context.reader.fail(node, "a rule needs an id")
        }
        var stage: PolicyStage?
        if let stageNode = entries["stage"] {
            stage = context.reader.string(stageNode, "stage").flatMap(PolicyStage.init(rawValue:))
            if stage == nil { context.reader.fail(stageNode, "stage must be connect, helo, mail, rcpt or data") }
        } else {
            context.reader.fail(node, "rule '\(id)' needs a stage (connect, helo, mail, rcpt or data)")
        }
        var mode = RuleMode.enforce
        if let modeNode = entries["mode"], let text = context.reader.string(modeNode, "mode") {
            if let parsed = RuleMode(rawValue: text) { mode = parsed } else { context.reader.fail(modeNode, "mode must be enforce, shadow or off") }
        }
        var score: Double?
        if let scoreNode = entries["score"] {
            if let text = scoreNode.scalar?.string, let value = Double(text), value.isFinite { score = value } else {
                context.reader.fail(scoreNode, "score must be a number (negative to lower the score)")
            }
        }
        // A rule with a score needs no action: it adds to the score and the walk goes on.
        let action = entries["score"] != nil && entries["then"] == nil ? .continue : self.action(entries, rule: id, node: node, context: &context)
        if let action, let stage, stage != .data {
            switch action {
            case .discard, .quarantine, .addHeader, .tagSubject:
                context.reader.fail(entries["then"]!, "\(action.name) acts on the message: it needs stage: data")
            default: break
            }
        }
        var reply: ReplyTemplate?
        if let replyNode = entries["reply"], let text = context.reader.string(replyNode, "reply") {
            if let template = ReplyTemplate.parse(text) {
                reply = template
                if let action {
                    let expected: ClosedRange<Int>?
                    switch action {
                    case .reject: expected = 500...599
                    case .tempfail: expected = 400...499
                    case .discard: expected = 200...299
                    case .quarantine: expected = 200...599
                    default: expected = nil
                    }
                    if let expected, !expected.contains(template.code) {
                        context.reader.fail(replyNode, "a \(action.name) reply needs a code in \(expected.lowerBound)...\(expected.upperBound)")
                    } else if expected == nil {
                        context.reader.fail(replyNode, "reply: only applies to reject, tempfail, discard and quarantine")
                    }
                }
                for name in template.unknownPlaceholders {
                    context.reader.fail(replyNode, "unknown placeholder {\(name)} (known: \(ReplyTemplate.placeholders.sorted().map { "{\($0)}" }.joined(separator: ", ")))")
                }
            } else {
                context.reader.fail(replyNode, "reply must be \"CODE [ENHANCED] text\", e.g. \"550 5.7.1 Not accepted (ref {id})\"")
            }
        }
        var condition: (any PolicyCondition)?
        if let ifNode = entries["if"] {
            condition = self.condition(ifNode, context: &context)
            if let condition, let stage, condition.earliestStage > stage {
                context.reader.fail(ifNode, "rule '\(id)' can never run: its condition needs stage \(condition.earliestStage.rawValue) or later, the rule is at \(stage.rawValue)")
            }
        } else {
            context.reader.fail(node, "rule '\(id)' needs if: (a condition)")
        }
        guard context.reader.errors.count == errorsBefore, let stage, let action, let condition else { return nil }
        if reply == nil, action == .tempfail, condition is any RateLimitingCondition {
            reply = ReplyTemplate.default(for: .tempfail, stage: stage, isLimit: true)
        }
        if let limited = condition as? any RateLimitingCondition, let problem = limited.stageProblem(stage) {
            context.reader.fail(entries["if"]!, problem)
            return nil
        }
        return PolicyRule(id: id, stage: stage, condition: condition, action: action, mode: mode, reply: reply, score: score)
    }

    private func action(_ entries: [String: Node], rule id: String, node: Node, context: inout ConditionCompileContext) -> RuleAction? {
        guard let thenNode = entries["then"], let actionText = context.reader.string(thenNode, "then") else {
            context.reader.fail(node, "rule '\(id)' needs then: (accept, reject, tempfail, discard, quarantine, add_header, tag_subject or continue)")
            return nil
        }
        switch actionText {
        case "accept": return .accept
        case "reject": return .reject
        case "tempfail": return .tempfail
        case "discard": return .discard
        case "continue": return .continue
        case "quarantine": return .quarantine
        case "tag_subject":
            guard let tagNode = entries["tag"], let tag = context.reader.string(tagNode, "tag"), !tag.isEmpty,
                  !tag.contains("\r"), !tag.contains("\n") else {
                context.reader.fail(entries["tag"] ?? thenNode, "tag_subject needs tag: \"[SUSPECT]\" on one line")
                return nil
            }
            return .tagSubject(tag)
        case "add_header":
            guard let headerNode = entries["header"], let header = context.reader.string(headerNode, "header"),
                  let colon = header.firstIndex(of: ":"), colon != header.startIndex,
                  header[..<colon].allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != ":" }),
                  !header.contains("\r"), !header.contains("\n") else {
                context.reader.fail(entries["header"] ?? thenNode, "add_header needs header: \"Name: value\" on one line")
                return nil
            }
            return .addHeader(name: String(header[..<colon]), value: header[header.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        default:
            context.reader.fail(thenNode, "then must be accept, reject, tempfail, discard, quarantine, add_header, tag_subject or continue")
            return nil
        }
    }

    /// `{ name: value }` — one condition, or several meaning all of them.
    func condition(_ node: Node, context: inout ConditionCompileContext) -> (any PolicyCondition)? {
        guard case .mapping(let mapping) = node, !mapping.isEmpty else {
            context.reader.fail(node, "a condition is a mapping such as { sender: { in: LIST } }")
            return nil
        }
        var conditions: [any PolicyCondition] = []
        for (key, value) in mapping {
            guard let name = context.reader.string(key, "a condition name") else { continue }
            switch name {
            case "any", "all":
                let nested = context.reader.sequence(value, name).compactMap { condition($0, context: &context) }
                guard !nested.isEmpty else {
                    context.reader.fail(value, "\(name) needs at least one condition")
                    continue
                }
                conditions.append(name == "any" ? AnyOfCondition(nested) as any PolicyCondition : AllOfCondition(nested))
            case "not":
                if let nested = condition(value, context: &context) {
                    conditions.append(NotCondition(nested, description: Self.describe(value)))
                }
            default:
                // `header.NAME`, `milter.NAME`…: a factory registered as a prefix ending in a dot.
                let prefix = registry.names.first { $0.hasSuffix(".") && name.hasPrefix($0) }
                guard let factory = registry.factory(prefix ?? name) else {
                    context.reader.fail(key, "unknown condition '\(name)' (known: any, all, not, \(registry.names.joined(separator: ", ")))")
                    continue
                }
                if prefix != nil {
                    // The name after the prefix travels to the factory as a one-entry mapping.
                    let wrapped = Node.mapping(Node.Mapping([(key, value)]))
                    if let built = factory(wrapped, &context) { conditions.append(built) }
                } else if let built = factory(value, &context) {
                    conditions.append(built)
                }
            }
        }
        if conditions.isEmpty { return nil }
        return conditions.count == 1 ? conditions[0] : AllOfCondition(conditions)
    }

    static func describe(_ node: Node) -> String {
        ((try? Yams.serialize(node: node)) ?? "condition").trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "\n", with: " ")
    }

    /// FNV-1a 64 over the files' bytes: a short, stable version for decision records.
    static func hash(_ bytes: [UInt8]) -> String {
        var value: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            value ^= UInt64(byte)
            value = value &* 0x0000_0100_0000_01b3
        }
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
