import Foundation
import RabbitMQ
import RabbitMQTestSupport

/// A RabbitMQ node of one test's own, for tests that disturb the node (memory alarm, restart) and so must not
/// use the shared one.
///
/// ```swift
/// try await DedicatedBroker.with(name: "t-flow", port: 5712) { broker in
///     try await broker.rabbitmqctl("set_vm_memory_high_watermark", "0")
/// }
/// ```
/// The node is started with `scripts/broker.sh start NAME PORT` from an empty folder, and stopped when the body
/// returns or throws.
struct DedicatedBroker: Sendable {
    /// The node's short name, such as `t-flow`.
    let name: String
    /// The node, such as `t-flow@localhost`.
    let node: BrokerNode
    /// The AMQP port on 127.0.0.1.
    let port: Int

    /// The node's AMQP URL, user `guest`.
    var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }

    /// The shared broker's test configuration, pointed at this node.
    var configuration: RabbitMQClient.Configuration {
        get throws {
            var configuration = try TestBroker.configuration
            configuration.endpoints = [.init(host: "127.0.0.1", port: port)]
            return configuration
        }
    }

    /// Starts a fresh node `name@localhost` on `port`, runs `body` with it, and stops the node afterwards, also
    /// when `body` throws or starting fails half-way.
    /// - Parameters:
    ///   - name: the node's short name; distinct from every other node on the machine.
    ///   - port: its AMQP port (the Erlang distribution port is `port + 20000`).
    ///   - extraConfig: extra `rabbitmq.conf` lines (`key = value`), on top of broker.sh's defaults.
    ///   - advancedConfig: the node's `advanced.config` (Erlang terms), for settings `rabbitmq.conf` lacks.
    ///   - body: the test's work.
    static func with<T>(name: String, port: Int, extraConfig: String? = nil, advancedConfig: String? = nil,
                        _ body: (DedicatedBroker) async throws -> T) async throws -> T {
        let broker = DedicatedBroker(name: name, node: BrokerNode(name: "\(name)@localhost"), port: port)
        var environment = ProcessInfo.processInfo.environment
        if let extraConfig { environment["BROKER_EXTRA_CONFIG"] = extraConfig }
        if let advancedConfig { environment["BROKER_ADVANCED_CONFIG"] = advancedConfig }
        let result: T
        do {
            try await ChildProcess.brokerScript(["start", name, String(port)], environment: environment)
            result = try await body(broker)
        } catch {
            await broker.stop()
            throw error
        }
        await broker.stop()
        return result
    }

    /// Stops the node; errors are ignored (broker.sh stop kills a node that does not stop).
    func stop() async {
        _ = try? await ChildProcess.brokerScript(["stop", name])
    }

    /// Runs `rabbitmqctl -n NODE -q args…` against this node and returns its standard output.
    @discardableResult
    func rabbitmqctl(_ arguments: String...) async throws -> String {
        try await node.rabbitmqctl(arguments)
    }

    /// Ready and unacknowledged messages and consumers of `queue` on this node, or `nil` when it does not exist.
    func queueStats(_ queue: String) async throws -> BrokerQueueCounts? {
        try await node.queueCounts(queue)
    }

    /// The broker's state (`running`, `blocking`, `blocked`...) of each client connection named `name`.
    func connectionStates(named connectionName: String) async throws -> [String] {
        try await node.connections(named: connectionName, "state").map { $0[0] }
    }
}

/// A dedicated node could not be started, or a command driving a node failed.
struct DedicatedBrokerError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
