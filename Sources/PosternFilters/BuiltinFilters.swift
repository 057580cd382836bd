import PosternPolicy

/// The built-in filters, registered by name. Each is an ordinary `PolicyCondition`; a new
/// filter is one more `register` call.
public enum BuiltinFilters {
    public static var registry: ConditionRegistry {
        var registry = ConditionRegistry()
        registry.register("client_ip", ClientAddressCondition.make)
        registry.register("helo", HeloCondition.make)
        registry.register("client_name", ClientNameCondition.make)
        registry.register("client_name_status", ClientNameStatusCondition.make)
        registry.register("dnsbl", DNSListCondition.make)
        registry.register("dnsbl_score", DNSListScoreCondition.make)
        registry.register("spf", SPFCondition.make)
        registry.register("score", ScoreCondition.make)
        registry.register("sender", AddressCondition.makeSender)
        registry.register("recipient", AddressCondition.makeRecipient)
        registry.register("auth_user", AuthUserCondition.make)
        registry.register("tls", TLSCondition.make)
        registry.register("size", SizeCondition.make)
        registry.register("country", GeoIPCondition.factory(.country))
        registry.register("continent", GeoIPCondition.factory(.continent))
        registry.register("asn", GeoIPCondition.factory(.asn))
        registry.register("limit", LimitCondition.make)
        registry.register("header.", ContentCondition.factory(.header("")))
        registry.register("milter.", EngineCondition.factory(prefix: "milter."))
        registry.register("policy_service.", EngineCondition.factory(prefix: "policy_service."))
        registry.register("subject", ContentCondition.factory(.subject))
        registry.register("body", ContentCondition.factory(.body))
        registry.register("attachment_name", ContentCondition.factory(.attachmentName))
        registry.register("attachment_type", ContentCondition.factory(.attachmentType))
        registry.register("raw", ContentCondition.factory(.raw))
        return registry
    }

    /// A compiler with every built-in filter and a fresh in-memory rate-limit store.
    public static var compiler: PolicyCompiler { PolicyCompiler(registry: registry) }

    /// A compiler counting limits in `store` (keep one store across reloads).
    public static func compiler(rateLimitStore store: any RateLimitStore) -> PolicyCompiler {
        PolicyCompiler(registry: registry, rateLimitStore: store)
    }
}
