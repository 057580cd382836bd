/// SHA-256 (FIPS 180-4), for pseudonymising addresses and subjects in the decision log
/// without a cryptography dependency. Not for anything security-critical beyond that.
public enum SHA256 {
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    /// The 32-byte digest of `message`.
    public static func digest(_ message: [UInt8]) -> [UInt8] {
        var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
        var data = message
        let bitLength = UInt64(message.count) * 8
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
        var w = [UInt32](repeating: 0, count: 64)
        for chunk in stride(from: 0, to: data.count, by: 64) {
            for i in 0..<16 {
                w[i] = (0..<4).reduce(UInt32(0)) { ($0 << 8) | UInt32(data[chunk + i * 4 + $1]) }
            }
            for i in 16..<64 {
                let s0 = w[i - 15].rotated(7) ^ w[i - 15].rotated(18) ^ (w[i - 15] >> 3)
                let s1 = w[i - 2].rotated(17) ^ w[i - 2].rotated(19) ^ (w[i - 2] >> 10)
                w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
            }
            var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
            for i in 0..<64 {
                let s1 = e.rotated(6) ^ e.rotated(11) ^ e.rotated(25)
                let choice = (e & f) ^ (~e & g)
                let t1 = hh &+ s1 &+ choice &+ k[i] &+ w[i]
                let s0 = a.rotated(2) ^ a.rotated(13) ^ a.rotated(22)
                let majority = (a & b) ^ (a & c) ^ (b & c)
                let t2 = s0 &+ majority
                (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
            }
            for (index, value) in [a, b, c, d, e, f, g, hh].enumerated() { h[index] = h[index] &+ value }
        }
        return h.flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> UInt32(24 - 8 * $0)) } }
    }

    public static func hex(_ message: [UInt8]) -> String {
        digest(message).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

private extension UInt32 {
    func rotated(_ count: UInt32) -> UInt32 { (self >> count) | (self << (32 - count)) }
}

/// What the decision log keeps of personal data (GDPR: mail logs are personal data).
public struct DecisionLogPrivacy: Hashable, Sendable {
    public enum Treatment: String, Hashable, Sendable {
        /// Kept as is.
        case on
        /// Replaced by a salted SHA-256 prefix: the same value gives the same pseudonym, so
        /// records can still be correlated, but the value is not written.
        case hashed
        /// Left out.
        case off
    }

    /// Local parts of `mail_from` and `rcpts[].address` (the domain is always kept).
    public var localParts: Treatment = .on
    /// The message's Subject.
    public var subject: Treatment = .on
    /// Mixed into hashes so that they cannot be looked up in a table of common values.
    public var salt: String = ""

    public init(localParts: Treatment = .on, subject: Treatment = .on, salt: String = "") {
        self.localParts = localParts
        self.subject = subject
        self.salt = salt
    }

    func pseudonym(_ value: String) -> String {
        "h:" + SHA256.hex(Array((salt + value).utf8)).prefix(16)
    }

    /// `local@domain` with the local part treated; `""` (the null sender) unchanged.
    func address(_ address: String) -> String {
        guard localParts != .on, !address.isEmpty else { return address }
        let at = address.lastIndex(of: "@")
        let local = at.map { String(address[..<$0]) } ?? address
        let domain = at.map { String(address[$0...]) } ?? ""
        switch localParts {
        case .on: return address
        case .hashed: return pseudonym(local.lowercased()) + domain
        case .off: return domain
        }
    }

    /// A subject as the log may keep it: itself, its pseudonym, or nil.
    public func subjectText(_ subject: String?) -> String? {
        guard let subject else { return nil }
        switch self.subject {
        case .on: return subject
        case .hashed: return pseudonym(subject)
        case .off: return nil
        }
    }

    /// `text` (a header field's value, such as `To:`) with the local part of every address in
    /// it treated as `local_parts` says: `"Ann" <ann@example.org>` becomes
    /// `"Ann" <h:…@example.org>` (hashed) or `"Ann" <@example.org>` (off). Display names and
    /// comments are left as they are.
    public func addresses(in text: String) -> String {
        guard localParts != .on, text.utf8.contains(0x40) else { return text }
        var bytes = Array(text.utf8)
        var at = bytes.count - 1
        while at > 0 {
            defer { at -= 1 }
            guard bytes[at] == 0x40 else { continue }
            var start = at
            while start > 0, Self.isLocalPartOctet(bytes[start - 1]) { start -= 1 }
            guard start < at else { continue }
            let local = String(decoding: bytes[start..<at], as: UTF8.self)
            let replacement: [UInt8] = localParts == .hashed ? Array(pseudonym(local.lowercased()).utf8) : []
            bytes.replaceSubrange(start..<at, with: replacement)
            at = start
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// RFC 5322 atext and the dot of a dot-atom: what an unquoted local part is made of.
    private static func isLocalPartOctet(_ octet: UInt8) -> Bool {
        switch octet {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x80...0xFF: return true
        default: return Array("!#$%&'*+-/=?^_`{|}~.".utf8).contains(octet)
        }
    }

    /// The record as it may be written.
    public func apply(to record: DecisionRecord) -> DecisionRecord {
        guard localParts != .on || subject != .on else { return record }
        var copy = record
        copy.mailFrom = record.mailFrom.map(address)
        copy.recipients = record.recipients.map { DecisionRecord.Recipient(address: address($0.address), reply: $0.reply) }
        copy.subject = subjectText(record.subject)
        return copy
    }
}
