import Foundation
import RabbitMQ

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

        /// The short name `scripts/broker.sh` knows the node by, such as `swiftrmq-c1`.
        var shortName: String { String(name.split(separator: "@").first ?? Substring(name)) }

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
        configuration.requestTimeout = .seconds(10)
        configuration.confirmTimeout = .seconds(20)
        return configuration
    }

    // MARK: rabbitmqctl

    /// Runs `rabbitmqctl -n NODE -q args…` and returns its standard output.
    @discardableResult
    func rabbitmqctl(on node: Node, _ arguments: String...) async throws -> String {
        try await DedicatedBroker.rabbitmqctl(node: node.name, arguments)
    }

    /// Whether `node`'s Erlang VM runs (`broker.sh status`).
    func isRunning(_ node: Node) async -> Bool {
        let result = try? await DedicatedBroker.run(DedicatedBroker.script, ["status", node.shortName],
                                                    environment: ProcessInfo.processInfo.environment)
        return result?.status == 0
    }

    /// Kills the node's VM with SIGKILL, a hard crash (`broker.sh kill`).
    func kill(_ node: Node) async throws {
        let result = try await DedicatedBroker.run(DedicatedBroker.script, ["kill", node.shortName],
                                                   environment: ProcessInfo.processInfo.environment)
        guard result.status == 0 else {
            throw DedicatedBrokerError(message: "broker.sh kill \(node.shortName) exited with \(result.status):\n"
                                           + result.output)
        }
    }

    /// Starts a stopped node again on its data (`broker.sh restart`); it rejoins the cluster.
    func restart(_ node: Node) async throws {
        let result = try await DedicatedBroker.run(DedicatedBroker.script, ["restart", node.shortName],
                                                   environment: ProcessInfo.processInfo.environment)
        guard result.status == 0 else {
            throw DedicatedBrokerError(message: "broker.sh restart \(node.shortName) exited with \(result.status):\n"
                                           + result.output)
        }
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
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var allSeeAll = true
            for node in nodes {
                guard await runningNodeCount(seenFrom: node) == nodes.count else {
                    allSeeAll = false
                    break
                }
            }
            if allSeeAll { return true }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return false
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
        guard let output = try? await rabbitmqctl(on: node, "list_queues", "name", "leader", "--no-table-headers")
        else { return nil }
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 2, fields[0] == queue else { continue }
            return nodes.first { $0.name == fields[1] }
        }
        return nil
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
        let output = try await rabbitmqctl(on: node, "list_consumers", "queue_name", "channel_pid", "consumer_tag",
                                           "--no-table-headers")
        return output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "\t")
            guard fields.count == 3, fields[0] == queue else { return nil }
            // A pid prints as <NODE.N.N.N>.
            let pid = fields[1].trimmingCharacters(in: CharacterSet(charactersIn: "<>"))
            let pidNode = pid.split(separator: ".").first.map(String.init) ?? pid
            return Consumer(tag: String(fields[2]), node: pidNode)
        }
    }

    /// The queue's ready and unacknowledged messages and consumers, and every channel's consumers, unacknowledged
    /// deliveries and prefetch, as `node` sees them (for failure messages).
    func describe(queue: String, seenFrom node: Node) async -> String {
        let queues = (try? await rabbitmqctl(on: node, "list_queues", "name", "leader", "messages_ready",
                                             "messages_unacknowledged", "consumers", "--no-table-headers")) ?? "?"
        let channels = (try? await rabbitmqctl(on: node, "list_channels", "pid", "consumer_count",
                                               "messages_unacknowledged", "prefetch_count",
                                               "--no-table-headers")) ?? "?"
        let line = queues.split(separator: "\n").first { $0.hasPrefix(queue + "\t") }.map(String.init) ?? "not listed"
        return "queue [\(line)]; channels [\(channels.split(separator: "\n").joined(separator: "; "))]"
    }

    /// The broker-side ports of the connections whose client-given name is `name` (one entry per connection).
    func connectionPorts(named name: String, seenFrom node: Node) async throws -> [Int] {
        let output = try await rabbitmqctl(on: node, "list_connections", "port", "client_properties",
                                           "--no-table-headers")
        return output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "\t", maxSplits: 1)
            guard fields.count == 2, fields[1].contains("\"\(name)\"") else { return nil }
            return Int(fields[0])
        }
    }
}
