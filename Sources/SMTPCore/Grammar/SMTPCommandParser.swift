/// Parses one command line (without its CRLF) into an `SMTPCommand`.
///
/// Verbs are case-insensitive (RFC 5321 §2.4). MAIL and RCPT take `FROM:`/`TO:` followed by
/// a path in angle brackets and ESMTP parameters (RFC 5321 §4.1.1.2, §4.1.2); a space after
/// the colon is tolerated, as deployed clients send it.
public struct SMTPCommandParser: Sendable {
    /// Which ESMTP parameters the server offered (an unoffered one is 555 5.5.4).
    public var offersSize = true
    public var offers8BitMIME = true
    public var offersSMTPUTF8 = true
    public var offersDSN = true
    /// `AUTH=` on MAIL (RFC 4954 §5) is accepted when AUTH is offered.
    public var offersAuth = false
    /// RFC 5321 §4.5.3.1.4: 512 octets including CRLF.
    public var maximumLineLength = 512

    public init() {}

    public func parse(_ line: some Collection<UInt8>) throws(SMTPSyntaxError) -> SMTPCommand {
        let bytes = Array(line)[...]
        guard bytes.count + 2 <= maximumLineLength else {
            throw SMTPSyntaxError(.lineTooLong, "maximum \(maximumLineLength) octets")
        }
        if let bad = bytes.first(where: { $0 == 0 || $0 == 13 || $0 == 10 }) {
            throw SMTPSyntaxError(.invalidCharacters, bad == 0 ? "NUL" : bad == 13 ? "bare CR" : "bare LF")
        }
        let space = bytes.firstIndex(of: UInt8(ascii: " ")) ?? bytes.endIndex
        let verb = String(decoding: bytes[bytes.startIndex..<space], as: UTF8.self).uppercased()
        let argument = space < bytes.endIndex ? bytes[(space + 1)...] : bytes[bytes.endIndex...]
        let argumentText = { () -> String in String(decoding: argument, as: UTF8.self).trimmingSpaces() }
        // Free-text arguments must be UTF-8: decoding would silently turn bad bytes into U+FFFD
        // (found by fuzzing). MAIL and RCPT check their own (bad address, 501 5.1.3).
        if verb != "MAIL" && verb != "RCPT" && String(validating: argument, as: UTF8.self) == nil {
            throw SMTPSyntaxError(.invalidCharacters, "invalid UTF-8")
        }

        switch verb {
        case "EHLO", "HELO":
            let name = argumentText()
            guard !name.isEmpty, !name.contains(" ") else { throw SMTPSyntaxError(.syntax, "\(verb) hostname") }
            guard name.utf8.count <= 255 else { throw SMTPSyntaxError(.syntax, "\(verb) hostname longer than 255 octets") }
            return verb == "EHLO" ? .ehlo(name) : .helo(name)
        case "MAIL":
            return try parseMail(argument)
        case "RCPT":
            return try parseRcpt(argument)
        case "DATA", "RSET", "QUIT", "STARTTLS":
            guard argumentText().isEmpty else { throw SMTPSyntaxError(.syntax, "\(verb) takes no arguments") }
            switch verb {
            case "DATA": return .data
            case "RSET": return .rset
            case "QUIT": return .quit
            default: return .starttls
            }
        case "NOOP":
            return .noop
        case "VRFY", "EXPN":
            let text = argumentText()
            guard !text.isEmpty else { throw SMTPSyntaxError(.syntax, "\(verb) string") }
            return verb == "VRFY" ? .vrfy(text) : .expn(text)
        case "HELP":
            let text = argumentText()
            return .help(text.isEmpty ? nil : text)
        case "BDAT":
            let words = argumentText().split(separator: " ")
            guard (1...2).contains(words.count), words[0].allSatisfy(\.isASCIIDigit), words[0].count <= 18,
                  let size = Int(words[0]) else {
                throw SMTPSyntaxError(.syntax, "BDAT chunk-size [LAST]")
            }
            if words.count == 2 && words[1].uppercased() != "LAST" { throw SMTPSyntaxError(.syntax, "BDAT chunk-size [LAST]") }
            return .bdat(size: size, last: words.count == 2)
        case "AUTH":
            return .auth(argumentText())
        case "ETRN":
            // RFC 1985 §3: ETRN [ "@" / "#" ] domain-or-queue, one argument.
            let node = argumentText()
            guard !node.isEmpty, node != "@", node != "#", !node.contains(" "), node.utf8.count <= 255 else {
                throw SMTPSyntaxError(.syntax, "ETRN domain")
            }
            return .etrn(node)
        case "ATRN", "TURN", "SAML", "SEND", "SOML":
            return .notImplemented(verb)
        default:
            throw SMTPSyntaxError(.unknownCommand, verb)
        }
    }

    // MAIL FROM:<reverse-path> [SP Mail-parameters]
    private func parseMail(_ argument: ArraySlice<UInt8>) throws(SMTPSyntaxError) -> SMTPCommand {
        let (path, parameters) = try splitPathArgument(argument, keyword: "FROM:", usage: "MAIL FROM:<address>")
        let reversePath: ReversePath
        if path.count == 2 {
            reversePath = .null
        } else {
            do { reversePath = .mailbox(try PathGrammar.parsePath(path)) } catch { throw SMTPSyntaxError(.badAddress, error.reason) }
        }
        var result = MailParameters()
        for (keyword, value) in parameters {
            switch keyword {
            case "SIZE" where offersSize:
                guard let value, !value.isEmpty, value.count <= 20, value.allSatisfy(\.isASCIIDigit) else {
                    throw SMTPSyntaxError(.syntax, "SIZE=<number>")
                }
                result.size = Int(value) ?? Int.max
            case "BODY" where offers8BitMIME:
                guard let value, let body = MessageBodyType(rawValue: value.uppercased()) else {
                    throw SMTPSyntaxError(.unknownParameter, "BODY=\(value ?? "")")
                }
                result.body = body
            case "SMTPUTF8" where offersSMTPUTF8:
                guard value == nil else { throw SMTPSyntaxError(.syntax, "SMTPUTF8 takes no value") }
                result.smtpUTF8 = true
            case "RET" where offersDSN:
                guard let value, ["FULL", "HDRS"].contains(value.uppercased()) else { throw SMTPSyntaxError(.syntax, "RET=FULL|HDRS") }
                result.ret = value.uppercased()
            case "ENVID" where offersDSN:
                guard let value, !value.isEmpty, value.utf8.count <= 100, Self.isXtext(value) else {
                    throw SMTPSyntaxError(.syntax, "ENVID=<xtext>")
                }
                result.envelopeID = value
            case "AUTH" where offersAuth:
                guard let value, !value.isEmpty, value.utf8.count <= 500, value == "<>" || Self.isXtext(value) else {
                    throw SMTPSyntaxError(.syntax, "AUTH=<xtext>|<>")
                }
                result.auth = value
            default:
                throw SMTPSyntaxError(.unknownParameter, keyword)
            }
        }
        if case .mailbox(let mailbox) = reversePath, !mailbox.isASCII, !result.smtpUTF8 {
            throw SMTPSyntaxError(.badAddress, "non-ASCII address without SMTPUTF8")
        }
        return .mail(reversePath, result)
    }

    // RCPT TO:<forward-path> [SP Rcpt-parameters]
    private func parseRcpt(_ argument: ArraySlice<UInt8>) throws(SMTPSyntaxError) -> SMTPCommand {
        let (path, parameters) = try splitPathArgument(argument, keyword: "TO:", usage: "RCPT TO:<address>")
        let forwardPath: ForwardPath
        if String(decoding: path, as: UTF8.self).lowercased() == "<postmaster>" {
            forwardPath = .postmaster
        } else if path.count == 2 {
            throw SMTPSyntaxError(.badAddress, "empty recipient")
        } else {
            do { forwardPath = .mailbox(try PathGrammar.parsePath(path)) } catch { throw SMTPSyntaxError(.badAddress, error.reason) }
        }
        var result = RecipientParameters()
        for (keyword, value) in parameters {
            switch keyword {
            case "NOTIFY" where offersDSN:
                guard let value else { throw SMTPSyntaxError(.syntax, "NOTIFY=NEVER|SUCCESS,FAILURE,DELAY") }
                let items = value.uppercased().split(separator: ",", omittingEmptySubsequences: false)
                let valid = items == ["NEVER"] || (!items.isEmpty && items.allSatisfy { ["SUCCESS", "FAILURE", "DELAY"].contains($0) })
                guard valid else { throw SMTPSyntaxError(.syntax, "NOTIFY=NEVER|SUCCESS,FAILURE,DELAY") }
                result.notify = value.uppercased()
            case "ORCPT" where offersDSN:
                guard let value, let semicolon = value.firstIndex(of: ";"), semicolon != value.startIndex,
                      value.utf8.count <= 500, Self.isXtext(String(value[value.index(after: semicolon)...])) else {
                    throw SMTPSyntaxError(.syntax, "ORCPT=addr-type;xtext")
                }
                result.originalRecipient = value
            default:
                throw SMTPSyntaxError(.unknownParameter, keyword)
            }
        }
        return .rcpt(forwardPath, result)
    }

    /// Splits `FROM:<path> params…`. The path ends at the first `>` outside a quoted string.
    private func splitPathArgument(
        _ argument: ArraySlice<UInt8>, keyword: String, usage: String
    ) throws(SMTPSyntaxError) -> (ArraySlice<UInt8>, [(String, String?)]) {
        let keywordBytes = Array(keyword.utf8)
        guard argument.count >= keywordBytes.count,
              zip(argument.prefix(keywordBytes.count), keywordBytes).allSatisfy({ Self.upper($0) == $1 }) else {
            throw SMTPSyntaxError(.syntax, usage)
        }
        var rest = argument.dropFirst(keywordBytes.count)
        while rest.first == UInt8(ascii: " ") { rest = rest.dropFirst() }
        guard rest.first == UInt8(ascii: "<") else { throw SMTPSyntaxError(.syntax, usage) }
        var index = rest.startIndex
        var inQuotes = false
        var end: Int?
        while index < rest.endIndex {
            let byte = rest[index]
            if inQuotes && byte == UInt8(ascii: "\\") { index += 2; continue }
            if byte == UInt8(ascii: "\"") { inQuotes.toggle() }
            if byte == UInt8(ascii: ">") && !inQuotes { end = index; break }
            index += 1
        }
        guard let end else { throw SMTPSyntaxError(.syntax, usage) }
        let path = rest[rest.startIndex...end]
        let tail = rest[(end + 1)...]
        guard tail.isEmpty || tail.first == UInt8(ascii: " ") else { throw SMTPSyntaxError(.syntax, usage) }
        var parameters: [(String, String?)] = []
        var seen: Set<String> = []
        for word in tail.split(separator: UInt8(ascii: " ")) {
            // esmtp-param = esmtp-keyword ["=" esmtp-value]
            let equals = word.firstIndex(of: UInt8(ascii: "="))
            let keywordPart = word[word.startIndex..<(equals ?? word.endIndex)]
            guard let first = keywordPart.first, PathGrammar.isLetDig(first),
                  keywordPart.allSatisfy({ PathGrammar.isLetDig($0) || $0 == UInt8(ascii: "-") }) else {
                throw SMTPSyntaxError(.syntax, "bad parameter keyword")
            }
            let name = String(decoding: keywordPart, as: UTF8.self).uppercased()
            var value: String?
            if let equals {
                let valueBytes = word[(equals + 1)...]
                // esmtp-value = 1*(%d33-60 / %d62-126), UTF-8 allowed by RFC 6531
                guard !valueBytes.isEmpty, valueBytes.allSatisfy({ ($0 >= 33 && $0 != 61 && $0 != 127) }),
                      let text = String(validating: valueBytes, as: UTF8.self) else {
                    throw SMTPSyntaxError(.syntax, "bad value for \(name)")
                }
                value = text
            }
            guard seen.insert(name).inserted else { throw SMTPSyntaxError(.syntax, "duplicate parameter \(name)") }
            parameters.append((name, value))
        }
        return (path, parameters)
    }

    private static func upper(_ byte: UInt8) -> UInt8 {
        (97...122).contains(byte) ? byte - 32 : byte
    }

    /// xtext (RFC 3461 §4): printable ASCII except `+` and `=`, or `+XX` hex escapes.
    static func isXtext(_ text: String) -> Bool {
        var bytes = text.utf8.makeIterator()
        while let byte = bytes.next() {
            if byte == UInt8(ascii: "+") {
                guard let a = bytes.next(), let b = bytes.next(), isHexUpper(a), isHexUpper(b) else { return false }
            } else if !(33...126).contains(byte) || byte == UInt8(ascii: "=") {
                return false
            }
        }
        return true
    }

    private static func isHexUpper(_ byte: UInt8) -> Bool {
        (48...57).contains(byte) || (65...70).contains(byte)
    }
}

extension String {
    func trimmingSpaces() -> String {
        var view = Substring(self)
        while view.first == " " || view.first == "\t" { view = view.dropFirst() }
        while view.last == " " || view.last == "\t" { view = view.dropLast() }
        return String(view)
    }
}
