// swift-tools-version: 6.2
// The benchmarks (`make bench`: rabbitmq-bench against CBaseline, which scripts/bench.sh compiles with cc) and the
// chaos soak (`make chaos`: rabbitmq-chaos), a package of their own so that the library's manifest depends only on
// what the library needs.
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "swift-rabbitmq-benchmarks",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "rabbitmq-bench", targets: ["RabbitMQBench"]),
        .executable(name: "rabbitmq-chaos", targets: ["ChaosSoak"]),
    ],
    dependencies: [
        .package(name: "swift-rabbitmq", path: ".."),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
    ],
    targets: [
        .executableTarget(
            name: "RabbitMQBench",
            dependencies: [
                .product(name: "RabbitMQ", package: "swift-rabbitmq"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "RabbitMQBench",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ChaosSoak",
            dependencies: [
                .product(name: "RabbitMQ", package: "swift-rabbitmq"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "ChaosSoak",
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
