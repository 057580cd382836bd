import PosternPolicy
import PosternServer
import PosternUpstream

/// Loads `input` as Postern's YAML configuration with `ConfigurationLoader` (what `postern
/// check` and `postern serve` read), as the file `configFileName`.
///
/// Invariants: the loader returns a configuration or throws errors, at least one, each naming
/// the file with a line (no further than the text goes, or the end of the text) and a column
/// of at least 1 and a message; it never traps or hangs. A configuration it returns has a hostname, a listener
/// and an upstream, ports in range, and every path it resolved absolute.
///
/// Only the YAML text is fuzzed, never the file system: an input with a `credentials:` key
/// (the AUTH credentials file, which the loader reads) is skipped. Relative paths resolve
/// under the configuration's directory, which does not exist; the certificate, key and CA
/// paths are only tested for readability (access(2)), never opened.
public func fuzzConfig(_ input: [UInt8]) {
    guard input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let text = String(decoding: input, as: UTF8.self)
    guard !mayNameAFile(text, keys: configFileKeys) else { return }
    do {
        let configuration = try ConfigurationLoader.load(yaml: text, file: configFileName)
        checkConfiguration(configuration)
    } catch {
        expect(!error.errors.isEmpty, "the loader failed without an error")
        // YAML breaks lines at CR, LF, NEL, LS and PS; counting CRLF twice only errs high. An
        // error found at the end of a text without a final line break is on the line after
        // the last (libyaml ends the stream with a line break of its own).
        let lines = 2 + text.unicodeScalars.count { "\r\n\u{85}\u{2028}\u{2029}".unicodeScalars.contains($0) }
        for problem in error.errors {
            expect(problem.file == configFileName, "error in another file: \(problem)")
            expect(problem.line >= 1 && problem.line <= lines && problem.column >= 1, "error without a position in the text: \(problem)")
            expect(!problem.message.isEmpty, "error without a message: \(problem)")
            expect(problem.description.hasPrefix("\(configFileName):\(problem.line):"), "error that names no line: \(problem)")
        }
    }
}

/// Where the configuration "is": a directory that does not exist.
let configFileName = "/nonexistent/postern-fuzz/postern.yaml"

/// The keys whose value the loader reads as a file.
private let configFileKeys: Set<String> = ["credentials"]

private func checkConfiguration(_ configuration: PosternConfiguration) {
    expect(!configuration.hostname.isEmpty && !configuration.hostname.contains(" "), "hostname '\(configuration.hostname)'")
    expect(!configuration.listeners.isEmpty, "a configuration without a listener")
    expect(!configuration.upstreams.isEmpty, "a configuration without an upstream")
    for listener in configuration.listeners + (configuration.metrics.map { [$0] } ?? []) {
        expect((0...65535).contains(listener.port), "listener port \(listener.port)")
    }
    var paths: [String?] = [configuration.spool.directory, configuration.policy, configuration.quarantine,
                            configuration.tls?.certificate, configuration.tls?.privateKey,
                            configuration.decisionLog == "-" ? nil : configuration.decisionLog]
    for upstream in configuration.upstreams {
        switch upstream.target {
        case .maildir(let path): paths.append(path)
        case .smtp(_, let port): expect((1...65535).contains(port), "upstream port \(port)")
        }
    }
    if case .redis(let store) = configuration.limitsStore { paths.append(store.caFile) }
    for case let path? in paths where !path.isEmpty {
        expect(path.hasPrefix("/"), "a path left relative: \(path)")
    }
}
