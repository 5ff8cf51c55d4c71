import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// A retried message goes back to its work queue by the broker's dead-lettering when its tier's TTL runs out. The
/// chaos soak lost 16 of 200,000 messages there: each had failed once, its move to the tier was confirmed, and the
/// broker dead-lettered it at most once (its default) while the work queue was failing over.
@Suite("Redelivery: dead-lettering back to the work queue")
struct RedeliveryDeadLetterTests {
    /// A node of its own, whose dead-letter worker tries again after 1 s instead of the default minutes.
    static let node = (name: "t-dlx-retry", port: 5841)

    /// The work queue is missing when the tier dead-letters the message (what a failover looks like to the
    /// broker's dead-lettering): at most once drops the message; the quorum tiers keep it until the work queue
    /// takes it.
    @Test func aRetryWhoseWorkQueueIsMissingReachesItOnceItIsBack() async throws {
        try await DedicatedBroker.with(
            name: Self.node.name, port: Self.node.port,
            advancedConfig: "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 1000}]}]."
        ) { broker in
            try await TestBroker.withClient(configuration: try broker.configuration) { client in
                let retry = RetryTopology(workQueue: Queue("dlx.work", arguments: QueueArguments(type: .quorum)),
                                          policy: RetryPolicy(maxAttempts: 2, initialDelay: .milliseconds(200)))
                try await client.declare(retry.topology)
                let tier = retry.tierName(for: .milliseconds(200))
                try await client.deleteQueue(retry.queueName)

                let body = Data((0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
                try await client.publish(body, routingKey: tier, properties: MessageProperties(messageID: "m1"))
                // The TTL runs out with no work queue to dead-letter to.
                #expect(try await eventually(timeout: .seconds(60)) {
                    try await broker.queueStats(tier)?.ready == 0
                })
                try await Task.sleep(for: .seconds(2))
                try await client.declare(retry.workQueue)

                #expect(try await eventually(timeout: .seconds(60)) {
                    try await broker.queueStats(retry.queueName)?.ready == 1
                })
                let delivery = try #require(try await client.get(from: retry.queueName, acknowledgement: .automatic))
                #expect(delivery.body == body)
                #expect(delivery.properties.messageID == "m1")
                #expect(delivery.deaths.first?.queue == tier)
                #expect(delivery.deaths.first?.reason == .expired)
                #expect(try await broker.queueStats(tier) == BrokerQueueCounts(ready: 0, unacked: 0, consumers: 0))
            }
        }
    }
}
