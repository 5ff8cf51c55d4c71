import Foundation
import RabbitMQ
import RabbitMQTestSupport

/// The three-node cluster started by `make test` (`scripts/cluster.sh`), for failover tests.
///
/// Its nodes and AMQP URLs come from `RABBITMQ_CLUSTER_NODES` and `RABBITMQ_CLUSTER_URLS` (comma-separated, in
/// the same order); without them ``isAvailable`` is `false` and the cluster tests are skipped. Tests that kill a
/// node run it inside ``withRestoredCluster(_:)``, which restarts every stopped node afterwards, also on failure.
struct ClusterBroker: Sendable {
    /// One node of the cluster.
    struct Node: Sendable, Hashable, CustomStringConvertible {
        /// The full node name, such as `swiftrmq-c1@localhost`.
        let name: String
        /// Its AMQP URL.
        let url: String
        /// Its AMQP endpoint.
        let endpoint: RabbitMQClient.Configuration.Endpoint

        /// The node, for `rabbitmqctl`.
        var broker: BrokerNode { BrokerNode(name: name) }

        /// The short name `scripts/broker.sh` knows the node by, such as `swiftrmq-c1`.
        var shortName: String { broker.shortName }

        var description: String { name }
    }

    /// The nodes, in the order of the environment variables (node 1 first).
    let nodes: [Node]

    /// The cluster from the environment, or `nil` when the variables are unset or inconsistent.
    static let current: ClusterBroker? = {
        let environment = ProcessInfo.processInfo.environment
        guard let urls = environment["RABBITMQ_CLUSTER_URLS"], let names = environment["RABBITMQ_CLUSTER_NODES"]
        else { return nil }
        let urlList = urls.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let nameList = names.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard urlList.count == nameList.count, urlList.count >= 3 else { return nil }
        var nodes: [Node] = []
        for (name, url) in zip(nameList, urlList) {
            guard let configuration = try? RabbitMQClient.Configuration(url: url),
                  let endpoint = configuration.endpoints.first else { return nil }
            nodes.append(Node(name: name, url: url, endpoint: endpoint))
        }
        return ClusterBroker(nodes: nodes)
    }()

    /// Whether the cluster's variables are set.
    static var isAvailable: Bool { current != nil }

    /// The test configuration (timeouts of ``TestBroker/configuration``) with `endpoints` in the given order.
    func configuration(endpoints: [Node]) throws -> RabbitMQClient.Configuration {
        var configuration = try RabbitMQClient.Configuration(url: endpoints[0].url)
        configuration.endpoints = endpoints.map(\.endpoint)
        configuration.shuffleEndpoints = false
        TestBroker.applyTimeouts(to: &configuration)
        return configuration
    }

    // MARK: rabbitmqctl

    /// Runs `rabbitmqctl -n NODE -q args…` and returns its standard output.
    @discardableResult
    func rabbitmqctl(on node: Node, _ arguments: String...) async throws -> String {
        try await node.broker.rabbitmqctl(arguments)
    }

    /// Whether `node`'s Erlang VM runs (`broker.sh status`).
    func isRunning(_ node: Node) async -> Bool {
        (try? await ChildProcess.brokerScript(["status", node.shortName])) != nil
    }

    /// Kills the node's VM with SIGKILL, a hard crash (`broker.sh kill`).
    func kill(_ node: Node) async throws {
        try await ChildProcess.brokerScript(["kill", node.shortName])
    }

    /// Starts a stopped node again on its data (`broker.sh restart`); it rejoins the cluster.
    func restart(_ node: Node) async throws {
        try await ChildProcess.brokerScript(["restart", node.shortName])
    }

    /// How many cluster nodes `node` sees running, or `nil` if it cannot be asked.
    func runningNodeCount(seenFrom node: Node) async -> Int? {
        guard let output = try? await rabbitmqctl(on: node, "eval", "length(rabbit_nodes:all_running()).") else {
            return nil
        }
        return Int(output.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Restarts every node that is not running and waits (at most `timeout`) until each node sees all of them
    /// running. Returns whether it got there.
    @discardableResult
    func restoreAllNodes(timeout: Duration = .seconds(90)) async -> Bool {
        for node in nodes {
            guard await !isRunning(node) else { continue }
            do {
                try await restart(node)
            } catch {
                print("ClusterBroker: cannot restart \(node): \(error)")
            }
        }
        return (try? await eventually(timeout: timeout, every: .milliseconds(500)) {
            for node in nodes {
                guard await runningNodeCount(seenFrom: node) == nodes.count else { return false }
            }
            return true
        }) == true
    }

    /// Runs `body` with every node running first, and restores the cluster to all nodes running afterwards, also
    /// when `body` throws.
    func withRestoredCluster<T>(_ body: () async throws -> T) async throws -> T {
        guard await restoreAllNodes() else {
            throw DedicatedBrokerError(message: "the cluster does not run all \(nodes.count) nodes before the test")
        }
        let result: T
        do {
            result = try await body()
        } catch {
            await restoreAllNodes()
            throw error
        }
        guard await restoreAllNodes() else {
            throw DedicatedBrokerError(message: "the cluster did not get back to \(nodes.count) running nodes")
        }
        return result
    }

    /// The node holding the leader of quorum queue `queue`, as seen by `node`, or `nil` if unknown.
    func leader(of queue: String, seenFrom node: Node) async -> Node? {
        guard let rows = try? await node.broker.list("list_queues", ["name", "leader"]),
              let row = rows.first(where: { $0[0] == queue }) else { return nil }
        return nodes.first { $0.name == row[1] }
    }

    /// A consumer as `list_consumers` shows it.
    struct Consumer: Sendable, Hashable, CustomStringConvertible {
        /// The consumer tag.
        let tag: String
        /// The node of the consumer's channel, such as `swiftrmq-c1@localhost`.
        let node: String

        var description: String { "\(tag)@\(node)" }
    }

    /// The consumers of `queue`, as `list_consumers` on `node` shows them.
    func consumers(on queue: String, seenFrom node: Node) async throws -> [Consumer] {
        try await node.broker.list("list_consumers", ["queue_name", "channel_pid", "consumer_tag"]).compactMap { row in
            guard row[0] == queue else { return nil }
            // A pid prints as <NODE.N.N.N>.
            let pid = row[1].trimmingCharacters(in: CharacterSet(charactersIn: "<>"))
            let pidNode = pid.split(separator: ".").first.map(String.init) ?? pid
            return Consumer(tag: row[2], node: pidNode)
        }
    }

    /// The queue's ready and unacknowledged messages and consumers, and every channel's consumers, unacknowledged
    /// deliveries and prefetch, as `node` sees them (for failure messages).
    func describe(queue: String, seenFrom node: Node) async -> String {
        let columns = ["name", "leader", "messages_ready", "messages_unacknowledged", "consumers"]
        let queues = (try? await node.broker.list("list_queues", columns)) ?? []
        let channels = (try? await node.broker.list("list_channels", ["pid", "consumer_count",
                                                                      "messages_unacknowledged", "prefetch_count"]))
        let line = queues.first { $0[0] == queue }?.joined(separator: " ") ?? "not listed"
        let channelLines = channels?.map { $0.joined(separator: " ") }.joined(separator: "; ") ?? "?"
        return "queue [\(line)]; channels [\(channelLines)]"
    }

    /// The broker-side ports of the connections whose client-given name is `name` (one entry per connection).
    func connectionPorts(named name: String, seenFrom node: Node) async throws -> [Int] {
        try await node.broker.connections(named: name, "port").compactMap { Int($0[0]) }
    }
}
