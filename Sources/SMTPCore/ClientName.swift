/// The client's host name as forward-confirmed reverse DNS (FCrDNS) found it at connect: the
/// PTR names of its address, each looked up again (A or AAAA) until one leads back to it.
public struct ClientName: Hashable, Sendable, CustomStringConvertible {
    public enum Status: String, Hashable, Sendable, CaseIterable {
        /// A PTR name whose A/AAAA records include the client's address.
        case verified
        /// PTR names, none of which leads back to the address.
        case unverified
        /// No PTR record.
        case none
        /// A lookup failed temporarily (timeout, SERVFAIL): nothing is known.
        case tempfail
    }

    public var status: Status
    /// The verified name; for `unverified`, the first PTR name (for the record, never trusted).
    public var name: String?

    public init(_ status: Status, name: String? = nil) {
        self.status = status
        self.name = name
    }

    /// The name to show as the client's (Received header, XCLIENT): only a verified one.
    public var verifiedName: String? { status == .verified ? name : nil }

    /// XCLIENT/XFORWARD `NAME=`: the verified name, `[TEMPUNAVAIL]` after a temporary error,
    /// else `[UNAVAILABLE]` (Postfix's XCLIENT_README).
    public var xclientValue: String {
        switch status {
        case .verified: return name ?? "[UNAVAILABLE]"
        case .tempfail: return "[TEMPUNAVAIL]"
        case .unverified, .none: return "[UNAVAILABLE]"
        }
    }

    public var description: String { name.map { "\(status.rawValue) \($0)" } ?? status.rawValue }
}
