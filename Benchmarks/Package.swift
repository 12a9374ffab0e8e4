// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "scoutfs-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "scoutfs-swift", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .target(name: "BenchmarkThreads", path: "Benchmarks/BenchmarkThreads"),
        .executableTarget(
            name: "BTreeBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "ScoutStore", package: "scoutfs-swift"),
                .product(name: "ScoutFormat", package: "scoutfs-swift"),
            ],
            path: "Benchmarks/BTreeBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "LockBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                "BenchmarkThreads",
                .product(name: "ScoutClient", package: "scoutfs-swift"),
                .product(name: "ScoutServer", package: "scoutfs-swift"),
                .product(name: "ScoutNet", package: "scoutfs-swift"),
                .product(name: "ScoutFormat", package: "scoutfs-swift"),
            ],
            path: "Benchmarks/LockBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "FilesystemBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                "BenchmarkThreads",
                .product(name: "ScoutFS", package: "scoutfs-swift"),
                .product(name: "ScoutStore", package: "scoutfs-swift"),
                .product(name: "ScoutFormat", package: "scoutfs-swift"),
            ],
            path: "Benchmarks/FilesystemBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
