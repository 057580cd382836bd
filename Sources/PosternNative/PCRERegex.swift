import CPCRE2

/// A PCRE2 pattern, compiled once (JIT-compiled when the platform supports it) and
/// matched against bytes. Match positions are byte offsets into the subject.
///
/// Thread safety: the compiled pattern and its match context are immutable after
/// `init`, and PCRE2 allows both to be shared between threads (pcre2api(3), "Multithreading").
/// Every match allocates its own match data, so one `PCRERegex` may be used from any
/// number of threads at once.
///
/// Resource limits: every match runs under ``Limits`` so that a hostile subject cannot
/// hold a thread in catastrophic backtracking; crossing a limit throws
/// ``RegexMatchError/matchLimitExceeded`` (or the depth / heap variant), never "no match".
///
/// UTF-8: without ``Options/utf`` the pattern and subject are plain bytes and any byte
/// sequence is a valid subject (a pattern cannot switch UTF on with `(*UTF)`). With
/// ``Options/utf`` the subject is checked and invalid UTF-8 throws
/// ``RegexMatchError/invalidUTF8(offset:message:)``. With ``Options/matchInvalidUTF``
/// invalid sequences are allowed and simply match nothing (PCRE2_MATCH_INVALID_UTF),
/// which is what content scanning of raw mail wants: a broken byte cannot be used to
/// make the whole check error out.
public final class PCRERegex: @unchecked Sendable {
    // @unchecked: `code` and `matchContext` are C pointers that are written only in
    // init and freed only in deinit; PCRE2 documents them as shareable read-only.

    /// Compile options.
    public struct Options: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// Letters match both cases (PCRE2_CASELESS).
        public static let caseInsensitive = Options(rawValue: PCRE2_CASELESS)
        /// `^` and `$` also match at internal newlines (PCRE2_MULTILINE).
        public static let multiline = Options(rawValue: PCRE2_MULTILINE)
        /// `.` also matches newlines (PCRE2_DOTALL).
        public static let dotAll = Options(rawValue: PCRE2_DOTALL)
        /// Whitespace and `#` comments in the pattern are ignored (PCRE2_EXTENDED).
        public static let extended = Options(rawValue: PCRE2_EXTENDED)
        /// Pattern and subject are UTF-8; an invalid subject is an error (PCRE2_UTF).
        public static let utf = Options(rawValue: PCRE2_UTF)
        /// UTF mode in which invalid UTF-8 in the subject never matches instead of being
        /// an error (PCRE2_MATCH_INVALID_UTF, implies ``utf``).
        public static let matchInvalidUTF = Options(rawValue: PCRE2_UTF | PCRE2_MATCH_INVALID_UTF)
        /// `\d`, `\w`, POSIX classes use Unicode properties (PCRE2_UCP; use with ``utf``).
        public static let unicodeProperties = Options(rawValue: PCRE2_UCP)
        /// The pattern is a literal string, not a regular expression (PCRE2_LITERAL).
        public static let literal = Options(rawValue: PCRE2_LITERAL)
    }

    /// Per-match resource limits (pcre2api(3), "The match context").
    ///
    /// PCRE2's own defaults are ten million for the match and depth limits and 20 GB of
    /// heap, sized for a desktop program, not for a mail gateway that scans untrusted
    /// input on a shared thread pool; Postern's defaults are much tighter.
    public struct Limits: Sendable, Hashable {
        /// How many times PCRE2 may call its internal match function (each
        /// backtracking step counts) while trying one start position; applies to JIT
        /// (which counts fewer, coarser steps) and to the interpreter. Default 100,000:
        /// about a millisecond. PCRE2 restarts the count at every start position, so
        /// the worst case for one search is this limit times the subject's length;
        /// callers scanning untrusted text must also cap how much of it they scan.
        public var matchLimit: UInt32
        /// How deep backtracking may nest (interpreter only; JIT code is bounded by its
        /// stack instead). Default 10,000: a repeated group with alternatives such as
        /// `(?:a|b)*` nests once per repetition, so 1,000 would already refuse legitimate
        /// scans of a long header.
        public var depthLimit: UInt32
        /// Heap the interpreter may use for backtracking frames, in KiB. Default 20,480 (20 MiB).
        public var heapLimitKiB: UInt32

        public init(matchLimit: UInt32 = 100_000, depthLimit: UInt32 = 10_000, heapLimitKiB: UInt32 = 20_480) {
            self.matchLimit = matchLimit
            self.depthLimit = depthLimit
            self.heapLimitKiB = heapLimitKiB
        }

        /// The defaults documented on each property.
        public static let `default` = Limits()
    }

    /// The pattern as given.
    public let pattern: String
    /// The options it was compiled with.
    public let options: Options
    /// The limits every match runs under.
    public let limits: Limits
    /// Whether matches run JIT-compiled code (false when JIT was not requested, is not
    /// supported on this platform, or failed; the interpreter gives the same results).
    public let isJITCompiled: Bool

    private let code: OpaquePointer
    private let matchContext: OpaquePointer

    /// Whether this PCRE2 build supports JIT compilation at all.
    public static let isJITAvailable: Bool = {
        var available: UInt32 = 0
        return pcre2_config_8(UInt32(PCRE2_CONFIG_JIT), &available) >= 0 && available == 1
    }()

    /// The PCRE2 library version, e.g. "10.42 2022-12-11".
    public static let libraryVersion: String = {
        var buffer = [UInt8](repeating: 0, count: 64)
        let rc = buffer.withUnsafeMutableBytes { pcre2_config_8(UInt32(PCRE2_CONFIG_VERSION), $0.baseAddress) }
        guard rc > 1 else { return "unknown" }
        return String(decoding: buffer.prefix(Int(rc) - 1), as: UTF8.self)
    }()

    /// Compiles `pattern`.
    ///
    /// - Parameters:
    ///   - jit: try to JIT-compile (the default); when JIT is unavailable or fails the
    ///     interpreter is used silently. Pass `false` to force the interpreter.
    /// - Throws: ``RegexCompileError`` with PCRE2's message and the byte offset in the
    ///   pattern's UTF-8 where the error was detected.
    public init(
        pattern: String,
        options: Options = [],
        limits: Limits = .default,
        jit: Bool = true
    ) throws(RegexCompileError) {
        var compileOptions = options.rawValue
        // Without .utf the application, not the pattern, decides: "(*UTF)" is refused,
        // so the subject rules documented on the type always hold.
        // (PCRE2_LITERAL refuses the option, and a literal cannot contain "(*UTF)".)
        if !options.contains(.utf) && !options.contains(.literal) { compileOptions |= PCRE2_NEVER_UTF }

        var errorCode: Int32 = 0
        var errorOffset: Int = 0
        var utf8Pattern = Array(pattern.utf8)
        utf8Pattern.append(0)  // never read (the length is explicit); keeps the pointer non-null
        let compiled = utf8Pattern.withUnsafeBufferPointer { buffer in
            pcre2_compile_8(buffer.baseAddress, buffer.count - 1, compileOptions, &errorCode, &errorOffset, nil)
        }
        guard let compiled else {
            throw RegexCompileError(
                pattern: pattern,
                offset: errorOffset,
                code: errorCode,
                message: Self.message(for: errorCode)
            )
        }

        guard let context = pcre2_match_context_create_8(nil) else {
            pcre2_code_free_8(compiled)
            throw RegexCompileError(pattern: pattern, offset: 0, code: PCRE2_ERROR_NOMEMORY, message: Self.message(for: PCRE2_ERROR_NOMEMORY))
        }
        pcre2_set_match_limit_8(context, limits.matchLimit)
        pcre2_set_depth_limit_8(context, limits.depthLimit)
        pcre2_set_heap_limit_8(context, limits.heapLimitKiB)

        var jitCompiled = false
        if jit && Self.isJITAvailable {
            jitCompiled = pcre2_jit_compile_8(compiled, PCRE2_JIT_COMPLETE) == 0
        }

        self.pattern = pattern
        self.options = options
        self.limits = limits
        self.isJITCompiled = jitCompiled
        self.code = compiled
        self.matchContext = context
    }

    deinit {
        pcre2_match_context_free_8(matchContext)
        pcre2_code_free_8(code)
    }

    /// The number of capturing groups in the pattern.
    public var captureGroupCount: Int {
        var count: UInt32 = 0
        _ = pcre2_pattern_info_8(code, UInt32(PCRE2_INFO_CAPTURECOUNT), &count)
        return Int(count)
    }

    // MARK: Matching

    /// The byte range of the leftmost match in `subject`, or nil when there is none.
    /// An empty match is an empty range, not nil.
    public func firstMatch(in subject: UnsafeRawBufferPointer) throws(RegexMatchError) -> Range<Int>? {
        try match(subject, extraOptions: 0)
    }

    /// The byte range of the leftmost match in `subject`'s bytes, or nil.
    public func firstMatch<Bytes: Collection<UInt8>>(in subject: Bytes) throws(RegexMatchError) -> Range<Int>? {
        // The closures below are not typed-throws aware, so the outcome travels as a Result.
        if let contiguous = subject.withContiguousStorageIfAvailable({ matchResult(UnsafeRawBufferPointer($0), 0) }) {
            return try contiguous.get()
        }
        return try Array(subject).withUnsafeBytes { matchResult($0, 0) }.get()
    }

    /// The byte range, in `subject.utf8`, of the leftmost match, or nil.
    public func firstMatch(in subject: String) throws(RegexMatchError) -> Range<Int>? {
        // A Swift String is always valid UTF-8, so PCRE2's check can be skipped.
        let skipCheck = options.contains(.utf) ? PCRE2_NO_UTF_CHECK : 0
        var subject = subject
        return try subject.withUTF8 { matchResult(UnsafeRawBufferPointer($0), skipCheck) }.get()
    }

    /// Whether the pattern matches anywhere in `subject`.
    public func matches(_ subject: String) throws(RegexMatchError) -> Bool {
        try firstMatch(in: subject) != nil
    }

    /// Whether the pattern matches anywhere in `subject`.
    public func matches<Bytes: Collection<UInt8>>(_ subject: Bytes) throws(RegexMatchError) -> Bool {
        try firstMatch(in: subject) != nil
    }

    private func matchResult(_ subject: UnsafeRawBufferPointer, _ extraOptions: UInt32) -> Result<Range<Int>?, RegexMatchError> {
        Result { () throws(RegexMatchError) in try match(subject, extraOptions: extraOptions) }
    }

    private func match(_ subject: UnsafeRawBufferPointer, extraOptions: UInt32) throws(RegexMatchError) -> Range<Int>? {
        guard let matchData = pcre2_match_data_create_from_pattern_8(code, nil) else {
            throw RegexMatchError.failed(code: PCRE2_ERROR_NOMEMORY, message: Self.message(for: PCRE2_ERROR_NOMEMORY))
        }
        defer { pcre2_match_data_free_8(matchData) }

        var rc = run(subject, options: extraOptions, matchData: matchData)
        if rc == PCRE2_ERROR_JIT_STACKLIMIT {
            // JIT code runs on a small fixed stack (32 KiB). Rather than keep a JIT
            // stack per thread, rerun in the interpreter, which is bounded by the
            // depth and heap limits instead.
            rc = run(subject, options: extraOptions | PCRE2_NO_JIT, matchData: matchData)
        }

        if rc >= 0 {
            guard let ovector = pcre2_get_ovector_pointer_8(matchData) else { return nil }
            let start = Int(ovector[0])
            let end = Int(ovector[1])
            // \K inside a lookaround can report start > end; clamp rather than trap.
            return start <= end ? start..<end : end..<end
        }
        switch rc {
        case PCRE2_ERROR_NOMATCH:
            return nil
        case PCRE2_ERROR_MATCHLIMIT:
            throw .matchLimitExceeded
        case PCRE2_ERROR_DEPTHLIMIT:
            throw .depthLimitExceeded
        case PCRE2_ERROR_HEAPLIMIT:
            throw .heapLimitExceeded
        case PCRE2_ERROR_UTF8_ERR21...PCRE2_ERROR_UTF8_ERR1:
            // After a UTF error, the "start character" is the offset of the bad sequence.
            throw .invalidUTF8(offset: Int(pcre2_get_startchar_8(matchData)), message: Self.message(for: rc))
        default:
            throw .failed(code: rc, message: Self.message(for: rc))
        }
    }

    private func run(_ subject: UnsafeRawBufferPointer, options: UInt32, matchData: OpaquePointer) -> Int32 {
        if let base = subject.baseAddress {
            return pcre2_match_8(code, base.assumingMemoryBound(to: UInt8.self), subject.count, 0, options, matchData, matchContext)
        }
        // PCRE2 10.42 rejects a NULL subject even when its length is zero.
        var empty: UInt8 = 0
        return pcre2_match_8(code, &empty, 0, 0, options, matchData, matchContext)
    }

    /// PCRE2's text for an error code (compile or match).
    static func message(for code: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        let length = buffer.withUnsafeMutableBufferPointer { pcre2_get_error_message_8(code, $0.baseAddress, $0.count) }
        guard length > 0 else { return "PCRE2 error \(code)" }
        return String(decoding: buffer.prefix(Int(length)), as: UTF8.self)
    }
}

/// A pattern PCRE2 refused to compile.
public struct RegexCompileError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The pattern as given.
    public var pattern: String
    /// Byte offset into the pattern's UTF-8 where PCRE2 detected the error (0-based;
    /// it may equal the pattern's length, e.g. for a missing closing parenthesis).
    public var offset: Int
    /// PCRE2's error code (positive for compile errors).
    public var code: Int32
    /// PCRE2's message, e.g. "missing closing parenthesis".
    public var message: String

    public var description: String {
        "invalid regular expression at offset \(offset): \(message)"
    }
}

/// A match that could not run to completion. None of these mean "no match".
public enum RegexMatchError: Error, Sendable, Hashable, CustomStringConvertible {
    /// ``PCRERegex/Limits/matchLimit`` was reached (catastrophic backtracking).
    case matchLimitExceeded
    /// ``PCRERegex/Limits/depthLimit`` was reached.
    case depthLimitExceeded
    /// ``PCRERegex/Limits/heapLimitKiB`` was reached.
    case heapLimitExceeded
    /// The subject is not valid UTF-8 and the pattern was compiled with ``PCRERegex/Options/utf``.
    /// `offset` is the byte offset of the first invalid sequence.
    case invalidUTF8(offset: Int, message: String)
    /// Any other PCRE2 failure (e.g. out of memory), with PCRE2's code and message.
    case failed(code: Int32, message: String)

    /// Whether a resource limit stopped the match (the subject or pattern is hostile
    /// or too expensive), as opposed to bad input or a library failure.
    public var isResourceLimit: Bool {
        switch self {
        case .matchLimitExceeded, .depthLimitExceeded, .heapLimitExceeded: true
        case .invalidUTF8, .failed: false
        }
    }

    public var description: String {
        switch self {
        case .matchLimitExceeded: "regular expression match limit exceeded"
        case .depthLimitExceeded: "regular expression depth limit exceeded"
        case .heapLimitExceeded: "regular expression heap limit exceeded"
        case .invalidUTF8(let offset, let message): "invalid UTF-8 in subject at offset \(offset): \(message)"
        case .failed(let code, let message): "regular expression match failed (\(code)): \(message)"
        }
    }
}
