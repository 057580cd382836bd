// SMTPFuzzer: libFuzzer entry for Postern's fuzz targets (issue 5). See Fuzz/README.md.
//
// The target is the first argument when it names one (`SMTPFuzzer parser corpus/`), else
// the POSTERN_FUZZ_TARGET environment variable.
//
// Two builds of this one file:
// - `swift build` / `swift build --build-tests` (CI): no libFuzzer. `main` replays the
//   files and directories given on the command line through the target, one run each, so
//   a crash input reproduces under a debugger or a plain build.
// - Fuzz/run.sh builds with `-sanitize=fuzzer,address -DPOSTERN_LIBFUZZER`. libFuzzer's
//   own `main` would treat the target name as a corpus directory, so this file provides
//   the program's entry itself and calls `LLVMFuzzerRunDriver` (libFuzzer's documented
//   entry for programs with their own main) with the target name removed from argv.
//   SwiftPM compiles an executable module with `-entry-point-function-name SMTPFuzzer_main`
//   and links it with `--defsym main=SMTPFuzzer_main`; `-parse-as-library` leaves the
//   module without top-level code, so `@_cdecl("SMTPFuzzer_main")` below is that entry.
//   libclang_rt.fuzzer also defines `main`, hence `-Xlinker --allow-multiple-definition`;
//   the `--defsym` wins, which `SMTPFuzzer -help=1` listing libFuzzer flags only after
//   this entry ran (it prints "SMTPFuzzer: target ..." first) shows.

import PosternFuzzTargets

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The target named by the arguments or the environment; the arguments left for libFuzzer.
func chooseTarget(_ arguments: [String]) -> (PosternFuzzTarget, [String])? {
    var rest = arguments
    if rest.count > 1, let target = PosternFuzzTarget(rawValue: rest[1]) {
        rest.remove(at: 1)
        return (target, rest)
    }
    if let name = getenv("POSTERN_FUZZ_TARGET").map({ String(cString: $0) }), let target = PosternFuzzTarget(rawValue: name) {
        return (target, rest)
    }
    return nil
}

/// Writes to standard error (file descriptor 2; the C `stderr` global is not concurrency-safe).
func report(_ text: String) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

func usage() -> Never {
    let names = PosternFuzzTarget.allCases.map(\.rawValue).joined(separator: "|")
    report("usage: SMTPFuzzer <\(names)> [libFuzzer flags | files and directories to replay]\n"
        + "       (or set POSTERN_FUZZ_TARGET=<\(names)>)\n")
    exit(2)
}

#if POSTERN_LIBFUZZER

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

/// The target for this process, set once before libFuzzer starts calling back.
nonisolated(unsafe) var selectedTarget = PosternFuzzTarget.parser

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selectedTarget.run(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
    return 0
}

@_cdecl("SMTPFuzzer_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    let arguments = (0..<Int(argc)).map { String(cString: argv[$0]!) }
    guard let (target, rest) = chooseTarget(arguments) else { usage() }
    selectedTarget = target
    // libFuzzer runs itself again for -minimize_crash, -fork and -merge, with the argv it
    // was given (no target name): the environment carries the target to those runs.
    setenv("POSTERN_FUZZ_TARGET", target.rawValue, 1)
    report("SMTPFuzzer: target \(target.rawValue)\n")
    // libFuzzer keeps pointers into argv: these strings live until exit.
    var cArguments: [UnsafeMutablePointer<CChar>?] = rest.map { strdup($0) } + [nil]
    var count = Int32(rest.count)
    return cArguments.withUnsafeMutableBufferPointer { buffer in
        var base: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buffer.baseAddress
        return LLVMFuzzerRunDriver(&count, &base) { data, size in
            LLVMFuzzerTestOneInput(data, size)
        }
    }
}

#else

@main
enum SMTPFuzzer {
    static func main() {
        guard let (target, rest) = chooseTarget(CommandLine.arguments) else { usage() }
        let paths = rest.dropFirst().filter { !$0.hasPrefix("-") }
        guard !paths.isEmpty else {
            report("SMTPFuzzer: built without libFuzzer; give files or directories to replay\n")
            exit(2)
        }
        var count = 0
        for path in paths {
            for file in inputFiles(at: path) {
                guard let bytes = readFile(file) else {
                    report("SMTPFuzzer: cannot read \(file)\n")
                    exit(1)
                }
                target.run(bytes)
                count += 1
            }
        }
        print("SMTPFuzzer: replayed \(count) inputs through \(target.rawValue)")
    }

    /// `path` itself, or the regular files directly inside it when it is a directory.
    static func inputFiles(at path: String) -> [String] {
        guard let directory = opendir(path) else { return [path] }
        defer { closedir(directory) }
        var files: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(".") { continue }
            files.append(path + "/" + name)
        }
        return files.sorted()
    }

    static func readFile(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let read = fread(&chunk, 1, chunk.count, file)
            if read <= 0 { break }
            bytes += chunk[..<read]
        }
        return ferror(file) == 0 ? bytes : nil
    }
}

#endif
