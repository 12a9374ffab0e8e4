// swift-tools-version: 6.1
import PackageDescription

// A coverage-guided fuzz target (libFuzzer) over the decoders of everything a mount reads from
// disk or from the control socket, and over `check` and a mount of mutated images. Built only
// with `--sanitize=fuzzer` (libFuzzer supplies main): scripts/fuzz.sh builds and runs it.
let package = Package(
    name: "scoutfs-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "scoutfs-swift", path: ".."),
    ],
    targets: [
        .executableTarget(
            name: "ScoutFuzz",
            dependencies: [
                .product(name: "ScoutFormat", package: "scoutfs-swift"),
                .product(name: "ScoutStore", package: "scoutfs-swift"),
                .product(name: "ScoutFS", package: "scoutfs-swift"),
            ],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ]
)
