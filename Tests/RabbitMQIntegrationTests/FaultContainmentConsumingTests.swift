import Foundation
import MetricsTestKit
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// Issue 14, scenarios 1 and 2: a delivery is handed to the application only while it can still be settled;
/// settling one whose channel has died does nothing (the broker has requeued it), and settling one twice is a
/// programming error that throws. Every outcome is checked at the broker.
@Suite("Fault containment: consuming")
struct FaultContainmentConsumingTests {
    // MARK: A lost connection

    /// The README's loop loses its connection (`rabbitmqctl close_connection`) while its handler holds a
    /// delivery, with the rest of the prefetch buffered behind it. The held delivery's ack reaches a dead channel:
    /// it must do nothing rather than end the loop. The buffered deliveries of the dead channel must never be
    /// handed out. After recovery the loop goes on with the redelivered messages until every one is done.
    @Test func theReadmeLoopSurvivesALostConnection() async throws {
        let count = 400
        let heldAt = 100
        let metrics = TestMetrics()
        try await TestBroker.withClient(configure: { configuration in
            configuration.observability.metricsFactory = metrics
            configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
        }) { client in
            try await ConsumingTests.withQueue(client, "fc.readme") { queue in
                try await ConsumingTests.fill(client, queue, count: count)
                let recovered = Locked(false)
                let events = client.connectionEvents()
                let watcher = Task {
                    for await event in events {
                        if case .recovered = event { recovered.withLock { $0 = true } }
                    }
                }
                let consumer = try await client.consume(queue, prefetch: 50)
                let log = Locked(LoopLog())
                let loop = Task { () -> (any Error)? in
                    defer { log.withLock { $0.ended = true } }
                    do {
                        for try await delivery in consumer {
                            // The handler of one delivery takes until the connection has been lost and recovered.
                            let holds = log.withLock { log in
                                guard log.processed.count == heldAt, !log.held else { return false }
                                log.held = true
                                return true
                            }
                            while holds, !log.withLock({ $0.released }) { try await Task.sleep(for: .milliseconds(10)) }
                            try delivery.ack()
                            let done = log.withLock { log in
                                log.processed.append(delivery.bodyString)
                                if delivery.isRedelivered { log.redelivered += 1 }
                                return Set(log.processed).count == count
                            }
                            if done { break }
                        }
                    } catch {
                        return error
                    }
                    return nil
                }
                let held = try await eventually(timeout: .seconds(60)) { log.withLock { $0.held } }
                try await TestBroker.closeConnections(named: try #require(client.configuration.connectionName),
                                                      reason: "fault containment test")
                let wasRecovered = try await eventually(timeout: .seconds(60)) {
                    recovered.withLock { $0 }
                }
                log.withLock { $0.released = true }
                // The loop breaks by itself once every message is done, or ends early with an error; a hang guard.
                let loopEnded = try await eventually(timeout: .seconds(120)) { log.withLock { $0.ended } }
                if !loopEnded { loop.cancel() }
                let outcome = await loop.value.map { "\($0)" }
                await consumer.cancel()
                watcher.cancel()
                let (processed, redelivered) = log.withLock { ($0.processed, $0.redelivered) }
                let stale = try? metrics.expectCounter("rabbitmq.settlements.stale").totalValue
                let recoveries = (try? metrics.expectCounter("rabbitmq.recoveries").totalValue) ?? 0
                print("""
                    [fault containment] README loop, prefetch 50, \(count) messages, connection closed while the \
                    handler held delivery \(heldAt + 1): loop error \(outcome ?? "none"); \(processed.count) \
                    deliveries handled (\(Set(processed).count) distinct, \(redelivered) redelivered); stale \
                    settlements \(stale.map { "\($0)" } ?? "not counted"); recoveries \(recoveries)
                    """)
                try #require(held, "the loop did not get going")
                #expect(wasRecovered, "the connection was not recovered")
                #expect(loopEnded, "the loop hung")
                #expect(outcome == nil, "the loop ended with an error")
                #expect(Set(processed) == Set(ConsumingTests.bodies(count)),
                        "not every message was processed: \(Set(processed).count) of \(count)")
                #expect(recoveries == 1)
                // The broker requeued the prefetch's worth of unacked messages and delivered them again.
                #expect(redelivered >= 50, "\(redelivered) redelivered")
                // Only the held delivery was settled on the dead channel: the ones buffered behind it were dropped
                // before they reached the loop.
                let staleCount = try #require(stale, "no rabbitmq.settlements.stale counter")
                #expect(staleCount == 1, "\(staleCount) deliveries of the dead channel were handed out and settled")
                #expect(try await ConsumingTests.isSettledAndIdle(queue), "\(ConsumingTests.stats(queue))")
            }
        }
    }

    // MARK: Settling twice

    @Test func settlingADeliveryTwiceThrowsAlreadySettledAndTheFirstSettlementStands() async throws {
        try await TestBroker.withClient { client in
            try await ConsumingTests.withQueue(client, "fc.twice") { queue in
                try await ConsumingTests.fill(client, queue, count: 8)
                let channel = try await client.openChannel()
                try await channel.setPrefetch(8)
                let consumer = try await channel.consume(queue)
                var iterator = consumer.makeAsyncIterator()
                let deliveries = try await ConsumingTests.take(8, from: &iterator)
                try #require(deliveries.map(\.bodyString) == ConsumingTests.bodies(8))

                func expectAlreadySettled(_ settle: () throws -> Void,
                                          sourceLocation: SourceLocation = #_sourceLocation) {
                    do {
                        try settle()
                        Issue.record("a second settlement did not throw", sourceLocation: sourceLocation)
                    } catch let error as RabbitMQError {
                        #expect(error.code == .alreadySettled, "\(error)", sourceLocation: sourceLocation)
                        #expect(!error.isRetryable, sourceLocation: sourceLocation)
                    } catch {
                        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
                    }
                }
                try deliveries[0].ack()
                expectAlreadySettled { try deliveries[0].ack() }
                try deliveries[1].ack()
                expectAlreadySettled { try deliveries[1].nack(requeue: true) }  // must not requeue it
                try deliveries[2].nack(requeue: false)
                expectAlreadySettled { try deliveries[2].reject(requeue: true) }  // must not bring it back
                try deliveries[3].reject(requeue: false)
                expectAlreadySettled { try deliveries[3].ack() }
                // A multiple ack covers the earlier deliveries: settling one of them again is the same mistake.
                try deliveries[6].ack(multiple: true)
                expectAlreadySettled { try deliveries[4].ack() }
                expectAlreadySettled { try deliveries[5].nack(requeue: true) }
                expectAlreadySettled { try deliveries[6].ack(multiple: true) }
                try deliveries[7].ack(multiple: true)
                expectAlreadySettled { try deliveries[7].nack(requeue: true, multiple: true) }

                // A round trip on the channel: no second settlement reached the broker, which would have closed the
                // channel (406 unknown delivery tag) or requeued a message.
                try await channel.setPrefetch(8)
                #expect(channel.isOpen)
                #expect(try await ConsumingTests.isSettledWithItsConsumer(queue), "\(ConsumingTests.stats(queue))")
                await consumer.cancel()
                try await channel.close()
            }
        }
    }

    @Test func settlingAnAutomaticallyAcknowledgedDeliveryThrowsAlreadySettled() async throws {
        try await TestBroker.withClient { client in
            try await ConsumingTests.withQueue(client, "fc.auto") { queue in
                try await ConsumingTests.fill(client, queue, count: 2)
                let got = try #require(try await client.get(from: queue, acknowledgement: .automatic))
                #expect { try got.ack() } throws: { ($0 as? RabbitMQError)?.code == .alreadySettled }
                let consumer = try await client.consume(queue, prefetch: 5,
                                                        options: ConsumeOptions(acknowledgement: .automatic))
                var iterator = consumer.makeAsyncIterator()
                let delivered = try #require(try await iterator.next())
                #expect { try delivered.nack() } throws: {
                    ($0 as? RabbitMQError)?.code == .alreadySettled
                }
                #expect(try await ConsumingTests.isSettledWithItsConsumer(queue), "\(ConsumingTests.stats(queue))")
                await consumer.cancel()
            }
        }
    }

    // MARK: Nothing handed out once the channel is gone

    /// `client.close()` from inside the README loop: the deliveries still buffered must not reach the loop, and
    /// every message not acked is back in the queue.
    @Test func closingTheClientFromTheLoopHandsOutNothingMore() async throws {
        let count = 20
        try await TestBroker.withClient { admin in
            try await ConsumingTests.withQueue(admin, "fc.closeloop") { queue in
                try await ConsumingTests.fill(admin, queue, count: count)
                let client = try TestBroker.makeClient()
                let (handedOut, afterClose, ending) = try await TestBroker.withDeadline(ConsumingTests.hangGuard) {
                    () -> (Int, Int, String) in
                    var handedOut = 0
                    var afterClose = 0
                    var closed = false
                    do {
                        for try await delivery in try await client.consume(queue, prefetch: 10) {
                            handedOut += 1
                            if closed {
                                afterClose += 1
                                continue
                            }
                            if handedOut == 3 {
                                await client.close()
                                closed = true
                            } else {
                                try delivery.ack()
                            }
                        }
                        return (handedOut, afterClose, "ended")
                    } catch {
                        return (handedOut, afterClose, "\(error)")
                    }
                }
                await client.close()
                print("""
                    [fault containment] close() in the loop: \(afterClose) deliveries handed out after close() \
                    returned; the loop \(ending)
                    """)
                #expect(afterClose == 0, "\(afterClose) deliveries were handed out after close() returned")
                #expect(handedOut == 3)
                // Two acked; the one in hand when the client closed and everything buffered are back in the queue.
                #expect(try await eventually {
                    try await TestBroker.queueStats(queue).map { $0 == (count - 2, 0, 0) } ?? false
                }, "\(ConsumingTests.stats(queue))")
            }
        }
    }

    /// `client.close()` from a `QueueWorker` handler: no handler starts after it returned.
    @Test func closingTheClientFromAWorkerHandlerStartsNoMoreHandlers() async throws {
        let count = 20
        try await TestBroker.withClient { admin in
            try await ConsumingTests.withQueue(admin, "fc.closeworker") { queue in
                try await ConsumingTests.fill(admin, queue, count: count)
                let client = try TestBroker.makeClient()
                let state = Locked((started: 0, afterClose: 0, closed: false))
                let worker = QueueWorker(client: client, configuration: .init(queue: queue, prefetch: 10,
                                                                                 concurrency: 1)) { _ in
                    let (started, closed) = state.withLock { state in
                        state.started += 1
                        if state.closed { state.afterClose += 1 }
                        return (state.started, state.closed)
                    }
                    guard !closed, started == 3 else { return }
                    await client.close()
                    state.withLock { $0.closed = true }
                }
                let ending = try await TestBroker.withDeadline(ConsumingTests.hangGuard) { () -> String in
                    do {
                        try await worker.run()
                        return "returned"
                    } catch {
                        return "threw \(error)"
                    }
                }
                await client.close()
                let (started, afterClose) = state.withLock { ($0.started, $0.afterClose) }
                print("""
                    [fault containment] close() in a worker handler: \(afterClose) handlers started after close() \
                    returned; run() \(ending)
                    """)
                #expect(afterClose == 0, "\(afterClose) handlers started after close() returned")
                #expect(started == 3)
                #expect(try await eventually {
                    try await TestBroker.queueStats(queue).map { $0 == (count - 2, 0, 0) } ?? false
                }, "\(ConsumingTests.stats(queue))")
            }
        }
    }

    /// The application closes a consumer's channel, and the broker closes another's (a failed passive declare on
    /// it): in both cases the deliveries buffered on the channel are dropped and the sequence ends.
    @Test func aClosedChannelsBufferedDeliveriesAreDropped() async throws {
        let count = 10
        try await TestBroker.withClient { client in
            try await ConsumingTests.withQueue(client, "fc.closedchannel") { queue in
                try await ConsumingTests.fill(client, queue, count: count)
                for closedByBroker in [false, true] {
                    let channel = try await client.openChannel()
                    try await channel.setPrefetch(UInt16(count))
                    let consumer = try await channel.consume(queue)
                    var iterator = consumer.makeAsyncIterator()
                    let first = try #require(try await iterator.next())
                    // Every message is delivered before the channel closes, nine of them still buffered.
                    #expect(try await eventually {
                        try await TestBroker.queueStats(queue).map { $0.unacked == count } ?? false
                    })
                    if closedByBroker {
                        await #expect(throws: RabbitMQError.self) {
                            _ = try await channel.inspectQueue(TestBroker.uniqueName("fc.missing"))
                        }
                    } else {
                        try await channel.close()
                    }
                    #expect(!channel.isOpen)
                    do {
                        try first.ack()  // does nothing: the broker has requeued it
                    } catch {
                        Issue.record("settling a delivery of a closed channel threw \(error)")
                    }
                    var handedOut = 0
                    do {
                        while try await iterator.next() != nil { handedOut += 1 }
                    } catch {
                        // The sequence may end with the channel's error.
                    }
                    #expect(handedOut == 0, """
                        \(handedOut) buffered deliveries of a closed channel were handed out (closed by the broker: \
                        \(closedByBroker))
                        """)
                    #expect(try await eventually {
                        try await TestBroker.queueStats(queue).map { $0 == (count, 0, 0) } ?? false
                    }, "\(ConsumingTests.stats(queue))")
                }
            }
        }
    }
}

/// What the README loop of ``FaultContainmentConsumingTests/theReadmeLoopSurvivesALostConnection()`` did.
private struct LoopLog {
    var processed: [String] = []
    var redelivered = 0
    /// The handler holds a delivery until `released`.
    var held = false
    var released = false
    var ended = false
}
