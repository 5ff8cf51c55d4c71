import Foundation
import RabbitMQ
import Testing
import RabbitMQTestSupport

/// Failover in the three-node cluster of `make test`: a quorum queue keeps every confirmed message while the node
/// the client is connected to, or the queue's leader, is killed during publishing and consuming.
///
/// The tests kill nodes, so they run one at a time, and each restores the cluster to three running nodes
/// afterwards, also on failure.
@Suite("Cluster failover", .serialized,
       .enabled(if: ClusterBroker.isAvailable, "RABBITMQ_CLUSTER_URLS and RABBITMQ_CLUSTER_NODES are not set"))
struct ClusterFailoverTests {
    /// What one publish-and-consume run through a disruption measured.
    struct Run {
        let ledger: PublishLedger
        let consumed: DeliveryLog
        let events: EventLog
        /// Whether publishing went on (300 more confirmations) after the disruption.
        let publishingResumed: Bool
        /// Whether every confirmed message was consumed.
        let everythingConsumed: Bool
        /// Confirmed messages never consumed.
        let lost: Set<String>
        /// From the disruption to the first confirmation after it.
        let firstConfirmationAfter: Duration?
        /// From the disruption to the `recovered` event, if any.
        let recoveryAfter: Duration?
        /// The queue's consumers once publishing resumed: tag and the node of the consumer's channel.
        let consumers: [ClusterBroker.Consumer]
        /// How the consumer's sequence ended before the test cancelled it, if it did.
        let consumerEnded: String?
        /// When something confirmed was not consumed: the queue and the channels as the broker saw them then,
        /// which tells a broker that stopped delivering from a client that stopped taking deliveries.
        let brokerView: String
    }

    /// A client of the cluster with `endpoints` tried in that order, quick reconnection attempts, and a confirm
    /// timeout longer than a failover.
    static func configuration(_ cluster: ClusterBroker, endpoints: [ClusterBroker.Node], name: String) throws
        -> RabbitMQClient.Configuration
    {
        var configuration = try cluster.configuration(endpoints: endpoints)
        configuration.connectionName = name
        configuration.confirmTimeout = .seconds(30)
        configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
        return configuration
    }

    /// Publishes (three tasks through the client's confirm channel, one through a windowed channel) and consumes
    /// `queue` with acks, runs `disrupt` once both are under way, keeps going until publishing has resumed, then
    /// stops publishing and waits until every confirmed message was consumed.
    static func publishAndConsume(_ client: RabbitMQClient, queue: String, cluster: ClusterBroker,
                                  observer: ClusterBroker.Node,
                                  disrupt: () async throws -> Void) async throws -> Run {
        let events = EventLog.watching(client)
        let ledger = PublishLedger()
        let consumed = DeliveryLog()
        let consumer = try await client.consume(queue, prefetch: 50)
        let consumerTask = Task { await RecoveryHarness.consume(consumer, into: consumed) }
        let windowed = try await client.openChannel()
        try await windowed.enableConfirms(window: 64)
        let publishers = PublisherGroup.start(ledger: ledger) { group, limits in
            for task in 0..<3 {
                group.addTask {
                    await RecoveryHarness.publishOneByOne(client, routingKey: queue, prefix: "c\(task)",
                                                          ledger: ledger, limits: limits)
                }
            }
            group.addTask {
                await RecoveryHarness.publishWindowed(windowed, routingKey: queue, prefix: "w", ledger: ledger,
                                                      limits: limits)
            }
        }
        let underWay = try await eventually(timeout: .seconds(20)) {
            ledger.confirmedCount >= 200 && consumed.total >= 100
        }
        var disruptError: (any Error)?
        let disruptedAt = ContinuousClock.now
        if underWay {
            do { try await disrupt() } catch { disruptError = error }
        }
        // Publishing goes on after the disruption, also if the loops reached their first maxCount meanwhile.
        publishers.resume()
        let confirmedAtDisruption = ledger.confirmedCount
        var resumed = false
        if underWay, disruptError == nil {
            resumed = try await eventually(timeout: .seconds(40)) {
                ledger.confirmedCount >= confirmedAtDisruption + 300
            }
        }
        let consumers = (try? await cluster.consumers(on: queue, seenFrom: observer)) ?? []
        await publishers.stop()
        let confirmed = ledger.confirmedIDs
        let everythingConsumed = try await eventually(timeout: .seconds(20)) {
            confirmed.isSubset(of: consumed.ids)
        }
        let consumerEnded = consumed.endedWith
        let brokerView = everythingConsumed ? "" : await cluster.describe(queue: queue, seenFrom: observer)
        await consumer.cancel()
        await consumerTask.value
        try? await windowed.close()
        try #require(underWay, "publishing and consuming did not start: \(ledger.summary); \(consumed.summary)")
        if let disruptError { throw disruptError }
        return Run(ledger: ledger, consumed: consumed, events: events, publishingResumed: resumed,
                   everythingConsumed: everythingConsumed, lost: confirmed.subtracting(consumed.ids),
                   firstConfirmationAfter: ledger.firstConfirmation(after: disruptedAt).map { $0 - disruptedAt },
                   recoveryAfter: events.recoveryDelay(after: disruptedAt), consumers: consumers,
                   consumerEnded: consumerEnded, brokerView: brokerView)
    }

    /// What every run must show: no publish hung or failed oddly, failures retryable, nothing confirmed lost,
    /// the consumer still running, exactly one consumer on the queue from a running node (a quorum queue keeps
    /// the consumer of a channel on a killed node, marked as suspected down, until that node comes back).
    static func checkCommonOutcome(_ run: Run, killed: ClusterBroker.Node) {
        #expect(run.publishingResumed, "publishing did not resume: \(run.ledger.summary); events \(run.events.summary)")
        #expect(run.ledger.problems.isEmpty, "publishes that hung or failed oddly: \(run.ledger.problems.prefix(5))")
        let nonRetryable = run.ledger.failures.filter { !$0.isRetryable }
        #expect(nonRetryable.isEmpty, "non-retryable publish failures: \(nonRetryable.prefix(3))")
        #expect(run.everythingConsumed, """
            \(run.lost.count) confirmed messages were not consumed, e.g. \(run.lost.sorted().prefix(5)); \
            consumer: \(run.consumed.summary); events \(run.events.summary); broker: \(run.brokerView)
            """)
        #expect(run.consumerEnded == nil, "the consumer's sequence ended: \(run.consumerEnded ?? "")")
        let live = run.consumers.filter { $0.node != killed.name }
        #expect(live.count == 1, "consumers on the queue: \(run.consumers)")
    }

    /// Declares quorum queue `queue` through a client of `node` alone (the leader is normally placed on the
    /// declaring node) and returns the node holding its leader.
    static func declareQuorumQueue(_ queue: String, through node: ClusterBroker.Node, cluster: ClusterBroker)
        async throws -> ClusterBroker.Node
    {
        let declaring = try configuration(cluster, endpoints: [node], name: "failover declare")
        try await TestBroker.withClient(configuration: declaring) { client in
            _ = try await client.declare(Queue(queue, arguments: QueueArguments(type: .quorum)))
        }
        var leader: ClusterBroker.Node?
        _ = try await eventually(timeout: .seconds(10)) {
            leader = await cluster.leader(of: queue, seenFrom: node)
            return leader != nil
        }
        return try #require(leader, "no leader for \(queue)")
    }

    static func report(_ title: String, _ run: Run, extra: String = "") {
        print("""
            [failover] \(title): \(run.ledger.summary); consumed \(run.consumed.summary); first confirmation \
            \(run.firstConfirmationAfter.map { "\($0)" } ?? "never") and recovered event \
            \(run.recoveryAfter.map { "\($0)" } ?? "none") after the kill; consumers \(run.consumers); events \
            \(run.events.summary)\(extra)
            """)
    }

    @Test("The client fails over when the node it is connected to is killed, and loses no confirmed message")
    func failoverWhenTheClientsNodeIsKilled() async throws {
        let cluster = try #require(ClusterBroker.current)
        try await cluster.withRestoredCluster {
            let first = cluster.nodes[0]
            let observer = cluster.nodes[1]
            let queue = TestBroker.uniqueName("failover.node")
            // Declared through node 2, so that the leader is there: this test kills the client's node only
            // (ClusterFailoverTests+LeaderNode kills a node that is both).
            let leader = try await Self.declareQuorumQueue(queue, through: observer, cluster: cluster)
            try #require(leader != first, "the leader of \(queue) is on \(first)")
            let name = "failover node kill \(UUID().uuidString.prefix(8))"
            let configuration = try Self.configuration(cluster, endpoints: cluster.nodes, name: name)
            try await TestBroker.withClient(configuration: configuration) { client in
                try await client.declare(Queue(queue, arguments: QueueArguments(type: .quorum)))
                let ports = try await cluster.connectionPorts(named: name, seenFrom: observer)
                #expect(ports == [first.endpoint.port], "the client is not connected to \(first) alone: \(ports)")

                let run = try await Self.publishAndConsume(client, queue: queue, cluster: cluster,
                                                           observer: observer) {
                    try await cluster.kill(first)
                }
                let portsAfter = try await cluster.connectionPorts(named: name, seenFrom: observer)

                // Node 1 comes back and rejoins the cluster.
                try await cluster.restart(first)
                let rejoined = try await eventually(timeout: .seconds(60)) {
                    let seenByFirst = await cluster.runningNodeCount(seenFrom: first)
                    let seenByOther = await cluster.runningNodeCount(seenFrom: observer)
                    return seenByFirst == cluster.nodes.count && seenByOther == cluster.nodes.count
                }

                Self.checkCommonOutcome(run, killed: first)
                #expect(run.events.sawLostThenRecovered(), "events: \(run.events.summary)")
                let recoveredAt = run.events.recoveredEndpoints
                #expect(!recoveredAt.isEmpty && !recoveredAt.contains(first.endpoint.description),
                        "recovered on \(recoveredAt), expected another node than \(first)")
                #expect(portsAfter.count == 1 && !portsAfter.contains(first.endpoint.port),
                        "connections after the failover on ports \(portsAfter)")
                #expect(rejoined, "\(first) did not rejoin the cluster")
                Self.report("kill \(first) (the client's node; leader on \(leader))", run,
                            extra: "; now on port \(portsAfter)")
                try await client.deleteQueue(queue)
            }
        }
    }

    @Test("Publishing and consuming go on when the quorum queue's leader is killed")
    func leaderKilledWhileTheClientIsOnAnotherNode() async throws {
        let cluster = try #require(ClusterBroker.current)
        try await cluster.withRestoredCluster {
            let queue = TestBroker.uniqueName("failover.leader")
            // Declared through node 2, so that the leader is normally there, away from node 1.
            let leader = try await Self.declareQuorumQueue(queue, through: cluster.nodes[1], cluster: cluster)
            let clientNode = try #require(cluster.nodes.first { $0 != leader })
            let observer = clientNode
            let endpoints = [clientNode] + cluster.nodes.filter { $0 != clientNode }
            let name = "failover leader kill \(UUID().uuidString.prefix(8))"
            let configuration = try Self.configuration(cluster, endpoints: endpoints, name: name)
            try await TestBroker.withClient(configuration: configuration) { client in
                try await client.declare(Queue(queue, arguments: QueueArguments(type: .quorum)))
                let ports = try await cluster.connectionPorts(named: name, seenFrom: observer)
                #expect(ports == [clientNode.endpoint.port], "the client is not connected to \(clientNode): \(ports)")

                let run = try await Self.publishAndConsume(client, queue: queue, cluster: cluster,
                                                           observer: observer) {
                    try await cluster.kill(leader)
                }
                let newLeader = await cluster.leader(of: queue, seenFrom: observer)
                try await cluster.restart(leader)

                Self.checkCommonOutcome(run, killed: leader)
                #expect(newLeader != nil && newLeader != leader, "leader after the kill: \(newLeader?.name ?? "none")")
                Self.report("kill leader \(leader) (client on \(clientNode); new leader \(newLeader?.name ?? "?"))",
                            run, extra: "; connection lost \(run.events.lostCount) times")
                try await client.deleteQueue(queue)
            }
        }
    }
}
