import PosternUpstream
import XCTest

final class UpstreamTargetTests: XCTestCase {
    func testValidURLs() {
        let fixtures: [(String, UpstreamTarget, UInt)] = [
            ("smtp://mx.example.org", .smtp(host: "mx.example.org", port: 25), #line),
            ("smtp://mx.example.org:2525", .smtp(host: "mx.example.org", port: 2525), #line),
            ("smtp://mx.example.org:1", .smtp(host: "mx.example.org", port: 1), #line),
            ("smtp://mx.example.org:65535", .smtp(host: "mx.example.org", port: 65535), #line),
            ("smtp://mx.example.org/", .smtp(host: "mx.example.org", port: 25), #line),
            ("SMTP://Relay.Example", .smtp(host: "Relay.Example", port: 25), #line),
            ("smtp://192.0.2.7:587", .smtp(host: "192.0.2.7", port: 587), #line),
            ("smtp://[::1]:25", .smtp(host: "::1", port: 25), #line),
            ("smtp://[2001:db8::25]", .smtp(host: "2001:db8::25", port: 25), #line),
            ("smtp://[2001:db8::25]:2525/", .smtp(host: "2001:db8::25", port: 2525), #line),
            ("maildir:/var/mail/postern", .maildir(path: "/var/mail/postern"), #line),
            ("maildir:relative/Maildir", .maildir(path: "relative/Maildir"), #line),
            ("maildir:///var/mail", .maildir(path: "/var/mail"), #line),
            ("maildir://Maildir", .maildir(path: "Maildir"), #line),
        ]
        for (url, expected, line) in fixtures {
            XCTAssertEqual(UpstreamTarget(url: url), expected, url, line: line)
        }
    }

    func testInvalidURLs() {
        let fixtures: [(String, UInt)] = [
            ("", #line),
            ("http://mx.example.org", #line),
            ("lmtp://mx.example.org", #line),
            ("mx.example.org:25", #line),
            ("smtp:mx.example.org", #line),
            ("smtp://", #line),
            ("smtp://:25", #line),
            ("smtp://mx.example.org:0", #line),
            ("smtp://mx.example.org:65536", #line),
            ("smtp://mx.example.org:99999", #line),
            ("smtp://mx.example.org:", #line),
            ("smtp://mx.example.org:smtp", #line),
            ("smtp://mx.example.org:-25", #line),
            ("smtp://user@mx.example.org", #line),
            ("smtp://mx.example.org/path", #line),
            ("smtp://[::1", #line),
            ("smtp://[::1]x", #line),
            ("smtp://[::1]:0", #line),
            ("smtp://[]:25", #line),
            ("maildir:", #line),
            ("maildir://", #line),
        ]
        for (url, line) in fixtures {
            XCTAssertNil(UpstreamTarget(url: url), url, line: line)
        }
    }

    func testDescriptionRoundTrips() {
        let targets: [UpstreamTarget] = [
            .smtp(host: "mx.example.org", port: 25), .smtp(host: "::1", port: 2525), .maildir(path: "/var/mail"),
        ]
        XCTAssertEqual(targets.map(\.description), ["smtp://mx.example.org:25", "smtp://[::1]:2525", "maildir:/var/mail"])
        for target in targets {
            XCTAssertEqual(UpstreamTarget(url: target.description), target)
        }
    }

    func testMalformedAddressesAreRefused() {
        for url in ["smtp://::1", "smtp://2001:db8::1", "smtp://host:+25", "smtp://[::1]:+25", "smtp://[not an address]",
                    "smtp://host name", "smtp://[192.0.2.1]:25", "smtp://-host", "smtp://host:", "smtp://user@host"] {
            XCTAssertNil(UpstreamTarget(url: url), url)
        }
        XCTAssertEqual(UpstreamTarget(url: "smtp://[2001:db8::1]:2525"), .smtp(host: "2001:db8::1", port: 2525))
        XCTAssertEqual(UpstreamTarget(url: "smtp://mx-1.example.org"), .smtp(host: "mx-1.example.org", port: 25))
    }
}
