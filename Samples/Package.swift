// swift-tools-version: 6.2
// The sample order pipeline, a package of its own so that the library's manifest depends only on what the library
// needs. `make demo` runs it; `make test` runs its test (Tests/OrderPipelineTests) against the same brokers.
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "swift-rabbitmq-samples",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "order-pipeline", targets: ["OrderPipeline"]),
    ],
    dependencies: [
        .package(name: "swift-rabbitmq", path: ".."),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.0.0"),
    ],
    targets: [
        .executableTarget(
            name: "OrderPipeline",
            dependencies: [
                .product(name: "RabbitMQ", package: "swift-rabbitmq"),
                .product(name: "RabbitMQSQLite", package: "swift-rabbitmq"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "OrderPipeline",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "OrderPipelineTests",
            dependencies: [
                "OrderPipeline",
                .product(name: "RabbitMQ", package: "swift-rabbitmq"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
