import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The fuzz targets of `SMTPFuzzer`, one per input surface an attacker reaches.
///
/// Each target takes arbitrary bytes, drives the code with them, and checks cheap
/// invariants with `expect`. Under libFuzzer (`run`) a broken invariant is a crash
/// libFuzzer keeps; replaying the committed corpus and regressions in `PosternFuzzTests`
/// (`check`) reports each one as a test failure instead.
public enum PosternFuzzTarget: String, CaseIterable, Sendable {
    /// `SMTPInputFramer` command-line framing and `SMTPCommandParser`; DATA framing of
    /// dot-stuffed content.
    case parser
    /// The real `SessionMachine`, driven by framed input with simulated results.
    case session
    /// `ProxyProtocolParser` (PROXY v1 and v2 headers).
    case proxy
    /// `MIMEMessage.parse`, the `data`-stage MIME parser.
    case mime
    /// The policy compiler on YAML text, with every built-in filter registered.
    case policy
    /// `RESPParser` (RESP2 and RESP3 replies from Redis), whole and in pieces; `RESPEncoder`.
    case resp
    /// `ConfigurationLoader` on YAML text (the configuration file).
    case config
    /// `MilterFramer` and `MilterResponse`: what a milter filter sends.
    case milter

    /// Inputs larger than this are ignored: every limit the code enforces is well below it,
    /// and bigger inputs only slow the fuzzer down.
    public static let maximumInputSize = 64 * 1024

    /// Runs one input through the target; a broken invariant traps (libFuzzer).
    public func run(_ input: [UInt8]) {
        guard input.count <= Self.maximumInputSize else { return }
        switch self {
        case .parser: fuzzParser(input)
        case .session: fuzzSession(input)
        case .proxy: fuzzProxy(input)
        case .mime: fuzzMIME(input)
        case .policy: fuzzPolicy(input)
        case .resp: fuzzRESP(input)
        case .config: fuzzConfig(input)
        case .milter: fuzzMilter(input)
        }
    }

    /// Runs one input given as raw memory (what libFuzzer hands over).
    public func run(_ input: UnsafeRawBufferPointer) {
        guard input.count <= Self.maximumInputSize else { return }
        run(Array(input))
    }

    /// Runs one input and returns every broken invariant instead of trapping.
    public func check(_ input: [UInt8]) -> [String] {
        let findings = FuzzFindings()
        FuzzFindings.$current.withValue(findings) { run(input) }
        return findings.failures
    }
}

/// Where `expect` reports while `check` runs.
final class FuzzFindings: Sendable {
    @TaskLocal static var current: FuzzFindings?
    private let collected = Mutex<[String]>([])

    var failures: [String] { collected.withLock { $0 } }

    func add(_ failure: String) {
        collected.withLock { $0.append(failure) }
    }
}

/// An invariant of a fuzz target: reported when `check` runs, a trap under libFuzzer.
func expect(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    guard !condition() else { return }
    if let findings = FuzzFindings.current {
        findings.add(message())
    } else {
        // A release build's trap drops the message: write it first, for the fuzzer's log.
        let text = message()
        var line = Array("broken invariant: \(text)\n".utf8)
        _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        preconditionFailure(text)
    }
}
