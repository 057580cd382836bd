// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Postern",
    products: [
        .executable(name: "postern", targets: ["postern"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // The SMTP protocol with no I/O: grammar, replies, state machines, codecs.
        .target(
            name: "SMTPCore",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // Channel handlers: inbound events for the session driver, the SMTP client's request/reply matching.
        .target(
            name: "SMTPNIO",
            dependencies: [
                "SMTPCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Re-origination: the SMTP client to the upstream MTA, failover, maildir delivery.
        .target(
            name: "PosternUpstream",
            dependencies: [
                "SMTPCore", "SMTPNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // External stage checks: the milter client and the policy-delegation client (codecs with no I/O first).
        .target(
            name: "PosternEngines",
            dependencies: [
                "SMTPCore", "SMTPNIO", "PosternPolicy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The MIME parser (RFC 5322 headers, RFC 2045-2047 encodings, charsets, parts,
        // attachments) and the one header scan per message.
        .target(
            name: "PosternMIME",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // The decision record and its JSON-lines writer.
        .target(
            name: "PosternLog",
            dependencies: ["SMTPCore", .product(name: "Logging", package: "swift-log")]
        ),
        // C libraries, reached only through PosternNative.
        .systemLibrary(
            name: "CPCRE2",
            pkgConfig: "libpcre2-8",
            providers: [.apt(["libpcre2-dev"])]
        ),
        .systemLibrary(
            name: "CMaxMindDB",
            pkgConfig: "libmaxminddb",
            providers: [.apt(["libmaxminddb-dev"])]
        ),
        // libunbound: the asynchronous, caching, validating resolver (libunbound-dev). Not
        // through pkg-config: Debian's libunbound.pc requires the .pc files of its private
        // dependencies (libevent, nettle), which libunbound-dev does not install.
        .systemLibrary(name: "CUnbound"),
        .systemLibrary(name: "CHyperscan"),
        // crypt(3) (libxcrypt; headers from libcrypt-dev, which libc6-dev pulls in).
        .systemLibrary(name: "CCrypt"),
        // Safe Swift types over PCRE2 (regex, JIT), libmaxminddb (GeoIP), libunbound (DNS) and crypt(3).
        .target(name: "PosternNative", dependencies: ["CPCRE2", "CMaxMindDB", "CUnbound", "CHyperscan", "CCrypt"]),
        // The policy model, its YAML compiler and the rule engine.
        .target(
            name: "PosternPolicy",
            dependencies: [
                "SMTPCore", "PosternNative",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // The built-in filters, one file each, registered by name.
        .target(
            name: "PosternFilters",
            dependencies: [
                "PosternPolicy", "PosternNative", "PosternMIME", "SMTPCore",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // A small RESP client over NIO and the shared rate-limit store on Redis.
        .target(
            name: "PosternRedis",
            dependencies: [
                "PosternPolicy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The gateway session with no I/O: the SessionMachine (inputs in, actions out), the
        // decision record under construction, reply texts, the Received header, identifiers.
        .target(
            name: "PosternSession",
            dependencies: [
                "SMTPCore", "PosternPolicy", "PosternMIME", "PosternLog",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The connection driver, listener and status services, configuration, metrics.
        .target(
            name: "PosternServer",
            dependencies: [
                "SMTPCore", "SMTPNIO", "PosternUpstream", "PosternLog", "PosternPolicy", "PosternFilters", "PosternRedis", "PosternEngines",
                "PosternSession", "PosternMIME", "PosternNative",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "postern",
            dependencies: [
                "PosternServer", "PosternEngines", "PosternFilters", "PosternPolicy", "PosternLog", "PosternMIME", "PosternNative", "SMTPCore",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The policy micro-benchmark (make bench-policy): a release-mode harness, not a test.
        .executableTarget(name: "postern-policy-bench", dependencies: ["PosternFilters", "PosternPolicy", "PosternMIME", "SMTPCore"], path: "Benchmarks/PolicyBench"),
        // Fuzz targets and their libFuzzer driver; `make fuzz` builds it with -sanitize=fuzzer.
        .target(
            name: "PosternFuzzTargets",
            dependencies: [
                "SMTPCore", "PosternPolicy", "PosternFilters", "PosternMIME", "PosternSession", "PosternLog",
                "PosternRedis", "PosternServer", "PosternUpstream", "PosternEngines",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(name: "SMTPFuzzer", dependencies: ["PosternFuzzTargets"]),
        .testTarget(name: "SMTPCoreTests", dependencies: ["SMTPCore"]),
        .testTarget(
            name: "PosternEnginesTests",
            dependencies: [
                "PosternEngines", "PosternPolicy", "SMTPCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "SMTPNIOTests",
            dependencies: [
                "SMTPNIO", "SMTPCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "PosternUpstreamTests",
            dependencies: [
                "PosternUpstream", "SMTPCore", "SMTPNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "PosternNativeTests",
            dependencies: ["PosternNative"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(name: "PosternServerTests", dependencies: ["PosternServer", "PosternEngines"]),
        .testTarget(name: "PosternMIMETests", dependencies: ["PosternMIME"]),
        .testTarget(
            name: "PosternSessionTests",
            dependencies: [
                "PosternSession", "PosternPolicy", "PosternFilters", "PosternLog", "PosternMIME", "SMTPCore",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "PosternLogTests", dependencies: ["PosternLog", "SMTPCore"]),
        .testTarget(name: "PosternPolicyTests", dependencies: ["PosternPolicy", "SMTPCore"]),
        .testTarget(name: "PosternFiltersTests", dependencies: ["PosternFilters", "PosternPolicy", "SMTPCore"]),
        .testTarget(
            name: "PosternRedisTests",
            dependencies: [
                "PosternRedis", "PosternPolicy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "PosternFuzzTests", dependencies: ["PosternFuzzTargets", "SMTPCore", "PosternPolicy", "PosternFilters", "PosternRedis"]),
        .testTarget(
            name: "PosternIntegrationTests",
            dependencies: ["postern"],
            resources: [.copy("Fixtures")]
        ),
    ]
)
