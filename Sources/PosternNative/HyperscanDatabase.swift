import CHyperscan
import Foundation
import Synchronization

/// Many regular expressions compiled into one Hyperscan database, scanned in one linear pass
/// that reports which of them match. Every pattern is compiled in prefilter mode
/// (`HS_FLAG_PREFILTER`): Hyperscan may report a pattern that PCRE2 would not match (it
/// approximates back-references and look-arounds, and never matches less than the pattern
/// does), so a hit is a candidate for PCRE2 to confirm, and a miss means PCRE2 cannot match
/// either. Patterns Hyperscan cannot compile even so are `unsupported`: the caller matches
/// those with PCRE2 alone.
///
/// Thread-safe: a scan takes a scratch space from a pool (one per concurrent scan).
public final class HyperscanDatabase: @unchecked Sendable {
    // @unchecked: `database` is written once in init, read-only after (Hyperscan allows
    // concurrent scans of one database, each with its own scratch), freed in deinit.

    public struct Pattern: Sendable, Hashable {
        public var expression: String
        public var caseInsensitive: Bool
        /// The subject is UTF-8 (valid: Swift strings); else bytes.
        public var utf8: Bool

        public init(_ expression: String, caseInsensitive: Bool = true, utf8: Bool = true) {
            self.expression = expression
            self.caseInsensitive = caseInsensitive
            self.utf8 = utf8
        }
    }

    public struct SetupError: Error, CustomStringConvertible {
        public var description: String
    }

    /// The patterns, in the order given; a pattern's index is its id in scan results.
    public let patterns: [Pattern]
    /// Indexes of the patterns Hyperscan could not compile, with its reason.
    public let unsupported: [Int: String]
    private let database: OpaquePointer?
    private let scratches: Mutex<[Scratch]>
    private let prototype: OpaquePointer?

    public init(_ patterns: [Pattern]) throws(SetupError) {
        self.patterns = patterns
        var unsupported: [Int: String] = [:]
        // Each pattern alone first: one Hyperscan cannot take is left out with its reason
        // (compiling the set would only name the first).
        for (index, pattern) in patterns.enumerated() {
            var single: OpaquePointer?
            var error: UnsafeMutablePointer<hs_compile_error_t>?
            if hs_compile(pattern.expression, Self.flags(pattern), UInt32(HS_MODE_BLOCK), nil, &single, &error) != HS_SUCCESS {
                unsupported[index] = error.flatMap { $0.pointee.message.map { String(cString: $0) } } ?? "not compiled"
                hs_free_compile_error(error)
            } else {
                hs_free_database(single)
            }
        }
        self.unsupported = unsupported
        let compiled = patterns.indices.filter { unsupported[$0] == nil }
        guard !compiled.isEmpty else {
            database = nil
            prototype = nil
            scratches = Mutex([])
            return
        }
        var database: OpaquePointer?
        var error: UnsafeMutablePointer<hs_compile_error_t>?
        let expressions: [UnsafeMutablePointer<CChar>?] = compiled.map { strdup(patterns[$0].expression) }
        defer { for expression in expressions { free(expression) } }
        let flags = compiled.map { Self.flags(patterns[$0]) }
        let ids = compiled.map { UInt32($0) }
        let pointers: [UnsafePointer<CChar>?] = expressions.map { $0.map { UnsafePointer($0) } }
        let status = pointers.withUnsafeBufferPointer { expressionBuffer in
            hs_compile_multi(expressionBuffer.baseAddress, flags, ids, UInt32(compiled.count), UInt32(HS_MODE_BLOCK), nil, &database, &error)
        }
        guard status == HS_SUCCESS, let database else {
            let message = error.flatMap { $0.pointee.message.map { String(cString: $0) } } ?? "status \(status)"
            hs_free_compile_error(error)
            throw SetupError(description: "Hyperscan could not compile the patterns: \(message)")
        }
        var scratch: OpaquePointer?
        guard hs_alloc_scratch(database, &scratch) == HS_SUCCESS, let scratch else {
            hs_free_database(database)
            throw SetupError(description: "Hyperscan could not allocate scratch space")
        }
        self.database = database
        self.prototype = scratch
        self.scratches = Mutex([])
    }

    deinit {
        for scratch in scratches.withLock({ $0 }) { hs_free_scratch(scratch.pointer) }
        hs_free_scratch(prototype)
        hs_free_database(database)
    }

    static func flags(_ pattern: Pattern) -> UInt32 {
        var flags = UInt32(HS_FLAG_PREFILTER | HS_FLAG_SINGLEMATCH | HS_FLAG_ALLOWEMPTY)
        if pattern.caseInsensitive { flags |= UInt32(HS_FLAG_CASELESS) }
        if pattern.utf8 { flags |= UInt32(HS_FLAG_UTF8) }
        return flags
    }

    /// The ids of the compiled patterns that may match somewhere in `bytes` (each reported
    /// once); unsupported patterns are never in it. Nil when the scan failed (then every
    /// pattern must be matched with PCRE2).
    public func candidates(in bytes: UnsafeRawBufferPointer) -> Set<Int>? {
        guard let database, let prototype else { return [] }
        var scratch = scratches.withLock { $0.popLast() }?.pointer
        if scratch == nil {
            guard hs_clone_scratch(prototype, &scratch) == HS_SUCCESS else { return nil }
        }
        defer { if let scratch { scratches.withLock { $0.append(Scratch(pointer: scratch)) } } }
        let found = Found()
        let context = Unmanaged.passUnretained(found).toOpaque()
        let status: hs_error_t = withExtendedLifetime(found) {
            guard let base = bytes.baseAddress, bytes.count > 0 else {
                return [CChar(0)].withUnsafeBufferPointer { hs_scan(database, $0.baseAddress, 0, 0, scratch, hyperscanMatch, context) }
            }
            return hs_scan(database, base.assumingMemoryBound(to: CChar.self), UInt32(bytes.count), 0, scratch, hyperscanMatch, context)
        }
        return status == HS_SUCCESS ? found.ids : nil
    }

    /// `candidates(in:)` of a string's UTF-8.
    public func candidates(in text: String) -> Set<Int>? {
        var text = text
        return text.withUTF8 { candidates(in: UnsafeRawBufferPointer($0)) }
    }
}

/// A scratch space in the pool (used by one scan at a time).
private struct Scratch: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// What one scan found (the callback's context).
private final class Found {
    var ids: Set<Int> = []
}

private let hyperscanMatch: match_event_handler = { id, _, _, _, context in
    guard let context else { return 0 }
    Unmanaged<Found>.fromOpaque(context).takeUnretainedValue().ids.insert(Int(id))
    return 0
}
