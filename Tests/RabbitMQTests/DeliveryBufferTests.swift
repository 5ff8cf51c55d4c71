import DequeModule
import Foundation
import Testing

@testable import RabbitMQ

@Suite("Delivery buffer")
struct DeliveryBufferTests {
    private func delivery(tag: UInt64, link: ChannelLink) -> Delivery {
        Delivery(body: Data("m\(tag)".utf8), properties: MessageProperties(), exchange: "", routingKey: "q",
                 isRedelivered: false, deliveryTag: tag, consumerTag: "c", link: link)
    }

    /// A lost connection empties the batch of the I/O thread's last pass and pushes it anyway. Resuming a waiting
    /// consumer with nothing ended its sequence as if it had been cancelled, so it never saw the deliveries of the
    /// recovered channel (seen in the cluster failover test).
    @Test("An empty push leaves a waiting consumer waiting for the next deliveries")
    func emptyPushDoesNotEndTheSequence() async throws {
        let link = ChannelLink.unserved(commands: try EngineCommandQueue())
        let buffer = DeliveryBuffer()
        let waiting = Task { try await buffer.next() }
        try await Task.sleep(for: .milliseconds(100))  // the task is suspended in next() by now
        var empty: Deque<Delivery> = []
        buffer.push(&empty)
        var batch: Deque = [delivery(tag: 1, link: link), delivery(tag: 2, link: link)]
        buffer.push(&batch)
        #expect(batch.isEmpty)
        let received = try await waiting.value
        #expect(received.map(\.deliveryTag) == [1, 2])
    }

    @Test("Deliveries pushed before the consumer asks are handed over in one batch, in order")
    func bufferedDeliveriesComeInOneBatch() async throws {
        let link = ChannelLink.unserved(commands: try EngineCommandQueue())
        let buffer = DeliveryBuffer()
        var first: Deque = [delivery(tag: 1, link: link)]
        var second: Deque = [delivery(tag: 2, link: link), delivery(tag: 3, link: link)]
        buffer.push(&first)
        buffer.push(&second)
        #expect(try await buffer.next().map(\.deliveryTag) == [1, 2, 3])
    }

    @Test("A finished buffer ends the sequence with its error and drops later pushes")
    func finishedBufferEndsWithItsError() async throws {
        let link = ChannelLink.unserved(commands: try EngineCommandQueue())
        let buffer = DeliveryBuffer()
        buffer.finish(RabbitMQError(.consumerCancelled, "cancelled by the broker"))
        var late: Deque = [delivery(tag: 1, link: link)]
        buffer.push(&late)
        #expect(late.isEmpty)
        await #expect(throws: RabbitMQError.self) { try await buffer.next() }
    }

    @Test("A closed channel's buffered deliveries are dropped; a recovered channel's stay")
    func droppingAClosedChannelsDeliveries() async throws {
        let closed = ChannelLink.unserved(commands: try EngineCommandQueue())
        let recovered = ChannelLink.unserved(commands: try EngineCommandQueue())
        let buffer = DeliveryBuffer()
        var batch: Deque = [delivery(tag: 1, link: closed), delivery(tag: 2, link: closed),
                            delivery(tag: 1, link: recovered)]
        buffer.push(&batch)
        closed.markClosed(RabbitMQError(.connectionLost, "lost"))
        buffer.drop(deliveriesOf: closed)
        let received = try await buffer.next()
        #expect(received.map(\.deliveryTag) == [1])
        #expect(received.allSatisfy { $0.link === recovered })
    }

    @Test("The consumer's batch hands out only deliveries whose channel is open")
    func popFirstSettleableSkipsClosedChannels() throws {
        let closed = ChannelLink.unserved(commands: try EngineCommandQueue())
        let open = ChannelLink.unserved(commands: try EngineCommandQueue())
        var batch: Deque = [delivery(tag: 1, link: closed), delivery(tag: 2, link: closed),
                            delivery(tag: 7, link: open), delivery(tag: 3, link: closed), delivery(tag: 8, link: open)]
        closed.markClosed(RabbitMQError(.clientClosed, "closed"))
        #expect(batch.popFirstSettleable()?.deliveryTag == 7)
        #expect(batch.popFirstSettleable()?.deliveryTag == 8)
        #expect(batch.popFirstSettleable() == nil)
        #expect(batch.isEmpty)
    }
}
