import PosternFilters
import PosternPolicy
import Yams

/// Compiles `input` as policy YAML with every built-in filter registered.
///
/// Invariants: the compiler returns a policy or throws errors, at least one, each naming
/// the file with a line and a column of at least 1 and a message; it never traps or hangs.
///
/// Only the YAML text is fuzzed, never the file system: inputs that name a file (`include:`,
/// `file:` lists, `geoip:` databases) are skipped, since those would read whatever path the
/// fuzzer wrote (`/dev/zero` would never end).
public func fuzzPolicy(_ input: [UInt8]) {
    guard input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let text = String(decoding: input, as: UTF8.self)
    guard !mayNameAFile(text, keys: policyFileKeys) else { return }
    do {
        let policy = try BuiltinFilters.compiler.compile(yaml: text, file: policyFileName)
        expect(policy.files.isEmpty, "a policy without includes read files: \(policy.files)")
    } catch {
        expect(!error.errors.isEmpty, "the compiler failed without an error")
        for problem in error.errors {
            expect(problem.file == policyFileName, "error in another file: \(problem)")
            expect(problem.line >= 1 && problem.column >= 1, "error without a position: \(problem)")
            expect(!problem.message.isEmpty, "error without a message: \(problem)")
        }
    }
}

let policyFileName = "fuzz-policy.yaml"

/// The keys that make the compiler open a file.
private let policyFileKeys: Set<String> = ["include", "file", "geoip"]

/// True when the YAML may hold one of `keys`, keys that read a file. A text with none of the
/// key names and no backslash (no escape can spell one) is safe without composing it;
/// otherwise the composed tree is searched, and a tree too large to search is treated as unsafe.
func mayNameAFile(_ text: String, keys fileKeys: Set<String>) -> Bool {
    if !text.contains("\\") && !fileKeys.contains(where: { text.contains($0) }) { return false }
    guard let root = try? Yams.compose(yaml: text) else { return false }
    var budget = 100_000
    var stack: [Node] = [root]
    while let node = stack.popLast() {
        budget -= 1
        if budget < 0 { return true }
        switch node {
        case .scalar:
            break
        case .mapping(let mapping):
            for (key, value) in mapping {
                if let name = key.scalar?.string, fileKeys.contains(name) { return true }
                stack.append(key)
                stack.append(value)
            }
        case .sequence(let sequence):
            stack.append(contentsOf: sequence)
        case .alias:
            return true
        }
    }
    return false
}
