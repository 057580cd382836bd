import NIOCore

/// Collects a message's header section (up to the first empty line, RFC 5322 §2.1) as the
/// content streams past, within a size cap, and reads fields from it.
public struct MessageHeaderCollector: Sendable {
    /// Header sections past this are not collected further.
    public static let maximumHeaderBytes = 64 * 1024

    private var collected: [UInt8] = []
    public private(set) var isComplete = false

    public init() {}

    public mutating func feed(_ content: ByteBuffer) {
        guard !isComplete else { return }
        for byte in content.readableBytesView {
            collected.append(byte)
            let count = collected.count
            if count >= 2 && collected[count - 1] == UInt8(ascii: "\n") && collected[count - 2] == UInt8(ascii: "\n") {
                isComplete = true
            } else if count >= 4 && collected[count - 1] == UInt8(ascii: "\n") && collected[count - 2] == UInt8(ascii: "\r")
                        && collected[count - 3] == UInt8(ascii: "\n") {
                isComplete = true
            } else if count == 2 && collected == [UInt8(ascii: "\r"), UInt8(ascii: "\n")] {
                isComplete = true
            }
            if isComplete || count >= Self.maximumHeaderBytes {
                isComplete = true
                return
            }
        }
    }

    /// The unfolded value of the first field named `name` (case-insensitive), trimmed.
    public func value(of name: String) -> String? {
        let wanted = name.lowercased() + ":"
        var current: String?
        // Split bytes, not Characters: "\r\n" is one Character in Swift.
        for rawLine in collected.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            var bytes = rawLine
            if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
            let line = Substring(String(decoding: bytes, as: UTF8.self))
            if line.isEmpty { break }
            if let first = line.first, first == " " || first == "\t" {
                if current != nil { current! += " " + line.trimmingCharacters() }
                continue
            }
            if let current { return current.trimmingCharacters() }
            if line.lowercased().hasPrefix(wanted) {
                current = String(line.dropFirst(wanted.count))
            }
        }
        return current?.trimmingCharacters()
    }
}

extension StringProtocol {
    fileprivate func trimmingCharacters() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" { view = view.dropLast() }
        return String(view)
    }
}
