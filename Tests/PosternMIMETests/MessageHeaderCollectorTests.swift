import NIOCore
import XCTest

@testable import PosternMIME

final class MessageHeaderCollectorTests: XCTestCase {
    func collect(_ text: String, byteByByte: Bool = false) -> MessageHeaderCollector {
        var collector = MessageHeaderCollector()
        if byteByByte {
            for byte in text.utf8 { collector.feed(ByteBuffer(bytes: [byte])) }
        } else {
            collector.feed(ByteBuffer(string: text))
        }
        return collector
    }

    func testFieldValues() {
        let message = "From: Alice <a@b.example>\r\nSubject:  Hello there \r\nMessage-ID: <1@b.example>\r\n"
            + "X-Folded: first\r\n second\r\n\tthird\r\nTo: c@d.example\r\n\r\nSubject: not a header\r\nbody\r\n"
        for byteByByte in [false, true] {
            let collector = collect(message, byteByByte: byteByByte)
            XCTAssertTrue(collector.isComplete)
            XCTAssertEqual(collector.value(of: "Subject"), "Hello there")
            XCTAssertEqual(collector.value(of: "subject"), "Hello there")
            XCTAssertEqual(collector.value(of: "MESSAGE-ID"), "<1@b.example>")
            XCTAssertEqual(collector.value(of: "From"), "Alice <a@b.example>")
            XCTAssertEqual(collector.value(of: "X-Folded"), "first second third")
            XCTAssertEqual(collector.value(of: "To"), "c@d.example", "the last field, right before the blank line")
            XCTAssertNil(collector.value(of: "Date"))
            XCTAssertNil(collector.value(of: "body"))
        }
    }

    func testFirstFieldWins() {
        let collector = collect("Received: one\r\nReceived: two\r\n\r\n")
        XCTAssertEqual(collector.value(of: "Received"), "one")
    }

    func testNamesMustMatchExactly() {
        let collector = collect("Subject-Extra: no\r\nX-Subject: no\r\nSubject : spaced\r\n\r\n")
        XCTAssertNil(collector.value(of: "Subject"))
        XCTAssertEqual(collector.value(of: "Subject-Extra"), "no")
    }

    func testCompletion() {
        XCTAssertFalse(collect("Subject: x\r\n").isComplete)
        XCTAssertFalse(collect("Subject: x\r\nTo: y").isComplete)
        XCTAssertTrue(collect("Subject: x\r\n\r\n").isComplete)
        XCTAssertTrue(collect("\r\nbody").isComplete, "no header section at all")
        XCTAssertTrue(collect("Subject: x\n\nbody").isComplete)
        // An incomplete section still answers for what it has.
        XCTAssertEqual(collect("Subject: partial\r\nTo: y").value(of: "Subject"), "partial")
    }

    func testNothingIsCollectedAfterTheHeader() {
        var collector = collect("Subject: x\r\n\r\n")
        collector.feed(ByteBuffer(string: "Late: field\r\n\r\n"))
        XCTAssertNil(collector.value(of: "Late"))
        XCTAssertEqual(collector.value(of: "Subject"), "x")
    }

    func testSizeCap() {
        // A header section that never ends stops being collected at the cap.
        var collector = MessageHeaderCollector()
        collector.feed(ByteBuffer(string: "Subject: first\r\n"))
        let filler = ByteBuffer(string: "X-Filler: " + String(repeating: "f", count: 1000) + "\r\n")
        var fed = 0
        while !collector.isComplete && fed < 1000 {
            collector.feed(filler)
            fed += 1
        }
        XCTAssertTrue(collector.isComplete)
        XCTAssertLessThanOrEqual(fed * filler.readableBytes, MessageHeaderCollector.maximumHeaderBytes + filler.readableBytes)
        XCTAssertEqual(collector.value(of: "Subject"), "first")
        collector.feed(ByteBuffer(string: "Late: x\r\n"))
        XCTAssertNil(collector.value(of: "Late"))
    }
}
