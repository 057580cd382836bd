import Foundation
import XCTest

// Real milter engines from Debian 12 packages, each started by a test on 127.0.0.1 with its
// configuration in a subdirectory of the test's work directory, in the foreground where the
// engine allows it (so the ManagedProcess owns its PID), stopped by PID in teardown:
//
//   rspamd 3.4         startRspamdMilter()      rspamd_proxy in milter mode, self_scan
//   OpenDKIM 2.11      startOpenDKIM(mode:…)    sign / verify / both, test keys from a file
//   OpenDMARC 1.4      startOpenDMARC(…)        after OpenDKIM, trusting its Authentication-Results
//   clamd + clamav-milter 1.4  startClamavMilter(onInfected:)  an EICAR-only database
//
// Nothing here needs the network: rspamd's resolver is a closed loopback port and every module
// that wants DNS, Redis or remote maps is off; OpenDKIM reads its public keys from a file
// (TestPublicKeys); opendkim-testmsg and OpenDMARC, which can only use /etc/resolv.conf, run in
// a private mount namespace (unshare -m) whose /etc/resolv.conf names a stub DNS server
// (Fixtures/stub_dns.py) on 127.53.X.Y:53. The configurations below were each proved behind a
// real Postfix (smtpd_milters) with swaks; the engines' replies and headers seen there are
// recorded on the engine types.
//
// Debian packages: rspamd, opendkim, opendkim-tools (opendkim-genkey, opendkim-testmsg),
// opendmarc, clamav-daemon (clamd), clamav-milter; util-linux (unshare) and mount are in the base
// system. A missing binary skips the test (requireTool).

// MARK: - Shared plumbing

enum MilterEngineSupport {
    /// The live processes whose parent is `pid` (from /proc/<pid>/stat).
    static func childProcesses(of pid: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        var children: [pid_t] = []
        for entry in entries {
            guard let child = pid_t(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")")
            else { continue }
            // "pid (comm) state ppid …": comm may hold spaces and parentheses.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 2, pid_t(fields[1]) == pid { children.append(child) }
        }
        return children
    }

    static func isAlive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        // A zombie is not alive (its parent has not reaped it yet).
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        guard let close = stat.lastIndex(of: ")") else { return false }
        return !stat[stat.index(after: close)...].hasPrefix(" Z")
    }

    /// Writes `text` to `url`, creating the file's directory.
    static func write(_ text: String, to url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
    }

    /// One request on a fresh TCP connection, newline-framed protocol (clamd's "nPING\n", a
    /// one-shot HTTP/1.0 request); returns everything the server sent until it closed.
    static func exchange(port: Int, _ request: String, timeout: Double = 5) throws -> String {
        let client = try RawSMTPClient(port: port, timeout: timeout)
        defer { client.close() }
        try client.send(request)
        var lines: [String] = []
        while let line = try client.readLine() { lines.append(line) }
        return lines.joined(separator: "\n")
    }
}

extension IntegrationTestCase {
    /// Registers, after `launch`, a teardown that stops a forking engine (rspamd) by PID and then
    /// its workers: it notes the children of the main process first, stops the main process
    /// (SIGTERM, then SIGKILL), and SIGKILLs any child still alive 5 s later.
    func stopWithChildren(_ process: ManagedProcess) {
        onTeardown {
            let children = MilterEngineSupport.childProcesses(of: process.pid)
            process.stop()
            let gone = waitUntil(timeout: 5, interval: 0.05) { !children.contains(where: MilterEngineSupport.isAlive) }
            if !gone {
                for child in children where MilterEngineSupport.isAlive(child) { kill(child, SIGKILL) }
            }
        }
    }
}

extension IntegrationTestCase {
    /// Registers, after `launch`, a teardown for a libmilter engine (opendkim, opendmarc,
    /// clamav-milter): SIGTERM, then one connection to its port, then `stop()`. libmilter's
    /// accept loop looks at the stop flag only when poll(2) returns, at the latest every 5 s
    /// (MI_CHK_TIME): SIGTERM alone took opendkim 4.5 s to exit, SIGTERM and a knock 0.17 s.
    func stopLibmilterEngine(_ process: ManagedProcess, port: Int) {
        onTeardown {
            process.signal(SIGTERM)
            _ = Net.canConnect(port: port)
            process.stop()
        }
    }
}

// MARK: - Stub DNS (Fixtures/stub_dns.py) and a private /etc/resolv.conf

/// A DNS server on 127.53.X.Y:53 answering TXT queries from a table, and a resolv.conf naming
/// it. Engines that only read /etc/resolv.conf run through `namespaced(_:_:)`.
final class StubDNS: @unchecked Sendable {
    let address: String
    let resolvConf: URL
    let recordsFile: URL
    let process: ManagedProcess

    init(address: String, resolvConf: URL, recordsFile: URL, process: ManagedProcess) {
        self.address = address
        self.resolvConf = resolvConf
        self.recordsFile = recordsFile
        self.process = process
    }

    /// `unshare -m /bin/sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' RESOLV EXE ARGS…`:
    /// the engine runs in a new mount namespace (propagation private, so the host's
    /// /etc/resolv.conf is untouched) where /etc/resolv.conf names this server. `sh` and then
    /// `unshare` exec, so the PID stays the engine's.
    func namespaced(_ executable: URL, _ arguments: [String]) throws -> (URL, [String]) {
        guard let unshare = Paths.tool("unshare") else { throw XCTSkip("unshare (util-linux) is not installed") }
        return (unshare, ["-m", "/bin/sh", "-c", "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
                          resolvConf.path, executable.path] + arguments)
    }
}

extension IntegrationTestCase {
    /// Starts Fixtures/stub_dns.py on port 53 of a free 127.53.X.Y with `records` (name, TXT
    /// text). Needs root: port 53, and the engines that use it need `unshare -m` and `mount`.
    func startStubDNS(_ records: [(name: String, text: String)], name: String = "dns") throws -> StubDNS {
        guard getuid() == 0 else {
            throw XCTSkip("the stub DNS listens on port 53 and is used from a private mount namespace: needs root")
        }
        guard Paths.tool("unshare") != nil, Paths.tool("mount") != nil else {
            throw XCTSkip("unshare and mount (util-linux, mount) are needed for a private /etc/resolv.conf")
        }
        let python = try requirePython()
        let dir = try makeDirectory(name)
        let recordsFile = dir.appendingPathComponent("records")
        try MilterEngineSupport.write(records.map { "\($0.name)\t\($0.text)\n" }.joined(), to: recordsFile)
        let process = try launch(name, python, [Paths.fixture("stub_dns.py").path, "auto", "53", recordsFile.path])
        try process.waitForOutput(containing: "READY ", timeout: 15)
        let line = process.stdout.split(separator: "\n").first { $0.hasPrefix("READY ") } ?? ""
        let parts = line.split(separator: " ")
        guard parts.count == 3 else { throw HarnessError.failed("cannot parse the stub DNS address from: \(process.stdout)") }
        let resolvConf = dir.appendingPathComponent("resolv.conf")
        try MilterEngineSupport.write("nameserver \(parts[1])\noptions timeout:2 attempts:2\n", to: resolvConf)
        return StubDNS(address: String(parts[1]), resolvConf: resolvConf, recordsFile: recordsFile, process: process)
    }
}

extension IntegrationTestCase {
    /// Fixtures/stub_dns.py on 127.0.0.1 and a free port (no root needed), serving `lines`
    /// ("name<TAB>text" TXT, or "name<TAB>A|AAAA|PTR<TAB>value"); returns the port.
    func startLoopbackDNS(_ lines: [String], name: String = "dns") throws -> Int {
        let python = try requirePython()
        let records = workDir.appendingPathComponent("\(name)-records")
        try (lines.joined(separator: "\n") + "\n").write(to: records, atomically: true, encoding: .utf8)
        let port = try Net.freePort()
        let process = try launch(name, python, [Paths.fixture("stub_dns.py").path, "127.0.0.1", "\(port)", records.path])
        try process.waitForOutput(containing: "READY ", timeout: 15)
        return port
    }

    /// A loopback UDP port that is bound and never read: a DNS server that never answers.
    /// Closed at teardown.
    func silentUDPPort() throws -> Int {
        let silent = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let port = try Net.freePort()
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(silent, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            close(silent)
            throw HarnessError.failed("cannot bind UDP port \(port)")
        }
        onTeardown { close(silent) }
        return port
    }
}

// MARK: - rspamd 3.4 (rspamd_proxy, milter mode)

/// rspamd with one `rspamd_proxy` worker in milter mode scanning by itself (self_scan) and a
/// controller. Seen through Postfix (smtpd_milters = inet:127.0.0.1:PORT):
/// - GTUBE (`gtubeReject` in the body): `554 5.7.1 Gtube pattern` at end of data.
/// - A score at or over `reject` (Subject marker `markerReject`): `554 5.7.1 Spam message rejected`.
/// - `gtubeAddHeader`: accepted with `X-Spam: Yes` added (the proxy's spam_header); nothing else,
///   since a GTUBE match skips every module, milter_headers included.
/// - `gtubeRewriteSubject`: accepted, `Subject: ***SPAM*** <original>` (SMFIR_CHGHEADER).
/// - Subject marker `markerAddHeader` (score 7): `X-Spam: Yes` plus the milter_headers set below,
///   `X-Rspamd-Action: add header`.
/// - Subject marker `markerRewriteSubject` (score 13): the subject rewritten, the headers,
///   `X-Rspamd-Action: rewrite subject`.
/// - A clean message: accepted with `Authentication-Results: <j>; none` (inserted at the top),
///   `X-Spamd-Bar`, `X-Spamd-Result: default: False [0.50 / 20.00]; …`, `X-Spam-Level` (when the
///   score is positive), `X-Rspamd-Action: no action`, `X-Rspamd-Server: <hostname>`,
///   `X-Rspamd-Queue-Id: <the i macro>` (SMFIR_ADDHEADER, one each, then SMFIR_INSHEADER).
/// Negotiation (Postfix offered v6, all actions, all events): version 6, actions = all offered
/// (0x1ff), protocol = every "no reply" bit (SMFIP_NR_CONN/HELO/MAIL/RCPT/DATA/UNKN/EOH/BODY/HDR),
/// no "skip this event" bits: it wants every event and answers only at end of message.
/// Start: about 0.5 s to listening (the stock 9,600-suffix TLD list alone takes 18 s to compile,
/// hence the short `url_tld` list); about 180 MB RSS over main, controller, proxy and hs_helper.
struct RspamdEngine {
    let milterPort: Int
    let controllerPort: Int
    let directory: URL
    let process: ManagedProcess

    static let gtubeReject = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    /// Enabled by `enable_test_patterns = true` (3.4; `gtube_patterns = "all"` from 3.8 on).
    static let gtubeAddHeader = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    static let gtubeRewriteSubject = "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    static let gtubeNoAction = "AJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    /// Subject markers (case-insensitive) scored by the local Lua rules in `rspamdLocalLua`.
    static let markerAddHeader = "postern-test-add-header"
    static let markerRewriteSubject = "postern-test-rewrite-subject"
    static let markerReject = "postern-test-reject"
    static let gtubeRejectReply = "554 5.7.1 Gtube pattern"
    static let rejectReply = "554 5.7.1 Spam message rejected"
    static let subjectPrefix = "***SPAM*** "
    static let controllerPassword = "q1"

    var milterAddress: String { "inet:127.0.0.1:\(milterPort)" }

    /// The controller's /stat (JSON: scanned, actions{reject, add header, …}).
    func stat() throws -> String {
        let reply = try MilterEngineSupport.exchange(
            port: controllerPort, "GET /stat HTTP/1.0\r\nPassword: \(Self.controllerPassword)\r\n\r\n")
        // exchange() joins the lines without their CRLF: the body follows the first empty line.
        return reply.components(separatedBy: "\n\n").dropFirst().joined(separator: "\n\n")
    }
}

extension IntegrationTestCase {
    /// The top-level rspamd.conf: the stock rules and module settings ($CONFDIR/common.conf),
    /// then our own options, console logging (so the ManagedProcess has the log) and workers.
    func rspamdConf(milterPort: Int, controllerPort: Int) -> String {
        """
        .include "$CONFDIR/common.conf"
        options {
            pidfile = "$RUNDIR/rspamd.pid";
            .include "$CONFDIR/options.inc"
            .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
        }
        logging {
            type = "console";
            level = "info";
            color = false;
        }
        worker "rspamd_proxy" {
            bind_socket = "127.0.0.1:\(milterPort)";
            milter = yes;
            timeout = 120s;
            count = 1;
            upstream "local" {
                default = yes;
                self_scan = yes;
            }
            spam_header = "X-Spam";
            reject_message = "Spam message rejected";
        }
        worker "controller" {
            bind_socket = "127.0.0.1:\(controllerPort)";
            count = 1;
            password = "\(RspamdEngine.controllerPassword)";
            secure_ip = "127.0.0.1";
            static_dir = "${WWWDIR}";
        }

        """
    }

    /// local.d/options.inc: the non-reject GTUBE patterns on, no hyperscan compile, a short TLD
    /// list, and a resolver that is a closed loopback port (no query leaves the machine).
    func rspamdOptions(tldFile: URL, deadDNSPort: Int) -> String {
        """
        enable_test_patterns = true;
        disable_hyperscan = true;
        url_tld = "\(tldFile.path)";
        dns {
            nameserver = ["127.0.0.1:\(deadDNSPort)"];
            timeout = 0.2s;
            retransmits = 1;
        }

        """
    }

    static let rspamdActions = """
        reject = 20;
        rewrite_subject = 12;
        add_header = 6;
        greylist = null;
        subject = "***SPAM*** %s";

        """

    /// milter_headers: the extended headers, also for local (127.0.0.1) and authenticated
    /// senders, which it skips by default.
    static let rspamdMilterHeaders = """
        extended_spam_headers = true;
        skip_local = false;
        skip_authenticated = false;
        use = ["x-spamd-bar", "x-spam-level", "authentication-results"];

        """

    /// local.d/rspamd.lua (loaded by the stock rules/rspamd.lua): fixed scores for markers in
    /// the Subject, one for each action.
    static let rspamdLocalLua = """
        local function subject_has(marker)
          return function(task)
            local subject = (task:get_header('Subject') or ''):lower()
            return subject:find(marker, 1, true) ~= nil
          end
        end
        rspamd_config.POSTERN_TEST_ADD_HEADER = {
          callback = subject_has('\(RspamdEngine.markerAddHeader)'), score = 7.0,
          description = 'Postern test marker: add header', group = 'postern_test',
        }
        rspamd_config.POSTERN_TEST_REWRITE_SUBJECT = {
          callback = subject_has('\(RspamdEngine.markerRewriteSubject)'), score = 13.0,
          description = 'Postern test marker: rewrite subject', group = 'postern_test',
        }
        rspamd_config.POSTERN_TEST_REJECT = {
          callback = subject_has('\(RspamdEngine.markerReject)'), score = 25.0,
          description = 'Postern test marker: reject', group = 'postern_test',
        }

        """

    /// Modules that want DNS, Redis or maps.rspamd.com (they would log errors or time out).
    static let rspamdDisabledModules = [
        "arc", "asn", "bimi", "dkim", "dkim_signing", "dmarc", "fuzzy_check", "greylist", "hfilter",
        "history_redis", "mid", "mime_types", "multimap", "mx_check", "neural", "phishing", "ratelimit",
        "rbl", "replies", "reputation", "spf", "url_redirector", "whitelist",
    ]

    /// Starts rspamd 3.4 in the foreground (-f) with its configuration, database, run and log
    /// directories under workDir/NAME; as root with -i (workers stay root, which rspamd otherwise
    /// refuses without -u/-g). Waits for the proxy worker, both ports and the controller's
    /// "pong". Stopped by PID (SIGTERM to the main process, then any worker left).
    func startRspamdMilter(name: String = "rspamd") throws -> RspamdEngine {
        let rspamd = try requireTool("rspamd")
        let dir = try makeDirectory(name)
        let localD = dir.appendingPathComponent("local.d")
        let db = dir.appendingPathComponent("db"), run = dir.appendingPathComponent("run")
        for d in [localD, db, run] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
        let milterPort = try Net.freePort(), controllerPort = try Net.freePort(), deadDNSPort = try Net.freePort()
        let conf = dir.appendingPathComponent("rspamd.conf")
        let tld = dir.appendingPathComponent("tld.dat")
        try MilterEngineSupport.write(rspamdConf(milterPort: milterPort, controllerPort: controllerPort), to: conf)
        try MilterEngineSupport.write(["com", "net", "org", "test", "example", "invalid", "localhost"]
            .map { $0 + "\n" }.joined(), to: tld)
        try MilterEngineSupport.write(rspamdOptions(tldFile: tld, deadDNSPort: deadDNSPort),
                                      to: localD.appendingPathComponent("options.inc"))
        try MilterEngineSupport.write(Self.rspamdActions, to: localD.appendingPathComponent("actions.conf"))
        try MilterEngineSupport.write(Self.rspamdMilterHeaders, to: localD.appendingPathComponent("milter_headers.conf"))
        try MilterEngineSupport.write(Self.rspamdLocalLua, to: localD.appendingPathComponent("rspamd.lua"))
        for module in Self.rspamdDisabledModules {
            try MilterEngineSupport.write("enabled = false;\n", to: localD.appendingPathComponent("\(module).conf"))
        }
        let arguments = ["-f", "-c", conf.path,
                         "--var=LOCAL_CONFDIR=\(dir.path)", "--var=DBDIR=\(db.path)",
                         "--var=RUNDIR=\(run.path)", "--var=LOGDIR=\(dir.path)"]
            + (getuid() == 0 ? ["-i"] : [])
        let process = try launch(name, rspamd, arguments)
        stopWithChildren(process)
        try process.waitForOutput(containing: "starting rspamd_proxy process", timeout: 60)
        try process.waitForOutput(containing: "starting controller process", timeout: 60)
        try process.waitForPort(milterPort, timeout: 60)
        try process.waitForPort(controllerPort, timeout: 60)
        let pong = waitUntil(timeout: 30, interval: 0.1) {
            (try? MilterEngineSupport.exchange(port: controllerPort, "GET /ping HTTP/1.0\r\n\r\n"))?.hasSuffix("pong") == true
        }
        guard pong else { throw HarnessError.timeout("rspamd controller did not answer /ping\n\(process.tail())") }
        return RspamdEngine(milterPort: milterPort, controllerPort: controllerPort, directory: dir, process: process)
    }
}

// MARK: - OpenDKIM 2.11

/// A DKIM key made by opendkim-genkey, with the TXT record it would publish.
struct DKIMKey {
    let domain: String
    let selector: String
    let privateKey: URL
    /// "v=DKIM1; h=sha256; k=rsa; p=…" (the quoted strings of SELECTOR.txt joined).
    let publicKeyRecord: String
    var recordName: String { "\(selector)._domainkey.\(domain)" }
}

enum OpenDKIMMode: String {
    case sign = "s"
    case verify = "v"
    case signAndVerify = "sv"
}

/// opendkim in the foreground. Seen through Postfix:
/// - Signing (mode s or sv) happens when the client is in InternalHosts (default here
///   127.0.0.1) or the `{auth_type}` macro is non-empty ({auth_authen} alone does not do it:
///   proved with milter_macro_defaults), and the From domain is `Domain`: `DKIM-Signature: v=1;
///   a=rsa-sha256; c=relaxed/simple; d=DOMAIN; s=SELECTOR; t=…; bh=…; h=Date:To:From:Subject; b=…`
///   and, with SoftwareHeader, `DKIM-Filter: OpenDKIM Filter v2.11.0 <j macro> <i macro>`, both
///   by SMFIR_INSHEADER at the top.
/// - Verifying (mode v, or sv for a client that is not internal or a From domain it does not
///   sign): `Authentication-Results: AUTHSERVID; dkim=pass (2048-bit key) header.d=sign.test
///   header.i=@sign.test header.a=rsa-sha256 header.s=pst header.b=XXXXXXXX; dkim-atps=neutral`,
///   `dkim=fail reason="signature verification failed" (2048-bit key) …` for a changed body,
///   `dkim=none; dkim-atps=neutral` for an unsigned message (AlwaysAddARHeader). Never rejects
///   by default (On-BadSignature accept).
/// Negotiation: version 6; actions SMFIF_ADDHDRS SMFIF_CHGHDRS SMFIF_SETSYMLIST (it asks for
/// the macros "i {daemon_name} {auth_type}"); protocol SMFIP_NOHELO SMFIP_NOUNKNOWN SMFIP_NODATA
/// SMFIP_SKIP SMFIP_HDR_LEADSPC (it answers every event it gets, SMFIR_CONTINUE, and may send
/// SMFIR_SKIP during the body). Macros it uses: j (hostname in DKIM-Filter and the default
/// authserv-id; AuthservID is set here), i (job ID), {daemon_name} (MTA list), {auth_type}.
/// Start: about 20 ms to listening; about 10 MB RSS.
final class OpenDKIMEngine: @unchecked Sendable {
    let port: Int
    let mode: OpenDKIMMode
    let key: DKIMKey
    let trustedKeys: [DKIMKey]
    let authservID: String
    let directory: URL
    let configFile: URL
    let process: ManagedProcess
    private unowned let test: IntegrationTestCase
    private var dns: StubDNS?

    init(port: Int, mode: OpenDKIMMode, key: DKIMKey, trustedKeys: [DKIMKey], authservID: String,
         directory: URL, configFile: URL, process: ManagedProcess, test: IntegrationTestCase) {
        self.port = port
        self.mode = mode
        self.key = key
        self.trustedKeys = trustedKeys
        self.authservID = authservID
        self.directory = directory
        self.configFile = configFile
        self.process = process
        self.test = test
    }

    var milterAddress: String { "inet:127.0.0.1:\(port)" }

    /// Runs opendkim-testmsg (verify mode: no -d/-k/-s) on `message` (CRLF or LF), in a mount
    /// namespace whose resolver is a stub DNS holding this engine's key and its trusted keys.
    /// Exit 0: every signature verified; otherwise e.g. 70 with "dkim_eom(): Bad signature".
    func testmsg(message: Data) throws -> CommandResult {
        let tool = try test.requireTool("opendkim-testmsg")
        if dns == nil {
            dns = try test.startStubDNS(([key] + trustedKeys).map { ($0.recordName, $0.publicKeyRecord) },
                                        name: directory.lastPathComponent + "-dns")
        }
        let (exe, args) = try dns!.namespaced(tool, [])
        return try Command.run(exe, args, stdin: message, timeout: 60)
    }

    /// Whether opendkim-testmsg verifies `message`'s signature against the published key.
    func verifyWithTestmsg(message: Data) throws -> Bool {
        try testmsg(message: message).status == 0
    }
}

extension IntegrationTestCase {
    /// opendkim-genkey -b BITS -d DOMAIN -s SELECTOR -D DIR → DIR/SELECTOR.private, SELECTOR.txt.
    func makeDKIMKey(domain: String, selector: String, bits: Int = 2048, directory: URL? = nil) throws -> DKIMKey {
        let genkey = try requireTool("opendkim-genkey")
        let dir = try directory ?? makeDirectory("dkim-keys")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let result = try Command.run(genkey, ["-b", "\(bits)", "-d", domain, "-s", selector, "-D", dir.path], timeout: 60)
        guard result.status == 0 else { throw HarnessError.failed("opendkim-genkey failed\n\(result)") }
        let txt = try String(contentsOf: dir.appendingPathComponent("\(selector).txt"), encoding: .utf8)
        // pst._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=MIIB…" "…" ) ; comment
        let quoted = txt.split(separator: "\"", omittingEmptySubsequences: false).enumerated()
            .filter { $0.offset % 2 == 1 }.map { String($0.element) }
        let record = quoted.joined()
        guard record.hasPrefix("v=DKIM1"), record.contains("p=") else {
            throw HarnessError.failed("cannot read the public key from \(selector).txt:\n\(txt)")
        }
        return DKIMKey(domain: domain, selector: selector,
                       privateKey: dir.appendingPathComponent("\(selector).private"), publicKeyRecord: record)
    }

    /// The opendkim.conf proved behind Postfix. Syslog off (opendkim logs nowhere else),
    /// Background no (with -f: foreground), RequireSafeKeys no (the key lives under /tmp, which
    /// opendkim otherwise refuses: "/tmp can be read or written by other users"),
    /// TestPublicKeys: the file of "name TXT" lines used instead of DNS when verifying.
    func opendkimConf(mode: OpenDKIMMode, port: Int, pidFile: URL, key: DKIMKey, testKeys: URL,
                      internalHosts: [String], authservID: String) -> String {
        """
        Syslog                  no
        Background              no
        Mode                    \(mode.rawValue)
        Socket                  inet:\(port)@127.0.0.1
        PidFile                 \(pidFile.path)
        Domain                  \(key.domain)
        Selector                \(key.selector)
        KeyFile                 \(key.privateKey.path)
        InternalHosts           \(internalHosts.joined(separator: ","))
        AuthservID              \(authservID)
        Canonicalization        relaxed/simple
        TestPublicKeys          \(testKeys.path)
        RequireSafeKeys         no
        SoftwareHeader          yes
        AlwaysAddARHeader       yes

        """
    }

    /// Starts opendkim -f -x CONF on a free port. `key`: signs with it (made with
    /// opendkim-genkey for DOMAIN/SELECTOR when nil); verification trusts it and `trustedKeys`
    /// (TestPublicKeys, no DNS). `internalHosts`: clients whose mail is signed; empty means none
    /// (TEST-NET-1 192.0.2.1 is listed, since an absent InternalHosts means 127.0.0.1).
    func startOpenDKIM(mode: OpenDKIMMode = .signAndVerify, domain: String = "sign.test", selector: String = "pst",
                       key: DKIMKey? = nil, trustedKeys: [DKIMKey] = [], internalHosts: [String] = ["127.0.0.1"],
                       authservID: String = "dkim.postern.test", name: String = "opendkim") throws -> OpenDKIMEngine {
        let opendkim = try requireTool("opendkim")
        let dir = try makeDirectory(name)
        let key = try key ?? makeDKIMKey(domain: domain, selector: selector, directory: dir.appendingPathComponent("keys"))
        let testKeys = dir.appendingPathComponent("test-public-keys")
        try MilterEngineSupport.write(([key] + trustedKeys).map { "\($0.recordName) \($0.publicKeyRecord)\n" }.joined(),
                                      to: testKeys)
        let port = try Net.freePort()
        let conf = dir.appendingPathComponent("opendkim.conf")
        try MilterEngineSupport.write(opendkimConf(mode: mode, port: port, pidFile: dir.appendingPathComponent("opendkim.pid"),
                                                   key: key, testKeys: testKeys,
                                                   internalHosts: internalHosts.isEmpty ? ["192.0.2.1"] : internalHosts,
                                                   authservID: authservID), to: conf)
        let process = try launch(name, opendkim, ["-f", "-x", conf.path])
        stopLibmilterEngine(process, port: port)
        try process.waitForPort(port, timeout: 20)
        return OpenDKIMEngine(port: port, mode: mode, key: key, trustedKeys: trustedKeys, authservID: authservID,
                              directory: dir, configFile: conf, process: process, test: self)
    }
}

// MARK: - OpenDMARC 1.4

/// opendmarc -f after OpenDKIM (smtpd_milters = opendkim, opendmarc): it reads the
/// Authentication-Results whose authserv-id is in TrustedAuthservIDs (OpenDKIM's AuthservID) and
/// the DMARC record of the From domain from the stub DNS. Seen through Postfix:
/// - DKIM pass, aligned, p=reject: `Authentication-Results: dmarc.postern.test; dmarc=pass
///   (p=reject dis=none) header.from=sign.test`, plus `DMARC-Filter: OpenDMARC Filter v1.4.2
///   <j macro> <i macro>` (SoftwareHeader).
/// - DKIM fail or none under p=reject, RejectFailures true: `550 5.7.1 rejected by DMARC policy
///   for sign.test` (SMFIR_REPLYCODE at end of message).
/// - No DMARC record: `dmarc=none (p=none dis=none) header.from=norecord.test`.
/// SPF: not checked (SPFSelfValidate false); only SPF results already in the header would count.
/// IgnoreHosts is set to a file with 192.0.2.1: by default OpenDMARC ignores mail from 127.0.0.1.
/// Negotiation: version 6; actions SMFIF_ADDHDRS SMFIF_QUARANTINE; protocol SMFIP_NOBODY
/// SMFIP_NOUNKNOWN SMFIP_NODATA SMFIP_SKIP (answers every event). Macros: j (default authserv-id,
/// set here), i (job ID), {auth_authen} (IgnoreAuthenticatedClients).
/// Start: about 20 ms; about 5 MB RSS.
struct OpenDMARCEngine {
    let port: Int
    let authservID: String
    let trustedAuthservIDs: [String]
    let directory: URL
    let process: ManagedProcess
    let dns: StubDNS

    var milterAddress: String { "inet:127.0.0.1:\(port)" }
    static func rejectReply(domain: String) -> String { "550 5.7.1 rejected by DMARC policy for \(domain)" }
}

extension IntegrationTestCase {
    func opendmarcConf(port: Int, pidFile: URL, ignoreHosts: URL, authservID: String,
                       trustedAuthservIDs: [String], rejectFailures: Bool) -> String {
        """
        Socket                  inet:\(port)@127.0.0.1
        PidFile                 \(pidFile.path)
        Syslog                  false
        AuthservID              \(authservID)
        TrustedAuthservIDs      \(trustedAuthservIDs.joined(separator: ","))
        IgnoreHosts             \(ignoreHosts.path)
        IgnoreAuthenticatedClients false
        RejectFailures          \(rejectFailures)
        SPFSelfValidate         false
        SPFIgnoreResults        false
        FailureReports          false
        SoftwareHeader          true
        RequiredHeaders         false
        DNSTimeout              2

        """
    }

    /// Starts opendmarc -f -c CONF on a free port, in a private mount namespace whose resolver
    /// is a stub DNS holding `_dmarc.DOMAIN TXT RECORD` for each of `dmarcRecords` (so it needs
    /// root: it would otherwise query the machine's resolver). Returns once it listens.
    func startOpenDMARC(trustedAuthservIDs: [String] = ["dkim.postern.test"], authservID: String = "dmarc.postern.test",
                        dmarcRecords: [String: String] = ["sign.test": "v=DMARC1; p=reject"],
                        rejectFailures: Bool = true, name: String = "opendmarc") throws -> OpenDMARCEngine {
        let opendmarc = try requireTool("opendmarc")
        let dns = try startStubDNS(dmarcRecords.sorted { $0.key < $1.key }.map { ("_dmarc.\($0.key)", $0.value) },
                                   name: name + "-dns")
        let dir = try makeDirectory(name)
        let ignoreHosts = dir.appendingPathComponent("ignore-hosts")
        try MilterEngineSupport.write("192.0.2.1\n", to: ignoreHosts)
        let port = try Net.freePort()
        let conf = dir.appendingPathComponent("opendmarc.conf")
        try MilterEngineSupport.write(opendmarcConf(port: port, pidFile: dir.appendingPathComponent("opendmarc.pid"),
                                                    ignoreHosts: ignoreHosts, authservID: authservID,
                                                    trustedAuthservIDs: trustedAuthservIDs,
                                                    rejectFailures: rejectFailures), to: conf)
        let (exe, args) = try dns.namespaced(opendmarc, ["-f", "-c", conf.path])
        let process = try launch(name, exe, args)
        stopLibmilterEngine(process, port: port)
        try process.waitForPort(port, timeout: 20)
        return OpenDMARCEngine(port: port, authservID: authservID, trustedAuthservIDs: trustedAuthservIDs,
                               directory: dir, process: process, dns: dns)
    }
}

// MARK: - clamd and clamav-milter 1.4

enum ClamavOnInfected: String {
    case reject = "Reject"
    case quarantine = "Quarantine"
    case blackhole = "Blackhole"
    case accept = "Accept"
}

/// clamd in the foreground on a database of two EICAR signatures (an .ndb body pattern, which
/// matches EICAR anywhere in the message, and an .hdb hash of the 68-octet file).
/// Start: about 0.1 s to listening, about 16 MB RSS (the full Debian database takes far longer
/// and about 1 GB, and there is none here: no freshclam).
struct ClamdEngine {
    let port: Int
    let directory: URL
    let process: ManagedProcess

    /// The EICAR test file (68 octets).
    static let eicar = #"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"#
    /// ClamAV appends ".UNOFFICIAL" to signatures not from its own databases.
    static let signatureName = "Postern.Test.EICAR.UNOFFICIAL"
}

/// clamav-milter in the foreground, asking clamd over TCP. Seen through Postfix:
/// - Clean: accepted with `X-Virus-Scanned: clamav-milter 1.4.6 at clamav.postern.test` and
///   `X-Virus-Status: Clean` (AddHeader Replace, SMFIR_ADDHEADER).
/// - EICAR (in the body or as an attachment), OnInfected Reject: `550 5.7.1 Rejected: virus
///   Postern.Test.EICAR.UNOFFICIAL found by clamav-milter` (our RejectMsg; without one Postfix
///   says `550 5.7.1 Command rejected`).
/// - EICAR, OnInfected Quarantine: accepted (250), SMFIR_QUARANTINE with the reason
///   "Postern.Test.EICAR.UNOFFICIAL"; Postfix put it in the hold queue with
///   `X-Virus-Status: Infected (Postern.Test.EICAR.UNOFFICIAL)`.
/// Negotiation: version 6; actions SMFIF_ADDHDRS SMFIF_CHGHDRS SMFIF_QUARANTINE; protocol
/// SMFIP_NOHELO SMFIP_NOEOH SMFIP_NOUNKNOWN SMFIP_NODATA. It probes clamd when it starts, so
/// clamd must be up first. Start: about 0.1 s; about 8 MB RSS.
struct ClamavMilterEngine {
    let port: Int
    let onInfected: ClamavOnInfected
    let clamd: ClamdEngine
    let directory: URL
    let process: ManagedProcess

    var milterAddress: String { "inet:127.0.0.1:\(port)" }
    static let rejectReply = "550 5.7.1 Rejected: virus \(ClamdEngine.signatureName) found by clamav-milter"
    static let reportHostname = "clamav.postern.test"
}

extension IntegrationTestCase {
    func clamdConf(port: Int, directory: URL) -> String {
        """
        Foreground yes
        LogFile \(directory.appendingPathComponent("clamd.log").path)
        LogTime yes
        LogVerbose yes
        PidFile \(directory.appendingPathComponent("clamd.pid").path)
        DatabaseDirectory \(directory.appendingPathComponent("db").path)
        TemporaryDirectory \(directory.appendingPathComponent("tmp").path)
        TCPSocket \(port)
        TCPAddr 127.0.0.1
        SelfCheck 0

        """
    }

    func clamavMilterConf(port: Int, clamdPort: Int, onInfected: ClamavOnInfected, directory: URL) -> String {
        """
        Foreground yes
        MilterSocket inet:\(port)@127.0.0.1
        ClamdSocket tcp:127.0.0.1:\(clamdPort)
        PidFile \(directory.appendingPathComponent("clamav-milter.pid").path)
        TemporaryDirectory \(directory.appendingPathComponent("tmp").path)
        LogFile \(directory.appendingPathComponent("clamav-milter.log").path)
        LogTime yes
        LogInfected Full
        LogClean Full
        LogVerbose yes
        OnClean Accept
        OnInfected \(onInfected.rawValue)
        OnFail Defer
        RejectMsg Rejected: virus %v found by clamav-milter
        AddHeader Replace
        ReportHostname \(ClamavMilterEngine.reportHostname)
        MaxFileSize 25M

        """
    }

    /// Starts clamd (Foreground yes) on a free port with the EICAR-only database; returns once
    /// it answers PING with PONG.
    func startClamd(name: String = "clamd") throws -> ClamdEngine {
        let clamd = try requireTool("clamd")
        let dir = try makeDirectory(name)
        let db = dir.appendingPathComponent("db")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("tmp"), withIntermediateDirectories: true)
        let hex = ClamdEngine.eicar.utf8.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        try MilterEngineSupport.write("Postern.Test.EICAR:0:*:\(hex)\n", to: db.appendingPathComponent("postern-test.ndb"))
        // md5 of the 68 octets (no md5 in Foundation on Linux: the well-known EICAR digest).
        try MilterEngineSupport.write("44d88612fea8a8f36de82e1278abb02f:68:Postern.Test.EICAR.HDB\n",
                                      to: db.appendingPathComponent("postern-test.hdb"))
        let port = try Net.freePort()
        let conf = dir.appendingPathComponent("clamd.conf")
        try MilterEngineSupport.write(clamdConf(port: port, directory: dir), to: conf)
        let process = try launch(name, clamd, ["-c", conf.path])
        try process.waitForPort(port, timeout: 60)
        let pong = waitUntil(timeout: 30, interval: 0.1) {
            (try? MilterEngineSupport.exchange(port: port, "nPING\n")) == "PONG"
        }
        guard pong else { throw HarnessError.timeout("clamd did not answer PING\n\(process.tail())") }
        return ClamdEngine(port: port, directory: dir, process: process)
    }

    /// Starts clamav-milter (Foreground yes) on a free port, with `clamd` or a new clamd.
    func startClamavMilter(onInfected: ClamavOnInfected = .reject, clamd: ClamdEngine? = nil,
                           name: String = "clamav-milter") throws -> ClamavMilterEngine {
        let milter = try requireTool("clamav-milter")
        let clamd = try clamd ?? startClamd()
        let dir = try makeDirectory(name)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("tmp"), withIntermediateDirectories: true)
        let port = try Net.freePort()
        let conf = dir.appendingPathComponent("clamav-milter.conf")
        try MilterEngineSupport.write(clamavMilterConf(port: port, clamdPort: clamd.port, onInfected: onInfected,
                                                       directory: dir), to: conf)
        let process = try launch(name, milter, ["-c", conf.path])
        stopLibmilterEngine(process, port: port)
        try process.waitForPort(port, timeout: 30)
        return ClamavMilterEngine(port: port, onInfected: onInfected, clamd: clamd, directory: dir, process: process)
    }
}
