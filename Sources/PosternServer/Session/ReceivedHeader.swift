import Foundation
import NIOCore
import SMTPCore

/// The trace header Postern prepends (RFC 5321 §4.4, protocol names from RFC 3848 / 6531).
struct ReceivedHeader {
    var heloName: String?
    var clientAddress: IPAddress
    var hostname: String
    var extended: Bool
    var tlsVersion: String?
    var utf8: Bool
    var transactionID: String
    var recipients: [ForwardPath]
    var date: Date

    /// `ESMTP`, `ESMTPS`, `UTF8SMTPS`… (RFC 3848, RFC 6531 §3.7.3).
    var protocolName: String {
        guard extended else { return "SMTP" }
        return (utf8 ? "UTF8SMTP" : "ESMTP") + (tlsVersion != nil ? "S" : "")
    }

    func encoded() -> ByteBuffer {
        let address = clientAddress.isIPv6 ? "IPv6:\(clientAddress)" : "\(clientAddress)"
        var text = "Received: from \(Self.sanitise(heloName ?? "unknown")) (unknown [\(address)])\r\n"
        text += "\tby \(hostname) (Postern) with \(protocolName) id \(transactionID)"
        if let tlsVersion { text += "\r\n\t(using \(tlsVersion))" }
        // Naming the recipient only for single-recipient mail keeps lists private.
        if recipients.count == 1, let recipient = recipients.first {
            text += "\r\n\tfor \(recipient)"
        }
        text += ";\r\n\t\(Self.rfc5322Date(date))\r\n"
        var buffer = ByteBuffer()
        buffer.writeString(text)
        return buffer
    }

    /// HELO text is client-supplied: keep it printable and free of comment syntax.
    static func sanitise(_ text: String) -> String {
        String(text.unicodeScalars.prefix(255).map { scalar in
            scalar.value < 33 || scalar.value == 127 || scalar == "(" || scalar == ")" ? "_" : Character(scalar)
        })
    }

    static func rfc5322Date(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss '+0000'"
        return formatter.string(from: date)
    }
}

/// Transaction and session ids: 12 characters of a base-32 alphabet with no look-alikes.
enum Identifier {
    private static let alphabet = Array("0123456789BCDFGHJKLMNPQRSTVWXYZ".utf8)

    static func make() -> String {
        var generator = SystemRandomNumberGenerator()
        var value = generator.next() as UInt64
        var characters: [UInt8] = []
        for _ in 0..<12 {
            characters.append(alphabet[Int(value % UInt64(alphabet.count))])
            value /= UInt64(alphabet.count)
        }
        return String(decoding: characters, as: UTF8.self)
    }
}
