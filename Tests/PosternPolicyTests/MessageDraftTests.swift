import NIOCore
import PosternPolicy
import SMTPCore
import XCTest

final class MessageDraftTests: XCTestCase {
    static let message = Array("Subject: hello\r\nX-Spam: No\r\nReceived: one\r\n  folded\r\nX-Spam: second\r\n\r\nbody line\r\n".utf8)

    static func draft(_ bytes: [UInt8] = message) -> MessageDraft {
        let (fields, length) = MessageDraft.parseHeaderSection(bytes)!
        return MessageDraft(fields: fields, body: .replaced(ByteBuffer(bytes: bytes[length...])), sender: .null, recipients: [])
    }

    func text(_ draft: MessageDraft) -> String {
        String(buffer: draft.encodedHeaderSection())
    }

    func testParsingKeepsFieldsAndFoldsAndSaysWhereTheBodyStarts() throws {
        let (fields, length) = try XCTUnwrap(MessageDraft.parseHeaderSection(Self.message))
        XCTAssertEqual(fields.map(\.name), ["Subject", "X-Spam", "Received", "X-Spam"])
        XCTAssertEqual(String(decoding: fields[2].value, as: UTF8.self), " one\r\n  folded")
        XCTAssertEqual(Array(Self.message[length...]), Array("body line\r\n".utf8))
        // Unchanged, the section goes out octet for octet.
        XCTAssertEqual(text(Self.draft()), String(decoding: Self.message[..<length], as: UTF8.self))
    }

    func testALineThatIsNotAFieldStartsTheBodyAndAnIncompleteSectionIsNil() throws {
        let (fields, length) = try XCTUnwrap(MessageDraft.parseHeaderSection(Array("A: 1\r\nnot a field\r\nmore\r\n".utf8)))
        XCTAssertEqual(fields.map(\.name), ["A"])
        XCTAssertEqual(length, 6, "the body starts at the line without a colon, as Postfix's cleanup reads it")
        XCTAssertNil(MessageDraft.parseHeaderSection(Array("A: 1\r\nB: 2".utf8)))
    }

    func testTheValueAFilterIsShownHasLFFoldsAndNoLeadingSpaceUnlessAskedFor() {
        let field = Self.draft().fields[2]
        XCTAssertEqual(String(decoding: field.shownValue(leadingSpace: false), as: UTF8.self), "one\n  folded")
        XCTAssertEqual(String(decoding: field.shownValue(leadingSpace: true), as: UTF8.self), " one\n  folded")
    }

    func testAFiltersValueCanNeitherEndTheSectionNorStartAField() {
        let field = MessageDraft.Field(name: "X-Bad", text: "a\n\nInjected: yes\r\n\tok", leadingSpace: false)
        XCTAssertEqual(String(decoding: field.value, as: UTF8.self), " a\r\n Injected: yes\r\n\tok")
        let spaced = MessageDraft.Field(name: "X", text: " kept", leadingSpace: true)
        XCTAssertEqual(String(decoding: spaced.value, as: UTF8.self), " kept")
    }

    func testChangeHeaderCountsInstancesDeletesWithNilAndAppendsWhenMissing() {
        var draft = Self.draft()
        draft.changeHeader(name: "x-spam", index: 2, to: MessageDraft.Field(name: "X-Spam", text: "Yes", leadingSpace: false))
        XCTAssertTrue(text(draft).contains("X-Spam: No\r\nReceived: one\r\n  folded\r\nX-Spam: Yes\r\n"), text(draft))
        draft.changeHeader(name: "X-Spam", index: 0, to: nil)  // index 0 is the first
        XCTAssertFalse(text(draft).contains("X-Spam: No"), text(draft))
        draft.changeHeader(name: "X-New", index: 1, to: MessageDraft.Field(name: "X-New", text: "appended", leadingSpace: false))
        XCTAssertTrue(text(draft).hasSuffix("X-New: appended\r\n\r\n"), text(draft))
        let before = draft.fields
        draft.changeHeader(name: "X-Absent", index: 1, to: nil)
        XCTAssertEqual(draft.fields, before, "deleting what is not there does nothing")
        XCTAssertTrue(draft.contentChanged)
    }

    func testInsertCountsPosternsReceivedAsTheFirstField() {
        var draft = Self.draft()
        draft.insertHeader(MessageDraft.Field(name: "DKIM-Signature", text: "v=1", leadingSpace: false), at: 1)
        XCTAssertTrue(text(draft).hasPrefix("DKIM-Signature: v=1\r\nSubject: hello\r\n"), text(draft))
        draft.insertHeader(MessageDraft.Field(name: "A", text: "zero", leadingSpace: false), at: 0)
        XCTAssertTrue(text(draft).hasPrefix("A: zero\r\n"), "0 is on top too: Postern's Received stays first")
        draft.insertHeader(MessageDraft.Field(name: "Z", text: "last", leadingSpace: false), at: 99)
        XCTAssertTrue(text(draft).hasSuffix("Z: last\r\n\r\n"))
    }

    func testAReplacedBodyHasCRLFLineEnds() {
        var draft = Self.draft()
        draft.replaceBody(ByteBuffer(string: "one\ntwo\rthree"))
        guard case .replaced(let body) = draft.body else { return XCTFail("not replaced") }
        XCTAssertEqual(String(buffer: body), "one\r\ntwo\r\nthree\r\n")
    }

    func testEnvelopeEdits() {
        let a = ForwardPath.mailbox(Mailbox(localPart: "a", domain: "example.org"))
        let b = ForwardPath.mailbox(Mailbox(localPart: "b", domain: "example.org"))
        var draft = MessageDraft(fields: [], body: .replaced(ByteBuffer()), sender: .null, recipients: [a])
        draft.addRecipient(a)
        XCTAssertFalse(draft.envelopeChanged, "a recipient it has already")
        draft.addRecipient(b)
        draft.deleteRecipient(.mailbox(Mailbox(localPart: "A", domain: "example.org")))
        XCTAssertEqual(draft.recipients, [b])
        XCTAssertTrue(draft.envelopeChanged)
        XCTAssertFalse(draft.contentChanged)
    }
}
