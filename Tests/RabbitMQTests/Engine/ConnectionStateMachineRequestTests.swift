import CRabbitMQ
import Testing

@testable import RabbitMQ

/// Requests and their replies, channel numbers, deadlines and the closing handshakes, without a socket.
@Suite("Connection state machine: requests and channels")
struct ConnectionStateMachineRequestTests {
    @Test("channel.open is written on the first free number and its open-ok hands the link over")
    func openChannel() async throws {
        let harness = try MachineHarness()
        let first = try await harness.openChannel()
        let second = try await harness.openChannel()
        #expect(first.number == 1)
        #expect(second.number == 2)
        #expect(first.isOpen && second.isOpen)
        #expect(harness.machine.channels.numbers == [1, 2])
    }

    @Test("Numbers are handed out round-robin, reused after a close, and refused when all are taken")
    func channelNumbers() async throws {
        let harness = try MachineHarness(channelMax: 2)
        let one = try await harness.openChannel()
        _ = try await harness.openChannel()
        await #expect(throws: RabbitMQError.self) { try await harness.openChannel() }
        let close = await harness.request(.channelClose(replyCode: 200, replyText: "bye"), on: one)
        harness.receive(.channelCloseOk, on: 1)
        _ = try await close.value()
        #expect(!one.isOpen)
        let again = try await harness.openChannel()
        #expect(again.number == 1)
    }

    /// Every request with a reply, the reply that answers it, and what the caller gets.
    static let pairings: [(OutgoingMethod, UInt32, MethodReply)] = [
        (.exchangeDeclare(name: "x", type: "topic", passive: false, durable: true, autoDelete: false,
                          internal: false, arguments: [:]), AMQP_EXCHANGE_DECLARE_OK_METHOD, .done),
        (.exchangeDelete(name: "x", ifUnused: false), AMQP_EXCHANGE_DELETE_OK_METHOD, .done),
        (.exchangeBind(destination: "d", source: "s", routingKey: "k", arguments: [:]), AMQP_EXCHANGE_BIND_OK_METHOD,
         .done),
        (.exchangeUnbind(destination: "d", source: "s", routingKey: "k", arguments: [:]),
         AMQP_EXCHANGE_UNBIND_OK_METHOD, .done),
        (.queueDeclare(name: "", passive: false, durable: false, exclusive: true, autoDelete: true, arguments: [:]),
         AMQP_QUEUE_DECLARE_OK_METHOD, .queueDeclared(name: "amq.gen-1", messageCount: 3, consumerCount: 1)),
        (.queueBind(queue: "q", exchange: "x", routingKey: "k", arguments: [:]), AMQP_QUEUE_BIND_OK_METHOD, .done),
        (.queueUnbind(queue: "q", exchange: "x", routingKey: "k", arguments: [:]), AMQP_QUEUE_UNBIND_OK_METHOD, .done),
        (.queuePurge(queue: "q"), AMQP_QUEUE_PURGE_OK_METHOD, .messageCount(7)),
        (.queueDelete(queue: "q", ifUnused: false, ifEmpty: false), AMQP_QUEUE_DELETE_OK_METHOD, .messageCount(2)),
        (.basicQos(prefetchCount: 10, global: false), AMQP_BASIC_QOS_OK_METHOD, .done),
        (.basicConsume(queue: "q", consumerTag: "", noAck: false, exclusive: false, arguments: [:]),
         AMQP_BASIC_CONSUME_OK_METHOD, .consumerTag("amq.ctag-1")),
        (.basicGet(queue: "q", noAck: false), AMQP_BASIC_GET_EMPTY_METHOD, .getEmpty),
        (.basicRecover(requeue: true), AMQP_BASIC_RECOVER_OK_METHOD, .done),
        (.confirmSelect, AMQP_CONFIRM_SELECT_OK_METHOD, .done),
    ]

    @Test("Each request is written and resumed with its reply", arguments: pairings)
    func requestAndReply(method: OutgoingMethod, replyID: UInt32, reply: MethodReply) async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let pending = await harness.request(method, on: link)
        #expect(harness.takeSent() == ["\(method.name)@1"])
        #expect(harness.machine.channels[1]!.pending.count == 1)
        harness.receive(.reply(id: replyID, reply), on: 1)
        #expect("\(try await pending.value())" == "\(reply)")
        #expect(harness.machine.channels[1]!.pending.isEmpty)
    }

    @Test("A request without a reply completes once written")
    func requestWithoutReply() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let pending = await harness.request(.basicCancelOk(consumerTag: "c"), on: link)
        #expect(harness.takeSent() == ["basic.cancel-ok@1"])
        #expect("\(try await pending.value())" == "done")
        #expect(harness.machine.channels[1]!.pending.isEmpty)
    }

    @Test("Replies answer the requests of their channel in order")
    func repliesInOrder() async throws {
        let harness = try MachineHarness()
        let one = try await harness.openChannel()
        let two = try await harness.openChannel()
        let purge = await harness.request(.queuePurge(queue: "a"), on: one)
        let delete = await harness.request(.queueDelete(queue: "b", ifUnused: false, ifEmpty: false), on: one)
        let other = await harness.request(.queuePurge(queue: "c"), on: two)
        harness.receive(.reply(id: AMQP_QUEUE_PURGE_OK_METHOD, .messageCount(3)), on: 2)
        harness.receive(.reply(id: AMQP_QUEUE_PURGE_OK_METHOD, .messageCount(1)), on: 1)
        harness.receive(.reply(id: AMQP_QUEUE_DELETE_OK_METHOD, .messageCount(2)), on: 1)
        #expect("\(try await purge.value())" == "messageCount(1)")
        #expect("\(try await delete.value())" == "messageCount(2)")
        #expect("\(try await other.value())" == "messageCount(3)")
    }

    @Test("A reply that answers no pending request, or comes on an unknown channel, is ignored")
    func unexpectedReplies() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let purge = await harness.request(.queuePurge(queue: "a"), on: link)
        _ = harness.takeSent()
        harness.receive(.reply(id: AMQP_QUEUE_DECLARE_OK_METHOD, .queueDeclared(name: "q", messageCount: 0,
                                                                             consumerCount: 0)), on: 1)
        harness.receive(.reply(id: AMQP_QUEUE_PURGE_OK_METHOD, .messageCount(9)), on: 5)
        harness.receive(.channelCloseOk, on: 1)  // no channel.close pending
        harness.receive(.cancelOk(consumerTag: "nobody"), on: 1)
        harness.receive(.connectionCloseOk, on: 1)  // a connection method on a channel
        #expect(harness.machine.channels[1]!.pending.count == 1)
        #expect(link.isOpen)
        harness.receive(.reply(id: AMQP_QUEUE_PURGE_OK_METHOD, .messageCount(4)), on: 1)
        #expect("\(try await purge.value())" == "messageCount(4)")
        #expect(harness.takeSent().isEmpty)
    }

    @Test("A request on a closed channel fails at once with the channel's error")
    func requestOnClosedChannel() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        harness.receive(.channelClose(replyCode: 406, replyText: "PRECONDITION_FAILED", failed: nil), on: 1)
        let pending = await harness.request(.queuePurge(queue: "a"), on: link)
        let error = try #require(await pending.error() as? RabbitMQError)
        #expect(error.code == .channelClosed)
        #expect(error.replyCode == 406)
    }

    // MARK: Deadlines

    @Test("A tick past a request's deadline fails it with a timeout and closes its channel")
    func requestTimeout() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let pending = await harness.request(.queuePurge(queue: "a"), on: link, timeout: .seconds(2))
        _ = harness.takeSent()
        harness.tick(after: .seconds(1))
        #expect(harness.machine.channels[1]!.pending.count == 1)
        #expect(harness.machine.nextDeadline() == harness.now + .seconds(1))
        harness.tick(after: .seconds(1))
        let error = try #require(await pending.error() as? RabbitMQError)
        #expect(error.code == .timeout)
        #expect(error.operation == "queue.purge")
        #expect(harness.takeSent() == ["channel.close@1"])
        #expect(!link.isOpen)
        // The number stays taken until the broker confirms the close; the late reply is ignored meanwhile.
        #expect(harness.machine.channels[1]!.isClosing)
        harness.receive(.reply(id: AMQP_QUEUE_PURGE_OK_METHOD, .messageCount(1)), on: 1)
        harness.receive(.channelCloseOk, on: 1)
        #expect(harness.machine.channels[1] == nil)
        #expect(harness.machine.nextDeadline() == nil)
    }

    @Test("An abandoned request fails with the caller's error and its channel is closed")
    func abandonedRequest() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let pending = await harness.request(.queuePurge(queue: "a"), on: link, id: 42)
        _ = harness.takeSent()
        harness.machine.abandonRequest(41, CancellationError())
        harness.perform()
        #expect(link.isOpen)
        harness.machine.abandonRequest(42, CancellationError())
        harness.perform()
        #expect(await pending.error() is CancellationError)
        #expect(harness.takeSent() == ["channel.close@1"])
        #expect(link.closedError?.code == .clientClosed)
    }

    // MARK: Closing

    @Test("The application's channel.close: what was queued before it is settled when close-ok comes")
    func applicationClosesChannel() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let cancel = await harness.request(.basicCancel(consumerTag: "c"), on: link)
        let purge = await harness.request(.queuePurge(queue: "a"), on: link)
        let close = await harness.request(.channelClose(replyCode: 200, replyText: "bye"), on: link)
        #expect(harness.takeSent() == ["basic.cancel@1", "queue.purge@1", "channel.close@1"])
        // Nothing more goes out on a channel whose close is sent.
        let late = await harness.request(.queuePurge(queue: "b"), on: link)
        #expect(await late.error() != nil)
        harness.receive(.channelCloseOk, on: 1)
        #expect("\(try await cancel.value())" == "done")
        #expect((await purge.error() as? RabbitMQError)?.code == .clientClosed)
        #expect("\(try await close.value())" == "done")
        #expect(!link.isOpen)
        #expect(harness.machine.channels[1] == nil)
    }

    @Test("The broker closes a channel: close-ok is written, the failed request is charged, others are collateral")
    func brokerClosesChannel() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let declare = await harness.request(.queueDeclare(name: "q", passive: true, durable: false, exclusive: false,
                                                          autoDelete: false, arguments: [:]), on: link)
        let purge = await harness.request(.queuePurge(queue: "a"), on: link)
        _ = harness.takeSent()
        harness.receive(.channelClose(replyCode: 404, replyText: "NOT_FOUND - no queue 'q'",
                                      failed: .init(number: AMQP_QUEUE_DECLARE_METHOD, name: "queue.declare")), on: 1)
        #expect(harness.takeSent() == ["channel.close-ok@1"])
        let charged = try #require(await declare.error() as? RabbitMQError)
        #expect(charged.code == .channelClosed)
        #expect(charged.replyCode == 404)
        let collateral = try #require(await purge.error() as? RabbitMQError)
        #expect(collateral.cause?.replyCode == 404)
        #expect(link.closedError?.replyCode == 404)
        #expect(harness.machine.channels[1] == nil)
    }

    @Test("A publish to a missing exchange: its unconfirmed publishes to that exchange are charged")
    func brokerClosesChannelForAPublish() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        _ = await harness.request(.confirmSelect, on: link)
        harness.receive(.reply(id: AMQP_CONFIRM_SELECT_OK_METHOD, .done), on: 1)
        let good = harness.publish(on: link, exchange: "present")
        let bad = harness.publish(on: link, exchange: "missing")
        harness.receive(.channelClose(replyCode: 404, replyText: "NOT_FOUND - no exchange 'missing' in vhost '/'",
                                      failed: .init(number: AMQP_BASIC_PUBLISH_METHOD, name: "basic.publish")), on: 1)
        await #expect { try await bad.wait() } throws: { ($0 as? RabbitMQError)?.replyCode == 404 }
        await #expect { try await good.wait() } throws: { ($0 as? RabbitMQError)?.cause?.replyCode == 404 }
    }

    @Test("A message too large: every operation of the channel gets the error")
    func messageTooLarge() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let purge = await harness.request(.queuePurge(queue: "a"), on: link)
        harness.receive(.channelClose(replyCode: 406, replyText: "PRECONDITION_FAILED - message size 10 is larger",
                                      failed: .init(number: AMQP_BASIC_PUBLISH_METHOD, name: "basic.publish")), on: 1)
        #expect((await purge.error() as? RabbitMQError)?.code == .messageTooLarge)
    }

    @Test("The broker's channel.close while our close is out frees the number")
    func brokerCloseWhileClosing() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        let pending = await harness.request(.queuePurge(queue: "a"), on: link, timeout: .seconds(1))
        harness.tick(after: .seconds(2))
        _ = await pending.error()
        #expect(harness.machine.channels[1]?.isClosing == true)
        _ = harness.takeSent()
        harness.receive(.channelClose(replyCode: 406, replyText: "x", failed: nil), on: 1)
        #expect(harness.takeSent() == ["channel.close-ok@1"])
        #expect(harness.machine.channels[1] == nil)
    }

    @Test("The broker closes the connection: close-ok, the request that caused it is charged, the rest collateral")
    func brokerClosesConnection() async throws {
        let harness = try MachineHarness()
        let one = try await harness.openChannel()
        let two = try await harness.openChannel()
        let declare = await harness.request(.exchangeDeclare(name: "x", type: "nonsense", passive: false,
                                                             durable: false, autoDelete: false, internal: false,
                                                             arguments: [:]), on: one)
        let purge = await harness.request(.queuePurge(queue: "a"), on: two)
        _ = harness.takeSent()
        harness.receive(.connectionClose(replyCode: 503, replyText: "COMMAND_INVALID - unknown exchange type",
                                         failed: .init(number: AMQP_EXCHANGE_DECLARE_METHOD,
                                                       name: "exchange.declare")), on: 0)
        #expect(harness.takeSent() == ["connection.close-ok@0"])
        #expect(harness.machine.finalError?.replyCode == 503)
        #expect((await declare.error() as? RabbitMQError)?.replyCode == 503)
        #expect((await purge.error() as? RabbitMQError)?.cause?.replyCode == 503)
        #expect(harness.terminatedWith?.cause?.replyCode == 503)
        #expect(!one.isOpen && !two.isOpen)
        #expect(harness.machine.channels.numbers.isEmpty)
    }

    @Test("The client closes the connection: connection.close, then close-ok ends it; held publishes fail")
    func clientClosesConnection() async throws {
        let harness = try MachineHarness()
        let link = try await harness.openChannel()
        harness.receive(.connectionBlocked(reason: "low on memory"), on: 0)
        let held = harness.publish(on: link)
        let close = await harness.closeConnection()
        #expect(harness.takeSent() == ["connection.close@0"])
        await #expect { try await held.wait() } throws: { ($0 as? RabbitMQError)?.code == .clientClosed }
        #expect(harness.machine.finalError == nil)
        harness.receive(.connectionCloseOk, on: 0)
        #expect(harness.machine.finalError?.code == .clientClosed)
        for waiter in harness.machine.takeCloseWaiters() { waiter.resume() }
        try await close.value()
        #expect(!link.isOpen)
    }

    @Test("Without close-ok in time, a tick ends the connection")
    func closeDeadline() async throws {
        let harness = try MachineHarness(requestTimeout: .seconds(2))
        _ = await harness.closeConnection()
        harness.tick(after: .seconds(1))
        #expect(harness.machine.finalError == nil)
        harness.tick(after: .seconds(1))
        #expect(harness.machine.finalError?.code == .clientClosed)
        for waiter in harness.machine.takeCloseWaiters() { waiter.resume() }
    }

    @Test("A lost connection keeps a recoverable channel's consumers open and ends the others")
    func connectionLostKeepsRecoverableConsumers() async throws {
        let harness = try MachineHarness()
        let recoverable = try await harness.openChannel()
        recoverable.isRecoverable = true
        let plain = try await harness.openChannel()
        let kept = harness.registerConsumer("a", on: recoverable)
        let ended = harness.registerConsumer("b", on: plain)
        harness.machine.fail(RabbitMQError(.connectionLost, "gone"), endpoint: "test")
        harness.perform()
        await #expect { _ = try await ended.next() } throws: { ($0 as? RabbitMQError)?.code == .connectionLost }
        kept.close()
        #expect(try await kept.next().isEmpty)
        // Failing again changes nothing.
        harness.machine.fail(RabbitMQError(.connectionLost, "again"), endpoint: "test")
        #expect(harness.machine.actions.isEmpty)
    }
}
