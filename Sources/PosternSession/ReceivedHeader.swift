import NIOCore
import PosternLog
import SMTPCore
import Synchronization

/// The trace header Postern prepends (RFC 5321 §4.4, protocol names from RFC 3848 / 6531).
struct ReceivedHeader {
    var heloName: String?
    var clientAddress: IPAddress
    /// The verified (forward-confirmed) name; "unknown" without one, as Postfix writes.
    var clientName: String? = nil
    var hostname: String
    var extended: Bool
    var tlsVersion: String?
    var utf8: Bool
    var transactionID: String
    var recipients: [ForwardPath]
    /// When the message was received, in seconds since the Unix epoch.
    var date: Int64

    /// `ESMTP`, `ESMTPS`, `UTF8SMTPS`… (RFC 3848, RFC 6531 §3.7.3).
    var protocolName: String {
        guard extended else { return "SMTP" }
        return (utf8 ? "UTF8SMTP" : "ESMTP") + (tlsVersion != nil ? "S" : "")
    }

    func encoded() -> ByteBuffer {
        let address = clientAddress.isIPv6 ? "IPv6:\(clientAddress)" : "\(clientAddress)"
        var text = "Received: from \(Self.sanitise(heloName ?? "unknown")) (\(Self.sanitise(clientName ?? "unknown")) [\(address)])\r\n"
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

    /// `Mon, 23 Nov 2026 19:11:38 +0000` (RFC 5322 §3.3), in UTC, without a DateFormatter
    /// (building one per message costs more than the rest of the header).
    static func rfc5322Date(_ seconds: Int64) -> String {
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let secondOfDay = Int(seconds - days * 86400)
        let (year, month, day) = CivilDate.from(daysSinceEpoch: days)
        let weekdays = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let weekday = weekdays[Int(((days % 7) + 7) % 7)]
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(weekday), \(two(day)) \(months[month - 1]) \(year) \(two(secondOfDay / 3600)):\(two(secondOfDay / 60 % 60)):\(two(secondOfDay % 60)) +0000"
    }
}

/// Transaction and session ids: 12 characters of a base-32 alphabet with no look-alikes.
public enum Identifier {
    private static let alphabet = Array("0123456789BCDFGHJKLMNPQRSTVWXYZ".utf8)
    /// SplitMix64 state, seeded once from the system's generator: ids must be unique and
    /// unguessable in practice, not cryptographic, and a getrandom(2) per id cost a
    /// system call for every session and transaction.
    private static let state = Mutex<UInt64>({
        var system = SystemRandomNumberGenerator()
        return system.next()
    }())

    private static func next() -> UInt64 {
        var z = state.withLock { state -> UInt64 in
            state &+= 0x9E37_79B9_7F4A_7C15
            return state
        }
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public static func make() -> String {
        var value = next()
        var characters: [UInt8] = []
        for _ in 0..<12 {
            characters.append(alphabet[Int(value % UInt64(alphabet.count))])
            value /= UInt64(alphabet.count)
        }
        return String(decoding: characters, as: UTF8.self)
    }
}
