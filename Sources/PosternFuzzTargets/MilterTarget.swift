import NIOCore
import PosternEngines
import SMTPCore

/// Feeds `input` as what a milter filter sends: cut into packets by `MilterFramer` (whole,
/// and in reads of a size byte 0 picks), each packet decoded as a response.
///
/// Invariants: both ways of reading give the same packets and the same decoded responses
/// (or the same first error); the framer never holds more than one packet's worth of octets
/// past its limit; a decoded REPLYCODE is a 4xx or 5xx reply with an enhanced code of its own
/// class, if any; a decoded header name is printable ASCII without a colon; a negotiation
/// carries only known macro stages; re-encoding what an MTA sends never trips the framer.
public func fuzzMilter(_ input: [UInt8]) {
    guard !input.isEmpty, input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let readSize = Int(input[0] % 64) + 1
    let stream = Array(input.dropFirst())
    // A small limit, so oversize lengths are reached.
    let limit = 4096
    let whole = readMilter([stream], limit: limit)
    var pieces: [[UInt8]] = []
    var offset = 0
    while offset < stream.count {
        pieces.append(Array(stream[offset..<min(offset + readSize, stream.count)]))
        offset += readSize
    }
    let split = readMilter(pieces, limit: limit)
    expect(whole == split, "reading in pieces of \(readSize) gave \(split.events.count) events, whole \(whole.events.count)")
    for event in whole.events {
        guard case .response(let response) = event else { continue }
        switch response {
        case .reply(let reply):
            expect((400...599).contains(reply.code), "REPLYCODE decoded to \(reply.code)")
            if let enhanced = reply.enhanced { expect(enhanced.codeClass == reply.code / 100, "enhanced code of another class") }
        case .addHeader(let name, _), .insertHeader(_, let name, _), .changeHeader(_, let name, _):
            expect(!name.isEmpty && name.utf8.allSatisfy { (0x21...0x7E).contains($0) && $0 != UInt8(ascii: ":") }, "a header name '\(name)'")
        default:
            break
        }
    }
    // What Postern sends, from the same bytes, must frame back into packets of its own codes.
    let text = String(decoding: stream.prefix(300), as: UTF8.self)
    var outbound = MilterEncoder.header(name: "X-Fuzz", value: text, leadingSpace: input[0] & 0x80 != 0)
    outbound.writeImmutableBuffer(MilterEncoder.envelope(.mail, path: "<\(text)>", parameters: [text]))
    outbound.writeImmutableBuffer(MilterEncoder.macros(for: .recipient, [("{rcpt_addr}", text)]))
    for chunk in MilterEncoder.body(ByteBuffer(bytes: stream)) { outbound.writeImmutableBuffer(chunk) }
    var framer = MilterFramer(maximumData: Milter.maximumChunk + 4)
    framer.append(outbound)
    var codes: [UInt8] = []
    do {
        while let packet = try framer.next() { codes.append(packet.code) }
    } catch {
        expect(false, "an encoded packet did not frame: \(error)")
    }
    expect(codes.prefix(3) == [Milter.Command.header.rawValue, Milter.Command.mail.rawValue, Milter.Command.macro.rawValue],
           "encoded packets framed as \(codes.prefix(3))")
    expect(framer.buffered == 0, "encoded packets left \(framer.buffered) octets over")
}

enum MilterReadEvent: Equatable {
    case response(MilterResponse)
    case badResponse(String)
}

struct MilterRead: Equatable {
    var events: [MilterReadEvent] = []
    /// The framing error that ended the stream, if any.
    var error: String?
}

/// Frames `reads` one after another; stops at the first framing error (the connection would be dropped).
func readMilter(_ reads: [[UInt8]], limit: Int) -> MilterRead {
    var framer = MilterFramer(maximumData: limit)
    var result = MilterRead()
    for read in reads {
        framer.append(ByteBuffer(bytes: read))
        do {
            while let packet = try framer.next() {
                do {
                    result.events.append(.response(try MilterResponse(packet)))
                } catch {
                    result.events.append(.badResponse(error.detail))
                }
            }
        } catch {
            result.error = error.detail
            return result
        }
        expect(framer.buffered <= limit + 5 + read.count, "the framer holds \(framer.buffered) octets")
    }
    return result
}
