import Foundation

/// RFC 7208 `check_host()` on the resolver: every mechanism (`all`, `include`, `a`, `mx`,
/// `ptr`, `ip4`, `ip6`, `exists`) and modifier (`redirect`, `exp`), macros (§7), the limit of
/// 10 DNS-querying terms (§4.6.4), 10 names per `mx`/`ptr`, and 2 void lookups.
public struct SPFEvaluator: Sendable {
    /// The seven results (§2.6).
    public enum Result: String, Sendable, Hashable, CaseIterable {
        case pass, fail, softfail, neutral, none, temperror, permerror
    }

    public struct Outcome: Sendable, Hashable {
        public var result: Result
        /// The domain whose record decided (the MAIL FROM or HELO domain, or an include's).
        public var domain: String
        /// Why, in words: the mechanism that matched, or what went wrong.
        public var reason: String
        /// For `fail`: the domain's explanation (`exp=`), macro-expanded, when it has one.
        public var explanation: String?
    }

    public let resolver: DNSResolver
    public static let lookupLimit = 10
    public static let voidLookupLimit = 2
    public static let namesPerMechanism = 10

    public init(resolver: DNSResolver) {
        self.resolver = resolver
    }

    /// The client `address` (4 or 16 octets), the `sender` (`local@domain`; for a null sender
    /// pass `postmaster@HELO`), the HELO name; `domain`: the sender's domain, or the HELO name
    /// for the HELO identity.
    public func check(address: [UInt8], domain: String, sender: String, helo: String) async -> Outcome {
        var state = State()
        let context = Context(address: Self.unmapped(address), sender: sender, helo: helo)
        return await checkHost(domain: domain.lowercased().trimmingSuffix("."), context: context, state: &state, depth: 0)
    }

    // MARK: - check_host

    struct Context {
        var address: [UInt8]
        var sender: String
        var helo: String
        var isIPv6: Bool { address.count == 16 }
    }

    struct State {
        var lookups = 0
        var voids = 0
    }

    private struct Failure: Error {
        var result: Result
        var reason: String
    }

    private func checkHost(domain: String, context: Context, state: inout State, depth: Int) async -> Outcome {
        func outcome(_ result: Result, _ reason: String, explanation: String? = nil) -> Outcome {
            Outcome(result: result, domain: domain, reason: reason, explanation: explanation)
        }
        guard Self.isValidDomain(domain) else { return outcome(.none, "'\(domain)' is not a domain name") }
        guard depth < 20 else { return outcome(.permerror, "include/redirect loop") }
        let record: String
        switch await resolver.lookup(domain, .txt) {
        case .failure(let error):
            return outcome(.temperror, "TXT \(domain): \(error)")
        case .success(let answer):
            let spf = answer.records.compactMap(\.text).filter(Self.isSPFRecord)
            guard !spf.isEmpty else { return outcome(.none, "no SPF record at \(domain)") }
            guard spf.count == 1 else { return outcome(.permerror, "\(spf.count) SPF records at \(domain)") }
            record = spf[0]
        }
        let terms: [Term]
        do { terms = try Self.parse(record) } catch let failure as Failure {
            return outcome(failure.result, failure.reason)
        } catch {
            return outcome(.permerror, "\(error)")
        }
        do {
            for term in terms {
                guard case .directive(let qualifier, let mechanism) = term else { continue }
                if try await matches(mechanism, domain: domain, context: context, state: &state, depth: depth) {
                    let result = qualifier
                    var explanation: String?
                    if result == .fail, let exp = terms.compactMap({ if case .modifier("exp", let value) = $0 { value } else { nil } }).first {
                        explanation = await explain(exp, domain: domain, context: context)
                    }
                    return outcome(result, "\(domain): \(mechanism.text) matched", explanation: explanation)
                }
            }
            if let target = terms.compactMap({ if case .modifier("redirect", let value) = $0 { value } else { nil } }).first {
                try countLookup(&state)
                let expanded = try expand(target, domain: domain, context: context)
                var redirected = await checkHost(domain: expanded.lowercased().trimmingSuffix("."), context: context, state: &state, depth: depth + 1)
                if redirected.result == .none { redirected = Outcome(result: .permerror, domain: expanded, reason: "redirect to \(expanded): no SPF record") }
                return redirected
            }
            return outcome(.neutral, "\(domain): no mechanism matched")
        } catch let failure as Failure {
            return outcome(failure.result, failure.reason)
        } catch {
            return outcome(.permerror, "\(error)")
        }
    }

    private func countLookup(_ state: inout State) throws {
        state.lookups += 1
        if state.lookups > Self.lookupLimit { throw Failure(result: .permerror, reason: "more than \(Self.lookupLimit) DNS lookups") }
    }

    private func void(_ answer: DNSAnswer, _ state: inout State) throws {
        guard answer.status != .records else { return }
        state.voids += 1
        if state.voids > Self.voidLookupLimit { throw Failure(result: .permerror, reason: "more than \(Self.voidLookupLimit) void lookups") }
    }

    /// A/AAAA (as the client's family) of `name`; a DNS error is a temperror (§5).
    private func addresses(_ name: String, context: Context, state: inout State) async throws -> [[UInt8]] {
        switch await resolver.lookup(name, context.isIPv6 ? .aaaa : .a) {
        case .failure(let error): throw Failure(result: .temperror, reason: "\(context.isIPv6 ? "AAAA" : "A") \(name): \(error)")
        case .success(let answer):
            try void(answer, &state)
            return answer.records.compactMap { record in
                switch record {
                case .a(let octets), .aaaa(let octets): octets
                default: nil
                }
            }
        }
    }

    private func matches(_ mechanism: Mechanism, domain: String, context: Context, state: inout State, depth: Int) async throws -> Bool {
        switch mechanism {
        case .all:
            return true
        case .ip4(let network, let bits):
            return !context.isIPv6 && Self.inNetwork(context.address, network, bits)
        case .ip6(let network, let bits):
            return context.isIPv6 && Self.inNetwork(context.address, network, bits)
        case .a(let spec, let v4, let v6):
            try countLookup(&state)
            let target = try spec.map { try expand($0, domain: domain, context: context) } ?? domain
            return try await addresses(target, context: context, state: &state).contains {
                Self.inNetwork(context.address, $0, context.isIPv6 ? v6 : v4)
            }
        case .mx(let spec, let v4, let v6):
            try countLookup(&state)
            let target = try spec.map { try expand($0, domain: domain, context: context) } ?? domain
            let exchanges: [String]
            switch await resolver.lookup(target, .mx) {
            case .failure(let error): throw Failure(result: .temperror, reason: "MX \(target): \(error)")
            case .success(let answer):
                try void(answer, &state)
                exchanges = answer.records.compactMap { if case .mx(_, let exchange) = $0 { exchange } else { nil } }
            }
            if exchanges.count > Self.namesPerMechanism { throw Failure(result: .permerror, reason: "mx:\(target): more than 10 MX names") }
            for exchange in exchanges {
                let found = try await addresses(exchange, context: context, state: &state)
                if found.contains(where: { Self.inNetwork(context.address, $0, context.isIPv6 ? v6 : v4) }) { return true }
            }
            return false
        case .ptr(let spec):
            try countLookup(&state)
            let target = try spec.map { try expand($0, domain: domain, context: context) } ?? domain
            return await validatedNames(context: context).contains { $0 == target || $0.hasSuffix("." + target) }
        case .include(let spec):
            try countLookup(&state)
            let target = try expand(spec, domain: domain, context: context)
            let included = await checkHost(domain: target.lowercased().trimmingSuffix("."), context: context, state: &state, depth: depth + 1)
            switch included.result {
            case .pass: return true
            case .fail, .softfail, .neutral: return false
            case .temperror: throw Failure(result: .temperror, reason: "include:\(target): \(included.reason)")
            case .permerror: throw Failure(result: .permerror, reason: "include:\(target): \(included.reason)")
            case .none: throw Failure(result: .permerror, reason: "include:\(target): no SPF record")
            }
        case .exists(let spec):
            try countLookup(&state)
            let target = try expand(spec, domain: domain, context: context)
            switch await resolver.lookup(target, .a) {
            case .failure(let error): throw Failure(result: .temperror, reason: "exists:\(target): \(error)")
            case .success(let answer):
                try void(answer, &state)
                return answer.status == .records
            }
        }
    }

    /// The client's validated names (§5.5): PTR names whose A/AAAA include the address; DNS
    /// errors only drop names.
    private func validatedNames(context: Context) async -> [String] {
        await resolver.confirmedNames(of: context.address, maximumNames: Self.namesPerMechanism, firstOnly: false).confirmed
    }

    private func explain(_ spec: String, domain: String, context: Context) async -> String? {
        guard let target = try? expand(spec, domain: domain, context: context),
              case .success(let answer) = await resolver.lookup(target, .txt), answer.records.count == 1,
              let text = answer.records[0].text else { return nil }
        return try? expand(text, domain: domain, context: context, explanation: true)
    }

    // MARK: - Records

    enum Mechanism: Sendable, Hashable {
        case all
        case include(String)
        case a(String?, v4: Int, v6: Int)
        case mx(String?, v4: Int, v6: Int)
        case ptr(String?)
        case ip4([UInt8], Int)
        case ip6([UInt8], Int)
        case exists(String)

        var text: String {
            switch self {
            case .all: "all"
            case .include(let d): "include:\(d)"
            case .a(let d, let v4, let v6): "a" + (d.map { ":" + $0 } ?? "") + (v4 < 32 ? "/\(v4)" : "") + (v6 < 128 ? "//\(v6)" : "")
            case .mx(let d, let v4, let v6): "mx" + (d.map { ":" + $0 } ?? "") + (v4 < 32 ? "/\(v4)" : "") + (v6 < 128 ? "//\(v6)" : "")
            case .ptr(let d): "ptr" + (d.map { ":" + $0 } ?? "")
            case .ip4(let n, let b): "ip4:" + n.map(String.init).joined(separator: ".") + "/\(b)"
            case .ip6(_, let b): "ip6:…/\(b)"
            case .exists(let d): "exists:\(d)"
            }
        }
    }

    enum Term: Sendable, Hashable {
        case directive(Result, Mechanism)
        case modifier(String, String)
    }

    static func isSPFRecord(_ text: String) -> Bool {
        let lower = text.lowercased()
        return lower == "v=spf1" || lower.hasPrefix("v=spf1 ")
    }

    /// The terms of a record (§4.6): a syntax error anywhere is a permerror.
    static func parse(_ record: String) throws -> [Term] {
        var terms: [Term] = []
        var modifiers: Set<String> = []
        for word in record.split(separator: " ").dropFirst() {
            let token = String(word)
            if let equals = token.firstIndex(of: "="), !token[..<equals].contains(":"), !token[..<equals].contains("/") {
                let name = token[..<equals].lowercased()
                guard let first = name.first, first.isLetter, name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                    throw Failure(result: .permerror, reason: "bad modifier '\(token)'")
                }
                let value = String(token[token.index(after: equals)...])
                if name == "redirect" || name == "exp" {
                    guard modifiers.insert(name).inserted else { throw Failure(result: .permerror, reason: "\(name)= appears twice") }
                    guard !value.isEmpty else { throw Failure(result: .permerror, reason: "\(name)= without a domain") }
                    _ = try expandCheck(value)
                }
                terms.append(.modifier(name, value))
                continue
            }
            var body = Substring(token)
            var qualifier = Result.pass
            switch body.first {
            case "+": body = body.dropFirst()
            case "-": qualifier = .fail; body = body.dropFirst()
            case "~": qualifier = .softfail; body = body.dropFirst()
            case "?": qualifier = .neutral; body = body.dropFirst()
            default: break
            }
            terms.append(.directive(qualifier, try mechanism(String(body))))
        }
        return terms
    }

    private static func mechanism(_ text: String) throws -> Mechanism {
        let bad = Failure(result: .permerror, reason: "unknown or malformed mechanism '\(text)'")
        let name: String
        var argument: String?
        if let colon = text.firstIndex(of: ":") {
            name = text[..<colon].lowercased()
            argument = String(text[text.index(after: colon)...])
        } else if let slash = text.firstIndex(of: "/") {
            name = text[..<slash].lowercased()
            argument = nil
            let cidr = String(text[slash...])
            guard name == "a" || name == "mx" else { throw bad }
            let (v4, v6) = try dualCIDR(cidr)
            return name == "a" ? .a(nil, v4: v4, v6: v6) : .mx(nil, v4: v4, v6: v6)
        } else {
            name = text.lowercased()
        }
        switch name {
        case "all":
            guard argument == nil else { throw bad }
            return .all
        case "include", "exists":
            guard let argument, !argument.isEmpty else { throw bad }
            _ = try expandCheck(argument)
            return name == "include" ? .include(argument) : .exists(argument)
        case "a", "mx":
            var spec: String?
            var v4 = 32, v6 = 128
            if let argument {
                var domainPart = argument
                if let slash = argument.firstIndex(of: "/") {
                    domainPart = String(argument[..<slash])
                    (v4, v6) = try dualCIDR(String(argument[slash...]))
                }
                guard !domainPart.isEmpty else { throw bad }
                _ = try expandCheck(domainPart)
                spec = domainPart
            }
            return name == "a" ? .a(spec, v4: v4, v6: v6) : .mx(spec, v4: v4, v6: v6)
        case "ptr":
            if let argument {
                guard !argument.isEmpty else { throw bad }
                _ = try expandCheck(argument)
            }
            return .ptr(argument)
        case "ip4":
            guard let argument else { throw bad }
            let parts = argument.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count <= 2, let octets = ipv4(String(parts[0])) else { throw bad }
            let bits = parts.count == 2 ? Int(parts[1]) : 32
            guard let bits, (0...32).contains(bits), parts.count == 1 || !parts[1].hasPrefix("0") || parts[1] == "0" else { throw bad }
            return .ip4(octets, bits)
        case "ip6":
            guard let argument else { throw bad }
            let parts = argument.split(separator: "/", omittingEmptySubsequences: false)
            var v6 = in6_addr()
            guard parts.count <= 2, inet_pton(AF_INET6, String(parts[0]), &v6) == 1 else { throw bad }
            let bits = parts.count == 2 ? Int(parts[1]) : 128
            guard let bits, (0...128).contains(bits) else { throw bad }
            return .ip6(withUnsafeBytes(of: &v6) { Array($0) }, bits)
        default:
            throw bad
        }
    }

    /// `/24`, `//64`, `/24//64`.
    private static func dualCIDR(_ text: String) throws -> (Int, Int) {
        let bad = Failure(result: .permerror, reason: "bad CIDR length '\(text)'")
        var v4 = 32, v6 = 128
        var rest = Substring(text)
        if rest.hasPrefix("/"), !rest.hasPrefix("//") {
            rest = rest.dropFirst()
            let digits = rest.prefix { $0.isNumber }
            guard let value = Int(digits), (0...32).contains(value) else { throw bad }
            v4 = value
            rest = rest.dropFirst(digits.count)
        }
        if rest.hasPrefix("//") {
            rest = rest.dropFirst(2)
            guard let value = Int(rest), (0...128).contains(value) else { throw bad }
            v6 = value
            rest = ""
        }
        guard rest.isEmpty else { throw bad }
        return (v4, v6)
    }

    // MARK: - Macros (§7)

    /// Checks a macro-string's syntax without a context.
    private static func expandCheck(_ spec: String) throws -> String {
        try expand(spec, domain: "d.invalid", context: Context(address: [192, 0, 2, 1], sender: "l@d.invalid", helo: "h.invalid"),
                   explanation: true, validated: "unknown")
    }

    private func expand(_ spec: String, domain: String, context: Context, explanation: Bool = false) throws -> String {
        // %{p} would need its own lookups; it is the validated name or "unknown" (§7.3 allows
        // implementations to avoid it; it SHOULD NOT be used).
        try Self.expand(spec, domain: domain, context: context, explanation: explanation, validated: "unknown")
    }

    static func expand(_ spec: String, domain: String, context: Context, explanation: Bool, validated: String) throws -> String {
        let bad = Failure(result: .permerror, reason: "bad macro in '\(spec)'")
        var out = ""
        var index = spec.startIndex
        while index < spec.endIndex {
            let character = spec[index]
            guard character == "%" else {
                out.append(character)
                index = spec.index(after: index)
                continue
            }
            let next = spec.index(after: index)
            guard next < spec.endIndex else { throw bad }
            switch spec[next] {
            case "%": out += "%"; index = spec.index(after: next); continue
            case "_": out += " "; index = spec.index(after: next); continue
            case "-": out += "%20"; index = spec.index(after: next); continue
            case "{": break
            default: throw bad
            }
            guard let close = spec[next...].firstIndex(of: "}") else { throw bad }
            let body = spec[spec.index(after: next)..<close]
            guard let letter = body.first else { throw bad }
            var rest = body.dropFirst()
            let digits = rest.prefix { $0.isNumber }
            rest = rest.dropFirst(digits.count)
            var reverse = false
            if rest.first == "r" || rest.first == "R" {
                reverse = true
                rest = rest.dropFirst()
            }
            guard rest.allSatisfy({ ".-+,/_=".contains($0) }) else { throw bad }
            let delimiters = rest.isEmpty ? Set<Character>(["."]) : Set(rest)
            let local = context.sender.split(separator: "@", maxSplits: 1).first.map(String.init) ?? "postmaster"
            let senderDomain = context.sender.contains("@") ? String(context.sender.split(separator: "@", maxSplits: 1)[1]) : context.sender
            let value: String
            switch letter.lowercased() {
            case "s": value = context.sender
            case "l": value = local
            case "o": value = senderDomain
            case "d": value = domain
            case "i": value = Self.dottedAddress(context.address)
            case "p": value = validated
            case "v": value = context.isIPv6 ? "ip6" : "in-addr"
            case "h": value = context.helo
            case "c" where explanation: value = Self.readableAddress(context.address)
            case "r" where explanation: value = "postern"
            case "t" where explanation: value = String(Int(Date().timeIntervalSince1970))
            default: throw bad
            }
            var parts = value.split(whereSeparator: { delimiters.contains($0) }).map(String.init)
            if reverse { parts.reverse() }
            if let keep = Int(digits) {
                guard keep > 0 else { throw bad }
                parts = Array(parts.suffix(keep))
            }
            var expanded = parts.joined(separator: ".")
            if letter.isUppercase {
                expanded = expanded.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? expanded
            }
            out += expanded
            index = spec.index(after: close)
        }
        return out
    }

    // MARK: - Addresses and names

    static func unmapped(_ address: [UInt8]) -> [UInt8] {
        if address.count == 16, address[0..<10].allSatisfy({ $0 == 0 }), address[10] == 0xFF, address[11] == 0xFF {
            return Array(address[12...])
        }
        return address
    }

    static func inNetwork(_ address: [UInt8], _ network: [UInt8], _ bits: Int) -> Bool {
        guard address.count == network.count else { return false }
        var remaining = bits
        for (a, n) in zip(address, network) {
            if remaining <= 0 { return true }
            let mask: UInt8 = remaining >= 8 ? 0xFF : ~(0xFF >> UInt8(remaining))
            if a & mask != n & mask { return false }
            remaining -= 8
        }
        return true
    }

    static func ipv4(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        guard inet_pton(AF_INET, text, &v4) == 1 else { return nil }
        return withUnsafeBytes(of: &v4) { Array($0) }
    }

    /// `%{i}`: dotted quad, or 32 dot-separated nibbles for IPv6 (§7.3).
    static func dottedAddress(_ address: [UInt8]) -> String {
        if address.count == 4 { return address.map(String.init).joined(separator: ".") }
        return address.flatMap { [String($0 >> 4, radix: 16), String($0 & 0x0F, radix: 16)] }.joined(separator: ".")
    }

    static func readableAddress(_ address: [UInt8]) -> String {
        if address.count == 4 { return dottedAddress(address) }
        var buffer = [CChar](repeating: 0, count: 64)
        var v6 = in6_addr()
        withUnsafeMutableBytes(of: &v6) { $0.copyBytes(from: address) }
        guard inet_ntop(AF_INET6, &v6, &buffer, 64) != nil else { return dottedAddress(address) }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func isValidDomain(_ domain: String) -> Bool {
        let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
        return labels.count >= 2 && domain.utf8.count <= 253 && labels.allSatisfy { !$0.isEmpty && $0.utf8.count <= 63 }
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
