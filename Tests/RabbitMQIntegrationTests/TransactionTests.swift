import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Synchronization
import Testing

/// Transactions on a channel (tx.select, tx.commit, tx.rollback; issue 20), with what the broker holds counted by
/// `rabbitmqctl list_queues`.
@Suite("Transactions", .serialized)
struct TransactionTests {
    private func counts(_ queue: String) async throws -> (ready: Int, unacked: Int, consumers: Int) {
        try #require(try await TestBroker.queueStats(queue))
    }

    @Test func aRollbackPublishesNothingAndACommitPublishesAll() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("tx")
            try await client.declare(Topology { Queue(queue, durable: false) })
            let channel = try await client.openChannel()
            try await channel.enableTransactions()
            for index in 0..<10 { try await channel.publish(Data("r\(index)".utf8), routingKey: queue) }
            #expect(try await counts(queue).ready == 0, "published before the commit")
            try await channel.rollbackTransaction()
            // An empty commit after the rollback: nothing of the rolled-back publishes comes through.
            try await channel.commitTransaction()
            #expect(try await counts(queue).ready == 0, "a rolled-back publish reached the queue")
            for index in 0..<20 { try await channel.publish(Data("c\(index)".utf8), routingKey: queue) }
            try await channel.commitTransaction()
            let committed = try await eventually { try await counts(queue).ready == 20 }
            let now = try await counts(queue)
            #expect(committed, "after the commit: \(now)")
            let first = try #require(try await client.get(from: queue, acknowledgement: .automatic))
            #expect(first.bodyString == "c0")
            try await channel.close()
            try await client.deleteQueue(queue)
        }
    }

    @Test func withTransactionRollsBackWhenTheBodyThrows() async throws {
        struct Abort: Error {}
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("tx.body")
            try await client.declare(Topology { Queue(queue, durable: false) })
            let channel = try await client.openChannel()
            try await channel.enableTransactions()
            await #expect(throws: Abort.self) {
                try await channel.withTransaction { channel in
                    for index in 0..<5 { try await channel.publish(Data("\(index)".utf8), routingKey: queue) }
                    throw Abort()
                }
            }
            let published = try await channel.withTransaction { channel in
                for index in 0..<3 { try await channel.publish(Data("\(index)".utf8), routingKey: queue) }
                return 3
            }
            let committed = try await eventually { try await counts(queue).ready == published }
            let now = try await counts(queue)
            #expect(committed, "\(now)")
            try await channel.close()
            try await client.deleteQueue(queue)
        }
    }

    @Test func acksTakeEffectOnlyOnCommitAndARollbackMakesThemSettleableAgain() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("tx.acks")
            try await client.declare(Topology { Queue(queue, durable: false) })
            for index in 0..<3 { try await client.publish(Data("\(index)".utf8), routingKey: queue) }
            let channel = try await client.openChannel()
            try await channel.setPrefetch(10)
            try await channel.enableTransactions()
            // The consumer stays registered to the end: a basic.cancel racing the rollback could be answered after
            // it (RabbitMQ sends cancel-ok from the queue process), which the engine's in-order matching refuses.
            let consumer = try await channel.consume(queue)
            var iterator = consumer.makeAsyncIterator()
            var deliveries: [Delivery] = []
            while deliveries.count < 3, let delivery = try await iterator.next() { deliveries.append(delivery) }
            defer { withExtendedLifetime(consumer) {} }
            for delivery in deliveries { try delivery.ack() }
            try await channel.rollbackTransaction()
            // Rolled back: the broker still counts the three unacknowledged, held by this channel.
            let held = try await eventually { try await counts(queue).unacked == 3 }
            let now = try await counts(queue)
            #expect(held, "after the rollback: \(now)")
            // The rolled-back acks are undone on the client side too: acking again is allowed, and counts.
            for delivery in deliveries { try delivery.ack() }
            #expect(throws: RabbitMQError.self) { try deliveries[0].ack() }
            try await channel.commitTransaction()
            let gone = try await eventually {
                let counts = try await counts(queue)
                return counts.ready == 0 && counts.unacked == 0
            }
            let after = try await counts(queue)
            #expect(gone, "after the commit: \(after)")
            try await channel.close()
            #expect(try await counts(queue).ready == 0, "the acks did not take effect")
            try await client.deleteQueue(queue)
        }
    }

    @Test func confirmsAndTransactionsExcludeEachOther() async throws {
        try await TestBroker.withClient { client in
            let confirming = try await client.openChannel()
            try await confirming.enableConfirms()
            do {
                try await confirming.enableTransactions()
                Issue.record("tx.select on a confirm channel succeeded")
            } catch let error as RabbitMQError {
                #expect(error.code == .invalidArgument)
            }
            #expect(confirming.isOpen)
            let transacting = try await client.openChannel()
            try await transacting.enableTransactions()
            do {
                try await transacting.enableConfirms()
                Issue.record("confirm.select on a transaction channel succeeded")
            } catch let error as RabbitMQError {
                #expect(error.code == .invalidArgument)
            }
            do {
                try await confirming.commitTransaction()
                Issue.record("tx.commit without tx.select succeeded")
            } catch let error as RabbitMQError {
                #expect(error.code == .invalidArgument)
            }
            try await confirming.close()
            try await transacting.close()
        }
    }

    @Test func aTransactionUnderWayWhenTheConnectionIsLostIsReportedLost() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("tx.lost")
            try await client.declare(Topology { Queue(queue, durable: false) })
            let recovered = Atomic<Int>(0)
            let events = client.connectionEvents()
            let watcher = Task {
                for await event in events {
                    if case .recovered = event { recovered.add(1, ordering: .relaxed) }
                }
            }
            defer { watcher.cancel() }
            let channel = try await client.openChannel()
            try await channel.enableTransactions()
            try await channel.publish(Data("before".utf8), routingKey: queue)
            try await TestBroker.closeConnections(named: try #require(client.configuration.connectionName))
            let didRecover = try await eventually(timeout: .seconds(60)) { recovered.load(ordering: .relaxed) >= 1 }
            try #require(didRecover, "the connection was not recovered")
            try await channel.publish(Data("after".utf8), routingKey: queue)
            do {
                try await channel.commitTransaction()
                Issue.record("the commit of a lost transaction succeeded")
            } catch let error as RabbitMQError {
                #expect(error.code == .transactionLost)
                #expect(error.isRetryable)
            }
            // Neither half of the lost transaction was committed; the recovered channel is in transaction mode.
            try await channel.commitTransaction()
            #expect(try await counts(queue).ready == 0)
            try await channel.publish(Data("again".utf8), routingKey: queue)
            #expect(try await counts(queue).ready == 0, "the recovered channel is not in transaction mode")
            try await channel.commitTransaction()
            let committed = try await eventually { try await counts(queue).ready == 1 }
            let now = try await counts(queue)
            #expect(committed, "\(now)")
            try await channel.close()
            try await client.deleteQueue(queue)
        }
    }
}
