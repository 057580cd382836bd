import Foundation

/// A DNSSEC-signed zone served by a real authoritative server: the zone is written, signed
/// with a fresh ECDSA P-256 key (ldns-keygen, ldns-signzone) and served by NSD on 127.0.0.1
/// and a free port. `trustAnchor` is the key's DNSKEY record, the file `dns.trust_anchor`
/// names. `tampered` records are changed in the signed zone after signing (their signatures
/// no longer match): a validating resolver must call them bogus.
struct SignedZone {
    let zone: String
    let port: Int
    let trustAnchor: URL
}

extension IntegrationTestCase {
    /// `records`: "NAME TYPE VALUE" lines relative to `zone` (e.g. "40.2.0.192 A 127.0.0.2").
    /// `tampered`: the same form; each replaces the value of its name and type after signing.
    func startSignedZone(_ zone: String, records: [String], tampered: [String] = []) throws -> SignedZone {
        let nsd = try requireTool("nsd"), keygen = try requireTool("ldns-keygen"), signer = try requireTool("ldns-signzone")
        let dir = workDir.appendingPathComponent("nsd-\(zone)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let zoneFile = dir.appendingPathComponent("\(zone).zone")
        try """
            $ORIGIN \(zone).
            $TTL 300
            @ IN SOA ns.\(zone). hostmaster.\(zone). 1 3600 600 86400 300
            @ IN NS ns.\(zone).
            ns IN A 127.0.0.1
            \(records.map { record in
                let parts = record.split(separator: " ", maxSplits: 2)
                return parts.count == 3 ? "\(parts[0]) IN \(parts[1]) \(parts[2])" : record
            }.joined(separator: "\n"))

            """.write(to: zoneFile, atomically: true, encoding: .utf8)
        let key = try Command.run(keygen, ["-a", "ECDSAP256SHA256", "-k", zone], currentDirectory: dir, timeout: 30)
        let keyName = key.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard key.status == 0, !keyName.isEmpty else { throw HarnessError.failed("ldns-keygen failed: \(key.description)") }
        let signed = try Command.run(signer, ["-n", "-f", "\(zoneFile.path).signed", zoneFile.path, keyName], currentDirectory: dir, timeout: 30)
        guard signed.status == 0 else { throw HarnessError.failed("ldns-signzone failed: \(signed.description)") }
        let signedFile = URL(fileURLWithPath: "\(zoneFile.path).signed")
        if !tampered.isEmpty {
            var lines = try String(contentsOf: signedFile, encoding: .utf8).components(separatedBy: "\n")
            for change in tampered {
                let parts = change.split(separator: " ").map(String.init)
                guard parts.count == 3 else { throw HarnessError.failed("a tampered record is NAME TYPE VALUE: \(change)") }
                let owner = "\(parts[0]).\(zone)."
                guard let index = lines.firstIndex(where: { line in
                    let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).map(String.init)
                    return fields.count >= 5 && fields[0] == owner && fields[3] == parts[1]
                }) else { throw HarnessError.failed("no \(parts[1]) record for \(owner) to tamper with") }
                var fields = lines[index].split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
                fields[fields.count - 1] = parts[2]
                lines[index] = fields.joined(separator: "\t")
            }
            try lines.joined(separator: "\n").write(to: signedFile, atomically: true, encoding: .utf8)
        }
        let port = try Net.freePort()
        let config = dir.appendingPathComponent("nsd.conf")
        try """
            server:
                ip-address: 127.0.0.1@\(port)
                server-count: 1
                username: ""
                chroot: ""
                zonesdir: "\(dir.path)"
                database: ""
                zonelistfile: "\(dir.path)/zone.list"
                xfrdfile: "\(dir.path)/xfrd.state"
                pidfile: "\(dir.path)/nsd.pid"
                verbosity: 1
            remote-control:
                control-enable: no
            zone:
                name: \(zone)
                zonefile: \(signedFile.lastPathComponent)

            """.write(to: config, atomically: true, encoding: .utf8)
        let process = try launch("nsd-\(zone)", nsd, ["-d", "-c", config.path])
        try process.waitForOutput(containing: "nsd started", timeout: 15)
        return SignedZone(zone: zone, port: port, trustAnchor: dir.appendingPathComponent("\(keyName).key"))
    }
}
