import Foundation
import Logging
import RabbitMQ
import ServiceLifecycle
import Synchronization
import RabbitMQTestSupport
import Testing

/// What a test's handler saw, shared safely with the worker's handler tasks.
final class WorkerProbe: Sendable {
    private struct State {
        var running = 0
        var maxRunning = 0
        var finished = 0
        var bodies: [String] = []
        var times: [String: [ContinuousClock.Instant]] = [:]
        var deliveries: [Delivery] = []
    }

    private let state = Locked(State())

    /// Records the start of a handler for `delivery`; returns how many times its body was handled, this one
    /// included.
    @discardableResult
    func enter(_ delivery: Delivery) -> Int {
        let now = ContinuousClock.now
        return state.withLock { state in
            state.running += 1
            state.maxRunning = max(state.maxRunning, state.running)
            state.bodies.append(delivery.bodyString)
            state.deliveries.append(delivery)
            state.times[delivery.bodyString, default: []].append(now)
            return state.times[delivery.bodyString]!.count
        }
    }

    /// Records the end of a handler.
    func leave() {
        state.withLock { state in
            state.running -= 1
            state.finished += 1
        }
    }

    /// Handler invocations so far.
    var invocations: Int { state.withLock { $0.bodies.count } }
    /// Handlers that have returned or thrown so far.
    var finished: Int { state.withLock { $0.finished } }
    /// The most handlers that ran at once.
    var maxRunning: Int { state.withLock { $0.maxRunning } }
    /// The bodies handled, in order of invocation.
    var bodies: [String] { state.withLock { $0.bodies } }
    /// The deliveries handled, in order of invocation.
    var deliveries: [Delivery] { state.withLock { $0.deliveries } }
    /// When the handler was invoked for `body`.
    func times(of body: String) -> [ContinuousClock.Instant] { state.withLock { $0.times[body] ?? [] } }
}

@Suite("Queue worker")
struct QueueWorkerTests {
    @Test func handlersNeverExceedTheConcurrencyLimit() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.concurrency")
            try await client.declare(Queue(queue))
            try await publishNumbered(client, count: 100, to: queue)

            let probe = WorkerProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, prefetch: 20, concurrency: 4)) {
                delivery in
                probe.enter(delivery)
                defer { probe.leave() }
                try await Task.sleep(for: .milliseconds(5))
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually(timeout: .seconds(30)) { probe.finished == 100 })
            worker.stop()
            try await run.value

            #expect(probe.maxRunning <= 4)
            // With 100 messages ready and 5 ms handlers the limit is reached: the worker does run concurrently.
            #expect(probe.maxRunning == 4)
            #expect(probe.invocations == 100)
            #expect(Set(probe.bodies) == Set((0..<100).map { "m\($0)" }))
            #expect(worker.outcomes == [.acked: 100])
            #expect(try await drainedAtBroker(queue))
            try await client.deleteQueue(queue)
        }
    }

    @Test func stoppingWhileMessagesFlowLosesNothing() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.drain")
            try await client.declare(Queue(queue))

            let stopPublishing = Atomic<Bool>(false)
            let published = Atomic<Int>(0)
            let publisher = Task {
                var count = 0
                // Bounded: at most 20,000 messages even if the flag were never set.
                while !stopPublishing.load(ordering: .acquiring), count < 20_000 {
                    try await client.publish(Data("m\(count)".utf8), routingKey: queue)
                    count += 1
                    published.store(count, ordering: .releasing)
                }
                return count
            }

            let probe = WorkerProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, prefetch: 50, concurrency: 4)) {
                delivery in
                probe.enter(delivery)
                defer { probe.leave() }
                try await Task.sleep(for: .milliseconds(2))
            }
            let run = Task { try await worker.run() }
            let handledSome = try await eventually(timeout: .seconds(30)) { probe.finished >= 100 }
            worker.stop()
            try await run.value
            // Keep publishing a little after the worker stopped, so that messages are left over for sure.
            let atStop = published.load(ordering: .acquiring)
            let publishedMore = try await eventually(timeout: .seconds(30)) {
                published.load(ordering: .acquiring) >= atStop + 10
            }
            stopPublishing.store(true, ordering: .releasing)
            let total = try await publisher.value
            #expect(handledSome)
            #expect(publishedMore)

            let acked = worker.outcomes[.acked] ?? 0
            #expect(worker.outcomes == [.acked: acked])
            // Every handler that ran to the end was acked: no handler ran for a message left in the queue.
            #expect(probe.invocations == acked)
            #expect(probe.finished == acked)
            // Nothing handled twice: one consumer, no requeue while it ran.
            #expect(Set(probe.bodies).count == probe.invocations)
            #expect(probe.deliveries.allSatisfy { !$0.isRedelivered })
            // handled + left at the broker == published.
            #expect(try await eventuallyAtBroker {
                guard let stats = $0[queue] else { return false }
                return stats.unacked == 0 && stats.consumers == 0 && stats.ready + acked == total
            }, "published \(total), acked \(acked)")
            #expect(total - acked >= 10)

            // The messages left are exactly the ones not handled.
            var left: Set<String> = []
            while let delivery = try await client.get(from: queue, acknowledgement: .automatic) {
                left.insert(delivery.bodyString)
                if left.count > total { break }
            }
            #expect(left.isDisjoint(with: Set(probe.bodies)))
            #expect(left.union(probe.bodies) == Set((0..<total).map { "m\($0)" }))
            try await client.deleteQueue(queue)
        }
    }

    @Test func drainingLetsRunningHandlersFinish() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.finish")
            try await client.declare(Queue(queue))
            try await publishNumbered(client, count: 1, to: queue)

            let probe = WorkerProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, drainTimeout: .seconds(30))) {
                delivery in
                probe.enter(delivery)
                defer { probe.leave() }
                try await Task.sleep(for: .milliseconds(500))
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually { probe.invocations == 1 })
            worker.stop()
            try await run.value
            // run() returned only after the handler had finished and its delivery was acked.
            #expect(probe.finished == 1)
            #expect(worker.outcomes == [.acked: 1])
            #expect(try await drainedAtBroker(queue))
            try await client.deleteQueue(queue)
        }
    }

    @Test func aHandlerOutlivingTheDrainTimeoutIsCancelledAndItsMessageRequeued() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.timeout")
            try await client.declare(Queue(queue))
            try await client.publish(Data("slow".utf8), routingKey: queue)

            let probe = WorkerProbe()
            let sawCancellation = Atomic<Bool>(false)
            let worker = QueueWorker(client: client,
                                     configuration: .init(queue: queue, concurrency: 1,
                                                          drainTimeout: .milliseconds(300))) { delivery in
                probe.enter(delivery)
                defer { probe.leave() }
                do {
                    try await Task.sleep(for: .seconds(60))
                } catch {
                    if error is CancellationError { sawCancellation.store(true, ordering: .releasing) }
                    throw error
                }
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually { probe.invocations == 1 })
            let stoppedAt = ContinuousClock.now
            worker.stop()
            try await run.value
            let stopping = ContinuousClock.now - stoppedAt

            // It waited for the drain timeout, then cancelled the handler rather than waiting 60 s.
            #expect(stopping >= .milliseconds(300))
            #expect(stopping < .seconds(30))
            let cancelled = sawCancellation.load(ordering: .acquiring)
            #expect(cancelled)
            #expect(probe.finished == 1)
            // The cancelled delivery was neither acked nor moved: it is back in the queue.
            #expect(worker.outcomes.isEmpty)
            #expect(try await eventuallyAtBroker { $0[queue] == BrokerQueueCounts(ready: 1, unacked: 0, consumers: 0) })
            let back = try #require(try await client.get(from: queue, acknowledgement: .automatic))
            #expect(back.bodyString == "slow")
            #expect(back.isRedelivered)
            try await client.deleteQueue(queue)
        }
    }

    @Test func gracefulShutdownOfAServiceGroupDrainsTheWorker() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.service")
            try await client.declare(Queue(queue))
            let total = 60
            try await publishNumbered(client, count: total, to: queue)

            let probe = WorkerProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, prefetch: 10, concurrency: 2)) {
                delivery in
                probe.enter(delivery)
                defer { probe.leave() }
                try await Task.sleep(for: .milliseconds(20))
            }
            let group = ServiceGroup(services: [worker], gracefulShutdownSignals: [], cancellationSignals: [],
                                     logger: TestBroker.logger)
            let run = Task { try await group.run() }
            #expect(try await eventually(timeout: .seconds(30)) { probe.finished >= 10 })
            await group.triggerGracefulShutdown()
            try await run.value

            let acked = worker.outcomes[.acked] ?? 0
            #expect(worker.outcomes == [.acked: acked])
            #expect(probe.finished == probe.invocations)
            #expect(probe.invocations == acked)
            #expect(Set(probe.bodies).count == acked)
            #expect(try await eventuallyAtBroker {
                guard let stats = $0[queue] else { return false }
                return stats.unacked == 0 && stats.consumers == 0 && stats.ready + acked == total
            })
            try await client.deleteQueue(queue)
        }
    }

    @Test func withoutRetryTopologyFailuresAreRequeuedOrRejected() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.plain")
            let deadLetters = "\(queue).dead"
            try await client.declare(Queue(deadLetters))
            try await client.declare(Queue(queue, arguments: QueueArguments(deadLetterExchange: "",
                                                                            deadLetterRoutingKey: deadLetters)))
            try await client.publish(Data("flaky".utf8), routingKey: queue)
            try await client.publish(Data("poison".utf8), routingKey: queue)

            let probe = WorkerProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, concurrency: 1)) { delivery in
                let attempt = probe.enter(delivery)
                defer { probe.leave() }
                if delivery.bodyString == "poison" { throw NonRetryableError("cannot parse") }
                if attempt == 1 { throw RetryableError("downstream timeout") }
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually {
                worker.outcomes[.acked] == 1 && worker.outcomes[.rejected] == 1
            })
            worker.stop()
            try await run.value

            #expect(worker.outcomes == [.requeued: 1, .rejected: 1, .acked: 1])
            #expect(probe.times(of: "flaky").count == 2)
            #expect(probe.times(of: "poison").count == 1)
            #expect(probe.deliveries.last { $0.bodyString == "flaky" }?.isRedelivered == true)
            #expect(try await drainedAtBroker(queue))
            #expect(try await BrokerNode.shared.queueCounts(deadLetters) == BrokerQueueCounts(ready: 1, unacked: 0, consumers: 0))
            let dead = try #require(try await client.get(from: deadLetters, acknowledgement: .automatic))
            #expect(dead.bodyString == "poison")
            #expect(dead.deaths.first?.reason == .rejected)
            try await client.deleteQueue(queue)
            try await client.deleteQueue(deadLetters)
        }
    }

    @Test func aWorkerRunsOnceAndRefusesBadSettings() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.once")
            try await client.declare(Queue(queue))

            let worker = QueueWorker(client: client, configuration: .init(queue: queue)) { _ in }
            let run = Task { try await worker.run() }
            #expect(try await eventually { try await client.inspectQueue(queue).consumerCount == 1 })
            await #expect(throws: RabbitMQError.self) { try await worker.run() }
            worker.stop()
            try await run.value
            await #expect(throws: RabbitMQError.self) { try await worker.run() }

            let idle = QueueWorker(client: client, configuration: .init(queue: queue, concurrency: 0)) { _ in }
            let error = await #expect(throws: RabbitMQError.self) { try await idle.run() }
            #expect(error?.code == .invalidArgument)

            // Stopped before it ran (a service group shut down early): run() returns without consuming.
            try await client.publish(Data("untouched".utf8), routingKey: queue)
            let handled = Counter()
            let early = QueueWorker(client: client, configuration: .init(queue: queue)) { _ in handled.increment() }
            early.stop()
            try await early.run()
            #expect(handled.value == 0)
            #expect(try await client.inspectQueue(queue).messageCount == 1)
            try await client.purgeQueue(queue)
            #expect(try await drainedAtBroker(queue))
            try await client.deleteQueue(queue)
        }
    }
}

/// A thread-safe count.
private final class Counter: Sendable {
    private let count = Locked(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
