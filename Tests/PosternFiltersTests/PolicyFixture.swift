import Foundation
import PosternFilters
import PosternPolicy
import SMTPCore
import XCTest

/// Compiles policy text with the built-in filters; files named in it live in a temporary directory.
struct PolicyFixture {
    let directory: String

    init(files: [String: String] = [:]) throws {
        directory = NSTemporaryDirectory() + "postern-policy-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (name, text) in files { try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8) }
    }

    func compile(_ yaml: String, file: String = "policy.yaml") throws -> Policy {
        try yaml.write(toFile: directory + "/" + file, atomically: true, encoding: .utf8)
        return try BuiltinFilters.compiler.compile(path: directory + "/" + file)
    }

    /// The error lines, with the directory stripped.
    func errors(_ yaml: String, file: String = "policy.yaml") -> [String] {
        do {
            _ = try compile(yaml, file: file)
            return []
        } catch let error as ConfigurationErrors {
            return error.errors.map { $0.description.replacingOccurrences(of: directory + "/", with: "") }
        } catch {
            return ["\(error)"]
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

func facts(
    client: String = "203.0.113.9", helo: String? = "client.example", tls: Bool = false, authUser: String? = nil,
    sender: String? = nil, recipient: String? = nil, size: Int? = nil
) -> TransactionFacts {
    func mailbox(_ text: String) -> Mailbox {
        let at = text.lastIndex(of: "@")!
        return Mailbox(localPart: String(text[..<at]), domain: String(text[text.index(after: at)...]))
    }
    return TransactionFacts(
        transactionID: "TXID", clientAddress: IPAddress(client)!, clientPort: 40000, helo: helo, tls: tls, authUser: authUser,
        sender: sender.map { $0 == "<>" ? ReversePath.null : .mailbox(mailbox($0)) },
        recipient: recipient.map { $0.lowercased() == "postmaster" ? ForwardPath.postmaster : .mailbox(mailbox($0)) },
        size: size)
}

/// The verdict of `stage` for a one-rule policy `if:` condition.
func matches(_ condition: String, stage: PolicyStage, _ facts: TransactionFacts, lists: String = "", file: StaticString = #filePath, line: UInt = #line) async throws -> Bool {
    let fixture = try PolicyFixture(files: ["senders.txt": "# a comment\nspam@example.com\n\n@bad.example   # a domain\n*@*.spammy.example\n"])
    defer { fixture.remove() }
    let policy = try fixture.compile("""
        \(lists)
        rules:
          - id: r
            stage: \(stage.rawValue)
            if: \(condition)
            then: reject
        """)
    let verdict = await PolicyEngine.evaluate(policy, stage: stage, facts: facts)
    return verdict.rule == "r"
}

func expectMatch(
    _ expected: Bool, _ condition: String, stage: PolicyStage, _ facts: TransactionFacts, lists: String = "",
    message: String = "", file: StaticString = #filePath, line: UInt = #line
) async throws {
    let result = try await matches(condition, stage: stage, facts, lists: lists)
    XCTAssertEqual(result, expected, "\(condition) \(message)", file: file, line: line)
}
