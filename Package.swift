// swift-tools-version: 6.2
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "swift-rabbitmq",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RabbitMQ", targets: ["RabbitMQ"]),
        // Durable deduplication stores (and, on top of them, the transactional outbox), each in a product of its own
        // so that the core library does not depend on a database client.
        .library(name: "RabbitMQSQLite", targets: ["RabbitMQSQLite"]),
        .library(name: "RabbitMQPostgres", targets: ["RabbitMQPostgres"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"]), .brew(["rabbitmq-c"])]
        ),
        .target(
            name: "RabbitMQ",
            dependencies: [
                "CRabbitMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "RabbitMQSQLite",
            dependencies: [
                "RabbitMQ",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "RabbitMQPostgres",
            dependencies: [
                "RabbitMQ",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "RabbitMQTestSupport",
            dependencies: [.product(name: "Tracing", package: "swift-distributed-tracing")],
            path: "Tests/RabbitMQTestSupport",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "RabbitMQTests",
            dependencies: [
                "RabbitMQ",
                "CRabbitMQ",
                "RabbitMQTestSupport",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "RabbitMQIntegrationTests",
            dependencies: [
                "RabbitMQ",
                "RabbitMQTestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        // A worker process for the persistence tests: several of them consume one queue and share a store.
        .executableTarget(
            name: "DeduplicationWorker",
            dependencies: [
                "RabbitMQ",
                "RabbitMQSQLite",
                "RabbitMQPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Tests/DeduplicationWorker",
            swiftSettings: strictSettings
        ),
        // The deduplication stores and the transactional outbox (Outbox/) against real databases, a broker, and
        // worker processes (issue 19).
        .testTarget(
            name: "RabbitMQPersistenceTests",
            dependencies: [
                "RabbitMQ",
                "RabbitMQSQLite",
                "RabbitMQPostgres",
                "RabbitMQTestSupport",
                "DeduplicationWorker",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)

// The documentation plugin, for `make docs` (scripts/docs.sh sets RABBITMQ_DOCS), and only then, so that users of the
// library do not resolve it.
if Context.environment["RABBITMQ_DOCS"] != nil {
    package.dependencies.append(.package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"))
}
