import PosternMIME
import NIOPosix
import PosternNative
import PosternPolicy
import Yams

extension MIMEMessage: PolicyMessage {
    public func headerValues(named name: String) -> [String] { values(of: name) }
    public var subjectText: String? { subject }
    public var bodyTexts: [String] { textBodies }
    public var attachmentList: [(name: String?, type: String)] { attachments }
    public var rawBytes: [UInt8] { raw }
    public var derivedValues: (any AnyObject & Sendable)? { memo }
}

/// The message content conditions, all at stage `data`, all PCRE2 (body and raw patterns
/// behind the policy's one-pass Hyperscan prefilter, `ContentPrefilter`):
///     header.X-Mailer: { regex: '^PHPMailer' }     # any occurrence; RFC 2047 words decoded
///     subject: { regex: '(?i)verify your account' }
///     body: { regex: 'password.{0,20}expire' }      # MIME-decoded text parts, HTML included
///     attachment_name: { regex: '\.(exe|scr|js|vbs)$' }
///     attachment_type: [application/x-msdownload, application/x-dosexec]
///     raw: { regex: '^X-Spam-Flag: YES' }           # the message as received
/// Patterns are case-insensitive unless they say `(?-i)`. The reason names the place that
/// matched (the header, "body part 2", the attachment), never the text itself.
struct ContentCondition: PolicyCondition {
    enum Target: Sendable {
        case header(String)
        case subject, body, attachmentName, attachmentType, raw
    }

    enum Matcher: Sendable {
        case regex(PCRERegex, String)
        case oneOf(Set<String>)

        func matches(_ text: String) -> Bool {
            switch self {
            case .regex(let regex, _): return regex.matchesSafely(text)
            case .oneOf(let values): return values.contains(text.lowercased())
            }
        }

        var description: String {
            switch self {
            case .regex(_, let pattern): return "/\(pattern)/"
            case .oneOf(let values): return values.sorted().joined(separator: ", ")
            }
        }
    }

    let target: Target
    let matcher: Matcher
    /// The policy's one-pass scan of this target and this pattern's id in it (body and raw
    /// regexes, unless `ContentMatching.prefilter` is off).
    var prefilter: (set: ContentPrefilter, id: Int)?

    var earliestStage: PolicyStage { .data }
    var needsMessage: Bool { true }
    var filterName: String {
        switch target {
        case .header: return "header"
        case .subject: return "subject"
        case .body: return "body"
        case .attachmentName: return "attachment_name"
        case .attachmentType: return "attachment_type"
        case .raw: return "raw"
        }
    }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let message = facts.message else { return nil }
        // Matching a small message takes microseconds: inline, since a hop to another thread
        // costs more (about 25 µs). A large one can take milliseconds: it goes to NIO's
        // blocking pool so the event loops that serve sessions never stall.
        guard message.scanLength > Self.inlineMatchLimit else { return Self.match(target, matcher, prefilter, in: message) }
        let (target, matcher, prefilter) = (self.target, self.matcher, self.prefilter)
        return (try? await NIOThreadPool.singleton.runIfActive { Self.match(target, matcher, prefilter, in: message) }) ?? nil
    }

    /// Messages up to this size are matched on the calling thread.
    static let inlineMatchLimit = 256 * 1024

    static func match(_ target: Target, _ matcher: Matcher, _ prefilter: (set: ContentPrefilter, id: Int)?,
                      in message: any PolicyMessage) -> ConditionMatch? {
        /// False when the one-pass scan rules subject `index` (of `length` octets) out.
        func candidate(_ index: Int, length: Int) -> Bool {
            prefilter.map { $0.set.mayMatch($0.id, subject: index, length: length, in: message) } ?? true
        }
        switch target {
        case .header(let name):
            guard message.headerValues(named: name).contains(where: matcher.matches) else { return nil }
            return ConditionMatch("header \(name) matches \(matcher.description)")
        case .subject:
            guard let subject = message.subjectText, matcher.matches(subject) else { return nil }
            return ConditionMatch("subject matches \(matcher.description)")
        case .body:
            let texts = message.bodyTexts
            guard let index = texts.indices.first(where: { candidate($0, length: texts[$0].utf8.count) && matcher.matches(texts[$0]) })
            else { return nil }
            return ConditionMatch("body part \(index + 1) matches \(matcher.description)")
        case .attachmentName:
            guard let hit = message.attachmentList.first(where: { $0.name.map(matcher.matches) ?? false }) else { return nil }
            return ConditionMatch("attachment \(hit.name ?? "") matches \(matcher.description)")
        case .attachmentType:
            guard let hit = message.attachmentList.first(where: { matcher.matches($0.type) }) else { return nil }
            return ConditionMatch("attachment of type \(hit.type)" + (hit.name.map { " (\($0))" } ?? ""))
        case .raw:
            let raw = message.rawBytes
            guard case .regex(let regex, _) = matcher, candidate(0, length: raw.count), (try? regex.matches(raw)) == true else { return nil }
            return ConditionMatch("message matches \(matcher.description)")
        }
    }

    var patternEngines: [(pattern: String, engine: PatternEngine)] {
        guard case .regex(_, let pattern) = matcher else { return [] }
        let engine: PatternEngine
        if let prefilter {
            engine = prefilter.set.engine(of: prefilter.id)
        } else if target.prefilterSubject == nil {
            engine = .shortValues
        } else {
            engine = .pcre2("the prefilter is off (POSTERN_CONTENT_ENGINE=pcre2)")
        }
        return [("\(filterName): /\(pattern)/", engine)]
    }

    static func factory(_ target: Target) -> ConditionFactory {
        { value, context in
            var target = target
            var value = value
            if case .header = target {
                // header.NAME arrives as { header.NAME: value }.
                guard case .mapping(let mapping) = value, let (key, inner) = mapping.first, let full = key.scalar?.string else { return nil }
                let name = String(full.dropFirst("header.".count))
                guard !name.isEmpty, name.allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != ":" }) else {
                    context.reader.fail(key, "header.NAME needs a header name, e.g. header.X-Mailer")
                    return nil
                }
                target = .header(name)
                value = inner
            }
            let what: String = {
                switch target {
                case .header(let name): return "header.\(name)"
                case .subject: return "subject"
                case .body: return "body"
                case .attachmentName: return "attachment_name"
                case .attachmentType: return "attachment_type"
                case .raw: return "raw"
                }
            }()
            if case .attachmentType = target, value.mapping == nil {
                let nodes: [Node] = { if case .sequence(let list) = value { return Array(list) } else { return [value] } }()
                let types = nodes.compactMap { context.reader.string($0, "a MIME type") }.map { $0.lowercased() }
                for (type, node) in zip(types, nodes) where !type.contains("/") {
                    context.reader.fail(node, "'\(type)' is not a MIME type (type/subtype)")
                }
                return ContentCondition(target: target, matcher: .oneOf(Set(types)))
            }
            let entries = context.reader.mapping(value, what, keys: ["regex"])
            guard let node = entries["regex"] else {
                context.reader.fail(value, "\(what) takes { regex: PATTERN }" + (what == "attachment_type" ? " or a list of MIME types" : ""))
                return nil
            }
            guard let pattern = node.scalar?.string else {
                context.reader.fail(node, "\(what).regex must be a string")
                return nil
            }
            do {
                let options: PCRERegex.Options = target.isRaw ? [.caseInsensitive] : [.matchInvalidUTF, .caseInsensitive]
                let regex = try PCRERegex(pattern: pattern, options: options)
                var condition = ContentCondition(target: target, matcher: .regex(regex, pattern))
                if ContentMatching.prefilter, let subject = target.prefilterSubject,
                   let set = context.resources.value("content-prefilter:\(subject)", make: { ContentPrefilter(subject) }) {
                    condition.prefilter = (set, set.register(pattern))
                }
                return condition
            } catch let error as RegexCompileError {
                context.reader.fail(node, "\(what).regex: invalid regular expression at offset \(error.offset): \(error.message)")
                return nil
            } catch {
                context.reader.fail(node, "\(what).regex: \(error)")
                return nil
            }
        }
    }
}

extension ContentCondition.Target {
    var isRaw: Bool { if case .raw = self { return true } else { return false } }

    /// The one-pass scan this target's regexes join: the body parts and the raw message, the
    /// long subjects (headers, the subject and attachment names are short).
    var prefilterSubject: ContentPrefilter.Subject? {
        switch self {
        case .body: .bodyParts
        case .raw: .raw
        default: nil
        }
    }
}
