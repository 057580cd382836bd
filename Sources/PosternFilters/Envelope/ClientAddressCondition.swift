import PosternPolicy
import SMTPCore
import Yams

/// `client_ip`: the client's address (the PROXY address when there is one) in a set of
/// addresses and CIDR blocks, IPv4 and IPv6.
///     client_ip: 192.0.2.0/24
///     client_ip: [192.0.2.0/24, "2001:db8::/32"]
///     client_ip: { in: partner_nets }
struct ClientAddressCondition: PolicyCondition {
    let networks: [IPNetwork]
    let source: String?

    var earliestStage: PolicyStage { .connect }
    var filterName: String { "client_ip" }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        guard let network = networks.first(where: { $0.contains(facts.clientAddress) }) else { return nil }
        return ConditionMatch("client \(facts.clientAddress) in \(network)" + (source.map { " (list \($0))" } ?? ""))
    }

    static let make: ConditionFactory = { value, context in
        var texts: [(String, Node)] = []
        var source: String?
        switch value {
        case .scalar:
            if let text = context.reader.string(value, "client_ip") { texts = [(text, value)] }
        case .sequence(let sequence):
            texts = sequence.compactMap { node in context.reader.string(node, "an address or CIDR").map { ($0, node) } }
        case .mapping:
            let entries = context.reader.mapping(value, "client_ip", keys: ["in"])
            guard let listNode = entries["in"], let list = context.list(listNode) else {
                if entries["in"] == nil { context.reader.fail(value, "client_ip takes an address, a CIDR, a list of them, or { in: LIST }") }
                return nil
            }
            source = list.name
            texts = list.entries.map { ($0, listNode) }
        default:
            context.reader.fail(value, "client_ip takes an address, a CIDR, a list of them, or { in: LIST }")
            return nil
        }
        var networks: [IPNetwork] = []
        for (text, node) in texts {
            guard let network = IPNetwork(text) else {
                context.reader.fail(node, "'\(text)' is not an IP address or CIDR block" + (source.map { " (in list \($0))" } ?? ""))
                continue
            }
            networks.append(network)
        }
        return ClientAddressCondition(networks: networks, source: source)
    }
}
