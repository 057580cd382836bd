import XCTest
@testable import PosternMIME

final class MIMEParameterTests: XCTestCase {
    /// File names from Content-Disposition and Content-Type: (headers, filename, all names).
    func testFilenames() {
        let cases: [(headers: [String], filename: String?, names: [String])] = [
            (["Content-Disposition: attachment; filename=\"a.pdf\""], "a.pdf", ["a.pdf"]),
            (["Content-Disposition: attachment; filename=a.pdf"], "a.pdf", ["a.pdf"]),
            (["Content-Disposition: attachment; filename=\"quo\\\"te.txt\""], "quo\"te.txt", ["quo\"te.txt"]),
            // Content-Type name= fallback.
            (["Content-Type: application/zip; name=\"b.zip\""], "b.zip", ["b.zip"]),
            (["Content-Type: application/zip; name*=utf-8''%C3%A9t%C3%A9.zip"], "été.zip", ["été.zip"]),
            // RFC 2231 §4: charset and language.
            (["Content-Disposition: attachment; filename*=iso-8859-1'fr'r%E9sum%E9.doc"], "résumé.doc", ["résumé.doc"]),
            (["Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rates.xls"], "€ rates.xls", ["€ rates.xls"]),
            // RFC 2231 §3 continuations, §4.1 mixed encoded and plain sections.
            (["Content-Disposition: attachment;", " filename*0=\"very long \";", " filename*1=\"name.txt\""],
             "very long name.txt", ["very long name.txt"]),
            (["Content-Disposition: attachment;", " filename*0*=utf-8''%C3%BCber;", " filename*1=\"-plain\";",
              " filename*2*=%C3%A9.txt"], "über-plainé.txt", ["über-plainé.txt"]),
            // Sections out of order still assemble in order.
            (["Content-Disposition: attachment; filename*1=\"two\"; filename*0=\"one-\""], "one-two", ["one-two"]),
            // The extended form wins; the plain one is kept as an alternative.
            (["Content-Disposition: attachment; filename=\"invoice.pdf\"; filename*=utf-8''invoice.exe"],
             "invoice.exe", ["invoice.exe", "invoice.pdf"]),
            // Disposition filename first, then Content-Type name.
            (["Content-Type: application/octet-stream; name=\"type.bin\"",
              "Content-Disposition: attachment; filename=\"disp.bin\""], "disp.bin", ["disp.bin", "type.bin"]),
            // RFC 2047 inside a quoted parameter (non-standard, common).
            (["Content-Type: application/pdf; name=\"=?utf-8?B?w6l0w6kucGRm?=\""], "été.pdf", ["été.pdf"]),
            // Duplicates both kept.
            (["Content-Disposition: attachment; filename=a.txt; filename=b.exe"], "a.txt", ["a.txt", "b.exe"]),
            // Broken parameters do not derail the rest.
            (["Content-Disposition: attachment; =oops; novalue; filename=\"ok.txt\""], "ok.txt", ["ok.txt"]),
            (["Content-Disposition: attachment; filename=\"unterminated.txt"], "unterminated.txt", ["unterminated.txt"]),
            (["Content-Disposition: attachment"], nil, []),
        ]
        for (headers, filename, names) in cases {
            let message = MIMEFixture.parse(headers + ["", "content"])
            XCTAssertEqual(message.parts[0].filename, filename, "\(headers)")
            XCTAssertEqual(message.parts[0].filenames, names, "\(headers)")
            XCTAssertEqual(message.attachmentDetails.first?.names ?? [], names, "\(headers)")
        }
    }

    func testContentTypeParameters() {
        let message = MIMEFixture.parse([
            "Content-Type: text/plain; CHARSET = \"UTF-8\" (quoted) ; format=flowed; delsp=yes (comment)",
            "",
            "x",
        ])
        let part = message.parts[0]
        XCTAssertEqual(part.parameters["charset"], "UTF-8")
        XCTAssertEqual(part.charset, "utf-8")
        XCTAssertEqual(part.parameters["format"], "flowed")
        XCTAssertEqual(part.parameters["delsp"], "yes")
    }

    func testDispositionParameters() {
        let message = MIMEFixture.parse([
            "Content-Type: application/octet-stream",
            "Content-Disposition: ATTACHMENT; filename=x.bin; size=1234",
            "",
            "x",
        ])
        XCTAssertEqual(message.parts[0].disposition, "attachment")
        XCTAssertEqual(message.parts[0].dispositionParameters["size"], "1234")
    }
}
