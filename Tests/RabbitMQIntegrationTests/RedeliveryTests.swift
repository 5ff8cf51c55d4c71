import Foundation
import RabbitMQ
import Synchronization
import Testing
import RabbitMQTestSupport

/// Declares a retry topology for a fresh work queue, runs `body`, and deletes every queue of it, also when
/// `body` fails.
private func withRetryTopology(_ client: RabbitMQClient, _ prefix: String, policy: RetryPolicy,
                               _ body: (RetryTopology) async throws -> Void) async throws {
    let retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName(prefix)), policy: policy)
    try await client.declare(retry.topology)
    do {
        try await body(retry)
    } catch {
        for queue in retry.topology.queues { _ = try? await client.deleteQueue(queue.name) }
        throw error
    }
    for queue in retry.topology.queues { try await client.deleteQueue(queue.name) }
}

/// The broker holds nothing but `parked` ready messages in the parking lot of `retry`: work queue and tiers
/// are empty, nothing is unacknowledged.
private func holdsOnlyParked(_ retry: RetryTopology, _ parked: Int, _ counts: [String: BrokerQueueCounts]) -> Bool {
    for queue in retry.topology.queues {
        guard let stats = counts[queue.name] else { return false }
        let expected = queue.name == retry.parkingLotName ? parked : 0
        guard stats.ready == expected, stats.unacked == 0 else { return false }
    }
    return true
}

/// Waits, polling by passive declares, until only `parked` ready messages are left, all in the parking lot of
/// `retry`; then checks with `rabbitmqctl` that nothing is unacknowledged either.
private func settlesWithOnlyParked(_ client: RabbitMQClient, _ retry: RetryTopology, _ parked: Int) async throws
    -> Bool
{
    let settled = try await eventually {
        for queue in retry.topology.queues {
            let expected = queue.name == retry.parkingLotName ? parked : 0
            guard try await readyCount(client, queue.name) == expected else { return false }
        }
        return true
    }
    guard settled else { return false }
    return try await eventuallyAtBroker { holdsOnlyParked(retry, parked, $0) }
}

private func milliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
}

@Suite("Redelivery")
struct RedeliveryTests {
    @Test func retriesFollowThePolicysDelaysThenPark() async throws {
        let policy = RetryPolicy(maxAttempts: 4, initialDelay: .milliseconds(100), multiplier: 2, jitter: 0)
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.delays", policy: policy) { retry in
                #expect(retry.topology.queues.map(\.name).contains("\(retry.queueName).retry.400ms"))
                var properties = MessageProperties()
                properties.messageID = "order-17"
                try await client.publish(Data("always fails".utf8), routingKey: retry.queueName,
                                         properties: properties)

                let probe = WorkerProbe()
                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry)) {
                    delivery in
                    probe.enter(delivery)
                    defer { probe.leave() }
                    throw RetryableError("downstream unavailable")
                }
                let run = Task { try await worker.run() }
                #expect(try await eventually(timeout: .seconds(20)) { worker.outcomes[.parked] == 1 })
                worker.stop()
                try await run.value

                let times = probe.times(of: "always fails")
                #expect(times.count == 4)
                #expect(worker.outcomes == [.retried: 3, .parked: 1])
                let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
                let measured = gaps.map { String(format: "%.1f", milliseconds($0)) }.joined(separator: " / ")
                print("retry delays measured (ms), expected 100 / 200 / 400: \(measured)")
                // The tier's TTL is a lower bound. On top come the confirmed republish, the broker's expiry check
                // (it expires only the head of a queue, on a timer) and the delivery back to the worker: the upper
                // bound only catches a delay gone wrong, not a busy machine; the tiers are checked below.
                for (gap, expected) in zip(gaps, [100, 200, 400]) {
                    #expect(gap >= .milliseconds(expected - 10) && gap <= .milliseconds(expected + 2_000),
                            "gap \(gap), expected \(expected) ms")
                }

                #expect(try await settlesWithOnlyParked(client, retry, 1))
                let parked = try await client.parkedMessages(in: retry)
                try #require(parked.count == 1)
                // The broker's own record of the retries: the message expired once from each tier. Compared as a
                // set: RabbitMQ 3.10 puts the newest entry first but reorders the older ones of a republished message.
                let expiries = parked[0].delivery.deaths.filter { $0.reason == .expired }
                #expect(expiries.count == 3, "\(parked[0].delivery.deaths)")
                let tiers = [100, 200, 400].map { retry.tierName(for: .milliseconds($0)) }
                #expect(Set(expiries.map(\.queue)) == Set(tiers))
                #expect(expiries.allSatisfy { $0.count == 1 }, "\(expiries)")
                #expect(parked[0].delivery.bodyString == "always fails")
                #expect(parked[0].delivery.properties.messageID == "order-17")
                #expect(parked[0].reason == "failed 4 attempts; last: downstream unavailable")
                #expect(parked[0].attempts == 4)
                #expect(parked[0].lastError == "downstream unavailable")
                #expect(parked[0].parkedAt != nil)
                #expect(parked[0].delivery.properties.headers[RetryTopology.firstFailureHeader] != nil)
                // Parked for good: no expiration that would drop it from the parking lot.
                #expect(parked[0].delivery.properties.expiration == nil)
                // Listing does not remove.
                #expect(try await settlesWithOnlyParked(client, retry, 1))
            }
        }
    }

    @Test func aNonRetryableErrorParksAtOnce() async throws {
        let policy = RetryPolicy(maxAttempts: 4, initialDelay: .milliseconds(100), jitter: 0)
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.permanent", policy: policy) { retry in
                try await client.publish(Data("malformed".utf8), routingKey: retry.queueName)
                let probe = WorkerProbe()
                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry)) {
                    delivery in
                    probe.enter(delivery)
                    defer { probe.leave() }
                    throw NonRetryableError("missing customer id")
                }
                let run = Task { try await worker.run() }
                #expect(try await settlesWithOnlyParked(client, retry, 1))
                worker.stop()
                try await run.value

                #expect(probe.invocations == 1)
                #expect(worker.outcomes == [.parked: 1])
                let parked = try await client.parkedMessages(in: retry)
                try #require(parked.count == 1)
                #expect(parked[0].reason == "not retryable: missing customer id")
                #expect(parked[0].attempts == 1)
                #expect(parked[0].lastError == "missing customer id")
            }
        }
    }

    @Test func theUsersClassifierCanParkARetryableError() async throws {
        let policy = RetryPolicy(maxAttempts: 4, initialDelay: .milliseconds(100), jitter: 0)
        let classifier = FailureClassifier { error in (error as? RetryableError)?.reason == "poison" ? .park : nil }
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.classify.park", policy: policy) { retry in
                try await client.publish(Data("poison".utf8), routingKey: retry.queueName)
                let probe = WorkerProbe()
                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry,
                                                                              classifier: classifier)) { delivery in
                    probe.enter(delivery)
                    defer { probe.leave() }
                    throw RetryableError("poison")
                }
                let run = Task { try await worker.run() }
                #expect(try await settlesWithOnlyParked(client, retry, 1))
                worker.stop()
                try await run.value
                #expect(probe.invocations == 1)
                #expect(worker.outcomes == [.parked: 1])
                #expect(try await client.parkedMessages(in: retry).first?.reason == "not retryable: poison")
            }
        }
    }

    @Test func theUsersClassifierCanRetryANonRetryableError() async throws {
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(100), multiplier: 1, jitter: 0)
        let classifier = FailureClassifier { error in error is NonRetryableError ? .retry : nil }
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.classify.retry", policy: policy) { retry in
                #expect(retry.topology.queues.count == 3)  // one 100 ms tier
                try await client.publish(Data("retry anyway".utf8), routingKey: retry.queueName)
                let probe = WorkerProbe()
                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry,
                                                                              classifier: classifier)) { delivery in
                    probe.enter(delivery)
                    defer { probe.leave() }
                    throw NonRetryableError("flaky validation service")
                }
                let run = Task { try await worker.run() }
                #expect(try await settlesWithOnlyParked(client, retry, 1))
                worker.stop()
                try await run.value
                #expect(probe.invocations == 3)
                #expect(worker.outcomes == [.retried: 2, .parked: 1])
                let parked = try await client.parkedMessages(in: retry)
                #expect(parked.first?.reason == "failed 3 attempts; last: flaky validation service")
                #expect(parked.first?.attempts == 3)
            }
        }
    }

    /// Message A enters the 15 s tier, then message B the 100 ms tier: B must come back long before A. With one
    /// delay queue and per-message TTLs B would wait behind A, since the broker expires only a queue's head. The
    /// long tier is long so that B's round trip (handled, parked, expired, delivered again), which took more than
    /// 3 s on a loaded machine, stays far shorter than it.
    @Test func aShortRetryDoesNotWaitBehindALongOne() async throws {
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(100), multiplier: 150, jitter: 0)
        #expect(policy.tierDelays == [.milliseconds(100), .seconds(15)])
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.hol", policy: policy) { retry in
                let longTier = retry.tierName(for: .seconds(15))
                let probe = WorkerProbe()
                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry)) {
                    delivery in
                    let attempt = probe.enter(delivery)
                    defer { probe.leave() }
                    if attempt == 1 { throw RetryableError("first try fails") }
                }
                let run = Task { try await worker.run() }

                // A has already failed once: its next failure is attempt 2, which waits 15 s.
                var properties = MessageProperties()
                properties.headers[RetryTopology.attemptHeader] = .int64(1)
                try await client.publish(Data("A".utf8), routingKey: retry.queueName, properties: properties)
                #expect(try await eventually { try await readyCount(client, longTier) == 1 })
                // B fails for the first time: it waits 100 ms.
                try await client.publish(Data("B".utf8), routingKey: retry.queueName)

                #expect(try await eventually(timeout: .seconds(60)) {
                    probe.times(of: "A").count == 2 && probe.times(of: "B").count == 2
                })
                worker.stop()
                try await run.value

                let a = probe.times(of: "A")
                let b = probe.times(of: "B")
                try #require(a.count == 2 && b.count == 2)
                print("""
                    head-of-line: A waited \(String(format: "%.1f", milliseconds(a[1] - a[0]))) ms (15 s tier), \
                    B waited \(String(format: "%.1f", milliseconds(b[1] - b[0]))) ms (100 ms tier), \
                    B back \(String(format: "%.1f", milliseconds(a[1] - b[1]))) ms before A
                    """)
                // B failed after A, and came back before it: it did not queue behind A.
                #expect(b[0] > a[0])
                #expect(b[1] < a[1])
                // Neither came back early.
                #expect(a[1] - a[0] >= .milliseconds(14_990))
                #expect(b[1] - b[0] >= .milliseconds(90))
                #expect(worker.outcomes == [.retried: 2, .acked: 2])
                #expect(try await settlesWithOnlyParked(client, retry, 0))
            }
        }
    }

    @Test func replayBringsParkedMessagesBackWithAFreshAttemptCount() async throws {
        let policy = RetryPolicy(maxAttempts: 2, initialDelay: .milliseconds(100), jitter: 0)
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.replay", policy: policy) { retry in
                let accepting = Atomic<Bool>(false)
                let probe = WorkerProbe()
                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry)) {
                    delivery in
                    probe.enter(delivery)
                    defer { probe.leave() }
                    guard accepting.load(ordering: .acquiring) else { throw NonRetryableError("schema v1 unknown") }
                }
                let run = Task { try await worker.run() }
                try await publishNumbered(client, count: 3, to: retry.queueName, prefix: "replay-")
                #expect(try await settlesWithOnlyParked(client, retry, 3))
                let parked = try await client.parkedMessages(in: retry)
                #expect(parked.count == 3)
                #expect(parked.allSatisfy { $0.reason == "not retryable: schema v1 unknown" && $0.attempts == 1 })
                #expect(try await settlesWithOnlyParked(client, retry, 3))

                // The handler is fixed; replay everything.
                accepting.store(true, ordering: .releasing)
                #expect(try await client.replayParked(in: retry) == 3)
                #expect(try await eventually { worker.outcomes[.acked] == 3 })
                worker.stop()
                try await run.value

                #expect(worker.outcomes == [.parked: 3, .acked: 3])
                let replayed = probe.deliveries.suffix(3)
                #expect(Set(replayed.map(\.bodyString)) == ["replay-0", "replay-1", "replay-2"])
                for delivery in replayed {
                    #expect(RetryTopology.attempts(of: delivery) == 0)
                    #expect(delivery.properties.headers[RetryTopology.parkedReasonHeader] == nil)
                    #expect(delivery.properties.headers[RetryTopology.lastErrorHeader] == nil)
                    #expect(delivery.properties.headers["x-death"] == nil)
                }
                #expect(try await settlesWithOnlyParked(client, retry, 0))
            }
        }
    }

    @Test func replayWithAPredicateMovesOnlyTheMatchingMessages() async throws {
        let policy = RetryPolicy(maxAttempts: 2, initialDelay: .milliseconds(100), jitter: 0)
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.replay.some", policy: policy) { retry in
                let accepting = Atomic<Bool>(false)
                let probe = WorkerProbe()
                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry)) {
                    delivery in
                    probe.enter(delivery)
                    defer { probe.leave() }
                    guard accepting.load(ordering: .acquiring) else { throw NonRetryableError("not yet") }
                }
                let run = Task { try await worker.run() }
                for body in ["keep-0", "move-0", "keep-1", "move-1", "move-2"] {
                    try await client.publish(Data(body.utf8), routingKey: retry.queueName)
                }
                #expect(try await settlesWithOnlyParked(client, retry, 5))
                accepting.store(true, ordering: .releasing)

                let moved = try await client.replayParked(in: retry) { $0.delivery.bodyString.hasPrefix("move") }
                #expect(moved == 3)
                #expect(try await eventually { worker.outcomes[.acked] == 3 })
                // The declined ones went back to the parking lot.
                #expect(try await settlesWithOnlyParked(client, retry, 2))
                let left = try await client.parkedMessages(in: retry).map(\.delivery.bodyString)
                #expect(left.sorted() == ["keep-0", "keep-1"])

                // A limit moves at most that many.
                #expect(try await settlesWithOnlyParked(client, retry, 2))
                #expect(try await client.replayParked(in: retry, limit: 1) == 1)
                #expect(try await eventually { worker.outcomes[.acked] == 4 })
                #expect(try await settlesWithOnlyParked(client, retry, 1))
                worker.stop()
                try await run.value
                #expect(worker.outcomes == [.parked: 5, .acked: 4])
                #expect(probe.bodies.filter { $0.hasPrefix("move") }.count == 6)
            }
        }
    }

    @Test func aRejectOnTheWorkQueueIsDeadLetteredByTheBrokerWithXDeath() async throws {
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.reject", policy: RetryPolicy(maxAttempts: 2)) { retry in
                try await client.publish(Data("rejected".utf8), routingKey: retry.queueName)
                let delivery = try #require(try await client.get(from: retry.queueName))
                try delivery.reject(requeue: false)
                #expect(try await settlesWithOnlyParked(client, retry, 1))

                let parked = try await client.parkedMessages(in: retry)
                try #require(parked.count == 1)
                let deaths = parked[0].delivery.deaths
                try #require(deaths.count == 1)
                #expect(deaths[0].reason == .rejected)
                #expect(deaths[0].queue == retry.queueName)
                #expect(deaths[0].count == 1)
                #expect(deaths[0].exchange == "")
                #expect(deaths[0].routingKeys == [retry.queueName])
                #expect(deaths[0].time != nil)
                #expect(parked[0].reason == "dead-lettered by the broker: rejected from \(retry.queueName)")
                #expect(parked[0].attempts == 0)
                #expect(parked[0].delivery.bodyString == "rejected")
            }
        }
    }

    /// A worker republished a failed message to its retry tier, then crashed before acking the original: the
    /// original is redelivered and the retry copy comes back too. The first copy processed succeeds and commits
    /// its message id; the second is acked as a duplicate without running the handler.
    @Test func aDuplicateFromACrashBetweenRepublishAndAckIsSuppressed() async throws {
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(100), jitter: 0)
        try await TestBroker.withClient { client in
            try await withRetryTopology(client, "redelivery.crash", policy: policy) { retry in
                var properties = MessageProperties()
                properties.messageID = "payment-42"
                try await client.publish(Data("charge 42".utf8), routingKey: retry.queueName,
                                         properties: properties)

                // The crashing worker: take the message, republish it to the tier as a retry, never ack.
                try await TestBroker.withClient(name: "crashing worker") { crashing in
                    let original = try #require(try await crashing.get(from: retry.queueName))
                    var retried = original.properties
                    retried.headers[RetryTopology.attemptHeader] = .int64(1)
                    retried.expiration = .milliseconds(100)
                    try await crashing.publish(original.body, routingKey: retry.tierName(for: .milliseconds(100)),
                                               properties: retried)
                }
                // Both copies are back in the work queue once the tier's TTL has passed.
                #expect(try await eventually { try await readyCount(client, retry.queueName) == 2 })

                let store = InMemoryDeduplicationStore()
                let probe = WorkerProbe()
                let worker = QueueWorker(client: client,
                                         configuration: .init(queue: retry.queueName, retry: retry,
                                                              deduplicator: Deduplicator(store: store))) { delivery in
                    probe.enter(delivery)
                    probe.leave()
                }
                let run = Task { try await worker.run() }
                #expect(try await eventually {
                    worker.outcomes[.acked, default: 0] + worker.outcomes[.duplicate, default: 0] == 2
                })
                worker.stop()
                try await run.value
                #expect(probe.invocations == 1)
                // The two copies may arrive together: the second is then requeued until the first is processed.
                #expect(worker.outcomes[.acked] == 1 && worker.outcomes[.duplicate] == 1)
                #expect(store.count == 1)
                #expect(try await settlesWithOnlyParked(client, retry, 0))
            }
        }
    }

    /// Two workers on one queue share a store: a message redelivered or published twice is processed once,
    /// whichever worker gets each copy.
    @Test func workersSharingAStoreProcessAMessageIdOnce() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("redelivery.dedup")
            try await client.declare(Queue(queue))
            let store = InMemoryDeduplicationStore()
            let probe = WorkerProbe()
            let handler: QueueWorker.Handler = { delivery in
                probe.enter(delivery)
                probe.leave()
            }
            let configuration = QueueWorker.Configuration(queue: queue, deduplicator: Deduplicator(store: store))
            let first = QueueWorker(client: client, configuration: configuration, handler: handler)
            let second = QueueWorker(client: client, configuration: configuration, handler: handler)
            let runFirst = Task { try await first.run() }

            var properties = MessageProperties()
            properties.messageID = "invoice-7"
            try await client.publish(Data("invoice 7".utf8), routingKey: queue, properties: properties)
            #expect(try await eventually { first.outcomes[.acked] == 1 })
            let runSecond = Task { try await second.run() }
            #expect(try await eventually { try await client.inspectQueue(queue).consumerCount == 2 })
            // The same message again, twice, and one other message.
            try await client.publish(Data("invoice 7".utf8), routingKey: queue, properties: properties)
            try await client.publish(Data("invoice 7".utf8), routingKey: queue, properties: properties)
            properties.messageID = "invoice-8"
            try await client.publish(Data("invoice 8".utf8), routingKey: queue, properties: properties)

            let total = { (outcome: QueueWorker.Outcome) in
                first.outcomes[outcome, default: 0] + second.outcomes[outcome, default: 0]
            }
            #expect(try await eventually { total(.acked) == 2 && total(.duplicate) == 2 })
            first.stop()
            second.stop()
            try await runFirst.value
            try await runSecond.value
            #expect(probe.invocations == 2)
            #expect(probe.bodies.sorted() == ["invoice 7", "invoice 8"])
            #expect(total(.acked) == 2 && total(.duplicate) == 2)
            #expect(store.count == 2)
            #expect(try await drainedAtBroker(queue))
            try await client.deleteQueue(queue)
        }
    }

    private struct OrderPlaced: Codable {
        var orderID: String
        var amount: Int
    }

    @Test func deduplicationByABusinessIdFromTheBody() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("redelivery.dedup.business")
            try await client.declare(Queue(queue))
            let deduplicator = Deduplicator(store: InMemoryDeduplicationStore()) { delivery in
                try? JSONDecoder().decode(OrderPlaced.self, from: delivery.body).orderID
            }
            // Distinct message ids: only the order id in the body says that the first and third are the same.
            let orders = [OrderPlaced(orderID: "A-1", amount: 10), OrderPlaced(orderID: "B-2", amount: 20),
                          OrderPlaced(orderID: "A-1", amount: 10)]
            for (index, order) in orders.enumerated() {
                var properties = MessageProperties()
                properties.messageID = "publish-\(index)"
                try await client.publish(json: order, routingKey: queue, properties: properties)
            }
            // Bodies without a key are always processed.
            try await client.publish(Data("not json".utf8), routingKey: queue)
            try await client.publish(Data("not json".utf8), routingKey: queue)

            let probe = WorkerProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, concurrency: 1,
                                                                          deduplicator: deduplicator)) { delivery in
                probe.enter(delivery)
                probe.leave()
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually {
                worker.outcomes[.acked, default: 0] + worker.outcomes[.duplicate, default: 0] == 5
            })
            worker.stop()
            try await run.value
            #expect(worker.outcomes == [.acked: 4, .duplicate: 1])
            let handledOrders = probe.deliveries.compactMap {
                try? JSONDecoder().decode(OrderPlaced.self, from: $0.body)
            }
            #expect(handledOrders.map(\.orderID) == ["A-1", "B-2"])
            #expect(probe.deliveries.first?.properties.messageID == "publish-0")
            #expect(probe.bodies.filter { $0 == "not json" }.count == 2)
            #expect(try await drainedAtBroker(queue))
            try await client.deleteQueue(queue)
        }
    }
}
