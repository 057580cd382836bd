import NIOCore
import SMTPCore

/// Decodes `input` as the start of a PROXY-protocol connection, whole and in two reads.
///
/// Invariants: the decoder never consumes more than it was given; "need more" consumes
/// nothing; a decoded header consumed at least one byte, and decoding exactly the bytes it
/// consumed gives the same header; a v1 header with addresses comes from printable ASCII; a first read that decodes or fails decides the outcome
/// whatever follows (no answer depends on bytes not yet read).
public func fuzzProxy(_ input: [UInt8]) {
    guard input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let whole = decodeProxy(input)
    if case .header(let header, let consumed) = whole {
        expect(consumed > 0, "a header consumed nothing")
        guard case .header(let again, let againConsumed) = decodeProxy(Array(input[..<consumed])) else {
            expect(false, "the consumed bytes alone do not decode")
            return
        }
        expect(again == header && againConsumed == consumed, "the consumed bytes alone decode differently")
        // A v1 header is one line of US-ASCII text (HAProxy's spec §2.1): no byte outside
        // printable ASCII may take part in one that names addresses.
        if input.first == UInt8(ascii: "P"), header.source != nil {
            expect(input[..<(consumed - 2)].allSatisfy { (0x20...0x7E).contains($0) }, "v1 header decoded from non-ASCII text")
        }
        if let source = header.source { expect((0...65535).contains(source.port), "source port out of range") }
        if let destination = header.destination { expect((0...65535).contains(destination.port), "destination port out of range") }
    }
    guard !input.isEmpty else { return }
    let split = Int(input[0]) % input.count
    switch decodeProxy(Array(input[..<split])) {
    case .needMore:
        break
    case .failure:
        guard case .failure = whole else { return expect(false, "a first read failed but the whole input did not") }
    case .header(let header, let consumed):
        guard case .header(header, consumed) = whole else { return expect(false, "a first read decoded but the whole input did not") }
    }
}

enum ProxyDecodeOutcome: Equatable {
    case needMore
    case failure
    case header(ProxyHeader, consumed: Int)
}

func decodeProxy(_ bytes: [UInt8]) -> ProxyDecodeOutcome {
    var buffer = ByteBuffer(bytes: bytes)
    let outcome: ProxyDecodeOutcome
    do {
        if let header = try ProxyProtocolParser.parse(&buffer) {
            outcome = .header(header, consumed: bytes.count - buffer.readableBytes)
        } else {
            expect(buffer.readableBytes == bytes.count, "need-more consumed bytes")
            outcome = .needMore
        }
    } catch {
        outcome = .failure
    }
    expect(buffer.readableBytes <= bytes.count && buffer.readerIndex <= bytes.count, "decoder consumed more than it was given")
    return outcome
}
