import Foundation
import PosternNative
import PosternPolicy
import SMTPCore
import Yams

/// `country`, `continent` and `asn`: where the client's address is, from the MaxMind
/// databases named under `geoip:`. Loopback, private and unlisted addresses read as
/// `unknown`, which a rule can name. The session looks the client up once
/// (`TransactionFacts.location`, from `Policy.geoip`); the condition reads that, and looks
/// the address up itself only when no location is given.
///     geoip: { country: /var/lib/GeoIP/GeoLite2-Country.mmdb, asn: /var/lib/GeoIP/GeoLite2-ASN.mmdb }
///     if: { country: [KP, IR] }
///     if: { continent: [AS, unknown] }
///     if: { asn: [64496, unknown] }
struct GeoIPCondition: PolicyCondition {
    enum Field: String, Sendable {
        case country, continent, asn

        var database: String { self == .asn ? "asn" : "country" }
    }

    let field: Field
    let database: GeoIPDatabase
    let wanted: Set<String>

    var earliestStage: PolicyStage { .connect }
    var filterName: String { field.rawValue }

    func evaluate(_ facts: TransactionFacts) async -> ConditionMatch? {
        let value = facts.location.map { Self.value(field, of: $0) } ?? Self.value(field, of: facts.clientAddress, in: database)
        guard wanted.contains(value) else { return nil }
        return ConditionMatch("client \(facts.clientAddress) \(field.rawValue) \(value)")
    }

    /// The client's country code, continent code or AS number as text, from a location
    /// already looked up; "unknown" where it has nothing.
    static func value(_ field: Field, of location: ClientLocation) -> String {
        switch field {
        case .country: return location.country ?? "unknown"
        case .continent: return location.continent ?? "unknown"
        case .asn: return location.asn.map(String.init) ?? "unknown"
        }
    }

    /// The same, looked up in `database`; "unknown" when the database has nothing (or the
    /// lookup fails: a corrupt record never blocks mail).
    static func value(_ field: Field, of address: IPAddress, in database: GeoIPDatabase) -> String {
        guard let record = try? database.lookup(bytes: address.unmapped.bytes) else { return "unknown" }
        switch field {
        case .country: return record.countryCode ?? "unknown"
        case .continent: return record.continentCode ?? "unknown"
        case .asn: return record.autonomousSystemNumber.map(String.init) ?? "unknown"
        }
    }

    static func factory(_ field: Field) -> ConditionFactory {
        { value, context in
            guard let (path, pathNode) = context.geoipDatabases[field.database] else {
                context.reader.fail(value, "\(field.rawValue) needs geoip: { \(field.database): PATH } in the policy")
                return nil
            }
            _ = pathNode
            // The compiler opened it (and reported it when it could not).
            guard let database = context.resources.value("geoip:\(path)", make: { () -> GeoIPDatabase? in nil }) else { return nil }
            var entries: [(String, Node)] = []
            switch value {
            case .sequence(let sequence):
                entries = sequence.compactMap { node in context.reader.string(node, field.rawValue).map { ($0, node) } }
            case .scalar:
                if let text = context.reader.string(value, field.rawValue) { entries = [(text, value)] }
            case .mapping:
                let map = context.reader.mapping(value, field.rawValue, keys: ["in"])
                if let node = map["in"], let list = context.list(node) { entries = list.entries.map { ($0, node) } }
            default:
                break
            }
            var wanted: Set<String> = []
            for (text, node) in entries {
                let normalised = text == "unknown" ? text : field == .asn ? text.uppercased().replacingOccurrences(of: "AS", with: "") : text.uppercased()
                let valid: Bool
                switch field {
                case .country: valid = normalised == "unknown" || ISOCodes.countries.contains(normalised)
                case .continent: valid = normalised == "unknown" || ISOCodes.continents.contains(normalised)
                case .asn: valid = normalised == "unknown" || (UInt32(normalised) != nil)
                }
                if valid { wanted.insert(normalised) } else { context.reader.fail(node, "unknown \(field.rawValue) '\(text)'") }
            }
            if wanted.isEmpty && entries.isEmpty {
                context.reader.fail(value, "\(field.rawValue) takes a code, a list of codes, or { in: LIST }")
                return nil
            }
            return GeoIPCondition(field: field, database: database, wanted: wanted)
        }
    }
}

/// ISO 3166-1 alpha-2 codes (plus XK, which MaxMind uses for Kosovo) and MaxMind's continent codes.
enum ISOCodes {
    static let countries: Set<String> = Set("""
        AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
        CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO \
        FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE \
        JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO \
        MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW \
        PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM \
        TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK
        """.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty })
    static let continents: Set<String> = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"]
}
