import CRabbitMQ
import Foundation
import Testing

@testable import RabbitMQ

/// Deliveries, gets, settlements and consumer cancellation, without a socket.
@Suite("Connection state machine: deliveries")
struct ConnectionStateMachineDeliveryTests {
    private func deliver(_ harness: MachineHarness, tag: UInt64, consumer: String = "c", body: [UInt8] = [7, 8, 9],
                         frameSize: Int = 1000) {
        harness.receive(.deliver(consumerTag: consumer, deliveryTag: tag, isRedelivered: false, exchange: "x",
                                 routingKey: "k"), on: 1)
        harness.receiveContent(on: 1, body: body, frameSize: frameSize)
    }

    @Test("A delivery in several body frames reaches its consumer with the pass's others, in one batch")
    func deliveriesInOneBatch() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let buffer = harness.registerConsumer("c", on: link)
        deliver(harness, tag: 1, body: Array(0..<250), frameSize: 100)
        deliver(harness, tag: 2, body: [])
        harness.endPass()
        let batch = try await buffer.next()
        #expect(batch.map(\.deliveryTag) == [1, 2])
        #expect(batch.first?.body == Data(Array(0..<250)))
        #expect(batch.last?.body.isEmpty == true)
        #expect(harness.machine.channels[1]!.acks.unsettledCount == 2)
    }

    @Test("Frames out of order are ignored: a header or body without a method, a second header")
    func contentOutOfOrder() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let buffer = harness.registerConsumer("c", on: link)
        harness.receiveContent(on: 1, body: [1, 2])
        #expect(!harness.machine.expectsHeader(on: 1))
        #expect(!harness.machine.expectsHeader(on: 9))
        harness.receive(.deliver(consumerTag: "c", deliveryTag: 1, isRedelivered: true, exchange: "", routingKey: "q"),
                        on: 1)
        let pool = BodyPool()
        harness.machine.receiveHeader(on: 1, properties: MessageProperties(), body: IncomingBody(size: 4, pool: pool))
        harness.machine.receiveHeader(on: 1, properties: MessageProperties(), body: IncomingBody(size: 1, pool: pool))
        [UInt8]([1, 2, 3, 4, 5]).withUnsafeBytes { harness.machine.receiveBody(on: 1, $0) }  // beyond the size: dropped
        harness.endPass()
        let batch = try await buffer.next()
        #expect(batch.map(\.body) == [Data([1, 2, 3, 4])])
        #expect(batch.first?.isRedelivered == true)
    }

    @Test("A delivery for a consumer that is gone is rejected with requeue")
    func deliveryWithoutConsumer() async throws {
        let harness = try MachineHarness()
        _ = try await harness.openChannel()
        deliver(harness, tag: 5, consumer: "gone")
        #expect(harness.takeSent() == ["reject(deliveryTag: 5, requeue: true)@1"])
    }

    @Test("A no-ack consumer's deliveries are settled already: not tracked, never given back, not settleable")
    func noAckDeliveries() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let buffer = harness.registerConsumer("r", on: link, noAck: true)
        deliver(harness, tag: 1, consumer: "r")
        deliver(harness, tag: 2, consumer: "r")
        harness.endPass()
        #expect(try await buffer.next().map(\.deliveryTag) == [1, 2])
        #expect(harness.machine.channels[1]!.acks.unsettledCount == 0)
        #expect(!link.markSettled(.ack(deliveryTag: 2, multiple: false)))
        // Its consumer cancelled by the broker, a delivery still on the way is dropped, not rejected.
        harness.receive(.cancel(consumerTag: "r", noWait: true), on: 1)
        deliver(harness, tag: 3, consumer: "r")
        harness.endPass()
        #expect(harness.takeSent().isEmpty)
    }

    @Test("Acks wait for the end of the pass and are merged; nacks and rejects go out at once")
    func settlements() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        _ = harness.registerConsumer("c", on: link)
        for tag in 1...5 { deliver(harness, tag: UInt64(tag)) }
        harness.settle(.ack(deliveryTag: 1, multiple: false), on: link)
        harness.settle(.ack(deliveryTag: 2, multiple: false), on: link)
        harness.settle(.ack(deliveryTag: 4, multiple: false), on: link)
        harness.settle(.reject(deliveryTag: 3, requeue: false), on: link)
        #expect(harness.takeSent() == ["reject(deliveryTag: 3, requeue: false)@1"])
        harness.settle(.ack(deliveryTag: 1, multiple: false), on: link)  // settled already: ignored
        harness.endPass()
        // 3 is settled already: one multiple ack covers 1, 2 and 4.
        #expect(harness.takeSent() == ["ack(deliveryTag: 4, multiple: true)@1"])
        #expect(harness.machine.channels[1]!.acks.unsettledCount == 1)
    }

    @Test("The application's channel.close sends the acks queued before it first")
    func acksBeforeChannelClose() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        _ = harness.registerConsumer("c", on: link)
        deliver(harness, tag: 1)
        harness.settle(.ack(deliveryTag: 1, multiple: false), on: link)
        _ = await harness.request(.channelClose(replyCode: 200, replyText: "bye"), on: link)
        #expect(harness.takeSent() == ["ack(deliveryTag: 1, multiple: false)@1", "channel.close@1"])
    }

    @Test("A settlement for a closed channel is dropped as stale")
    func staleSettlement() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let buffer = harness.registerConsumer("c", on: link)
        deliver(harness, tag: 1)
        harness.receive(.channelClose(replyCode: 406, replyText: "x", failed: nil), on: 1)
        _ = harness.takeSent()
        harness.settle(.ack(deliveryTag: 1, multiple: false), on: link)
        harness.endPass()
        #expect(harness.takeSent().isEmpty)
        // The delivery not handed over yet is dropped, and the stream ends with the channel's error.
        await #expect { _ = try await buffer.next() } throws: { ($0 as? RabbitMQError)?.code == .channelClosed }
    }

    @Test("basic.get-ok's message answers the get; without automatic ack it must be settled")
    func basicGet() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let manual = await harness.request(.basicGet(queue: "q", noAck: false), on: link)
        harness.receive(.getOk(deliveryTag: 1, isRedelivered: false, exchange: "x", routingKey: "k"), on: 1)
        harness.receiveContent(on: 1, body: [4, 2])
        guard case .message(let delivery) = try await manual.value() else { Issue.record("no message"); return }
        #expect(delivery.body == Data([4, 2]))
        #expect(delivery.consumerTag == nil)
        #expect(harness.machine.channels[1]!.acks.unsettledCount == 1)

        let automatic = await harness.request(.basicGet(queue: "q", noAck: true), on: link)
        harness.receive(.getOk(deliveryTag: 2, isRedelivered: false, exchange: "x", routingKey: "k"), on: 1)
        harness.receiveContent(on: 1, body: [1])
        guard case .message(let second) = try await automatic.value() else { Issue.record("no message"); return }
        #expect(!link.markSettled(.ack(deliveryTag: second.deliveryTag, multiple: false)))  // settled already
        #expect(harness.machine.channels[1]!.acks.unsettledCount == 1)
    }

    @Test("A get-ok with no get pending is ignored")
    func unexpectedGetOk() async throws {
        let harness = try MachineHarness()
        _ = try await harness.openChannel()
        harness.receive(.getOk(deliveryTag: 1, isRedelivered: false, exchange: "", routingKey: "q"), on: 1)
        harness.receiveContent(on: 1, body: [1])
        #expect(harness.machine.channels[1]!.acks.unsettledCount == 0)
    }

    @Test("The broker cancels a consumer: cancel-ok is written and its stream ends after what it has")
    func brokerCancelsConsumer() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let buffer = harness.registerConsumer("c", on: link)
        deliver(harness, tag: 1)
        harness.receive(.cancel(consumerTag: "c", noWait: false), on: 1)
        #expect(harness.takeSent() == ["basic.cancel-ok@1"])
        #expect(try await buffer.next().map(\.deliveryTag) == [1])
        await #expect { _ = try await buffer.next() } throws: { ($0 as? RabbitMQError)?.code == .consumerCancelled }
        harness.receive(.cancel(consumerTag: "other", noWait: true), on: 1)
        #expect(harness.takeSent().isEmpty)
    }

    @Test("The application's basic.cancel ends its consumer normally when cancel-ok comes")
    func applicationCancelsConsumer() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let buffer = harness.registerConsumer("c", on: link)
        let cancel = await harness.request(.basicCancel(consumerTag: "c"), on: link)
        harness.receive(.cancelOk(consumerTag: "c"), on: 1)
        #expect("\(try await cancel.value())" == "done")
        #expect(try await buffer.next().isEmpty)
    }

    @Test("A consumer registered on a closed channel ends at once")
    func registerOnClosedChannel() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        harness.receive(.channelClose(replyCode: 406, replyText: "x", failed: nil), on: 1)
        let buffer = harness.registerConsumer("c", on: link)
        await #expect { _ = try await buffer.next() } throws: { ($0 as? RabbitMQError)?.code == .channelClosed }
    }

    @Test("Acks may wait for the next wake only after a hand-over, and while every prefetch is at most half used")
    func acksMayWait() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        _ = harness.registerConsumer("c", on: link)
        let qos = await harness.request(.basicQos(prefetchCount: 4, global: false), on: link)
        harness.receive(.reply(id: AMQP_BASIC_QOS_OK_METHOD, .done), on: 1)
        _ = try await qos.value()
        #expect(!harness.machine.acksMayWait)
        deliver(harness, tag: 1)
        deliver(harness, tag: 2)
        harness.endPass()
        #expect(harness.machine.acksMayWait)
        deliver(harness, tag: 3)
        #expect(!harness.machine.acksMayWait)  // 3 of 4 unsettled: the broker waits for acks
        harness.machine.didSleep()
        #expect(!harness.machine.acksMayWait)
    }
}
