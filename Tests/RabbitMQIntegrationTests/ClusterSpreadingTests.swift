import Foundation
import RabbitMQ
import Testing
import RabbitMQTestSupport

/// Clients given the whole cluster spread over its nodes, and move to the others when their node dies. Part of
/// the serialized failover suite, since it kills a node.
extension ClusterFailoverTests {
    /// How many of the connections named `name` each node holds, keyed by the node's AMQP port (the broker-side
    /// port of a connection), as `observer` lists them.
    static func connectionsPerPort(named name: String, cluster: ClusterBroker, observer: ClusterBroker.Node)
        async throws -> [Int: Int]
    {
        try await cluster.connectionPorts(named: name, seenFrom: observer).reduce(into: [:]) { $0[$1, default: 0] += 1 }
    }

    @Test("30 clients given the cluster's URLs spread over all three nodes, and fail over when one dies")
    func clientsSpreadOverTheNodesAndFailOver() async throws {
        let cluster = try #require(ClusterBroker.current)
        try await cluster.withRestoredCluster {
            let queue = TestBroker.uniqueName("spread")
            _ = try await Self.declareQuorumQueue(queue, through: cluster.nodes[0], cluster: cluster)
            let name = "spread \(UUID().uuidString.prefix(8))"
            // What a replica of a service would write: every node's URL, the library's default shuffling.
            var configuration = try RabbitMQClient.Configuration(urls: cluster.nodes.map(\.url))
            TestBroker.applyTimeouts(to: &configuration)
            configuration.connectionName = name
            configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
            #expect(configuration.shuffleEndpoints)
            let clients = (0..<30).map { _ in RabbitMQClient(configuration: configuration, logger: TestBroker.logger) }
            do {
                try await Self.spreadAndFailOver(clients, name: name, queue: queue, cluster: cluster)
            } catch {
                await Self.close(clients)
                throw error
            }
            await Self.close(clients)
            _ = try await TestBroker.withClient(configuration: configuration) { client in
                try await client.deleteQueue(queue)
            }
        }
    }

    static func close(_ clients: [RabbitMQClient]) async {
        await withTaskGroup(of: Void.self) { group in
            for client in clients { group.addTask { await client.close() } }
        }
    }

    /// Connects `clients`, checks they spread over every node, kills the busiest node and checks each client
    /// gets a publish confirmed and ends up on a survivor.
    static func spreadAndFailOver(_ clients: [RabbitMQClient], name: String, queue: String, cluster: ClusterBroker)
        async throws
    {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for client in clients { group.addTask { try await client.connect() } }
            try await group.waitForAll()
        }

        let before = try await Self.connectionsPerPort(named: name, cluster: cluster, observer: cluster.nodes[0])
        print("[spread] 30 clients per node port before the kill: \(before.sorted { $0.key < $1.key })")
        #expect(before.values.reduce(0, +) == 30, "\(before)")
        // Each node gets about 10; one left empty by a fair shuffle has a probability of 3 × (2/3)^30 < 2e-5.
        #expect(Set(before.keys) == Set(cluster.nodes.map(\.endpoint.port)), "\(before)")

        let busiest = try #require(cluster.nodes.max { before[$0.endpoint.port, default: 0]
                                                       < before[$1.endpoint.port, default: 0] })
        let observer = try #require(cluster.nodes.first { $0 != busiest })
        try await cluster.kill(busiest)
        // Every client, those of the dead node included, gets a publish confirmed. A publish that fails as
        // retryable (written before its client noticed the loss; nacked while the queue elects a new leader) is
        // sent again after a pause, as an application would, for up to 60 s.
        let retried = try await withThrowingTaskGroup(of: Int.self) { group in
            for (index, client) in clients.enumerated() {
                group.addTask {
                    let deadline = ContinuousClock.now + .seconds(60)
                    var retries = 0
                    while true {
                        do {
                            try await client.publish(Data("client \(index)".utf8), routingKey: queue)
                            return retries
                        } catch let error as RabbitMQError where error.isRetryable && .now < deadline {
                            retries += 1
                            try await Task.sleep(for: .milliseconds(200))
                        }
                    }
                }
            }
            return try await group.reduce(0, +)
        }
        let survivors = Set(cluster.nodes.filter { $0 != busiest }.map(\.endpoint.port))
        var after: [Int: Int] = [:]
        let moved = try await eventually(timeout: .seconds(30)) {
            after = try await Self.connectionsPerPort(named: name, cluster: cluster, observer: observer)
            return after.values.reduce(0, +) == 30
        }
        print("[spread] after killing \(busiest): \(after.sorted { $0.key < $1.key }); \(retried) publishes retried")
        #expect(moved, "connections after the kill: \(after)")
        #expect(Set(after.keys).isSubset(of: survivors), "\(after)")
        // A retried publish may have reached the broker the first time too. The node's counts lag a new leader
        // by a statistics interval.
        var counts: BrokerQueueCounts?
        let counted = try await eventually(timeout: .seconds(30), every: .milliseconds(500)) {
            counts = try await observer.broker.queueCounts(queue)
            return (30...30 + retried).contains(counts?.ready ?? -1)
        }
        #expect(counted, "messages in \(queue): \(String(describing: counts)); \(retried) publishes retried")
    }
}
