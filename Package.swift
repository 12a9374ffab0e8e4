// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "scoutfs-swift",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "scoutfs", targets: ["scoutfs"]),
        .library(name: "ScoutFormat", targets: ["ScoutFormat"]),
        .library(name: "ScoutStore", targets: ["ScoutStore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "ScoutFormat", swiftSettings: strict),
        .target(name: "ScoutStore", dependencies: ["ScoutFormat"], swiftSettings: strict),
        .executableTarget(
            name: "scoutfs",
            dependencies: [
                "ScoutFormat", "ScoutStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "ScoutFormatTests", dependencies: ["ScoutFormat"], swiftSettings: strict),
        .testTarget(name: "ScoutStoreTests", dependencies: ["ScoutStore", "ScoutFormat"], swiftSettings: strict),
        .testTarget(name: "scoutfsTests", dependencies: ["ScoutStore", "ScoutFormat"], swiftSettings: strict),
    ]
)
