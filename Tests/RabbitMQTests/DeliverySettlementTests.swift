import Foundation
import MetricsTestKit
@testable import RabbitMQ
import Testing

/// Settling a delivery in the settling task: once only, and a no-op once its channel has closed.
@Suite("Delivery settlement")
struct DeliverySettlementTests {
    private static func delivery(_ tag: UInt64, on link: ChannelLink) -> Delivery {
        Delivery(body: Data("m\(tag)".utf8), properties: MessageProperties(), exchange: "", routingKey: "q",
                 isRedelivered: false, deliveryTag: tag, consumerTag: "c", link: link)
    }

    /// The settlements the test's link handed to its (unserved) command queue.
    private static func submitted(_ queue: EngineCommandQueue) -> [Settlement] {
        var batch: [EngineCommand] = []
        queue.takeAll(into: &batch)
        return batch.compactMap { command in
            if case .settle(_, let settlement) = command { settlement } else { nil }
        }
    }

    private static func isAlreadySettled(_ error: any Error) -> Bool {
        guard let error = error as? RabbitMQError else { return false }
        return error.code == .alreadySettled && !error.isRetryable
    }

    @Test func theFirstSettlementGoesOutAndASecondThrows() async throws {
        let queue = try EngineCommandQueue()
        let link = ChannelLink.unserved(commands: queue)
        let first = Self.delivery(1, on: link)
        let second = Self.delivery(2, on: link)
        try first.ack()
        #expect { try first.ack() } throws: { Self.isAlreadySettled($0) }
        #expect { try first.nack(requeue: true) } throws: { Self.isAlreadySettled($0) }
        try second.reject(requeue: false)
        #expect { try second.ack() } throws: { Self.isAlreadySettled($0) }
        #expect(Self.submitted(queue) == [.ack(deliveryTag: 1, multiple: false),
                                          .reject(deliveryTag: 2, requeue: false)])
    }

    @Test func aMultipleSettlementCoversTheEarlierDeliveries() async throws {
        let queue = try EngineCommandQueue()
        let link = ChannelLink.unserved(commands: queue)
        let deliveries = (1...3).map { Self.delivery(UInt64($0), on: link) }
        try deliveries[1].nack(requeue: false, multiple: true)
        #expect { try deliveries[0].ack() } throws: { Self.isAlreadySettled($0) }
        try deliveries[2].ack()
        #expect(Self.submitted(queue) == [.nack(deliveryTag: 2, multiple: true, requeue: false),
                                          .ack(deliveryTag: 3, multiple: false)])
    }

    @Test func settlingOnAClosedChannelDoesNothingAndIsCounted() async throws {
        let queue = try EngineCommandQueue()
        let metrics = TestMetrics()
        let link = ChannelLink.unserved(commands: queue, metrics: metrics)
        let delivery = Self.delivery(1, on: link)
        link.markClosed(RabbitMQError(.connectionLost, "lost"))
        try delivery.ack()
        // Still settled once only.
        #expect { try delivery.reject() } throws: { Self.isAlreadySettled($0) }
        try Self.delivery(2, on: link).nack()
        #expect(Self.submitted(queue).isEmpty, "nothing goes to the I/O thread")
        #expect(try metrics.expectCounter("rabbitmq.settlements.stale").totalValue == 2)
    }

    @Test func settlingAfterTheConnectionStoppedDoesNothingAndIsCounted() async throws {
        let queue = try EngineCommandQueue()
        let metrics = TestMetrics()
        let link = ChannelLink.unserved(commands: queue, metrics: metrics)
        // The I/O thread stopped, and its channels are not marked closed yet.
        _ = queue.terminate(with: RabbitMQError(.connectionLost, "lost"))
        try Self.delivery(1, on: link).ack()
        #expect(try metrics.expectCounter("rabbitmq.settlements.stale").totalValue == 1)
    }
}
