/// Parsing of paths and mailboxes. Works on UTF-8 bytes; non-ASCII is accepted where
/// RFC 6531 allows it (atext, sub-domains, quoted strings) and must be valid UTF-8.
public enum PathGrammar {
    /// RFC 5321 §4.5.3.1: local-part 64, domain 255, path 256 octets.
    static let maximumLocalPartLength = 64
    static let maximumDomainLength = 255
    static let maximumPathLength = 256

    struct Failure: Error { var reason: String }

    /// `Path = "<" [ A-d-l ":" ] Mailbox ">"`. The source route (A-d-l) is accepted and
    /// ignored, as RFC 5321 §4.1.1.3 and Appendix C require of relays.
    static func parsePath(_ bytes: ArraySlice<UInt8>) throws(Failure) -> Mailbox {
        guard bytes.count >= 2, bytes.first == UInt8(ascii: "<"), bytes.last == UInt8(ascii: ">") else {
            throw Failure(reason: "path must be enclosed in <>")
        }
        // RFC 5321 §4.5.3.1.3: 256 octets including the punctuation.
        guard bytes.count <= maximumPathLength else { throw Failure(reason: "path longer than \(maximumPathLength) octets") }
        var inner = bytes.dropFirst().dropLast()
        if inner.first == UInt8(ascii: "@") {
            // A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain
            guard let colon = inner.firstIndex(of: UInt8(ascii: ":")) else { throw Failure(reason: "source route without ':'") }
            for hop in inner[inner.startIndex..<colon].split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
                guard hop.first == UInt8(ascii: "@") else { throw Failure(reason: "bad source route") }
                try validateDomain(hop.dropFirst())
            }
            inner = inner[(colon + 1)...]
        }
        return try parseMailbox(inner)
    }

    /// `Mailbox = Local-part "@" ( Domain / address-literal )`.
    static func parseMailbox(_ bytes: ArraySlice<UInt8>) throws(Failure) -> Mailbox {
        guard let first = bytes.first else { throw Failure(reason: "empty address") }
        var index = bytes.startIndex
        if first == UInt8(ascii: "\"") {
            // Quoted-string = DQUOTE *QcontentSMTP DQUOTE
            index += 1
            var closed = false
            while index < bytes.endIndex {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\\") {
                    guard index + 1 < bytes.endIndex, (32...126).contains(bytes[index + 1]) else {
                        throw Failure(reason: "bad quoted-pair in local part")
                    }
                    index += 2
                    continue
                }
                if byte == UInt8(ascii: "\"") { closed = true; index += 1; break }
                guard byte == 32 || byte == 33 || (35...91).contains(byte) || (93...126).contains(byte) || byte >= 0x80 else {
                    throw Failure(reason: "bad character in quoted local part")
                }
                index += 1
            }
            guard closed else { throw Failure(reason: "unterminated quoted local part") }
        } else {
            // Dot-string = Atom *("." Atom)
            var atomLength = 0
            while index < bytes.endIndex, bytes[index] != UInt8(ascii: "@") {
                let byte = bytes[index]
                if byte == UInt8(ascii: ".") {
                    guard atomLength > 0 else { throw Failure(reason: "empty atom in local part") }
                    atomLength = 0
                } else {
                    guard isAtext(byte) else { throw Failure(reason: "bad character in local part") }
                    atomLength += 1
                }
                index += 1
            }
            guard atomLength > 0 else { throw Failure(reason: "empty atom in local part") }
        }
        let local = bytes[bytes.startIndex..<index]
        guard index < bytes.endIndex, bytes[index] == UInt8(ascii: "@") else { throw Failure(reason: "address has no domain") }
        guard local.count <= maximumLocalPartLength else { throw Failure(reason: "local part longer than \(maximumLocalPartLength) octets") }
        let domain = bytes[(index + 1)...]
        try validateDomain(domain, allowLiteral: true)
        guard let localText = String(validating: local, as: UTF8.self),
              let domainText = String(validating: domain, as: UTF8.self) else {
            throw Failure(reason: "address is not valid UTF-8")
        }
        return Mailbox(localPart: localText, domain: domainText)
    }

    /// `Domain = sub-domain *("." sub-domain)`, or an address literal when allowed.
    static func validateDomain(_ bytes: ArraySlice<UInt8>, allowLiteral: Bool = false) throws(Failure) {
        guard !bytes.isEmpty else { throw Failure(reason: "empty domain") }
        guard bytes.count <= maximumDomainLength else { throw Failure(reason: "domain longer than \(maximumDomainLength) octets") }
        if bytes.first == UInt8(ascii: "[") {
            guard allowLiteral, bytes.last == UInt8(ascii: "]"),
                  let text = String(validating: bytes.dropFirst().dropLast(), as: UTF8.self),
                  isValidAddressLiteral(text) else { throw Failure(reason: "bad address literal") }
            return
        }
        for label in bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            // sub-domain = Let-dig [Ldh-str]; U-labels (RFC 6531) carry UTF-8.
            guard let first = label.first, let last = label.last else { throw Failure(reason: "empty label in domain") }
            guard label.count <= 63 || label.contains(where: { $0 >= 0x80 }) else { throw Failure(reason: "domain label longer than 63 octets") }
            guard first != UInt8(ascii: "-"), last != UInt8(ascii: "-") else { throw Failure(reason: "domain label starts or ends with '-'") }
            for byte in label where !(isLetDig(byte) || byte == UInt8(ascii: "-") || byte >= 0x80) {
                throw Failure(reason: "bad character in domain")
            }
        }
    }

    /// IPv4-address-literal, `IPv6:` literal or General-address-literal (RFC 5321 §4.1.3).
    static func isValidAddressLiteral(_ text: String) -> Bool {
        if text.lowercased().hasPrefix("ipv6:") { return IPAddress(String(text.dropFirst(5))).map { $0.isIPv6 } ?? false }
        if let address = IPAddress(text) { return !address.isIPv6 }
        // General-address-literal = Standardized-tag ":" 1*dcontent; Standardized-tag = Ldh-str
        guard let colon = text.firstIndex(of: ":"), colon != text.startIndex else { return false }
        let tag = text[..<colon].utf8
        guard tag.allSatisfy({ isLetDig($0) || $0 == UInt8(ascii: "-") }), tag.last != UInt8(ascii: "-") else { return false }
        let tail = text[text.index(after: colon)...]
        return !tail.isEmpty && tail.utf8.allSatisfy { (33...90).contains($0) || (94...126).contains($0) }
    }

    /// Let-dig (RFC 5321 §4.1.2): an ASCII letter or digit.
    public static func isLetDig(_ byte: UInt8) -> Bool {
        (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte)
    }

    /// atext (RFC 5322 §3.2.3), extended with UTF-8 by RFC 6531 §3.3.
    static func isAtext(_ byte: UInt8) -> Bool {
        if isLetDig(byte) || byte >= 0x80 { return true }
        switch byte {
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "/"),
             UInt8(ascii: "="), UInt8(ascii: "?"), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"),
             UInt8(ascii: "{"), UInt8(ascii: "|"), UInt8(ascii: "}"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }
}
