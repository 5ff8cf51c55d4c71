import CRabbitMQ
import Foundation
import Testing

@testable import RabbitMQ

/// Publisher confirms, returns and flow control, without a socket.
@Suite("Connection state machine: confirms, returns and flow")
struct ConnectionStateMachinePublishingTests {
    /// A harness with an open channel in confirm mode.
    private func confirmingChannel(window: Int = 10) async throws -> (MachineHarness, ChannelLink) {
        let harness = try MachineHarness()
        let link = try await harness.openChannel(window: window)
        let select = await harness.request(.confirmSelect, on: link)
        harness.receive(.reply(id: AMQP_CONFIRM_SELECT_OK_METHOD, .done), on: 1)
        _ = try await select.value()
        _ = harness.takeSent()
        return (harness, link)
    }

    @Test("Publishes are numbered from 1; a single ack confirms its own, in any order")
    func singleAcks() async throws {
        let (harness, link) = try await confirmingChannel()
        let tickets = (0..<3).map { _ in harness.publish(on: link) }
        #expect(harness.machine.channels[1]!.unconfirmed.map(\.sequence) == [1, 2, 3])
        harness.receive(.ack(deliveryTag: 2, multiple: false), on: 1)
        #expect(tickets.map(\.isCompleted) == [false, true, false])
        harness.receive(.ack(deliveryTag: 1, multiple: false), on: 1)
        #expect(harness.machine.channels[1]!.unconfirmed.map(\.sequence) == [3])
        harness.receive(.ack(deliveryTag: 2, multiple: false), on: 1)  // again: nothing changes
        harness.receive(.ack(deliveryTag: 9, multiple: false), on: 1)  // unknown: ignored
        #expect(tickets.map(\.isCompleted) == [true, true, false])
        try await tickets[0].wait()
        try await tickets[1].wait()
    }

    @Test("A multiple ack confirms every publish up to its tag, and the window gets the slots once per pass")
    func multipleAck() async throws {
        let (harness, link) = try await confirmingChannel(window: 3)
        for _ in 0..<3 { try await link.window.acquire(deadline: .now + .seconds(1)) }
        let tickets = (0..<3).map { _ in harness.publish(on: link) }
        harness.receive(.ack(deliveryTag: 2, multiple: true), on: 1)
        #expect(tickets.map(\.isCompleted) == [true, true, false])
        #expect(link.window.inFlight == 3)
        harness.endPass()
        #expect(link.window.inFlight == 1)
        harness.receive(.ack(deliveryTag: 3, multiple: true), on: 1)
        harness.endPass()
        #expect(link.window.inFlight == 0)
        #expect(harness.machine.channels[1]!.unconfirmed.isEmpty)
    }

    @Test("A nack fails its publishes with publishNacked and is recorded for waitUntilDrained")
    func nack() async throws {
        let (harness, link) = try await confirmingChannel()
        let first = harness.publish(on: link)
        let second = harness.publish(on: link)
        harness.receive(.nack(deliveryTag: 2, multiple: true), on: 1)
        for ticket in [first, second] {
            await #expect { try await ticket.wait() } throws: { ($0 as? RabbitMQError)?.code == .publishNacked }
        }
        await #expect { try await link.window.waitUntilDrained(deadline: .now + .seconds(1)) } throws: {
            ($0 as? RabbitMQError)?.message.hasPrefix("2 publishes failed") == true
        }
    }

    @Test("Ten nacks in a row mark the channel as one that keeps nacking; an ack in between resets the count")
    func nackRun() async throws {
        let (harness, link) = try await confirmingChannel(window: 100)
        for tag in 1...9 {
            harness.publish(on: link)
            harness.receive(.nack(deliveryTag: UInt64(tag), multiple: false), on: 1)
        }
        harness.publish(on: link)
        harness.receive(.ack(deliveryTag: 10, multiple: false), on: 1)
        for tag in 11...19 {
            harness.publish(on: link)
            harness.receive(.nack(deliveryTag: UInt64(tag), multiple: false), on: 1)
        }
        #expect(!link.keepsNacking)
        harness.publish(on: link)
        harness.receive(.nack(deliveryTag: 20, multiple: false), on: 1)
        #expect(link.keepsNacking)
    }

    @Test("A mandatory publish carries its sequence number; its return fails it when the ack comes")
    func returnThenAckBySequence() async throws {
        let (harness, link) = try await confirmingChannel()
        let plain = harness.publish(on: link)
        let decision = harness.machine.publish(OutgoingPublish(link: link, message: OutgoingMessage(
            exchange: "orders", routingKey: "nowhere", mandatory: true, properties: MessageProperties(),
            body: Data()), ticket: PublishTicket(deadline: .now + .seconds(5))))
        #expect(decision == .write(channel: 1, sequence: 2))  // the loop stamps the header with 2
        let returned = harness.publish(on: link, routingKey: "nowhere", mandatory: true)
        #expect(harness.machine.channels[1]!.unconfirmed.last?.sequence == 2)
        harness.receive(.returned(replyCode: 312, replyText: "NO_ROUTE", exchange: "orders", routingKey: "nowhere"),
                        on: 1)
        var properties = MessageProperties()
        properties.headers[OutgoingMessage.publishSequenceHeader] = .int64(2)
        harness.receiveContent(on: 1, properties: properties, body: [1, 2, 3])
        #expect(!returned.isCompleted)
        harness.receive(.ack(deliveryTag: 2, multiple: true), on: 1)
        try await plain.wait()
        await #expect { try await returned.wait() } throws: {
            ($0 as? RabbitMQError)?.code == .unroutable && ($0 as? RabbitMQError)?.replyCode == 312
        }
    }

    @Test("A return without the header is matched by exchange, routing key and body to the next confirm's publishes")
    func returnThenAckByContent() async throws {
        let (harness, link) = try await confirmingChannel()
        let first = harness.publish(on: link, routingKey: "a", mandatory: true, body: [1])
        let second = harness.publish(on: link, routingKey: "b", mandatory: true, body: [2])
        harness.receive(.returned(replyCode: 312, replyText: "NO_ROUTE", exchange: "orders", routingKey: "a"), on: 1)
        harness.receiveContent(on: 1, body: [1])
        harness.receive(.ack(deliveryTag: 2, multiple: true), on: 1)
        await #expect { try await first.wait() } throws: { ($0 as? RabbitMQError)?.code == .unroutable }
        try await second.wait()
        #expect(harness.machine.channels[1]!.pendingReturns.isEmpty)
    }

    @Test("A return on a channel without confirms is only logged")
    func returnWithoutConfirms() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let ticket = harness.publish(on: link, mandatory: true)
        harness.receive(.returned(replyCode: 312, replyText: "NO_ROUTE", exchange: "orders", routingKey: "placed"),
                        on: 1)
        harness.receiveContent(on: 1, body: [1, 2, 3])
        harness.endPass()
        try await ticket.wait()
    }

    @Test("Without confirms a publish completes once the pass's writes are done")
    func withoutConfirms() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel(window: 1)
        try await link.window.acquire(deadline: .now + .seconds(1))
        let ticket = harness.publish(on: link)
        #expect(!ticket.isCompleted)
        harness.endPass()
        try await ticket.wait()
        #expect(link.window.inFlight == 0)
    }

    @Test("A publish whose properties do not fit a frame fails and frees its slot")
    func publishRefused() async throws {
        let (harness, link) = try await confirmingChannel(window: 1)
        try await link.window.acquire(deadline: .now + .seconds(1))
        let publish = OutgoingPublish(link: link, message: OutgoingMessage(
            exchange: "", routingKey: "q", mandatory: false, properties: MessageProperties(), body: Data()),
            ticket: PublishTicket(deadline: .now + .seconds(5)))
        harness.machine.publishRefused(publish, on: 1, RabbitMQError(.messageTooLarge, "too large"))
        harness.endPass()
        await #expect { try await publish.ticket.wait() } throws: { ($0 as? RabbitMQError)?.code == .messageTooLarge }
        #expect(link.window.inFlight == 0)
        #expect(harness.machine.channels[1]!.nextPublishSequence == 1)
    }

    @Test("A tick past a publish's deadline fails it with a timeout; a later ack for it changes nothing")
    func confirmTimeout() async throws {
        let (harness, link) = try await confirmingChannel()
        let early = harness.publish(on: link, timeout: .seconds(1))
        let late = harness.publish(on: link, timeout: .seconds(5))
        #expect(harness.machine.nextDeadline() == harness.now + .seconds(1))
        harness.tick(after: .seconds(2))
        await #expect { try await early.wait() } throws: { ($0 as? RabbitMQError)?.code == .timeout }
        #expect(!late.isCompleted)
        harness.receive(.ack(deliveryTag: 2, multiple: true), on: 1)
        try await late.wait()
    }

    @Test("A publish on a closed channel fails with the channel's error")
    func publishOnClosedChannel() async throws {
        let (harness, link) = try await confirmingChannel()
        let unconfirmed = harness.publish(on: link)
        harness.receive(.channelClose(replyCode: 406, replyText: "PRECONDITION_FAILED", failed: nil), on: 1)
        await #expect { try await unconfirmed.wait() } throws: { ($0 as? RabbitMQError)?.code == .channelClosed }
        let after = harness.publish(on: link)
        await #expect { try await after.wait() } throws: { ($0 as? RabbitMQError)?.code == .channelClosed }
        #expect(harness.written.count == 1)
    }

    // MARK: Flow control

    @Test("connection.blocked holds publishes back; unblocked writes them in order")
    func blockedAndUnblocked() async throws {
        let (harness, link) = try await confirmingChannel()
        harness.receive(.connectionBlocked(reason: "low on memory"), on: 0)
        harness.receive(.connectionBlocked(reason: "again"), on: 0)  // no change, no second event
        #expect(harness.events.count == 1)
        let first = harness.publish(on: link, routingKey: "1")
        let second = harness.publish(on: link, routingKey: "2")
        #expect(harness.written.isEmpty)
        #expect(harness.machine.held.count == 2)
        // A channel opened while blocked starts blocked.
        let later = try await harness.openChannel()
        harness.receive(.connectionUnblocked, on: 0)
        #expect(harness.written.map(\.0.message.routingKey) == ["1", "2"])
        #expect(harness.machine.channels[1]!.unconfirmed.map(\.sequence) == [1, 2])
        #expect(harness.events.count == 2)
        harness.receive(.ack(deliveryTag: 2, multiple: true), on: 1)
        try await first.wait()
        try await second.wait()
        _ = later
    }

    @Test("A held publish that times out fails, and is not written after the unblock")
    func heldPublishTimesOut() async throws {
        let (harness, link) = try await confirmingChannel()
        harness.receive(.connectionBlocked(reason: "disk"), on: 0)
        let expiring = harness.publish(on: link, routingKey: "short", timeout: .seconds(1))
        let lasting = harness.publish(on: link, routingKey: "long", timeout: .seconds(60))
        harness.tick(after: .seconds(2))
        await #expect { try await expiring.wait() } throws: { ($0 as? RabbitMQError)?.code == .timeout }
        harness.receive(.connectionUnblocked, on: 0)
        #expect(harness.written.map(\.0.message.routingKey) == ["long"])
        _ = lasting
    }

    @Test("channel.flow is answered with flow-ok")
    func channelFlow() async throws {
        let harness = try MachineHarness()
        _ = try await harness.openChannel()
        harness.receive(.channelFlow(active: false), on: 1)
        #expect(harness.takeSent() == ["channel.flow-ok@1"])
    }
}
