import Foundation
import RabbitMQ

/// The node with a TLS listener that `scripts/tls.sh start` runs (and `make test` starts), described by
/// `RABBITMQ_TLS_URL`, `RABBITMQ_TLS_DIR` (its certificates) and `RABBITMQ_TLS_NODE`. The TLS tests are skipped
/// when these are not set.
enum TLSBroker {
    private static let environment = ProcessInfo.processInfo.environment

    /// `amqps://guest:guest@localhost:5691/`, or `nil` when no TLS node was started.
    static let url: String? = environment["RABBITMQ_TLS_URL"].flatMap { $0.isEmpty ? nil : $0 }
    /// The folder holding `ca.pem`, `client.pem`, `wrong-ca.pem`... (see scripts/tls.sh).
    static let directory: String = environment["RABBITMQ_TLS_DIR"] ?? ""
    /// The TLS node.
    static let node = BrokerNode(name: environment["RABBITMQ_TLS_NODE"] ?? "swiftrmq-tls@localhost")

    /// Whether the TLS node's variables are set.
    static var isAvailable: Bool { url != nil && !directory.isEmpty }

    /// The path of a file of the certificate folder, such as `ca.pem`.
    static func file(_ name: String) -> String {
        URL(fileURLWithPath: directory).appendingPathComponent(name).path
    }

    /// A configuration for the TLS listener that trusts `ca.pem`, named `name` at the broker.
    static func configuration(name: String) throws -> RabbitMQClient.Configuration {
        var configuration = try RabbitMQClient.Configuration(url: url ?? "amqps://guest:guest@localhost:5691/")
        configuration.tls?.caCertificatePath = file("ca.pem")
        // Generous: a TLS handshake costs CPU, and on a loaded machine a short timeout would turn a test's TLS
        // failure into a `timeout`.
        configuration.connectTimeout = .seconds(30)
        configuration.handshakeTimeout = .seconds(30)
        TestBroker.applyTimeouts(to: &configuration)
        configuration.recovery.isEnabled = false
        configuration.connectionName = name
        return configuration
    }

    /// The TLS listener's endpoint (host `localhost`, the name its certificate holds).
    static var endpoint: RabbitMQClient.Configuration.Endpoint {
        get throws { try RabbitMQClient.Configuration(url: url ?? "amqps://localhost:5691/").endpoints[0] }
    }

    /// Runs `rabbitmqctl -n TLS_NODE -q args…` and returns its standard output.
    @discardableResult
    static func rabbitmqctl(_ arguments: String...) async throws -> String {
        try await node.rabbitmqctl(arguments)
    }

    /// The TLS node's view of the connections named `name`: whether each uses TLS (`ssl`) and the subject of
    /// the client certificate it presented (empty when none).
    static func connections(named name: String) async throws -> [(ssl: Bool, peerCertificateSubject: String)] {
        try await node.connections(named: name, "ssl", "peer_cert_subject").map { ($0[0] == "true", $0[1]) }
    }

    /// Ready and unacknowledged messages and consumers of `queue` on the TLS node, or `nil` when it does not exist.
    static func queueStats(_ queue: String) async throws -> BrokerQueueCounts? {
        try await node.queueCounts(queue)
    }
}
