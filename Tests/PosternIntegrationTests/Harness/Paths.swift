import Foundation

/// Where things are: the `postern` binary, the fixtures, the package root, tools on PATH.
enum Paths {
    /// `<package root>`, found by walking up from this file until a `Package.swift` appears.
    static let packageRoot: URL = {
        var dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) {
                return dir
            }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
    }()

    /// The directory holding the running test executable (`.build/<triple>/debug` on Linux).
    static let testExecutableDirectory: URL? = {
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            return URL(fileURLWithPath: exe).deletingLastPathComponent()
        }
        if let arg0 = ProcessInfo.processInfo.arguments.first, arg0.hasPrefix("/") {
            return URL(fileURLWithPath: arg0).deletingLastPathComponent()
        }
        return Bundle.main.bundleURL
    }()

    /// The `postern` executable: `$POSTERN_BINARY`, else next to the test executable,
    /// else `<package root>/.build/debug/postern`.
    static func posternBinary() throws -> URL {
        var candidates: [URL] = []
        if let env = ProcessInfo.processInfo.environment["POSTERN_BINARY"], !env.isEmpty {
            candidates.append(URL(fileURLWithPath: env))
        }
        if let dir = testExecutableDirectory {
            candidates.append(dir.appendingPathComponent("postern"))
            // A test bundle (macOS): <dir>/X.xctest/Contents/MacOS → go up to <dir>.
            candidates.append(dir.deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("postern"))
        }
        candidates.append(Bundle.main.bundleURL.appendingPathComponent("postern"))
        candidates.append(packageRoot.appendingPathComponent(".build/debug/postern"))
        for url in candidates where FileManager.default.isExecutableFile(atPath: url.path) {
            return url
        }
        throw HarnessError.missing("postern binary; looked in: " + candidates.map(\.path).joined(separator: ", ")
            + " (set POSTERN_BINARY or run `swift build`)")
    }

    /// `Tests/PosternIntegrationTests/Fixtures`: `$POSTERN_FIXTURES`, the source tree next to
    /// this file, or the copied resources next to the test executable.
    static let fixtures: URL = {
        var candidates: [URL] = []
        if let env = ProcessInfo.processInfo.environment["POSTERN_FIXTURES"], !env.isEmpty {
            candidates.append(URL(fileURLWithPath: env))
        }
        candidates.append(URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures"))
        if let dir = testExecutableDirectory {
            candidates.append(dir.appendingPathComponent("Postern_PosternIntegrationTests.resources/Fixtures"))
            candidates.append(dir.appendingPathComponent("Postern_PosternIntegrationTests.bundle/Contents/Resources/Fixtures"))
        }
        for url in candidates
        where FileManager.default.fileExists(atPath: url.appendingPathComponent("recording_sink.py").path) {
            return url
        }
        return candidates[candidates.count > 1 ? 1 : 0]
    }()

    static func fixture(_ relative: String) -> URL {
        fixtures.appendingPathComponent(relative)
    }

    /// Finds an executable by name on PATH (plus the sbin directories, where Postfix lives).
    static func tool(_ name: String) -> URL? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        var dirs = path.split(separator: ":").map(String.init)
        dirs += ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"]
        for dir in dirs {
            let candidate = URL(fileURLWithPath: dir).appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) {
                return candidate
            }
        }
        return nil
    }

    /// The real python3 interpreter (pyenv shims resolved), so that the PID we signal is Python's.
    static let python3: URL? = {
        guard let shim = tool("python3") else { return nil }
        let result = try? Command.run(shim, ["-c", "import sys; sys.stdout.write(sys.executable)"], timeout: 30)
        if let result, result.status == 0, !result.stdout.isEmpty,
           FileManager.default.isExecutableFile(atPath: result.stdout) {
            return URL(fileURLWithPath: result.stdout)
        }
        return shim
    }()
}

enum HarnessError: Error, CustomStringConvertible {
    case missing(String)
    case timeout(String)
    case failed(String)
    case io(String)

    var description: String {
        switch self {
        case .missing(let s): return "missing: \(s)"
        case .timeout(let s): return "timeout: \(s)"
        case .failed(let s): return "failed: \(s)"
        case .io(let s): return "I/O: \(s)"
        }
    }
}
