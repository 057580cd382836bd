import NIOCore
import SMTPCore

/// Frames `input` as command lines and parses each; then frames it as DATA content.
///
/// Invariants: a framed line has no CR or LF and fits the limit; at most one line's worth
/// of bytes stays buffered; every refusal is a 5xx with an enhanced code; a parsed command
/// encodes to a line that parses back to the same command; content that went through
/// `DotStuffer` comes back unchanged from the DATA framer.
public func fuzzParser(_ input: [UInt8]) {
    guard input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let maximumLength = 512
    var parser = SMTPCommandParser()
    parser.offersAuth = (input.first ?? 0) & 0x40 != 0
    var framer = SMTPInputFramer()
    // Deliver the bytes in pieces whose size comes from the input, as reads would.
    let pieceSize = input.first.map { Int($0 % 64) + 1 } ?? 1
    var offset = 0
    while offset < input.count {
        let end = min(input.count, offset + pieceSize)
        framer.append(ByteBuffer(bytes: input[offset..<end]))
        offset = end
        while let event = framer.nextCommandLine(maximumLength: maximumLength) {
            switch event {
            case .line(let line):
                let bytes = Array(line.readableBytesView)
                expect(!bytes.contains(10), "framed line holds LF")
                expect(bytes.count + 2 <= maximumLength, "framed line longer than the limit")
                checkParse(bytes, parser: parser)
            case .failure(let error):
                checkRefusal(error)
            }
        }
        expect(framer.bufferedBytes < maximumLength, "framer holds \(framer.bufferedBytes) bytes of one line")
    }
    checkDotStuffingRoundTrip(input)
}

/// Parses one line; a command must survive encode → parse unchanged.
func checkParse(_ line: [UInt8], parser: SMTPCommandParser) {
    let command: SMTPCommand
    do {
        command = try parser.parse(line)
    } catch {
        checkRefusal(error)
        return
    }
    // MAIL's AUTH= (RFC 4954 §5) is recorded but never forwarded, so the encoder drops it.
    var forwarded = command
    if case .mail(let path, var parameters) = command, parameters.auth != nil {
        parameters.auth = nil
        forwarded = .mail(path, parameters)
    }
    let encoded = Array(command.encoded.readableBytesView)
    expect(encoded.suffix(2) == [13, 10], "encoded command lacks CRLF")
    do {
        let again = try parser.parse(encoded.dropLast(2))
        expect(again == command || again == forwarded, "\(command) re-parsed as \(again)")
    } catch {
        expect(false, "\(command) encoded as \(String(decoding: encoded, as: UTF8.self).debugDescription) does not parse: \(error)")
        return
    }
}

func checkRefusal(_ error: SMTPSyntaxError) {
    let reply = error.reply
    expect(reply.isPermanentFailure, "syntax error \(error) earns \(reply)")
    expect(reply.enhanced?.codeClass == 5, "syntax error \(error) has no 5.x.x code")
}

/// Content with CRLF line ends only, stuffed by `DotStuffer` and framed back by
/// `SMTPInputFramer`, is the same content (RFC 5321 §4.5.2 transparency), with no findings.
func checkDotStuffingRoundTrip(_ input: [UInt8]) {
    // Keep only inputs whose CR and LF all come as CRLF pairs (what DotStuffer is given).
    var index = 0
    while index < input.count {
        if input[index] == 13 {
            guard index + 1 < input.count, input[index + 1] == 10 else { return }
            index += 2
        } else if input[index] == 10 {
            return
        } else {
            index += 1
        }
    }
    var stuffer = DotStuffer()
    var wire = ByteBuffer()
    let split = input.isEmpty ? 0 : Int(input[0]) % (input.count + 1)
    stuffer.stuff(ByteBuffer(bytes: input[..<split]), into: &wire)
    stuffer.stuff(ByteBuffer(bytes: input[split...]), into: &wire)
    stuffer.finish(into: &wire)
    wire.writeString("NOOP\r\n")

    var framer = SMTPInputFramer()
    framer.beginData()
    framer.append(wire)
    var content: [UInt8] = []
    var ended = false
    while let event = framer.nextDataEvent(maximumLineLength: Int.max / 2, bareLineEndings: .reject) {
        switch event {
        case .content(let bytes):
            content += bytes.readableBytesView
        case .end(let findings):
            expect(!findings.hasBareLineEnding, "stuffed CRLF content reported a bare line ending")
            ended = true
        }
        if ended { break }
    }
    expect(ended, "stuffed content did not end")
    var expected = input
    if !expected.isEmpty && expected.suffix(2) != [13, 10] { expected += [13, 10] }
    expect(content == expected, "dot-stuffing round trip changed the content")
    // What follows the terminator is framed as a command again.
    guard case .line(let next)? = framer.nextCommandLine(maximumLength: 512) else {
        expect(false, "command after the end of data was lost")
        return
    }
    expect(Array(next.readableBytesView) == Array("NOOP".utf8), "command after the end of data changed")
}
