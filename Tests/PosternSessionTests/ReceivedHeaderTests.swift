import Foundation
import SMTPCore
import XCTest

@testable import PosternSession

final class ReceivedHeaderTests: XCTestCase {
    func testRFC5322DateMatchesFoundation() {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss '+0000'"
        var generator = SystemRandomNumberGenerator()
        for seconds in [0, 951_782_400, 1_795_461_098, 4_102_444_799] + (0..<200).map({ _ in Int.random(in: 0...4_102_444_799, using: &generator) }) {
            let date = Date(timeIntervalSince1970: TimeInterval(seconds))
            XCTAssertEqual(ReceivedHeader.rfc5322Date(Int64(seconds)), formatter.string(from: date), "\(seconds)")
        }
    }

    func testHeaderLayout() {
        let header = ReceivedHeader(
            heloName: "client (evil)\r\nX-Injected: yes", clientAddress: IPAddress("2001:db8::5")!, hostname: "mx.test",
            extended: true, tlsVersion: "TLSv1.3", utf8: false, transactionID: "H46KQZ1J9M23",
            recipients: [.mailbox(Mailbox(localPart: "bob", domain: "example.net"))], date: 1_795_461_098)
        let text = String(buffer: header.encoded())
        XCTAssertEqual(text, """
            Received: from client__evil___X-Injected:_yes (unknown [IPv6:2001:db8::5])\r
            \tby mx.test (Postern) with ESMTPS id H46KQZ1J9M23\r
            \t(using TLSv1.3)\r
            \tfor <bob@example.net>;\r
            \tMon, 23 Nov 2026 19:11:38 +0000\r

            """)
    }

    func testProtocolNames() {
        func name(extended: Bool, tls: Bool, utf8: Bool) -> String {
            ReceivedHeader(heloName: nil, clientAddress: .v4(0), hostname: "h", extended: extended, tlsVersion: tls ? "TLSv1.3" : nil,
                           utf8: utf8, transactionID: "x", recipients: [], date: 0).protocolName
        }
        XCTAssertEqual(name(extended: false, tls: false, utf8: false), "SMTP")
        XCTAssertEqual(name(extended: true, tls: false, utf8: false), "ESMTP")
        XCTAssertEqual(name(extended: true, tls: true, utf8: false), "ESMTPS")
        XCTAssertEqual(name(extended: true, tls: true, utf8: true), "UTF8SMTPS")
    }

    func testIdentifiersAreTwelveCharactersAndDoNotRepeat() {
        let allowed = Set("0123456789BCDFGHJKLMNPQRSTVWXYZ")
        var seen = Set<String>()
        for _ in 0..<100_000 {
            let id = Identifier.make()
            XCTAssertEqual(id.count, 12)
            XCTAssertTrue(id.allSatisfy(allowed.contains), id)
            seen.insert(id)
        }
        XCTAssertEqual(seen.count, 100_000, "an identifier repeated")
    }
}
