import NIOCore
import PosternRedis

/// Reads `input` as replies from a Redis server with `RESPParser`, whole and in reads of
/// sizes the input picks, with the default limits and with tight ones.
///
/// Input layout: byte 0: bit 0 picks the tight limits; bytes 1 and 2: the sizes of the
/// reads, alternately (1–64 octets each); the rest is what the server sends.
///
/// Invariants: the parser never traps; reading in pieces gives the same values, the same
/// error and (without one) the same unread rest as reading the whole; `next` that needs more leaves the
/// buffer as it was; every value keeps within the limits (length of bulk strings, elements of
/// an aggregate, nesting) and is no larger, encoded, than about what it was read from; a
/// value encoded with `RESPEncoder` reads back as one value that encodes the same (values
/// are compared encoded, so that NaN equals NaN; read back with a line limit wide enough for
/// text in which bytes that are not UTF-8 became U+FFFD).
public func fuzzRESP(_ input: [UInt8]) {
    guard input.count >= 3, input.count <= PosternFuzzTarget.maximumInputSize else { return }
    let limits = input[0] & 0x01 != 0 ? tightRESPLimits : RESPParser.Limits()
    let parser = RESPParser(limits: limits)
    let stream = input[3...]
    let whole = readRESP(parser, pieces: [stream])
    var pieces: [ArraySlice<UInt8>] = []
    let sizes = [Int(input[1] % 64) + 1, Int(input[2] % 64) + 1]
    var offset = stream.startIndex
    while offset < stream.endIndex {
        let end = min(stream.endIndex, offset + sizes[pieces.count % 2])
        pieces.append(stream[offset..<end])
        offset = end
    }
    let split = readRESP(parser, pieces: pieces)
    expect(whole.values == split.values, "\(whole.values.count) values read whole, \(split.values.count) in pieces")
    expect(whole.error == split.error, "error \(whole.error.map { "\($0)" } ?? "none") whole, \(split.error.map { "\($0)" } ?? "none") in pieces")
    // After an error the pieces not yet read are not in the buffer: the rest is compared only without one.
    expect(whole.error != nil || whole.unread == split.unread, "\(whole.unread) octets unread whole, \(split.unread) in pieces")
    for (value, consumed) in zip(whole.parsed, whole.consumed) {
        checkRESPLimits(value, limits: limits, depth: 0)
        let encoded = encodeRESP(value)
        expect(encoded.count <= 3 * consumed + 8, "\(consumed) octets read as a value of \(encoded.count) encoded")
        var buffer = ByteBuffer(bytes: encoded)
        do {
            let again = try roundtripParser.next(&buffer)
            expect(again.map(encodeRESP) == encoded, "\(value) does not read back as itself")
            expect(buffer.readableBytes == 0, "\(value) encoded leaves \(buffer.readableBytes) octets unread")
        } catch {
            expect(false, "\(value) encoded does not read back: \(error)")
        }
    }
}

/// Reads encoded values back: a simple string or error holds text, in which each octet that
/// is not UTF-8 became U+FFFD (3 octets), so its encoding can outgrow the line limit it was
/// read under; the limits are checked on the values themselves.
private let roundtripParser = RESPParser(limits: RESPParser.Limits(maximumLineLength: 1 << 20))

/// Limits small enough for the fuzzer to reach; a bulk error (`!`) must still fit a line,
/// since the encoder writes every error as a simple one.
let tightRESPLimits = RESPParser.Limits(maximumBulkLength: 32, maximumAggregateCount: 4, maximumDepth: 3, maximumLineLength: 40)

private struct RESPReading {
    var parsed: [RESPValue] = []
    /// Octets each value was read from.
    var consumed: [Int] = []
    var values: [[UInt8]] = []
    var error: RESPParseError?
    var unread = 0
}

/// Reads pieces into one buffer as a channel's decoder does: after each piece, every value
/// complete so far; the first error ends the reading.
private func readRESP(_ parser: RESPParser, pieces: [ArraySlice<UInt8>]) -> RESPReading {
    var reading = RESPReading()
    var buffer = ByteBuffer()
    for piece in pieces {
        buffer.writeBytes(piece)
        while true {
            let before = buffer
            do {
                guard let value = try parser.next(&buffer) else {
                    expect(buffer == before && buffer.readerIndex == before.readerIndex, "an incomplete value consumed octets")
                    break
                }
                reading.parsed.append(value)
                reading.consumed.append(buffer.readerIndex - before.readerIndex)
                reading.values.append(encodeRESP(value))
            } catch {
                reading.error = error
                reading.unread = buffer.readableBytes
                return reading
            }
        }
    }
    reading.unread = buffer.readableBytes
    return reading
}

func encodeRESP(_ value: RESPValue) -> [UInt8] {
    var buffer = ByteBuffer()
    RESPEncoder.write(value, into: &buffer)
    return Array(buffer.readableBytesView)
}

private func checkRESPLimits(_ value: RESPValue, limits: RESPParser.Limits, depth: Int) {
    expect(depth <= limits.maximumDepth, "a value nested \(depth) deep")
    func elements(_ values: [RESPValue]) {
        expect(values.count <= limits.maximumAggregateCount, "an aggregate of \(values.count) elements")
        for element in values { checkRESPLimits(element, limits: limits, depth: depth + 1) }
    }
    switch value {
    case .bulkString(let bytes?):
        expect(bytes.count <= limits.maximumBulkLength, "a bulk string of \(bytes.count) octets")
    case .verbatim(_, let text):
        expect(text.count + 4 <= limits.maximumBulkLength, "a verbatim string of \(text.count) octets")
    case .simpleString(let text), .error(let text), .bigNumber(let text):
        // Read from a line or a bulk payload; a byte that is not UTF-8 becomes U+FFFD (3 octets).
        expect(text.utf8.count <= 3 * max(limits.maximumLineLength, limits.maximumBulkLength), "a string of \(text.utf8.count) octets")
    case .array(let values?), .set(let values), .push(let values):
        elements(values)
    case .map(let entries):
        expect(entries.count <= limits.maximumAggregateCount, "a map of \(entries.count) entries")
        for entry in entries {
            checkRESPLimits(entry.key, limits: limits, depth: depth + 1)
            checkRESPLimits(entry.value, limits: limits, depth: depth + 1)
        }
    case .bulkString(nil), .array(nil), .integer, .null, .boolean, .double:
        break
    }
}
