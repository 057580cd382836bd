import NIOCore
import SMTPCore

/// The Sendmail milter protocol, version 6, as the MTA side speaks it (Postfix's milter8.c,
/// libmilter's mfdef.h): packet codes, negotiation flags, and the limits of the wire. No I/O.
public enum Milter {
    /// The protocol version Postern offers.
    public static let version: UInt32 = 6
    /// The most data one packet may carry to a filter (libmilter's MILTER_MAX_DATA_SIZE):
    /// body chunks and single headers are kept at or below it.
    public static let maximumChunk = 65_535
    /// The most data Postern accepts in one packet from a filter: a body replacement chunk
    /// or a header can be that large, plus room for the header index and names.
    public static let maximumResponse = 1 << 20

    /// MTA → filter (`SMFIC_*`).
    public enum Command: UInt8, Sendable, CaseIterable {
        case optionNegotiation = 0x4F  // O
        case macro = 0x44  // D
        case connect = 0x43  // C
        case helo = 0x48  // H
        case mail = 0x4D  // M
        case recipient = 0x52  // R
        case data = 0x54  // T
        case header = 0x4C  // L
        case endOfHeaders = 0x4E  // N
        case body = 0x42  // B
        case endOfMessage = 0x45  // E
        case unknown = 0x55  // U
        case abort = 0x41  // A
        case quit = 0x51  // Q
    }

    /// What the MTA lets a filter do at end of message (`SMFIF_*`).
    public struct Actions: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let addHeaders = Actions(rawValue: 0x01)
        public static let changeBody = Actions(rawValue: 0x02)
        public static let addRecipients = Actions(rawValue: 0x04)
        public static let deleteRecipients = Actions(rawValue: 0x08)
        public static let changeHeaders = Actions(rawValue: 0x10)
        public static let quarantine = Actions(rawValue: 0x20)
        public static let changeFrom = Actions(rawValue: 0x40)
        public static let addRecipientsWithParameters = Actions(rawValue: 0x80)
        public static let setMacroLists = Actions(rawValue: 0x100)
        /// Everything version 6 defines: what Postfix offers (0x1FF).
        public static let all = Actions(rawValue: 0x1FF)
    }

    /// Which events the filter wants, and which it answers (`SMFIP_*`).
    public struct ProtocolFlags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let noConnect = ProtocolFlags(rawValue: 0x1)
        public static let noHelo = ProtocolFlags(rawValue: 0x2)
        public static let noMail = ProtocolFlags(rawValue: 0x4)
        public static let noRecipient = ProtocolFlags(rawValue: 0x8)
        public static let noBody = ProtocolFlags(rawValue: 0x10)
        public static let noHeaders = ProtocolFlags(rawValue: 0x20)
        public static let noEndOfHeaders = ProtocolFlags(rawValue: 0x40)
        public static let noHeaderReply = ProtocolFlags(rawValue: 0x80)
        public static let noUnknown = ProtocolFlags(rawValue: 0x100)
        public static let noData = ProtocolFlags(rawValue: 0x200)
        /// The MTA understands SMFIR_SKIP.
        public static let skip = ProtocolFlags(rawValue: 0x400)
        /// Send rejected recipients too.
        public static let rejectedRecipients = ProtocolFlags(rawValue: 0x800)
        public static let noConnectReply = ProtocolFlags(rawValue: 0x1000)
        public static let noHeloReply = ProtocolFlags(rawValue: 0x2000)
        public static let noMailReply = ProtocolFlags(rawValue: 0x4000)
        public static let noRecipientReply = ProtocolFlags(rawValue: 0x8000)
        public static let noDataReply = ProtocolFlags(rawValue: 0x10000)
        public static let noUnknownReply = ProtocolFlags(rawValue: 0x20000)
        public static let noEndOfHeadersReply = ProtocolFlags(rawValue: 0x40000)
        public static let noBodyReply = ProtocolFlags(rawValue: 0x80000)
        /// Header values keep their leading space, both ways.
        public static let headerLeadingSpace = ProtocolFlags(rawValue: 0x100000)
        /// Every version-6 flag: what Postfix offers (0x1FFFFF).
        public static let all = ProtocolFlags(rawValue: 0x1FFFFF)

        /// The flag saying "do not wait for a reply" to `command`, if the protocol has one.
        public static func noReply(to command: Command) -> ProtocolFlags? {
            switch command {
            case .connect: return .noConnectReply
            case .helo: return .noHeloReply
            case .mail: return .noMailReply
            case .recipient: return .noRecipientReply
            case .data: return .noDataReply
            case .unknown: return .noUnknownReply
            case .endOfHeaders: return .noEndOfHeadersReply
            case .body: return .noBodyReply
            case .header: return .noHeaderReply
            case .optionNegotiation, .macro, .endOfMessage, .abort, .quit: return nil
            }
        }

        /// The flag saying "do not send `command`", if the protocol has one.
        public static func omit(_ command: Command) -> ProtocolFlags? {
            switch command {
            case .connect: return .noConnect
            case .helo: return .noHelo
            case .mail: return .noMail
            case .recipient: return .noRecipient
            case .data: return .noData
            case .unknown: return .noUnknown
            case .endOfHeaders: return .noEndOfHeaders
            case .body: return .noBody
            case .header: return .noHeaders
            case .optionNegotiation, .macro, .endOfMessage, .abort, .quit: return nil
            }
        }
    }

    /// The stages a filter can ask macros for (`SMFIM_*`).
    public enum MacroStage: UInt32, Sendable, CaseIterable {
        case connect = 0, helo = 1, mail = 2, recipient = 3, data = 4, endOfMessage = 5, endOfHeaders = 6

        /// The command whose MACRO packet carries this stage's macros.
        public var command: Command {
            switch self {
            case .connect: return .connect
            case .helo: return .helo
            case .mail: return .mail
            case .recipient: return .recipient
            case .data: return .data
            case .endOfMessage: return .endOfMessage
            case .endOfHeaders: return .endOfHeaders
            }
        }
    }

    /// The filter's answer to option negotiation.
    public struct Negotiation: Hashable, Sendable {
        public var version: UInt32
        public var actions: Actions
        public var flags: ProtocolFlags
        /// Macro names the filter asks for, by stage (replacing the defaults for that stage).
        public var macros: [MacroStage: [String]]

        public init(version: UInt32, actions: Actions, flags: ProtocolFlags, macros: [MacroStage: [String]] = [:]) {
            self.version = version
            self.actions = actions
            self.flags = flags
            self.macros = macros
        }
    }

    /// The address family byte of CONNECT.
    public enum Family: UInt8, Sendable {
        case unknown = 0x55  // U
        case unix = 0x4C  // L
        case inet = 0x34  // 4
        case inet6 = 0x36  // 6
    }
}

/// A filter broke the protocol: what a session gets the filter's default action for.
public struct MilterProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    public var detail: String
    public init(_ detail: String) { self.detail = detail }
    public var description: String { detail }
}

// MARK: Encoding (MTA → filter)

/// Builds the packets Postern sends to a filter.
public enum MilterEncoder {
    /// One packet: length (command byte plus data, network order), command, data.
    public static func packet(_ command: Milter.Command, _ write: (inout ByteBuffer) -> Void = { _ in }) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(0))
        buffer.writeInteger(command.rawValue)
        write(&buffer)
        buffer.setInteger(UInt32(buffer.writerIndex - 4), at: 0)
        return buffer
    }

    public static func optionNegotiation(actions: Milter.Actions = .all, flags: Milter.ProtocolFlags = .all) -> ByteBuffer {
        packet(.optionNegotiation) {
            $0.writeInteger(Milter.version)
            $0.writeInteger(actions.rawValue)
            $0.writeInteger(flags.rawValue)
        }
    }

    /// The macros for `command`'s stage, in the order given; pairs with an empty value are left out
    /// (Postfix sends only macros that have a value).
    public static func macros(for command: Milter.Command, _ pairs: [(name: String, value: String)]) -> ByteBuffer {
        packet(.macro) { buffer in
            buffer.writeInteger(command.rawValue)
            for (name, value) in pairs where !value.isEmpty {
                writeString(name, into: &buffer)
                writeString(value, into: &buffer)
            }
        }
    }

    /// CONNECT: the client's name (`[address]` when it has none), family, port, address.
    public static func connect(hostname: String, family: Milter.Family, port: UInt16, address: String) -> ByteBuffer {
        packet(.connect) { buffer in
            writeString(hostname, into: &buffer)
            buffer.writeInteger(family.rawValue)
            guard family != .unknown else { return }
            buffer.writeInteger(port)
            writeString(address, into: &buffer)
        }
    }

    public static func helo(_ name: String) -> ByteBuffer {
        packet(.helo) { writeString(name, into: &$0) }
    }

    /// MAIL or RCPT: the path in angle brackets, then each ESMTP parameter.
    public static func envelope(_ command: Milter.Command, path: String, parameters: [String]) -> ByteBuffer {
        packet(command) { buffer in
            writeString(path, into: &buffer)
            for parameter in parameters { writeString(parameter, into: &buffer) }
        }
    }

    /// One header. `value` as it follows the colon, folded lines joined with LF; without
    /// `leadingSpace` (HDR_LEADSPC not negotiated) one leading space is dropped, as Postfix does.
    public static func header(name: String, value: String, leadingSpace: Bool) -> ByteBuffer {
        var value = Substring(value)
        if !leadingSpace, value.first == " " { value = value.dropFirst() }
        return packet(.header) { buffer in
            writeString(name, into: &buffer)
            writeString(String(value), into: &buffer)
        }
    }

    /// One header with its value as raw octets (8-bit header text passes unchanged); a NUL ends it early.
    public static func header(name: String, value: [UInt8]) -> ByteBuffer {
        packet(.header) { buffer in
            writeString(name, into: &buffer)
            buffer.writeBytes(value.prefix { $0 != 0 })
            buffer.writeInteger(UInt8(0))
        }
    }

    /// The body in packets of at most `Milter.maximumChunk` octets.
    public static func body(_ bytes: ByteBuffer) -> [ByteBuffer] {
        var rest = bytes
        var packets: [ByteBuffer] = []
        while rest.readableBytes > 0 {
            var chunk = rest.readSlice(length: min(rest.readableBytes, Milter.maximumChunk))!
            packets.append(packet(.body) { $0.writeBuffer(&chunk) })
        }
        return packets
    }

    public static func unknown(_ line: String) -> ByteBuffer {
        packet(.unknown) { writeString(line, into: &$0) }
    }

    /// A NUL-terminated string; a NUL inside (which SMTP does not allow anyway) ends it early.
    private static func writeString(_ string: String, into buffer: inout ByteBuffer) {
        for byte in string.utf8 {
            guard byte != 0 else { break }
            buffer.writeInteger(byte)
        }
        buffer.writeInteger(UInt8(0))
    }
}

// MARK: Decoding (filter → MTA)

/// One packet from a filter: its code and data.
public struct MilterPacket: Hashable, Sendable {
    public var code: UInt8
    public var data: ByteBuffer

    public init(code: UInt8, data: ByteBuffer) {
        self.code = code
        self.data = data
    }
}

/// Cuts a filter's byte stream into packets. A length of 0 or one past `maximumData` + 1 is a
/// protocol error (the connection cannot be trusted after it).
public struct MilterFramer: Sendable {
    private var buffer = ByteBuffer()
    public let maximumData: Int

    public init(maximumData: Int = Milter.maximumResponse) {
        self.maximumData = maximumData
    }

    public mutating func append(_ bytes: ByteBuffer) {
        var bytes = bytes
        buffer.writeBuffer(&bytes)
    }

    /// The next whole packet, or nil until more bytes arrive.
    public mutating func next() throws(MilterProtocolError) -> MilterPacket? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 1 else { throw MilterProtocolError("a packet of length 0") }
        guard length - 1 <= maximumData else {
            throw MilterProtocolError("a packet of \(length - 1) data octets (at most \(maximumData))")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let code: UInt8 = buffer.readInteger()!
        let data = buffer.readSlice(length: Int(length) - 1)!
        if buffer.readableBytes == 0 { buffer.clear() } else if buffer.readerIndex > 64 * 1024 { buffer.discardReadBytes() }
        return MilterPacket(code: code, data: data)
    }

    /// Octets received but not yet a whole packet.
    public var buffered: Int { buffer.readableBytes }
}

/// What a filter answers (`SMFIR_*`), decoded and checked.
public enum MilterResponse: Hashable, Sendable {
    case `continue`
    /// Accept: the rest of the message (or, at connect and HELO, of the session) goes unfiltered.
    case accept
    case reject
    case tempfail
    /// The filter's own 4xx/5xx reply.
    case reply(SMTPReply)
    case discard
    case quarantine(reason: String)
    /// Skip the rest of the events of this kind (body chunks).
    case skip
    /// Still working: the timeout starts again.
    case progress
    /// 421 and disconnect.
    case shutdown
    case negotiation(Milter.Negotiation)
    // Modifications, allowed only in answer to end of message.
    case addHeader(name: String, value: String)
    case insertHeader(index: UInt32, name: String, value: String)
    /// An empty value deletes the header.
    case changeHeader(index: UInt32, name: String, value: String)
    case changeSender(String, parameters: String?)
    case addRecipient(String, parameters: String?)
    case deleteRecipient(String)
    case replaceBody(ByteBuffer)

    /// A modification (SMFIR_ADDHEADER…REPLBODY): valid only before the final answer to end of message.
    public var isModification: Bool {
        switch self {
        case .addHeader, .insertHeader, .changeHeader, .changeSender, .addRecipient, .deleteRecipient, .replaceBody: return true
        default: return false
        }
    }

    /// The action flag a modification needs to have been negotiated.
    public var requiredAction: Milter.Actions? {
        switch self {
        case .addHeader: return .addHeaders
        case .insertHeader, .changeHeader: return .changeHeaders
        case .changeSender: return .changeFrom
        case .addRecipient(_, let parameters): return parameters == nil ? .addRecipients : .addRecipientsWithParameters
        case .deleteRecipient: return .deleteRecipients
        case .replaceBody: return .changeBody
        case .quarantine: return .quarantine
        default: return nil
        }
    }

    public init(_ packet: MilterPacket) throws(MilterProtocolError) {
        var data = packet.data
        func empty(_ response: MilterResponse, _ name: String) throws(MilterProtocolError) -> MilterResponse {
            guard data.readableBytes == 0 else { throw MilterProtocolError("\(name) followed by \(data.readableBytes) data octets") }
            return response
        }
        switch packet.code {
        case UInt8(ascii: "c"): self = try empty(.continue, "CONTINUE")
        case UInt8(ascii: "a"): self = try empty(.accept, "ACCEPT")
        case UInt8(ascii: "r"): self = try empty(.reject, "REJECT")
        case UInt8(ascii: "t"): self = try empty(.tempfail, "TEMPFAIL")
        case UInt8(ascii: "d"): self = try empty(.discard, "DISCARD")
        case UInt8(ascii: "s"): self = try empty(.skip, "SKIP")
        case UInt8(ascii: "p"): self = try empty(.progress, "PROGRESS")
        case UInt8(ascii: "4"): self = try empty(.shutdown, "SHUTDOWN")
        case UInt8(ascii: "y"):
            let text = try Self.string(&data, "REPLYCODE")
            self = .reply(try Self.reply(text))
        case UInt8(ascii: "q"):
            self = .quarantine(reason: try Self.string(&data, "QUARANTINE"))
        case UInt8(ascii: "O"):
            guard let version: UInt32 = data.readInteger(), let actions: UInt32 = data.readInteger(),
                  let flags: UInt32 = data.readInteger() else {
                throw MilterProtocolError("option negotiation shorter than 12 octets")
            }
            var macros: [Milter.MacroStage: [String]] = [:]
            while data.readableBytes > 0 {
                guard let stage: UInt32 = data.readInteger() else { throw MilterProtocolError("a truncated macro list") }
                let list = try Self.string(&data, "a macro list")
                // An unknown stage is ignored, as Postfix does.
                if let known = Milter.MacroStage(rawValue: stage) {
                    macros[known] = list.split(separator: " ").map(String.init)
                }
            }
            self = .negotiation(Milter.Negotiation(
                version: version, actions: Milter.Actions(rawValue: actions), flags: Milter.ProtocolFlags(rawValue: flags), macros: macros))
        case UInt8(ascii: "h"):
            let name = try Self.headerName(&data, "ADDHEADER")
            self = .addHeader(name: name, value: try Self.string(&data, "ADDHEADER"))
            try Self.end(data, "ADDHEADER")
        case UInt8(ascii: "i"), UInt8(ascii: "m"):
            let what = packet.code == UInt8(ascii: "i") ? "INSHEADER" : "CHGHEADER"
            guard let index: UInt32 = data.readInteger() else { throw MilterProtocolError("\(what) without an index") }
            let name = try Self.headerName(&data, what)
            let value = try Self.string(&data, what)
            try Self.end(data, what)
            self = packet.code == UInt8(ascii: "i")
                ? .insertHeader(index: index, name: name, value: value) : .changeHeader(index: index, name: name, value: value)
        case UInt8(ascii: "e"):
            let sender = try Self.string(&data, "CHGFROM")
            let parameters = data.readableBytes > 0 ? try Self.string(&data, "CHGFROM") : nil
            try Self.end(data, "CHGFROM")
            self = .changeSender(sender, parameters: parameters)
        case UInt8(ascii: "+"):
            self = .addRecipient(try Self.string(&data, "ADDRCPT"), parameters: nil)
            try Self.end(data, "ADDRCPT")
        case UInt8(ascii: "2"):
            let recipient = try Self.string(&data, "ADDRCPT_PAR")
            let parameters = data.readableBytes > 0 ? try Self.string(&data, "ADDRCPT_PAR") : ""
            try Self.end(data, "ADDRCPT_PAR")
            self = .addRecipient(recipient, parameters: parameters)
        case UInt8(ascii: "-"):
            self = .deleteRecipient(try Self.string(&data, "DELRCPT"))
            try Self.end(data, "DELRCPT")
        case UInt8(ascii: "b"):
            self = .replaceBody(data)
        default:
            throw MilterProtocolError("an unknown response code \(Self.printable(packet.code))")
        }
    }

    private static func printable(_ code: UInt8) -> String {
        (0x21...0x7E).contains(code) ? "'\(Character(Unicode.Scalar(code)))'" : "0x" + String(code, radix: 16)
    }

    /// A NUL-terminated string.
    private static func string(_ data: inout ByteBuffer, _ what: String) throws(MilterProtocolError) -> String {
        guard let end = data.readableBytesView.firstIndex(of: 0) else {
            throw MilterProtocolError("\(what): a string without its terminating NUL")
        }
        let string = data.readString(length: end - data.readerIndex) ?? ""
        data.moveReaderIndex(forwardBy: 1)
        return string
    }

    /// A header name: printable ASCII without a colon (RFC 5322 §2.2).
    private static func headerName(_ data: inout ByteBuffer, _ what: String) throws(MilterProtocolError) -> String {
        let name = try string(&data, what)
        guard !name.isEmpty, name.utf8.allSatisfy({ (0x21...0x7E).contains($0) && $0 != UInt8(ascii: ":") }) else {
            throw MilterProtocolError("\(what): \(name.isEmpty ? "an empty" : "an invalid") header name")
        }
        return name
    }

    private static func end(_ data: ByteBuffer, _ what: String) throws(MilterProtocolError) {
        guard data.readableBytes == 0 else { throw MilterProtocolError("\(what) followed by \(data.readableBytes) extra octets") }
    }

    /// `%%` → `%` (the filter escapes for sendmail's printf-like expansion).
    private static func unescapingPercent(_ text: Substring) -> String {
        var result = ""
        var previousPercent = false
        for character in text {
            if character == "%" && previousPercent { previousPercent = false; continue }
            previousPercent = character == "%"
            result.append(character)
        }
        return result
    }

    /// A REPLYCODE text: `ddd x.y.z text`, lines `ddd-…` joined by CRLF, 4xx or 5xx, every line
    /// with the same code; `%%` is `%`.
    static func reply(_ text: String) throws(MilterProtocolError) -> SMTPReply {
        // By octets: "\r\n" is one Character, so splitting the String at "\n" would miss it.
        let lines = text.utf8.split(separator: 0x0A, omittingEmptySubsequences: false).map { line in
            Substring(decoding: line.last == 0x0D ? line.dropLast() : line, as: UTF8.self)
        }
        guard let first = lines.first, first.utf8.count >= 3 else { throw MilterProtocolError("REPLYCODE '\(text)' has no reply code") }
        let code = first.prefix(3)
        guard code.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let number = Int(code), (400...599).contains(number) else {
            throw MilterProtocolError("REPLYCODE '\(text)' is not a 4xx or 5xx reply")
        }
        var texts: [String] = []
        for (position, line) in lines.enumerated() {
            let last = position == lines.count - 1
            guard line.hasPrefix(code) else { throw MilterProtocolError("REPLYCODE line '\(line)' does not start with \(code)") }
            let rest = line.dropFirst(3)
            if rest.isEmpty, last { texts.append(""); continue }
            guard let separator = rest.first, separator == (last ? " " : "-") else {
                throw MilterProtocolError("REPLYCODE line '\(line)' needs '\(last ? " " : "-")' after its code")
            }
            texts.append(Self.unescapingPercent(rest.dropFirst()))
        }
        // The enhanced code, when the first line has one of the reply's class.
        var enhanced: EnhancedStatusCode?
        if let word = texts.first?.split(separator: " ", maxSplits: 1).first, let parsed = EnhancedStatusCode(parsing: word),
           parsed.codeClass == number / 100 {
            enhanced = parsed
            texts = texts.map { line in
                guard line.hasPrefix(word) else { return line }
                return String(line.dropFirst(word.count).drop { $0 == " " })
            }
        }
        return SMTPReply(code: number, enhanced: enhanced, lines: texts)
    }
}
