import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// Consumers, prefetch, settling and `basic.get` against a real broker, with every outcome counted at the broker.
@Suite("Consuming")
struct ConsumingTests {
    /// How long a test's consuming part may take before it counts as hung. It includes `rabbitmqctl` runs, which
    /// took 50 to 80 s each in a full run on a heavily loaded two-core machine; only a hang takes this long.
    static let hangGuard: Duration = .seconds(600)

    // MARK: Prefetch and exactly-once

    @Test func cancellingAConsumerEndsAWaitingLoopWithoutAnError() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("consume.cancel")
            try await client.declare(Queue(queue))
            let consumer = try await client.consume(queue, prefetch: 5)
            let loop = Task {
                var received = 0
                for try await delivery in consumer {
                    received += 1
                    try delivery.ack()
                }
                return received
            }
            try await client.publish(Data("one".utf8), routingKey: queue)
            #expect(try await eventually { try await client.inspectQueue(queue).messageCount == 0 })
            try await Task.sleep(for: .milliseconds(200))  // the loop is now waiting for a second delivery
            await consumer.cancel()
            #expect(try await loop.value == 1)  // ended normally: no error thrown
            #expect(try await eventually { try await client.inspectQueue(queue).consumerCount == 0 })
            try await client.deleteQueue(queue)
        }
    }

    @Test func unackedNeverExceedsThePrefetch() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.prefetch") { queue in
                try await Self.fill(client, queue, count: 200)
                #expect(try await TestBroker.queueStats(queue)?.ready == 200)
                let samples = try await TestBroker.withDeadline(Self.hangGuard) { () -> [Int] in
                    var received = 0
                    var samples: [Int] = []
                    for try await delivery in try await client.consume(queue, prefetch: 10) {
                        received += 1
                        // Sampled while this delivery is still unacked: the broker must count 1...10.
                        if received % 20 == 0 { samples.append(try await TestBroker.queueStats(queue)?.unacked ?? -1) }
                        try await Task.sleep(for: .milliseconds(20))
                        try delivery.ack()
                        if received == 200 { break }
                    }
                    #expect(received == 200)
                    return samples
                }
                #expect(samples.count == 10)
                #expect(samples.allSatisfy { (1...10).contains($0) }, "unacked samples: \(samples)")
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    /// Acks right after deliveries may wait for the I/O thread's next wake. When no delivery follows, they must
    /// still go out, with the consumer open and nothing else happening on the connection (that they go out
    /// within a millisecond is the design's, and the benchmark's, to show: a test cannot time it reliably).
    @Test func theLastAcksReachTheBrokerWhileTheConsumerStaysOpen() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.lastacks") { queue in
                try await Self.fill(client, queue, count: 25)
                let consumer = try await client.consume(queue, prefetch: 100)
                var iterator = consumer.makeAsyncIterator()
                for _ in 0..<25 {
                    let delivery = try #require(try await iterator.next())
                    try delivery.ack()
                }
                #expect(try await Self.isSettledWithItsConsumer(queue), "\(Self.stats(queue))")
                await consumer.cancel()
            }
        }
    }

    @Test func everyMessageIsConsumedExactlyOnce() async throws {
        let count = 2000
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.once") { queue in
                try await Self.fill(client, queue, count: count)
                #expect(try await TestBroker.queueStats(queue)?.ready == count)
                let bodies = try await TestBroker.withDeadline(Self.hangGuard) { () -> [String] in
                    var bodies: [String] = []
                    for try await delivery in try await client.consume(queue, prefetch: 50) {
                        bodies.append(delivery.bodyString)
                        try delivery.ack()
                        if bodies.count == count { break }
                    }
                    return bodies
                }
                #expect(bodies.count == count)
                #expect(Set(bodies).count == bodies.count, "duplicates were delivered")
                #expect(Set(bodies) == Set(Self.bodies(count)))
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    /// Large bodies live in blocks the connection reuses once the application releases them: the bodies still held
    /// must never be overwritten by later ones, and the released blocks must come back with the new bytes.
    @Test func largeBodiesHeldByTheApplicationAreNeverReusedForLaterOnes() async throws {
        let (released, held, size) = (40, 40, 300_000)  // three frames each, pooled
        @Sendable func body(_ index: Int) -> Data {
            var body = PublishingTests.pattern(size: size + index)
            body.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(index)) { Data($0) })
            return body
        }
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.pooled") { queue in
                for index in 0..<released + held { try await client.publish(body(index), routingKey: queue) }
                let kept = try await TestBroker.withDeadline(Self.hangGuard) { () -> [Delivery] in
                    var iterator = try await client.consume(queue, prefetch: 10).makeAsyncIterator()
                    for index in 0..<released {
                        let delivery = try #require(try await iterator.next())
                        #expect(delivery.body == body(index), "body \(index) arrived altered")
                        try delivery.ack()
                    }
                    var kept: [Delivery] = []  // acked (the prefetch is 10) but held
                    while kept.count < held, let delivery = try await iterator.next() {
                        try delivery.ack()
                        kept.append(delivery)
                    }
                    return kept
                }
                #expect(kept.count == held)
                for (offset, delivery) in kept.enumerated() {
                    #expect(delivery.body == body(released + offset), "body \(released + offset) was overwritten")
                }
            }
        }
    }

    // MARK: Settling

    @Test func nackWithRequeueRedeliversAndRejectWithoutRequeueDrops() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.nack") { queue in
                try await Self.fill(client, queue, count: 1)
                try await TestBroker.withDeadline(Self.hangGuard) {
                    let consumer = try await client.consume(queue, prefetch: 1)
                    var iterator = consumer.makeAsyncIterator()
                    let first = try #require(try await iterator.next())
                    #expect(first.bodyString == "message-0")
                    #expect(!first.isRedelivered)
                    try first.nack(requeue: true)

                    let second = try #require(try await iterator.next())
                    #expect(second.bodyString == "message-0")
                    #expect(second.isRedelivered)
                    #expect(second.deliveryTag != first.deliveryTag)
                    try second.reject(requeue: false)

                    // Dropped, not requeued: nothing ready, nothing unacked, while the consumer is still there.
                    #expect(try await Self.isSettledWithItsConsumer(queue), "\(Self.stats(queue))")
                    await consumer.cancel()
                }
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    @Test func nackMultipleRequeuesEveryEarlierDelivery() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.nackmulti") { queue in
                try await Self.fill(client, queue, count: 5)
                try await TestBroker.withDeadline(Self.hangGuard) {
                    let consumer = try await client.consume(queue, prefetch: 10)
                    var iterator = consumer.makeAsyncIterator()
                    let firstRound = try await Self.take(5, from: &iterator)
                    #expect(firstRound.map(\.bodyString) == Self.bodies(5))
                    #expect(firstRound.allSatisfy { !$0.isRedelivered })
                    #expect(try await eventually { try await TestBroker.queueStats(queue)?.unacked == 5 })

                    // One nack on the newest settles all five.
                    try firstRound[4].nack(requeue: true, multiple: true)
                    let secondRound = try await Self.take(5, from: &iterator)
                    #expect(Set(secondRound.map(\.bodyString)) == Set(Self.bodies(5)))
                    #expect(secondRound.allSatisfy { $0.isRedelivered })

                    // And a nack multiple without requeue drops them all.
                    let newest = try #require(secondRound.max { $0.deliveryTag < $1.deliveryTag })
                    try newest.nack(requeue: false, multiple: true)
                    #expect(try await Self.isSettledWithItsConsumer(queue), "\(Self.stats(queue))")
                    await consumer.cancel()
                }
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    @Test func ackMultipleSettlesEveryEarlierDelivery() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.ackmulti") { queue in
                try await Self.fill(client, queue, count: 8)
                try await TestBroker.withDeadline(Self.hangGuard) {
                    let consumer = try await client.consume(queue, prefetch: 10)
                    var iterator = consumer.makeAsyncIterator()
                    let deliveries = try await Self.take(8, from: &iterator)
                    #expect(deliveries.count == 8)
                    #expect(try await eventually { try await TestBroker.queueStats(queue)?.unacked == 8 })
                    try deliveries[7].ack(multiple: true)
                    #expect(try await Self.isSettledWithItsConsumer(queue), "\(Self.stats(queue))")
                    await consumer.cancel()
                }
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    // MARK: Ending a consumer

    @Test func deletingTheQueueEndsTheSequenceWithConsumerCancelled() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("con.deleted")
            try await client.declare(Queue(queue, durable: false))
            do {
                try await Self.fill(client, queue, count: 3)
                let outcome = try await TestBroker.withDeadline(Self.hangGuard) { () -> (received: Int, error: (any Error)?) in
                    let consumer = try await client.consume(queue, prefetch: 10)
                    var iterator = consumer.makeAsyncIterator()
                    var received = 0
                    guard try await iterator.next() != nil else { return (received, nil) }
                    received += 1
                    try await client.deleteQueue(queue)
                    do {
                        // The deliveries already buffered come first, then the broker's basic.cancel.
                        while received < 100, try await iterator.next() != nil { received += 1 }
                        return (received, nil)
                    } catch {
                        return (received, error)
                    }
                }
                #expect(outcome.received <= 3)
                let error = try #require(outcome.error as? RabbitMQError,
                                         "ended with \(String(describing: outcome.error))")
                #expect(error.code == .consumerCancelled)
                #expect(try await TestBroker.queueStats(queue) == nil)
            } catch {
                _ = try? await client.deleteQueue(queue)
                throw error
            }
        }
    }

    @Test func breakingOutOfTheLoopCancelsTheConsumerAndRequeues() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.break") { queue in
                try await Self.fill(client, queue, count: 20)
                try await TestBroker.withDeadline(Self.hangGuard) {
                    var received = 0
                    for try await delivery in try await client.consume(queue, prefetch: 10) {
                        received += 1
                        #expect(!delivery.isRedelivered)
                        guard received == 3 else { continue }
                        // Three taken, none acked: the broker has sent the whole prefetch.
                        #expect(try await eventually {
                            try await TestBroker.queueStats(queue).map { $0 == (10, 10, 1) } ?? false
                        })
                        break
                    }
                    #expect(received == 3)
                }
                #expect(try await eventually {
                    try await TestBroker.queueStats(queue).map { $0 == (20, 0, 0) } ?? false
                }, "stats: \(Self.stats(queue))")
            }
        }
    }

    @Test func cancellingTheConsumingTaskCancelsTheConsumerAndRequeues() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.taskcancel") { queue in
                try await Self.fill(client, queue, count: 20)
                let received = Tally()
                let task = Task {
                    for try await delivery in try await client.consume(queue, prefetch: 10) {
                        received.add(delivery.bodyString)
                    }
                }
                // All ten of the prefetch handed over and none acked: the loop waits for an eleventh.
                let full = try await eventually {
                    let stats = try await TestBroker.queueStats(queue)
                    return received.count == 10 && stats.map { $0 == (10, 10, 1) } ?? false
                }
                task.cancel()
                #expect(full)
                let result = await task.result
                #expect(throws: CancellationError.self) { try result.get() }
                #expect(try await eventually {
                    try await TestBroker.queueStats(queue).map { $0 == (20, 0, 0) } ?? false
                }, "stats: \(Self.stats(queue))")
                #expect(received.count == 10)
            }
        }
    }

    // MARK: Automatic acknowledgement

    @Test func automaticAcknowledgementConsumesEverythingWithinThePrefetch() async throws {
        let count = 500
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.autoack") { queue in
                try await Self.fill(client, queue, count: count)
                let (bodies, samples) = try await TestBroker.withDeadline(Self.hangGuard) { () -> ([String], [Int]) in
                    var bodies: [String] = []
                    var samples: [Int] = []
                    let options = ConsumeOptions(acknowledgement: .automatic)
                    for try await delivery in try await client.consume(queue, prefetch: 20, options: options) {
                        bodies.append(delivery.bodyString)
                        // Four samples: each rabbitmqctl call takes seconds when the whole suite runs at once.
                        if bodies.count % 125 == 0 { samples.append(try await TestBroker.queueStats(queue)?.unacked ?? -1) }
                        if bodies.count == count { break }
                    }
                    return (bodies, samples)
                }
                #expect(bodies.count == count)
                #expect(Set(bodies) == Set(Self.bodies(count)))
                #expect(samples.count == count / 125)
                #expect(samples.allSatisfy { (0...20).contains($0) }, "unacked samples: \(samples)")
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    // MARK: Exclusive and single active consumers

    @Test func secondConsumerOnAnExclusivelyConsumedQueueIsRefused() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.exclusive") { queue in
                let exclusive = try await client.consume(queue, prefetch: 1, options: ConsumeOptions(exclusive: true))
                do {
                    let second = try await client.consume(queue, prefetch: 1)
                    await second.cancel()
                    Issue.record("a second consumer was accepted on an exclusively consumed queue")
                } catch let error as RabbitMQError {
                    #expect(error.code == .channelClosed)
                    #expect(error.replyCode == 403)
                    #expect(error.replyText?.hasPrefix("ACCESS_REFUSED") == true, "\(error)")
                }
                // The refusal closed only the second consumer's channel: the first is still consuming.
                #expect(try await TestBroker.queueStats(queue)?.consumers == 1)
                try await client.publish(Data("to the exclusive one".utf8), routingKey: queue)
                try await TestBroker.withDeadline(Self.hangGuard) {
                    var iterator = exclusive.makeAsyncIterator()
                    let delivery = try #require(try await iterator.next())
                    #expect(delivery.bodyString == "to the exclusive one")
                    try delivery.ack()
                }
                await exclusive.cancel()
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    @Test func singleActiveConsumerQueueDeliversToOneConsumerOnly() async throws {
        try await TestBroker.withClient { client in
            let declared = Queue(TestBroker.uniqueName("con.sac"), durable: false,
                                 arguments: QueueArguments(singleActiveConsumer: true))
            try await Self.withQueue(client, declared) { queue in
                let tagA = TestBroker.uniqueName("sac-a")
                let tagB = TestBroker.uniqueName("sac-b")
                let consumerA = try await client.consume(queue, prefetch: 5, options: ConsumeOptions(consumerTag: tagA))
                let consumerB = try await client.consume(queue, prefetch: 5, options: ConsumeOptions(consumerTag: tagB))
                let receivedA = Tally()
                let receivedB = Tally()
                let tasks = [(consumerA, receivedA), (consumerB, receivedB)].map { consumer, tally in
                    Task {
                        for try await delivery in consumer {
                            tally.add(delivery.bodyString)
                            try delivery.ack()
                        }
                    }
                }
                try await Self.fill(client, queue, count: 30)
                let allReceived = try await eventually { receivedA.count + receivedB.count == 30 }
                let activity = try await TestBroker.rabbitmqctl("list_consumers", "queue_name", "consumer_tag", "active",
                                                          "--no-table-headers")
                await consumerA.cancel()
                await consumerB.cancel()
                for task in tasks { _ = await task.result }

                #expect(allReceived)
                // The first consumer registered is the active one and gets everything.
                #expect(receivedA.count == 30)
                #expect(receivedB.count == 0)
                #expect(Set(receivedA.values) == Set(Self.bodies(30)))
                let lines = activity.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
                #expect(lines.contains([queue, tagA, "true"]), "\(activity)")
                #expect(lines.contains([queue, tagB, "false"]), "\(activity)")
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    // MARK: basic.get

    @Test func getReturnsNilOnAnEmptyQueueAndTheMessageOtherwise() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.get") { queue in
                #expect(try await client.get(from: queue) == nil)

                let body = Data("got it \u{1F407}".utf8) + [0, 255, 1]
                try await client.publish(body, routingKey: queue)
                let delivery = try #require(try await client.get(from: queue))
                #expect(delivery.body == body)
                #expect(delivery.routingKey == queue)
                #expect(delivery.exchange == "")
                #expect(delivery.consumerTag == nil)
                #expect(!delivery.isRedelivered)
                #expect(try await eventually {
                    try await TestBroker.queueStats(queue).map { $0.ready == 0 && $0.unacked == 1 } ?? false
                })

                try delivery.ack()
                #expect(try await eventually {
                    try await TestBroker.queueStats(queue).map { $0.ready == 0 && $0.unacked == 0 } ?? false
                })
                #expect(try await client.get(from: queue) == nil)
            }
        }
    }

    @Test func getWithAutomaticAcknowledgementRemovesTheMessage() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.getauto") { queue in
                try await Self.fill(client, queue, count: 2)
                let first = try #require(try await client.get(from: queue, acknowledgement: .automatic))
                #expect(first.bodyString == "message-0")
                #expect(try await TestBroker.queueStats(queue).map { $0.ready == 1 && $0.unacked == 0 } == true)
                let second = try #require(try await client.get(from: queue, acknowledgement: .automatic))
                #expect(second.bodyString == "message-1")
                #expect(try await client.get(from: queue, acknowledgement: .automatic) == nil)
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    // MARK: Settling on a closed channel

    @Test func settlingAfterTheConsumerIsCancelledDoesNothingAndRequeues() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.stale") { queue in
                try await Self.fill(client, queue, count: 1)
                try await TestBroker.withDeadline(Self.hangGuard) {
                    let first = try await client.consume(queue, prefetch: 1)
                    var firstIterator = first.makeAsyncIterator()
                    let stale = try #require(try await firstIterator.next())
                    await first.cancel()
                    // The message went back to the queue with the channel.
                    #expect(try await eventually {
                        try await TestBroker.queueStats(queue).map { $0 == (1, 0, 0) } ?? false
                    })

                    // A new channel (very likely reusing the number) receives it again, with the same delivery tag.
                    let channel = try await client.openChannel()
                    try await channel.setPrefetch(1)
                    let second = try await channel.consume(queue)
                    var secondIterator = second.makeAsyncIterator()
                    let fresh = try #require(try await secondIterator.next())
                    #expect(fresh.isRedelivered)
                    #expect(fresh.bodyString == stale.bodyString)
                    #expect(fresh.deliveryTag == stale.deliveryTag)

                    // Settling the delivery of the closed channel does nothing; settling it again is still a mistake.
                    try stale.ack()
                    for settle: @Sendable () async throws -> Void in [{ try stale.nack() },
                                                                     { try stale.reject() }] {
                        await #expect { try await settle() } throws: {
                            ($0 as? RabbitMQError)?.code == .alreadySettled
                        }
                    }
                    // A round trip on the new channel: had a stale ack gone out on it, the broker has seen it.
                    try await channel.setPrefetch(1)
                    #expect(try await TestBroker.queueStats(queue).map { $0 == (0, 1, 1) } == true)
                    #expect(channel.isOpen)

                    try fresh.ack()
                    await second.cancel()
                    try await channel.close()
                }
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    @Test func settlingAfterTheChannelClosesDoesNothing() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.closedchan") { queue in
                try await Self.fill(client, queue, count: 3)
                try await TestBroker.withDeadline(Self.hangGuard) {
                    let channel = try await client.openChannel()
                    try await channel.setPrefetch(3)
                    let consumer = try await channel.consume(queue)
                    var iterator = consumer.makeAsyncIterator()
                    let delivery = try #require(try await iterator.next())
                    try await channel.close()
                    try delivery.ack(multiple: true)  // nothing to do: the broker requeues it
                }
                #expect(try await eventually {
                    try await TestBroker.queueStats(queue).map { $0 == (3, 0, 0) } ?? false
                })
            }
        }
    }

    // MARK: Consumer options at the broker

    @Test func consumerTagPriorityAndPrefetchAppearAtTheBroker() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.options") { queue in
                let tag = TestBroker.uniqueName("tagged-consumer")
                let options = ConsumeOptions(priority: 7, consumerTag: tag, arguments: ["x-test-note": .string("hi")])
                let consumer = try await client.consume(queue, prefetch: 42, options: options)
                #expect(consumer.consumerTag == tag)
                let listing = try await TestBroker.rabbitmqctl("list_consumers", "queue_name", "consumer_tag",
                                                         "prefetch_count", "ack_required", "arguments",
                                                         "--formatter", "json")
                let rows = try #require(try JSONSerialization.jsonObject(with: Data(listing.utf8)) as? [[String: Any]])
                let row = try #require(rows.first { $0["queue_name"] as? String == queue }, "\(listing)")
                #expect(row["consumer_tag"] as? String == tag)
                #expect(row["prefetch_count"] as? Int == 42)
                #expect(row["ack_required"] as? Bool == true)
                let arguments = try String(decoding: JSONSerialization.data(withJSONObject: row["arguments"] ?? []),
                                           as: UTF8.self)
                #expect(arguments.contains("x-priority") && arguments.contains("7"), "\(arguments)")
                #expect(arguments.contains("x-test-note") && arguments.contains("hi"), "\(arguments)")

                // Without options the library generates a tag, unique per consumer.
                let generated = try await client.consume(queue, prefetch: 1)
                #expect(!generated.consumerTag.isEmpty)
                #expect(generated.consumerTag != tag)
                #expect(try await TestBroker.queueStats(queue)?.consumers == 2)
                await generated.cancel()
                await consumer.cancel()
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    @Test func higherPriorityConsumerGetsTheMessages() async throws {
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.priority") { queue in
                let low = try await client.consume(queue, prefetch: 50, options: ConsumeOptions(priority: 1))
                let high = try await client.consume(queue, prefetch: 50, options: ConsumeOptions(priority: 10))
                let receivedLow = Tally()
                let receivedHigh = Tally()
                let tasks = [(low, receivedLow), (high, receivedHigh)].map { consumer, tally in
                    Task {
                        for try await delivery in consumer {
                            tally.add(delivery.bodyString)
                            try delivery.ack()
                        }
                    }
                }
                // Fewer messages than the high-priority consumer's prefetch: it never blocks, so it gets all.
                try await Self.fill(client, queue, count: 20)
                let allReceived = try await eventually { receivedLow.count + receivedHigh.count == 20 }
                await low.cancel()
                await high.cancel()
                for task in tasks { _ = await task.result }
                #expect(allReceived)
                #expect(receivedHigh.count == 20)
                #expect(receivedLow.count == 0)
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    // MARK: Acks just before closing

    @Test func acksJustBeforeClosingTheChannelAreNotLost() async throws {
        let count = 500
        try await TestBroker.withClient { client in
            try await Self.withQueue(client, "con.ackclose") { queue in
                try await Self.fill(client, queue, count: count)
                try await TestBroker.withDeadline(Self.hangGuard) {
                    let channel = try await client.openChannel()
                    try await channel.setPrefetch(UInt16(count))
                    let consumer = try await channel.consume(queue)
                    var iterator = consumer.makeAsyncIterator()
                    let deliveries = try await Self.take(count, from: &iterator)
                    #expect(deliveries.count == count)
                    // Every ack returns before the close starts: none may be dropped by it.
                    for delivery in deliveries { try delivery.ack() }
                    try await channel.close()
                }
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    @Test func acksJustBeforeClosingTheClientAreNotLost() async throws {
        let count = 300
        try await TestBroker.withClient { admin in
            try await Self.withQueue(admin, "con.ackclientclose") { queue in
                try await Self.fill(admin, queue, count: count)
                let client = try TestBroker.makeClient()
                do {
                    try await TestBroker.withDeadline(Self.hangGuard) {
                        let consumer = try await client.consume(queue, prefetch: UInt16(count))
                        var iterator = consumer.makeAsyncIterator()
                        let deliveries = try await Self.take(count, from: &iterator)
                        #expect(deliveries.count == count)
                        for delivery in deliveries { try delivery.ack() }
                        await client.close()
                    }
                } catch {
                    await client.close()
                    throw error
                }
                #expect(try await Self.isSettledAndIdle(queue), "\(Self.stats(queue))")
            }
        }
    }

    // MARK: Helpers

    /// The bodies ``fill(_:_:count:)`` publishes.
    static func bodies(_ count: Int) -> [String] {
        (0..<count).map { "message-\($0)" }
    }

    /// Publishes `count` messages with bodies `message-0`... to `queue`, confirmed.
    static func fill(_ client: RabbitMQClient, _ queue: String, count: Int) async throws {
        let channel = try await client.openChannel()
        try await channel.enableConfirms()
        for body in bodies(count) {
            _ = try await channel.publishWithDeferredConfirm(Data(body.utf8), routingKey: queue)
        }
        try await channel.waitForConfirms()
        try await channel.close()
    }

    /// Declares a non-durable queue with a unique name, runs `body` with it and deletes it, also on failure.
    static func withQueue<T>(_ client: RabbitMQClient, _ prefix: String,
                             _ body: (String) async throws -> T) async throws -> T {
        try await withQueue(client, Queue(TestBroker.uniqueName(prefix), durable: false), body)
    }

    static func withQueue<T>(_ client: RabbitMQClient, _ queue: Queue,
                             _ body: (String) async throws -> T) async throws -> T {
        let name = try await client.declare(queue).name
        do {
            let result = try await body(name)
            try await client.deleteQueue(name)
            return result
        } catch {
            _ = try? await client.deleteQueue(name)
            throw error
        }
    }

    /// The next `count` deliveries, fewer only if the sequence ends first.
    static func take(_ count: Int, from iterator: inout Consumer.AsyncIterator) async throws -> [Delivery] {
        var deliveries: [Delivery] = []
        while deliveries.count < count, let delivery = try await iterator.next() {
            deliveries.append(delivery)
        }
        return deliveries
    }

    /// Whether the queue soon has nothing ready and nothing unacknowledged while its one consumer stays.
    static func isSettledWithItsConsumer(_ queue: String) async throws -> Bool {
        try await settles(queue, to: BrokerQueueCounts(ready: 0, unacked: 0, consumers: 1))
    }

    /// Whether the broker soon counts no message and no consumer on `queue`.
    static func isSettledAndIdle(_ queue: String) async throws -> Bool {
        try await settles(queue, to: BrokerQueueCounts(ready: 0, unacked: 0, consumers: 0))
    }

    /// Whether the broker soon counts `expected` on `queue`; remembers the last counts seen for ``stats(_:)``.
    private static func settles(_ queue: String, to expected: BrokerQueueCounts) async throws -> Bool {
        try await eventually {
            let counts = try await BrokerNode.shared.queueCounts(queue)
            lastCounts.withLock { $0[queue] = counts.map(\.description) ?? "no such queue" }
            return counts == expected
        }
    }

    /// The broker's counts for `queue` when the last wait for them gave up, for a failure message (which cannot
    /// await, so it does not ask the broker).
    static func stats(_ queue: String) -> String {
        lastCounts.withLock { $0[queue] } ?? "not read"
    }

    private static let lastCounts = Locked<[String: String]>([:])
}

/// Bodies received by a consumer running in another task.
private final class Tally: Sendable {
    private let received = Locked<[String]>([])

    func add(_ body: String) { received.withLock { $0.append(body) } }
    var count: Int { received.withLock { $0.count } }
    var values: [String] { received.withLock { $0 } }
}

