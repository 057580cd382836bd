// postern-policy-bench: what evaluating a policy costs per transaction.
//
//   make bench-policy
//   swift build -c release --product postern-policy-bench && .build/release/postern-policy-bench [--quick]
//
// Four scenarios, each run for a fixed number of iterations after a warm-up, single task,
// timed with ContinuousClock:
//   1. Policies/default.yaml over a whole transaction: connect, helo, mail, rcpt, data, with
//      the 4 KB MIME message parsed in every iteration (and again without the parse: a
//      session parses only for policies with content rules, and default.yaml has none).
//   2. A generated 1,000-rule policy with 500 regexes, envelope stages only (connect … rcpt).
//   3. The same policy over a whole transaction, content rules included (with the one-pass
//      Hyperscan scan of body and raw patterns, and again with PCRE2 alone).
//   4. Postfix's 40 typical header and body checks (Benchmarks/postfix_checks.yaml) at the
//      data stage over a 100 KB message, both ways, and that message's parse alone.
//   A last row times the 4 KB message's MIME parse alone, for reference.
// Each scenario runs in 5 equal rounds; the table shows the median round and the spread.
// Every generated rule is built not to match the sample transaction, so every rule runs;
// the harness checks that before timing. This is a benchmark, not a test: nothing fails on
// a slow machine.
import PosternMIME
import Foundation
import PosternFilters
import PosternPolicy
import SMTPCore

// MARK: - Options

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.contains("--help") || arguments.contains("-h") {
    print("""
        usage: postern-policy-bench [--quick] [--emit DIR]
          --quick      a tenth of the iterations (a smoke run; numbers are noisier)
          --emit DIR   also write the generated policy (heavy.yaml) and the sample message
                       (message.eml) to DIR, to read them or replay them with postern check
        Build in release mode first: swift build -c release --product postern-policy-bench
        """)
    exit(0)
}
let (quick, emitDirectory): (Bool, String?) = {
    var quick = false
    var emit: String?
    var remaining = arguments[...]
    while let argument = remaining.popFirst() {
        switch argument {
        case "--quick": quick = true
        case "--emit" where !remaining.isEmpty: emit = remaining.popFirst()
        default:
            FileHandle.standardError.write(Data("postern-policy-bench: unknown argument '\(argument)' (try --help)\n".utf8))
            exit(2)
        }
    }
    return (quick, emit)
}()
func iterations(_ full: Int) -> Int { quick ? max(full / 10, 10) : full }

// MARK: - Inputs

/// Policies/default.yaml, from the current directory or from this file's place in the repository.
func defaultPolicyPath() -> String {
    let here = FileManager.default.currentDirectoryPath + "/Policies/default.yaml"
    if FileManager.default.fileExists(atPath: here) { return here }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Policies/default.yaml").path
}

/// Rule counts of the generated policy, by stage, and how many of them are regexes.
struct HeavyShape {
    static let connectRules = 100          // client_ip CIDR blocks
    static let heloRegex = 25, heloPlain = 25
    static let senderRegex = 100, senderPlain = 100
    static let recipientRegex = 100, recipientPlain = 100
    static let subjectRegex = 75, bodyRegex = 100, headerRegex = 50, attachmentNameRegex = 25, rawRegex = 25
    static let dataPlain = 175             // attachment_type lists, size, tls

    static var envelopeRules: Int { connectRules + heloRegex + heloPlain + senderRegex + senderPlain + recipientRegex + recipientPlain }
    static var envelopeRegexes: Int { heloRegex + senderRegex + recipientRegex }
    static var contentRegexes: Int { subjectRegex + bodyRegex + headerRegex + attachmentNameRegex + rawRegex }
    static var dataRules: Int { contentRegexes + dataPlain }
    static var rules: Int { envelopeRules + dataRules }
    /// Content conditions: the regexes and the attachment_type lists.
    static var contentConditions: Int { contentRegexes + (0..<dataPlain).filter { $0 % 3 == 0 }.count }
    static var regexes: Int { envelopeRegexes + contentRegexes }
}

/// The 1,000-rule policy: realistic shapes (anchored and unanchored patterns, alternations,
/// bounded repeats), each made distinct by its index, none matching the sample transaction.
func heavyPolicyYAML() -> String {
    var rules: [String] = []
    func rule(_ id: String, _ stage: String, _ condition: String) {
        rules.append("  - { id: \(id), stage: \(stage), if: \(condition), then: reject }")
    }
    for i in 0..<HeavyShape.connectRules {
        rule("net-\(i)", "connect", "{ client_ip: [\"100.\(64 + i / 200).\(i % 200).0/24\", \"2001:db8:ff\(String(format: "%02x", i % 256))::/48\"] }")
    }
    for i in 0..<HeavyShape.heloRegex {
        rule("helo-re-\(i)", "helo", "{ helo: { regex: '^(pc|dsl|dyn|host)-?\(i)[0-9]*\\.(isp|cable)\(i)\\.' } }")
    }
    for i in 0..<HeavyShape.heloPlain {
        rule("helo-eq-\(i)", "helo", "{ helo: { equals: 'bad-host-\(i).example' } }")
    }
    for i in 0..<HeavyShape.senderRegex {
        let pattern = i.isMultiple(of: 2)
            ? "^[a-z]{12,}\(i)@"                                   // long random local parts
            : "@(mail|smtp|mx)\\d*\\.spam-\(i)\\.(biz|top|xyz)$"  // throwaway domains
        rule("sender-re-\(i)", "mail", "{ sender: { regex: '\(pattern)' } }")
    }
    for i in 0..<HeavyShape.senderPlain {
        switch i % 3 {
        case 0: rule("sender-eq-\(i)", "mail", "{ sender: spammer\(i)@bulk.example }")
        case 1: rule("sender-dom-\(i)", "mail", "{ sender: { domain: \"*.blocked-\(i).example\" } }")
        default: rule("sender-wild-\(i)", "mail", "{ sender: \"*@*.offers-\(i).example\" }")
        }
    }
    for i in 0..<HeavyShape.recipientRegex {
        rule("rcpt-re-\(i)", "rcpt", "{ recipient: { regex: '^(old|former|test)-?user\(i)(\\+[^@]*)?@' } }")
    }
    for i in 0..<HeavyShape.recipientPlain {
        rule("rcpt-dom-\(i)", "rcpt", "{ recipient: { domain: retired-\(i).example } }")
    }
    for i in 0..<HeavyShape.subjectRegex {
        rule("subject-\(i)", "data", "{ subject: { regex: '(free|cheap|win)\\s+prize\\s*#?\(i)\\b|act\\s+now\\s+offer\(i)' } }")
    }
    for i in 0..<HeavyShape.bodyRegex {
        let pattern = i.isMultiple(of: 2)
            ? "\\bpromo-?code[:\\s]+X\(i)[A-Z0-9]{4}\\b"
            : "(wire|transfer)\\s+(usd|eur)\\s*\\d{3,}\\s+to\\s+account\\s+\(i)"
        rule("body-\(i)", "data", "{ body: { regex: '\(pattern)' } }")
    }
    let headers = ["X-Mailer", "User-Agent", "X-Campaign-ID", "Reply-To", "Message-ID"]
    for i in 0..<HeavyShape.headerRegex {
        rule("header-\(i)", "data", "{ header.\(headers[i % headers.count]): { regex: '^(mass|bulk)\\s*mailer\\s+v?\(i)\\b|campaign-\(i)-[0-9a-f]{8}' } }")
    }
    for i in 0..<HeavyShape.attachmentNameRegex {
        rule("attach-\(i)", "data", "{ attachment_name: { regex: '\\.(x\(i)exe|scr\(i)|pif\(i))\\s*$' } }")
    }
    for i in 0..<HeavyShape.rawRegex {
        rule("raw-\(i)", "data", "{ raw: { regex: '(?m)^X-Bulk-Tracking-\(i):\\s*[0-9a-f]{16}' } }")
    }
    for i in 0..<HeavyShape.dataPlain {
        switch i % 3 {
        case 0: rule("type-\(i)", "data", "{ attachment_type: [application/x-bad-\(i), application/x-worse-\(i)] }")
        case 1: rule("size-\(i)", "data", "{ size: { over: \(50 + i)MB } }")
        default: rule("tls-\(i)", "data", "{ tls: true }")
        }
    }
    return "# Generated by postern-policy-bench: \(HeavyShape.rules) rules, \(HeavyShape.regexes) regexes.\nversion: 1\nrules:\n"
        + rules.joined(separator: "\n") + "\n"
}

/// A typical ~4 KB message: multipart/mixed with a text/plain + text/html alternative and a
/// small base64 PDF attachment.
func sampleMessage() -> [UInt8] {
    let paragraph = """
        Hello team, here are the notes from Tuesday's planning meeting. We agreed to move the \
        release to the second week of the month, to review the open tickets on Thursday, and to \
        ask the hosting provider about the maintenance window. Please add anything I missed.
        """
    let text = Array(repeating: paragraph, count: 5).joined(separator: "\n\n")
    let html = "<html><body>" + Array(repeating: "<p>\(paragraph)</p>", count: 3).joined() + "</body></html>"
    let pdf = Data((0..<800).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }).base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
    let message = """
        Received: from mail.sender.example (mail.sender.example [203.0.113.9])\r
        \tby mx.example.com with ESMTPS id 4F2K9; Tue, 14 Jan 2025 09:12:44 +0100\r
        From: Alice Example <alice@sender.example>\r
        To: Bob <bob@example.com>\r
        Subject: =?UTF-8?Q?Planning_meeting_notes_=E2=80=93_January?=\r
        Date: Tue, 14 Jan 2025 09:12:40 +0100\r
        Message-ID: <20250114081240.4F2K9@sender.example>\r
        X-Mailer: Thunderbird 128.6.0\r
        MIME-Version: 1.0\r
        Content-Type: multipart/mixed; boundary="outer"\r
        \r
        --outer\r
        Content-Type: multipart/alternative; boundary="inner"\r
        \r
        --inner\r
        Content-Type: text/plain; charset=utf-8\r
        Content-Transfer-Encoding: 8bit\r
        \r
        \(text.replacingOccurrences(of: "\n", with: "\r\n"))\r
        --inner\r
        Content-Type: text/html; charset=utf-8\r
        Content-Transfer-Encoding: quoted-printable\r
        \r
        \(html)\r
        --inner--\r
        --outer\r
        Content-Type: application/pdf\r
        Content-Disposition: attachment; filename="notes.pdf"\r
        Content-Transfer-Encoding: base64\r
        \r
        \(pdf)\r
        --outer--\r

        """
    return Array(message.utf8)
}

/// A 100 KB (102,400-octet body) plain-text message, like smtp-source's 100 KB ones: ordinary
/// prose that none of the 40 checks matches.
func largeMessage() -> [UInt8] {
    let line = "Hello team, here are the notes from the planning meeting; the release moves to the second week.\r\n"
    let body = String(repeating: line, count: 102_400 / line.utf8.count + 1).utf8.prefix(102_400)
    let header = "From: Alice <alice@sender.example>\r\nTo: Bob <bob@example.com>\r\nSubject: notes\r\n"
        + "Date: Tue, 14 Jan 2025 09:12:40 +0100\r\nMessage-ID: <1@sender.example>\r\nMIME-Version: 1.0\r\n"
        + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    return Array(header.utf8) + Array(body) + Array("\r\n".utf8)
}

func mailbox(_ local: String, _ domain: String) -> Mailbox { Mailbox(localPart: local, domain: domain) }

let envelope = TransactionFacts(
    transactionID: "BENCH0001", clientAddress: IPAddress("203.0.113.9")!, clientPort: 40000, helo: "mail.sender.example",
    tls: false, sender: .mailbox(mailbox("alice", "sender.example")), recipient: .mailbox(mailbox("bob", "example.com")))

// MARK: - Transactions

/// Runs `stages` of one transaction; with `.data`, the message is parsed first (when `parse`
/// is nil: only if the policy has content rules, as a session does).
@inline(never)
func transaction(_ policy: Policy, _ stages: [PolicyStage], message: [UInt8], parse: Bool? = nil) async -> Int {
    var decided = 0
    var facts = envelope
    for stage in stages {
        if stage == .data {
            facts.recipient = nil
            facts.recipients = [.mailbox(mailbox("bob", "example.com"))]
            facts.size = message.count
            if parse ?? policy.needsMessage { facts.message = MIMEMessage.parse(message) }
        }
        let verdict = await PolicyEngine.evaluate(policy, stage: stage, facts: facts)
        if verdict.outcome != .pass || !verdict.shadowHits.isEmpty { decided += 1 }
    }
    return decided
}

/// One scenario's result. The iterations run in `rounds` equal rounds; the table shows the
/// median round (a shared machine makes single runs noisy) and the fastest and slowest.
struct Row {
    static let rounds = 5

    var name: String
    var rules: String
    var regexes: String
    var iterations: Int
    /// Microseconds per transaction in each round, sorted.
    var roundMicroseconds: [Double]

    var microseconds: Double { roundMicroseconds[roundMicroseconds.count / 2] }
    var perSecond: Double { 1e6 / microseconds }
}

func measure(_ name: String, rules: String, regexes: String, warmUp: Int, iterations count: Int,
             _ body: () async -> Int) async -> Row {
    for _ in 0..<warmUp { _ = await body() }
    var sink = 0
    let clock = ContinuousClock()
    let perRound = max(count / Row.rounds, 1)
    var rounds: [Double] = []
    for _ in 0..<Row.rounds {
        let start = clock.now
        for _ in 0..<perRound { sink &+= await body() }
        let elapsed = clock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        rounds.append(seconds * 1e6 / Double(perRound))
    }
    if sink != 0 { print("warning: \(name): \(sink) rule matches; the scenario is meant to match nothing") }
    return Row(name: name, rules: rules, regexes: regexes, iterations: perRound * Row.rounds, roundMicroseconds: rounds.sorted())
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("postern-policy-bench: \(message)\n".utf8))
    exit(1)
}

// MARK: - Main

let defaultPath = defaultPolicyPath()
let defaultPolicy: Policy
do { defaultPolicy = try BuiltinFilters.compiler.compile(path: defaultPath) } catch {
    fail("\(defaultPath): \(error.errors.map(\.description).joined(separator: "; "))")
}

let directory = NSTemporaryDirectory() + "postern-policy-bench-" + UUID().uuidString
try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
let heavyPath = directory + "/heavy.yaml"
try heavyPolicyYAML().write(toFile: heavyPath, atomically: true, encoding: .utf8)
let compileStart = ContinuousClock.now
let heavyPolicy: Policy
do { heavyPolicy = try BuiltinFilters.compiler.compile(path: heavyPath) } catch {
    fail("generated policy: \(error.errors.prefix(5).map(\.description).joined(separator: "; "))")
}
let compileTime = ContinuousClock.now - compileStart
try? FileManager.default.removeItem(atPath: directory)
guard heavyPolicy.rules.count == HeavyShape.rules else { fail("generated \(heavyPolicy.rules.count) rules, expected \(HeavyShape.rules)") }

let message = sampleMessage()
if let emitDirectory {
    try FileManager.default.createDirectory(atPath: emitDirectory, withIntermediateDirectories: true)
    try heavyPolicyYAML().write(toFile: emitDirectory + "/heavy.yaml", atomically: true, encoding: .utf8)
    try Data(message).write(to: URL(fileURLWithPath: emitDirectory + "/message.eml"))
    print("wrote \(emitDirectory)/heavy.yaml and \(emitDirectory)/message.eml")
}
let all: [PolicyStage] = [.connect, .helo, .mail, .rcpt, .data]
let envelopeStages: [PolicyStage] = [.connect, .helo, .mail, .rcpt]

// Sanity: nothing in the generated policy matches the sample transaction, so every rule runs.
if await transaction(heavyPolicy, all, message: message) != 0 { fail("a generated rule matches the sample transaction") }
let parsed = MIMEMessage.parse(message)
guard parsed.subject?.contains("Planning") == true, parsed.attachments.count == 1, parsed.textBodies.count == 2 else {
    fail("the sample message did not parse as expected")
}

print("postern-policy-bench\(quick ? " (--quick)" : ""): \(message.count)-byte MIME message (text + HTML + PDF attachment)")
print("generated policy: \(HeavyShape.rules) rules, \(HeavyShape.regexes) regexes "
      + "(envelope: \(HeavyShape.envelopeRules) rules / \(HeavyShape.envelopeRegexes) regexes; "
      + "data: \(HeavyShape.dataRules) rules / \(HeavyShape.contentRegexes) regexes), compiled in "
      + String(format: "%.1f ms", Double(compileTime.components.attoseconds) / 1e15 + Double(compileTime.components.seconds) * 1e3))

var rows: [Row] = []
rows.append(await measure("default.yaml, whole transaction", rules: "\(defaultPolicy.rules.count)", regexes: "0",
                          warmUp: iterations(2_000) / 10, iterations: iterations(20_000)) {
    await transaction(defaultPolicy, all, message: message, parse: true)
})
rows.append(await measure("  the same, message not parsed (*)", rules: "\(defaultPolicy.rules.count)", regexes: "0",
                          warmUp: iterations(2_000) / 10, iterations: iterations(20_000)) {
    await transaction(defaultPolicy, all, message: message, parse: false)
})
rows.append(await measure("heavy, envelope stages (connect-rcpt)", rules: "\(HeavyShape.envelopeRules)",
                          regexes: "\(HeavyShape.envelopeRegexes)", warmUp: iterations(2_000) / 10, iterations: iterations(10_000)) {
    await transaction(heavyPolicy, envelopeStages, message: message)
})
rows.append(await measure("heavy, whole transaction with content", rules: "\(HeavyShape.rules)",
                          regexes: "\(HeavyShape.regexes)", warmUp: iterations(500) / 10, iterations: iterations(2_000)) {
    await transaction(heavyPolicy, all, message: message)
})

func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
    let padding = String(repeating: " ", count: max(0, width - text.count))
    return right ? padding + text : text + padding
}
// The heavy policy with every content pattern matched by PCRE2 alone (no one-pass prefilter).
ContentMatching.prefilter = false
let heavyPCRE2 = try BuiltinFilters.compiler.compile(yaml: heavyPolicyYAML(), file: "heavy.yaml")
ContentMatching.prefilter = true
rows.append(await measure("  the same, PCRE2 alone", rules: "\(HeavyShape.rules)",
                          regexes: "\(HeavyShape.regexes)", warmUp: iterations(500) / 10, iterations: iterations(2_000)) {
    await transaction(heavyPCRE2, all, message: message)
})

// Postfix's 40 header and body checks (Benchmarks/postfix_checks.yaml) over a 100 KB message.
let checksPath = URL(fileURLWithPath: defaultPath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Benchmarks/postfix_checks.yaml").path
let checks = try BuiltinFilters.compiler.compile(path: checksPath)
ContentMatching.prefilter = false
let checksPCRE2 = try BuiltinFilters.compiler.compile(path: checksPath)
ContentMatching.prefilter = true
let large = largeMessage()
rows.append(await measure("40 Postfix checks, 100 KB message", rules: "\(checks.rules.count)", regexes: "40",
                          warmUp: iterations(500) / 10, iterations: iterations(2_000)) {
    await transaction(checks, [.data], message: large)
})
rows.append(await measure("  the same, PCRE2 alone", rules: "\(checks.rules.count)", regexes: "40",
                          warmUp: iterations(500) / 10, iterations: iterations(2_000)) {
    await transaction(checksPCRE2, [.data], message: large)
})
rows.append(await measure("  reference: its MIME parse", rules: "-", regexes: "-", warmUp: iterations(500) / 10,
                          iterations: iterations(2_000)) {
    MIMEMessage.parse(large).parts.count == 0 ? 1 : 0
})
rows.append(await measure("reference: MIME parse of the message", rules: "-", regexes: "-", warmUp: iterations(2_000) / 10,
                          iterations: iterations(20_000)) {
    MIMEMessage.parse(message).parts.count == 0 ? 1 : 0
})

print("")
print(pad("scenario", 40) + pad("rules", 7, right: true) + pad("regexes", 9, right: true) + pad("iterations", 12, right: true)
      + pad("tx/s", 10, right: true) + pad("µs/tx", 10, right: true) + pad("(min-max µs/tx)", 20, right: true))
for row in rows {
    let spread = String(format: "%.1f-%.1f", row.roundMicroseconds.first!, row.roundMicroseconds.last!)
    print(pad(row.name, 40) + pad(row.rules, 7, right: true) + pad(row.regexes, 9, right: true) + pad("\(row.iterations)", 12, right: true)
          + pad(String(format: "%.0f", row.perSecond), 10, right: true) + pad(String(format: "%.1f", row.microseconds), 10, right: true)
          + pad(spread, 20, right: true))
}
print("")
print("One task, sequential; tx/s and µs/tx are the median of \(Row.rounds) equal rounds. Whole transactions include")
print("parsing the message. (*) A session parses only for policies with content rules, which default.yaml has")
print("none of. Content conditions on a message this size match inline, as in a session (messages over")
print("256 KiB go to NIO's blocking pool); the heavy policy has \(HeavyShape.contentConditions) of them.")
