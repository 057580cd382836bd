/// The fuzz targets of `SMTPFuzzer` (issue 5), one per input surface an attacker reaches.
///
/// Each target takes arbitrary bytes, drives the code with them, and checks cheap
/// invariants with `precondition`, so a broken invariant is a crash libFuzzer keeps.
/// The same functions replay the committed corpus and regressions in `PosternFuzzTests`.
public enum PosternFuzzTarget: String, CaseIterable, Sendable {
    /// `SMTPInputFramer` command-line framing and `SMTPCommandParser`; DATA framing of
    /// dot-stuffed content.
    case parser
    /// `SMTPServerStateMachine` driven by framed input, as `SMTPSession` drives it.
    case session
    /// `ProxyProtocolParser` (PROXY v1 and v2 headers).
    case proxy
    /// `MIMEMessage.parse`, the `data`-stage MIME parser.
    case mime
    /// The policy compiler on YAML text, with every built-in filter registered.
    case policy

    /// Inputs larger than this are ignored: every limit the code enforces is well below it,
    /// and bigger inputs only slow the fuzzer down.
    public static let maximumInputSize = 64 * 1024

    /// Runs one input through the target.
    public func run(_ input: [UInt8]) {
        guard input.count <= Self.maximumInputSize else { return }
        switch self {
        case .parser: fuzzParser(input)
        case .session: fuzzSession(input)
        case .proxy: fuzzProxy(input)
        case .mime: fuzzMIME(input)
        case .policy: fuzzPolicy(input)
        }
    }

    /// Runs one input given as raw memory (what libFuzzer hands over).
    public func run(_ input: UnsafeRawBufferPointer) {
        guard input.count <= Self.maximumInputSize else { return }
        run(Array(input))
    }
}
