// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

// On x86_64 the format layer is built for the SSE4.2 baseline (x86-64-v2, as RHEL 9 requires) so
// that crc32c, summed over every 64 KiB block read or written, runs on the crc32 instruction:
// about 5 times the table-driven speed here.
#if arch(x86_64)
let formatSettings = strict + [
    .unsafeFlags(["-target-cpu", "nehalem"], .when(platforms: [.linux])),
    .define("HARDWARE_CRC32C", .when(platforms: [.linux])),
]
#else
let formatSettings = strict
#endif

let package = Package(
    name: "scoutfs-swift",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "scoutfs", targets: ["scoutfs"]),
        .library(name: "ScoutFormat", targets: ["ScoutFormat"]),
        .library(name: "ScoutStore", targets: ["ScoutStore"]),
        .library(name: "ScoutNet", targets: ["ScoutNet"]),
        .library(name: "ScoutClient", targets: ["ScoutClient"]),
        .library(name: "ScoutServer", targets: ["ScoutServer"]),
        .library(name: "ScoutFS", targets: ["ScoutFS"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        .target(name: "ScoutFormat", swiftSettings: formatSettings),
        .target(name: "ScoutStore", dependencies: ["ScoutFormat"], swiftSettings: strict),
        .target(
            name: "ScoutNet",
            dependencies: [
                "ScoutFormat",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        .target(name: "ScoutClient", dependencies: ["ScoutFormat", "ScoutStore", "ScoutNet"], swiftSettings: strict),
        .target(name: "ScoutServer", dependencies: ["ScoutFormat", "ScoutStore", "ScoutNet"], swiftSettings: strict),
        .target(
            name: "ScoutFS",
            dependencies: ["ScoutFormat", "ScoutStore", "ScoutNet", "ScoutClient", "ScoutServer", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .target(name: "ScoutFUSE", dependencies: ["CFuse3", "ScoutFS", "ScoutClient", "ScoutStore", "ScoutFormat",
                                                  .product(name: "CoreMetrics", package: "swift-metrics")], swiftSettings: strict),
        .executableTarget(
            name: "scoutfs",
            dependencies: [
                "ScoutFormat", "ScoutStore", "ScoutNet", "ScoutFS", "ScoutFUSE",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // Whole-mount rates of any directory; scripts/bench-mount.sh runs it on scoutfs and on
        // libfuse's passthrough_ll.
        .executableTarget(name: "mountbench", swiftSettings: strict),
        // Helpers shared by the test targets (not shipped).
        .target(name: "ScoutTestSupport", path: "Tests/ScoutTestSupport", swiftSettings: strict),
        .testTarget(name: "ScoutFormatTests", dependencies: ["ScoutFormat"], swiftSettings: strict),
        .testTarget(name: "ScoutStoreTests", dependencies: ["ScoutStore", "ScoutFormat", "ScoutTestSupport"], swiftSettings: strict),
        .testTarget(name: "ScoutNetTests", dependencies: ["ScoutNet", "ScoutFormat", "ScoutTestSupport"], swiftSettings: strict),
        .testTarget(name: "ScoutClientTests", dependencies: ["ScoutClient", "ScoutServer", "ScoutStore", "ScoutNet", "ScoutFormat", "ScoutTestSupport"], swiftSettings: strict),
        .testTarget(name: "ScoutServerTests", dependencies: ["ScoutServer", "ScoutClient", "ScoutStore", "ScoutNet", "ScoutFormat", "ScoutTestSupport"], swiftSettings: strict),
        .testTarget(name: "ScoutFSTests", dependencies: ["ScoutFS", "ScoutClient", "ScoutStore", "ScoutFormat", "ScoutTestSupport"], swiftSettings: strict),
        .testTarget(name: "ScoutFUSETests", dependencies: ["ScoutFUSE", "ScoutFS", "ScoutStore", "ScoutFormat", "ScoutTestSupport"], swiftSettings: strict),
        .testTarget(name: "scoutfsTests", dependencies: ["ScoutStore", "ScoutFormat", "ScoutTestSupport"], swiftSettings: strict),
    ]
)
