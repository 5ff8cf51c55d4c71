import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Synchronization
import Testing

/// Request/reply over direct reply-to (issue 20): `client.call` and `Responder`, and the no-ack consumers they
/// need, against the real broker.
@Suite("Request/reply", .serialized)
struct RequestReplyTests {
    /// A responder answering `queue` with `reply:BODY`, run until `body` returns.
    private func withResponder<T>(_ client: RabbitMQClient, queue: String,
                                  handler: Responder.Handler? = nil,
                                  _ body: () async throws -> T) async throws -> T {
        try await client.declare(Topology { Queue(queue, durable: false) })
        let responder = Responder(client: client, configuration: .init(queue: queue, concurrency: 8),
                                  handler: handler ?? { request in
                                      Responder.Reply(Data("reply:\(request.bodyString)".utf8))
                                  })
        let running = Task { try await responder.run() }
        defer {
            responder.stop()
            running.cancel()
        }
        let consuming = try await eventually { try await TestBroker.queueStats(queue)?.consumers == 1 }
        try #require(consuming, "the responder did not start consuming")
        return try await body()
    }

    @Test func concurrentCallsShareOneReplyConsumerAndAreMatched() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("rpc")
            try await withResponder(client, queue: queue) {
                let replies = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                    for index in 0..<50 {
                        group.addTask {
                            let reply = try await client.call(Data("\(index)".utf8), routingKey: queue,
                                                              timeout: .seconds(30))
                            return (index, reply.bodyString)
                        }
                    }
                    return try await group.reduce(into: [Int: String]()) { $0[$1.0] = $1.1 }
                }
                #expect(replies.count == 50)
                for index in 0..<50 { #expect(replies[index] == "reply:\(index)") }
                // One reply consumer for the client, on the broker's direct reply-to pseudo-queue.
                let consumers = try await TestBroker.rabbitmqctl("list_consumers", "queue_name", "--no-table-headers")
                #expect(!consumers.contains("amq.rabbitmq.reply-to"), "direct reply-to is no queue: \(consumers)")
                #expect(client.droppedReplyCount == 0)
            }
            try await client.deleteQueue(queue)
        }
    }

    @Test func aCallWithoutResponderTimesOutAndItsLateReplyIsDropped() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("rpc.silent")
            try await client.declare(Topology { Queue(queue, durable: false) })
            let started = ContinuousClock.now
            do {
                _ = try await client.call(Data("ping".utf8), routingKey: queue, timeout: .seconds(1))
                Issue.record("the call returned without a responder")
            } catch let error as RabbitMQError {
                #expect(error.code == .timeout)
                #expect(error.operation == "call")
            }
            #expect(ContinuousClock.now - started >= .seconds(1))
            // The request is still in the queue: answer it now, too late.
            let request = try #require(try await client.get(from: queue))
            #expect(request.properties.replyTo?.hasPrefix("amq.rabbitmq.reply-to") == true)
            try await client.publish(Data("late".utf8), routingKey: try #require(request.properties.replyTo),
                                     properties: MessageProperties(correlationID: request.properties.correlationID))
            try request.ack()
            let dropped = try await eventually(timeout: .seconds(10)) { client.droppedReplyCount == 1 }
            #expect(dropped, "late replies dropped: \(client.droppedReplyCount)")
            try await client.deleteQueue(queue)
        }
    }

    @Test func aFailingResponderMakesTheCallThrowResponderFailed() async throws {
        struct PriceUnknown: Error, CustomStringConvertible {
            var description: String { "no price for this item" }
        }
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("rpc.failing")
            try await withResponder(client, queue: queue, handler: { _ in throw PriceUnknown() }) {
                do {
                    _ = try await client.call(Data("sku".utf8), routingKey: queue, timeout: .seconds(30))
                    Issue.record("the call succeeded")
                } catch let error as RabbitMQError {
                    #expect(error.code == .responderFailed)
                    #expect(error.message.contains("no price for this item"), "\(error)")
                }
            }
            // The request was acked: nothing is left in the queue.
            #expect(try await TestBroker.queueStats(queue).map { $0.ready + $0.unacked } == 0)
            try await client.deleteQueue(queue)
        }
    }

    @Test func aCallToNoQueueIsUnroutable() async throws {
        try await TestBroker.withClient { client in
            do {
                _ = try await client.call(Data(), routingKey: TestBroker.uniqueName("rpc.nowhere"),
                                          timeout: .seconds(30))
                Issue.record("the call succeeded")
            } catch let error as RabbitMQError {
                #expect(error.code == .unroutable)
            }
        }
    }

    @Test func callsWorkAfterConnectionRecovery() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("rpc.recovery")
            let recovered = Atomic<Int>(0)
            let events = client.connectionEvents()
            let watcher = Task {
                for await event in events {
                    if case .recovered = event { recovered.add(1, ordering: .relaxed) }
                }
            }
            defer { watcher.cancel() }
            try await withResponder(client, queue: queue) {
                #expect(try await client.call(Data("a".utf8), routingKey: queue).bodyString == "reply:a")
                try await TestBroker.closeConnections(named: try #require(client.configuration.connectionName))
                let didRecover = try await eventually(timeout: .seconds(60)) {
                    recovered.load(ordering: .relaxed) >= 1
                }
                try #require(didRecover, "the connection was not recovered")
                // The recovered reply channel consumes the recovered direct reply-to, with a new address.
                for index in 0..<5 {
                    let reply = try await client.call(Data("b\(index)".utf8), routingKey: queue, timeout: .seconds(30))
                    #expect(reply.bodyString == "reply:b\(index)")
                }
            }
            try await client.deleteQueue(queue)
        }
    }

    @Test func aNoAckConsumerLeavesNothingUnacknowledgedAndCannotSettle() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("noack")
            try await client.declare(Topology { Queue(queue, durable: false) })
            for index in 0..<20 { try await client.publish(Data("\(index)".utf8), routingKey: queue) }
            let consumer = try await client.consume(queue, prefetch: 5,
                                                    options: ConsumeOptions(acknowledgement: .noAck))
            var received: [String] = []
            for try await delivery in consumer {
                received.append(delivery.bodyString)
                if received.count == 1 {
                    #expect(throws: RabbitMQError.self) { try delivery.ack() }
                }
                if received.count == 20 { break }
            }
            #expect(received == (0..<20).map { "\($0)" })
            // The broker counted every message acknowledged as it sent it (the prefetch of 5 did not apply).
            let settled = try await eventually {
                try await TestBroker.queueStats(queue).map { $0.ready == 0 && $0.unacked == 0 } == true
            }
            let counts = try await TestBroker.queueStats(queue)
            #expect(settled, "\(String(describing: counts))")
            try await client.deleteQueue(queue)
        }
    }
}
