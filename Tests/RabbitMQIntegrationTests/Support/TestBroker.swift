import Foundation
import Logging
import RabbitMQ
import Testing

/// The broker the integration tests run against: `AMQP_URL` (set by `make test`), and its node
/// (``BrokerNode/shared``) for checking what the broker holds.
enum TestBroker {
    static let url = ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5673/"
    static let node = ProcessInfo.processInfo.environment["RABBITMQ_NODE"] ?? "swiftrmq@localhost"
    static let rabbitmqctlPath = ProcessInfo.processInfo.environment["RABBITMQCTL"] ?? "/usr/lib/rabbitmq/bin/rabbitmqctl"

    static var configuration: RabbitMQClient.Configuration {
        get throws {
            var configuration = try RabbitMQClient.Configuration(url: url)
            applyTimeouts(to: &configuration)
            return configuration
        }
    }

    /// Sets the tests' request and confirm timeouts: hang guards, not assertions. A broker on a loaded two-core
    /// machine has taken more than 10 s to answer a quorum `queue.declare` while other tests start theirs; a
    /// test that checks a timeout sets its own.
    static func applyTimeouts(to configuration: inout RabbitMQClient.Configuration) {
        configuration.requestTimeout = .seconds(60)
        configuration.confirmTimeout = .seconds(60)
    }

    static let logger: Logger = {
        var logger = Logger(label: "rabbitmq.tests")
        logger.logLevel = ProcessInfo.processInfo.environment["LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        return logger
    }()

    /// A client for one test, named `test NAME` at the broker unless `configuration` has a name; closed by
    /// ``withClient(name:configuration:configure:_:)``.
    /// - Parameters:
    ///   - configuration: the configuration to start from (a dedicated, TLS or cluster node's); by default the
    ///     shared node's ``configuration``.
    ///   - configure: changes to make to it.
    static func makeClient(name: String = #function, configuration: RabbitMQClient.Configuration? = nil,
                           configure: (inout RabbitMQClient.Configuration) -> Void = { _ in }) throws -> RabbitMQClient {
        var configuration = try configuration ?? Self.configuration
        if configuration.connectionName == nil { configuration.connectionName = "test \(name)" }
        configure(&configuration)
        return RabbitMQClient(configuration: configuration, logger: logger)
    }

    /// Runs `body` with a connected client (see ``makeClient(name:configuration:configure:)``) and closes it
    /// afterwards, also on failure.
    static func withClient<T>(name: String = #function, configuration: RabbitMQClient.Configuration? = nil,
                              configure: (inout RabbitMQClient.Configuration) -> Void = { _ in },
                              _ body: (RabbitMQClient) async throws -> T) async throws -> T {
        let client = try makeClient(name: name, configuration: configuration, configure: configure)
        do {
            try await client.connect()
            let result = try await body(client)
            await client.close()
            return result
        } catch {
            await client.close()
            throw error
        }
    }

    /// A name no other test uses.
    static func uniqueName(_ prefix: String = "test") -> String {
        "\(prefix).\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Runs `rabbitmqctl -n NODE -q args…` against the shared node and returns its standard output.
    @discardableResult
    static func rabbitmqctl(_ arguments: String...) async throws -> String {
        try await BrokerNode.shared.rabbitmqctl(arguments)
    }

    /// Runs `rabbitmqctl -n NODE -q args…` against the shared node and returns its standard output.
    @discardableResult
    static func rabbitmqctl(_ arguments: [String]) async throws -> String {
        try await BrokerNode.shared.rabbitmqctl(arguments)
    }

    /// Messages ready in `queue`, as the shared node counts them.
    static func messageCount(_ queue: String) async throws -> Int? {
        try await queueStats(queue)?.ready
    }

    /// Ready and unacknowledged messages and consumers of `queue`, as the shared node counts them.
    static func queueStats(_ queue: String) async throws -> (ready: Int, unacked: Int, consumers: Int)? {
        try await BrokerNode.shared.queueCounts(queue).map { ($0.ready, $0.unacked, $0.consumers) }
    }

    /// The shared node's pids of the connections whose client-given name is `name` (see `makeClient`).
    static func connectionPIDs(named name: String) async throws -> [String] {
        try await BrokerNode.shared.connections(named: name, "pid").map { $0[0] }
    }

    /// Closes, from the shared node, the connections whose client-given name is `name`, as a network failure or
    /// an operator would; other tests' connections are left alone.
    static func closeConnections(named name: String, reason: String = "closed by the test") async throws {
        try await BrokerNode.shared.closeConnections(named: name, reason: reason)
    }
}
