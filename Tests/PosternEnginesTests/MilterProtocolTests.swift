import NIOCore
import PosternEngines
import SMTPCore
import XCTest

/// The milter codec against the wire format of Postfix's milter8.c and libmilter's mfdef.h.
final class MilterProtocolTests: XCTestCase {
    private func bytes(_ buffer: ByteBuffer) -> [UInt8] { Array(buffer.readableBytesView) }

    private func packet(_ code: Character, _ data: [UInt8] = []) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(data.count + 1))
        buffer.writeInteger(code.asciiValue!)
        buffer.writeBytes(data)
        return buffer
    }

    private func response(_ code: Character, _ data: [UInt8] = []) throws(MilterProtocolError) -> MilterResponse {
        var framer = MilterFramer()
        framer.append(packet(code, data))
        return try MilterResponse(framer.next()!)
    }

    private func z(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

    // MARK: Encoding

    func testOptionNegotiationOffersVersion6WithEveryActionAndFlag() {
        XCTAssertEqual(bytes(MilterEncoder.optionNegotiation()), [
            0, 0, 0, 13, UInt8(ascii: "O"), 0, 0, 0, 6, 0, 0, 0x01, 0xFF, 0, 0x1F, 0xFF, 0xFF,
        ])
    }

    func testConnectCarriesNameFamilyPortAndAddress() {
        let encoded = bytes(MilterEncoder.connect(hostname: "[192.0.2.1]", family: .inet, port: 2525, address: "192.0.2.1"))
        XCTAssertEqual(encoded, [0, 0, 0, 26, UInt8(ascii: "C")] + z("[192.0.2.1]") + [UInt8(ascii: "4"), 0x09, 0xDD] + z("192.0.2.1"))
        // An unknown family has neither port nor address.
        XCTAssertEqual(bytes(MilterEncoder.connect(hostname: "localhost", family: .unknown, port: 0, address: "")),
                       [0, 0, 0, 12, UInt8(ascii: "C")] + z("localhost") + [UInt8(ascii: "U")])
    }

    func testMacrosNameTheirCommandAndLeaveOutEmptyValues() {
        let encoded = bytes(MilterEncoder.macros(for: .mail, [("i", "ABC123"), ("{auth_type}", ""), ("{mail_addr}", "a@b.example")]))
        let data: [UInt8] = [UInt8(ascii: "M")] + z("i") + z("ABC123") + z("{mail_addr}") + z("a@b.example")
        XCTAssertEqual(encoded, [0, 0, 0, UInt8(data.count + 1), UInt8(ascii: "D")] + data)
    }

    func testEnvelopeIsAnArgvOfPathThenParameters() {
        let encoded = bytes(MilterEncoder.envelope(.mail, path: "<a@b.example>", parameters: ["SIZE=100", "BODY=8BITMIME"]))
        let data = z("<a@b.example>") + z("SIZE=100") + z("BODY=8BITMIME")
        XCTAssertEqual(encoded, [0, 0, 0, UInt8(data.count + 1), UInt8(ascii: "M")] + data)
    }

    func testHeaderDropsOneLeadingSpaceUnlessNegotiated() {
        XCTAssertEqual(bytes(MilterEncoder.header(name: "Subject", value: " hi", leadingSpace: false)).dropFirst(5), ArraySlice(z("Subject") + z("hi")))
        XCTAssertEqual(bytes(MilterEncoder.header(name: "Subject", value: " hi", leadingSpace: true)).dropFirst(5), ArraySlice(z("Subject") + z(" hi")))
        XCTAssertEqual(bytes(MilterEncoder.header(name: "X", value: "  two", leadingSpace: false)).dropFirst(5), ArraySlice(z("X") + z(" two")))
    }

    func testBodyIsCutIntoChunksOfAtMost65535Octets() {
        let body = ByteBuffer(repeating: UInt8(ascii: "x"), count: 65_535 * 2 + 10)
        let packets = MilterEncoder.body(body)
        XCTAssertEqual(packets.map { $0.getInteger(at: 0, as: UInt32.self)! }, [65_536, 65_536, 11])
        XCTAssertTrue(packets.allSatisfy { $0.getInteger(at: 4, as: UInt8.self) == UInt8(ascii: "B") })
        XCTAssertEqual(MilterEncoder.body(ByteBuffer()).count, 0)
    }

    func testCommandsWithoutDataAreFiveOctets() {
        for command in [Milter.Command.data, .endOfHeaders, .endOfMessage, .abort, .quit] {
            XCTAssertEqual(bytes(MilterEncoder.packet(command)), [0, 0, 0, 1, command.rawValue])
        }
    }

    // MARK: Framing

    func testFramerWaitsForWholePacketsFedByteByByte() throws {
        var stream = packet("c")
        stream.writeImmutableBuffer(packet("y", z("550 5.7.1 no")))
        var framer = MilterFramer()
        var codes: [UInt8] = []
        for byte in stream.readableBytesView {
            framer.append(ByteBuffer(bytes: [byte]))
            while let next = try framer.next() { codes.append(next.code) }
        }
        XCTAssertEqual(codes, [UInt8(ascii: "c"), UInt8(ascii: "y")])
        XCTAssertEqual(framer.buffered, 0)
    }

    func testFramerRefusesEmptyAndOversizePackets() {
        var framer = MilterFramer()
        framer.append(ByteBuffer(bytes: [0, 0, 0, 0]))
        XCTAssertThrowsError(try framer.next()) { XCTAssertEqual("\($0)", "a packet of length 0") }
        var small = MilterFramer(maximumData: 10)
        small.append(ByteBuffer(bytes: [0, 0, 0, 12]))
        XCTAssertThrowsError(try small.next()) { XCTAssertEqual("\($0)", "a packet of 11 data octets (at most 10)") }
        // The limit is checked from the length alone: no waiting for a gigabyte that never comes.
        var huge = MilterFramer()
        huge.append(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF]))
        XCTAssertThrowsError(try huge.next())
    }

    // MARK: Responses

    func testSimpleResponsesAndTheirPayloadRule() throws {
        XCTAssertEqual(try response("c"), .continue)
        XCTAssertEqual(try response("a"), .accept)
        XCTAssertEqual(try response("r"), .reject)
        XCTAssertEqual(try response("t"), .tempfail)
        XCTAssertEqual(try response("d"), .discard)
        XCTAssertEqual(try response("s"), .skip)
        XCTAssertEqual(try response("p"), .progress)
        XCTAssertEqual(try response("4"), .shutdown)
        XCTAssertThrowsError(try response("c", [1])) { XCTAssertEqual("\($0)", "CONTINUE followed by 1 data octets") }
        XCTAssertThrowsError(try response("f")) { XCTAssertEqual("\($0)", "an unknown response code 'f'") }
        XCTAssertThrowsError(try response(Character(Unicode.Scalar(1)))) { XCTAssertEqual("\($0)", "an unknown response code 0x1") }
    }

    func testReplyCodeIsValidated() throws {
        XCTAssertEqual(try response("y", z("554 5.7.1 Gtube pattern")), .reply(SMTPReply(554, EnhancedStatusCode(5, 7, 1), "Gtube pattern")))
        XCTAssertEqual(try response("y", z("451 try later")), .reply(SMTPReply(451, nil, "try later")))
        XCTAssertEqual(try response("y", z("550-5.7.1 first\r\n550 5.7.1 second 100%%")),
                       .reply(SMTPReply(code: 550, enhanced: EnhancedStatusCode(5, 7, 1), lines: ["first", "second 100%"])))
        // A 5.x.x code on a 4xx reply is text, not an enhanced code.
        XCTAssertEqual(try response("y", z("451 5.7.1 odd")), .reply(SMTPReply(451, nil, "5.7.1 odd")))
        for bad in ["250 ok", "55", "abc def", "550-first\r\n451 second", "550 first\r\n550 second", "550x"] {
            XCTAssertThrowsError(try response("y", z(bad)), bad)
        }
        XCTAssertThrowsError(try response("y", Array("550 no NUL".utf8))) {
            XCTAssertEqual("\($0)", "REPLYCODE: a string without its terminating NUL")
        }
    }

    func testNegotiationWithMacroLists() throws {
        var data: [UInt8] = [0, 0, 0, 6, 0, 0, 0, 0x11, 0, 0x1F, 0xF0, 0x00]
        data += [0, 0, 0, 2] + z("{mail_addr} {auth_type}")
        data += [0, 0, 0, 9] + z("ignored")  // no such stage
        data += [0, 0, 0, 5] + z("i")
        XCTAssertEqual(try response("O", data), .negotiation(Milter.Negotiation(
            version: 6, actions: [.addHeaders, .changeHeaders], flags: Milter.ProtocolFlags(rawValue: 0x1FF000),
            macros: [.mail: ["{mail_addr}", "{auth_type}"], .endOfMessage: ["i"]])))
        XCTAssertThrowsError(try response("O", [0, 0, 0, 6, 0, 0]))
        XCTAssertThrowsError(try response("O", [0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
    }

    func testModifications() throws {
        XCTAssertEqual(try response("h", z("X-Spam") + z(" yes")), .addHeader(name: "X-Spam", value: " yes"))
        XCTAssertEqual(try response("i", [0, 0, 0, 1] + z("Authentication-Results") + z("mx; dkim=pass")),
                       .insertHeader(index: 1, name: "Authentication-Results", value: "mx; dkim=pass"))
        XCTAssertEqual(try response("m", [0, 0, 0, 2] + z("Subject") + z("")), .changeHeader(index: 2, name: "Subject", value: ""))
        XCTAssertEqual(try response("e", z("<new@b.example>")), .changeSender("<new@b.example>", parameters: nil))
        XCTAssertEqual(try response("e", z("<new@b.example>") + z("RET=HDRS")), .changeSender("<new@b.example>", parameters: "RET=HDRS"))
        XCTAssertEqual(try response("+", z("<x@b.example>")), .addRecipient("<x@b.example>", parameters: nil))
        XCTAssertEqual(try response("2", z("<x@b.example>") + z("NOTIFY=NEVER")), .addRecipient("<x@b.example>", parameters: "NOTIFY=NEVER"))
        XCTAssertEqual(try response("-", z("<y@b.example>")), .deleteRecipient("<y@b.example>"))
        XCTAssertEqual(try response("b", Array("new body\r\n".utf8)), .replaceBody(ByteBuffer(string: "new body\r\n")))
        XCTAssertEqual(try response("q", z("virus")), .quarantine(reason: "virus"))
        XCTAssertTrue(try response("h", z("X") + z("y")).isModification)
        XCTAssertFalse(try response("q", z("virus")).isModification)
        XCTAssertEqual(try response("m", [0, 0, 0, 1] + z("X") + z("")).requiredAction, .changeHeaders)
        XCTAssertEqual(try response("2", z("<x@b>") + z("")).requiredAction, .addRecipientsWithParameters)
    }

    func testMalformedModificationsAreErrors() {
        XCTAssertThrowsError(try response("h", z("Bad Name") + z("v"))) { XCTAssertEqual("\($0)", "ADDHEADER: an invalid header name") }
        XCTAssertThrowsError(try response("h", z("") + z("v"))) { XCTAssertEqual("\($0)", "ADDHEADER: an empty header name") }
        XCTAssertThrowsError(try response("h", z("X") + z("v") + [1])) { XCTAssertEqual("\($0)", "ADDHEADER followed by 1 extra octets") }
        XCTAssertThrowsError(try response("i", [0, 0])) { XCTAssertEqual("\($0)", "INSHEADER without an index") }
        XCTAssertThrowsError(try response("-", Array("<y@b>".utf8)))
    }

    func testNoReplyAndOmitFlagsPerCommand() {
        XCTAssertEqual(Milter.ProtocolFlags.noReply(to: .recipient), .noRecipientReply)
        XCTAssertEqual(Milter.ProtocolFlags.noReply(to: .header), .noHeaderReply)
        XCTAssertNil(Milter.ProtocolFlags.noReply(to: .endOfMessage))
        XCTAssertEqual(Milter.ProtocolFlags.omit(.body), .noBody)
        XCTAssertNil(Milter.ProtocolFlags.omit(.abort))
        XCTAssertEqual(Milter.MacroStage.endOfHeaders.command, .endOfHeaders)
    }
}
