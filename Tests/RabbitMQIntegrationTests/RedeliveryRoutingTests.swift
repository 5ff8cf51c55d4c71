import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// What a handler saw of one delivery's routing.
private struct SeenRouting: Sendable, Equatable {
    var exchange: String
    var routingKey: String
    var originalExchange: String
    var originalRoutingKey: String
    var attempt: Int

    init(exchange: String, routingKey: String, originalExchange: String, originalRoutingKey: String, attempt: Int) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.originalExchange = originalExchange
        self.originalRoutingKey = originalRoutingKey
        self.attempt = attempt
    }

    init(_ delivery: Delivery) {
        exchange = delivery.exchange
        routingKey = delivery.routingKey
        originalExchange = delivery.originalExchange
        originalRoutingKey = delivery.originalRoutingKey
        attempt = RetryTopology.attempts(of: delivery) + 1
    }
}

/// A topic exchange and a work queue with a retry topology, the queue bound to the exchange with two routing keys
/// (two event types), all deleted after `body`.
private struct EventsSetup {
    let exchange: String
    let retry: RetryTopology
    let keys = ["order.placed", "order.cancelled"]

    init(_ prefix: String, policy: RetryPolicy) {
        exchange = TestBroker.uniqueName("\(prefix).events")
        retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName(prefix)), policy: policy)
    }

    var topology: Topology {
        var topology = retry.topology
        topology.add(Exchange(exchange, type: .topic))
        for key in keys { topology.add(Binding.queue(retry.queueName, to: exchange, routingKey: key)) }
        return topology
    }

    func run(_ client: RabbitMQClient, _ body: () async throws -> Void) async throws {
        try await client.declare(topology)
        var failure: (any Error)?
        do { try await body() } catch { failure = error }
        for queue in retry.topology.queues { _ = try? await client.deleteQueue(queue.name) }
        _ = try? await client.deleteExchange(exchange)
        if let failure { throw failure }
    }
}

@Suite("Redelivery: original routing")
struct RedeliveryRoutingTests {
    /// Each event type fails twice and succeeds on attempt 3. From attempt 2 on the message comes back from its
    /// retry tier through the default exchange, with the queue's name as routing key; its original exchange and
    /// routing key stay visible.
    @Test func theOriginalRoutingIsVisibleOnAttemptThree() async throws {
        let setup = EventsSetup("routing.attempts", policy: RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(100),
                                                                           multiplier: 1, jitter: 0))
        try await TestBroker.withClient { client in
            try await setup.run(client) {
                let seen = Locked<[String: [SeenRouting]]>([:])
                let worker = QueueWorker(client: client,
                                         configuration: .init(queue: setup.retry.queueName, retry: setup.retry)) {
                    delivery in
                    let routing = SeenRouting(delivery)
                    seen.withLock { $0[delivery.bodyString, default: []].append(routing) }
                    if routing.attempt < 3 { throw RetryableError("not yet") }
                }
                let run = Task { try await worker.run() }
                for key in setup.keys {
                    try await client.publish(Data(key.utf8), to: setup.exchange, routingKey: key)
                }
                #expect(try await eventually(timeout: .seconds(30)) { worker.outcomes[.acked] == 2 })
                worker.stop()
                try await run.value
                #expect(worker.outcomes == [.retried: 4, .acked: 2])

                let work = setup.retry.queueName
                for key in setup.keys {
                    let attempts = seen.withLock { $0[key] ?? [] }
                    try #require(attempts.count == 3, "\(attempts)")
                    #expect(attempts[0] == SeenRouting(exchange: setup.exchange, routingKey: key,
                                                       originalExchange: setup.exchange, originalRoutingKey: key,
                                                       attempt: 1))
                    for attempt in 2...3 {
                        #expect(attempts[attempt - 1] == SeenRouting(exchange: "", routingKey: work,
                                                                     originalExchange: setup.exchange,
                                                                     originalRoutingKey: key, attempt: attempt))
                    }
                }
            }
        }
    }

    /// Messages parked after a retry are replayed through the exchange and routing key they were first published
    /// with (the default), or straight to the work queue (`.workQueue`), which keeps the original routing visible.
    @Test func replayPublishesThroughTheOriginalRouting() async throws {
        let setup = EventsSetup("routing.replay", policy: RetryPolicy(maxAttempts: 2, initialDelay: .milliseconds(100),
                                                                         jitter: 0))
        try await TestBroker.withClient { client in
            try await setup.run(client) {
                let accepting = Locked(false)
                let seen = Locked<[(body: String, routing: SeenRouting)]>([])
                let worker = QueueWorker(client: client,
                                         configuration: .init(queue: setup.retry.queueName, retry: setup.retry)) {
                    delivery in
                    seen.withLock { $0.append((delivery.bodyString, SeenRouting(delivery))) }
                    guard accepting.withLock({ $0 }) else { throw RetryableError("downstream down") }
                }
                let run = Task { try await worker.run() }
                for key in setup.keys {
                    try await client.publish(Data(key.utf8), to: setup.exchange, routingKey: key)
                }
                // Attempt 1, a retry through the tier, attempt 2, parked.
                #expect(try await eventually(timeout: .seconds(30)) { worker.outcomes[.parked] == 2 })
                let parked = try await client.parkedMessages(in: setup.retry)
                try #require(parked.count == 2)
                for message in parked {
                    #expect(message.delivery.routingKey == setup.retry.parkingLotName)
                    #expect(message.delivery.originalExchange == setup.exchange)
                    #expect(message.delivery.originalRoutingKey == message.delivery.bodyString)
                }

                accepting.withLock { $0 = true }
                let placed = try await client.replayParked(in: setup.retry) { $0.delivery.bodyString == "order.placed" }
                #expect(placed == 1)
                let cancelled = try await client.replayParked(in: setup.retry, route: .workQueue)
                #expect(cancelled == 1)
                #expect(try await eventually { worker.outcomes[.acked] == 2 })
                worker.stop()
                try await run.value

                let replayed = seen.withLock { Dictionary($0.suffix(2).map { ($0.body, $0.routing) },
                                                          uniquingKeysWith: { first, _ in first }) }
                #expect(replayed["order.placed"] == SeenRouting(
                    exchange: setup.exchange, routingKey: "order.placed", originalExchange: setup.exchange,
                    originalRoutingKey: "order.placed", attempt: 1))
                #expect(replayed["order.cancelled"] == SeenRouting(
                    exchange: "", routingKey: setup.retry.queueName, originalExchange: setup.exchange,
                    originalRoutingKey: "order.cancelled", attempt: 1))
                #expect(try await client.parkedMessages(in: setup.retry).isEmpty)
            }
        }
    }

    /// A message the broker dead-lettered into the parking lot (rejected on the work queue, without a worker) has no
    /// `x-original-*` headers: its original routing comes from its first dead-lettering, and replay uses it.
    @Test func aMessageTheBrokerParkedIsReplayedThroughItsFirstRouting() async throws {
        let setup = EventsSetup("routing.rejected", policy: RetryPolicy(maxAttempts: 2))
        try await TestBroker.withClient { client in
            try await setup.run(client) {
                try await client.publish(Data("rejected".utf8), to: setup.exchange, routingKey: "order.cancelled")
                let delivery = try #require(try await client.get(from: setup.retry.queueName))
                try delivery.reject(requeue: false)
                #expect(try await eventually { try await readyCount(client, setup.retry.parkingLotName) == 1 })
                let parked = try #require(try await client.parkedMessages(in: setup.retry).first)
                #expect(parked.delivery.exchange == "")
                #expect(parked.delivery.originalExchange == setup.exchange)
                #expect(parked.delivery.originalRoutingKey == "order.cancelled")

                #expect(try await client.replayParked(in: setup.retry) == 1)
                let replayed = try #require(try await client.get(from: setup.retry.queueName))
                try replayed.ack()
                #expect(replayed.exchange == setup.exchange)
                #expect(replayed.routingKey == "order.cancelled")
                #expect(replayed.properties.headers["x-death"] == nil)
                #expect(replayed.properties.headers[RetryTopology.originalExchangeHeader]?.stringValue
                    == setup.exchange)
            }
        }
    }
}
