import NIOCore

extension SMTPCommand {
    /// The command line as a client sends it, CRLF included. MAIL/RCPT parameters are written
    /// in a fixed order; `includeDSN` drops RFC 3461 parameters for servers without DSN.
    public func encode(into buffer: inout ByteBuffer, includeDSN: Bool = true, includeSize: Bool = true, include8BitMIME: Bool = true) {
        switch self {
        case .ehlo(let name): buffer.writeString("EHLO \(name)")
        case .helo(let name): buffer.writeString("HELO \(name)")
        case .mail(let path, let parameters):
            buffer.writeString("MAIL FROM:\(path)")
            if includeSize, let size = parameters.size { buffer.writeString(" SIZE=\(size)") }
            if include8BitMIME, let body = parameters.body { buffer.writeString(" BODY=\(body.rawValue)") }
            if parameters.smtpUTF8 { buffer.writeString(" SMTPUTF8") }
            if includeDSN, let ret = parameters.ret { buffer.writeString(" RET=\(ret)") }
            if includeDSN, let envid = parameters.envelopeID { buffer.writeString(" ENVID=\(envid)") }
        case .rcpt(let path, let parameters):
            buffer.writeString("RCPT TO:\(path)")
            if includeDSN, let notify = parameters.notify { buffer.writeString(" NOTIFY=\(notify)") }
            if includeDSN, let orcpt = parameters.originalRecipient { buffer.writeString(" ORCPT=\(orcpt)") }
        case .data: buffer.writeStaticString("DATA")
        case .bdat(let size, let last): buffer.writeString(last ? "BDAT \(size) LAST" : "BDAT \(size)")
        case .rset: buffer.writeStaticString("RSET")
        case .noop: buffer.writeStaticString("NOOP")
        case .quit: buffer.writeStaticString("QUIT")
        case .vrfy(let text): buffer.writeString("VRFY \(text)")
        case .expn(let text): buffer.writeString("EXPN \(text)")
        case .help(let text): buffer.writeString(text.map { "HELP \($0)" } ?? "HELP")
        case .starttls: buffer.writeStaticString("STARTTLS")
        case .auth(let arguments): buffer.writeString("AUTH \(arguments)")
        case .etrn(let node): buffer.writeString("ETRN \(node)")
        case .notImplemented(let verb): buffer.writeString(verb)
        }
        buffer.writeStaticString("\r\n")
    }

    public var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        encode(into: &buffer)
        return buffer
    }
}
