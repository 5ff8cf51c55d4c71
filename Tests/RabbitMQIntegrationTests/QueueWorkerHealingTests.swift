import Foundation
import MetricsTestKit
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// A worker's events, recorded from before it runs.
private final class WorkerEventLog: Sendable {
    private let recorded = Locked<[QueueWorker.Event]>([])

    init(_ worker: QueueWorker) {
        let stream = worker.events()
        Task { [recorded] in
            for await event in stream { recorded.withLock { $0.append(event) } }
        }
    }

    /// Every event so far, in order.
    var all: [QueueWorker.Event] { recorded.withLock { $0 } }

    /// Why the worker lost its consumer, each time.
    var losses: [RabbitMQError] {
        all.compactMap { if case .consumerLost(let error) = $0 { error } else { nil } }
    }

    /// Why subscription attempts failed, each time.
    var subscribeFailures: [RabbitMQError] {
        all.compactMap { if case .subscribeFailed(let error) = $0 { error } else { nil } }
    }

    /// How many times it announced a new subscription attempt after a wait.
    var resubscribes: Int {
        all.count { if case .resubscribing = $0 { true } else { false } }
    }

    /// How many times it started consuming.
    var subscriptions: Int {
        all.count { if case .consuming = $0 { true } else { false } }
    }

    /// The message ids of the handlers that timed out.
    var timeouts: [String?] {
        all.compactMap { if case .handlerTimedOut(let id) = $0 { id } else { nil } }
    }

    /// Whether the `stopped` event came, and without an error.
    var stoppedCleanly: Bool {
        all.contains { if case .stopped(nil) = $0 { true } else { false } }
    }

    /// The error of the `stopped` event, once it came with one.
    var stoppedWith: RabbitMQError? {
        all.lazy.compactMap { if case .stopped(let error) = $0 { error } else { nil } }.first
    }
}

/// Runs `worker` in a task; `hasEnded` tells whether `run()` has returned or thrown.
private final class WorkerRun: Sendable {
    let task: Task<Void, any Error>
    private let ended: Locked<Bool>

    init(_ worker: QueueWorker) {
        let ended = Locked(false)
        self.ended = ended
        task = Task {
            defer { ended.withLock { $0 = true } }
            try await worker.run()
        }
    }

    var hasEnded: Bool { ended.withLock { $0 } }
}

/// Waits until `gate` is opened by the test (or 60 s, a hang guard), ignoring cancellation as a handler blocked
/// in a call that does not support it would.
private final class Gate: Sendable {
    private let state = Locked<(isOpen: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let open = state.withLock { state in
                if !state.isOpen { state.waiters.append(continuation) }
                return state.isOpen
            }
            if open { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.isOpen = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

@Suite("Queue worker healing")
struct QueueWorkerHealingTests {
    /// The dedicated node with a short consumer timeout: its name and AMQP port (from H3's range).
    static let consumerTimeoutNode = (name: "t-h3-ctimeout", port: 5831)

    @Test func aConsumerTimeoutClosesTheChannelAndTheWorkerCarriesOn() async throws {
        // RabbitMQ 3.10 checks the consumer timeout on its channel tick, every 60 s by default: 500 ms here.
        try await DedicatedBroker.with(
            name: Self.consumerTimeoutNode.name, port: Self.consumerTimeoutNode.port,
            extraConfig: "consumer_timeout = 2000",
            advancedConfig: "[{rabbit, [{channel_tick_interval, 500}]}]."
        ) { broker in
            let metrics = TestMetrics()
            var configuration = try broker.configuration
            configuration.connectionName = "healing consumer timeout"
            configuration.observability.metricsFactory = metrics
            let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
            do {
                try await Self.healAfterConsumerTimeout(client, broker, metrics)
            } catch {
                await client.close()
                throw error
            }
            await client.close()
        }
    }

    /// The body of ``aConsumerTimeoutClosesTheChannelAndTheWorkerCarriesOn()``, with a client of the node.
    private static func healAfterConsumerTimeout(_ client: RabbitMQClient, _ broker: DedicatedBroker,
                                                 _ metrics: TestMetrics) async throws {
        let queue = "healing.consumer-timeout"
        try await client.declare(Queue(queue))
        try await publishNumbered(client, count: 20, to: queue)

        let probe = WorkerProbe()
        let lossReported = Gate()
        let worker = QueueWorker(client: client, configuration: .init(queue: queue, prefetch: 10, concurrency: 4)) {
            delivery in
            let attempt = probe.enter(delivery)
            defer { probe.leave() }
            // Holds one delivery past the broker's consumer_timeout: until the worker reports its channel lost.
            if delivery.bodyString == "m3", attempt == 1 { await lossReported.wait() }
            try await Task.sleep(for: .milliseconds(5))
        }
        let events = WorkerEventLog(worker)
        let run = WorkerRun(worker)
        #expect(try await eventually(timeout: .seconds(60)) { !events.losses.isEmpty })
        lossReported.open()
        // It consumes again on a new channel, and handles the delivery the broker took back, again.
        #expect(try await eventually(timeout: .seconds(60)) {
            events.subscriptions == 2 && Set(probe.bodies) == Set((0..<20).map { "m\($0)" })
                && probe.times(of: "m3").count == 2
        })
        // Messages published after the loss are handled too.
        try await publishNumbered(client, count: 5, to: queue, prefix: "late")
        let everything = Set((0..<20).map { "m\($0)" } + (0..<5).map { "late\($0)" })
        #expect(try await eventually(timeout: .seconds(60)) { Set(probe.bodies) == everything })
        #expect(try await eventually(timeout: .seconds(60)) {
            try await broker.queueStats(queue).map { $0.ready == 0 && $0.unacked == 0 } ?? false
        })
        #expect(!run.hasEnded)

        worker.stop()
        try await run.task.value
        let loss = try #require(events.losses.first)
        #expect(events.losses.count == 1)
        #expect(loss.code == .channelClosed)
        #expect(loss.replyCode == 406)
        #expect(probe.deliveries.last { $0.bodyString == "m3" }?.isRedelivered == true)
        #expect(try metrics.expectCounter("rabbitmq.consumer.lost", [("queue", queue)]).totalValue == 1)
        #expect(events.stoppedCleanly)
        let stats = try #require(try await broker.queueStats(queue))
        #expect(stats.ready == 0 && stats.unacked == 0)
    }

    @Test func aDeletedQueueIsDeclaredAgainAndConsumed() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("healing.deleted")
            let probe = WorkerProbe()
            let worker = QueueWorker(client: client, configuration: .init(
                queue: queue, concurrency: 2, topology: Topology { Queue(queue) }
            )) { delivery in
                probe.enter(delivery)
                probe.leave()
            }
            let events = WorkerEventLog(worker)
            let run = WorkerRun(worker)
            // The worker declares the queue it owns.
            #expect(try await eventually { events.subscriptions == 1 })
            try await publishNumbered(client, count: 10, to: queue)
            #expect(try await eventually { probe.finished == 10 })

            try await client.deleteQueue(queue)
            let consumingAgain = try await eventually(timeout: .seconds(60)) {
                guard events.subscriptions == 2 else { return false }
                return try await client.inspectQueue(queue).consumerCount == 1
            }
            #expect(consumingAgain)
            try await publishNumbered(client, count: 10, to: queue, prefix: "after")
            #expect(try await eventually(timeout: .seconds(60)) { probe.finished == 20 })
            #expect(!run.hasEnded)

            worker.stop()
            try await run.task.value
            #expect(events.losses.map(\.code) == [.consumerCancelled])
            #expect(Set(probe.bodies) == Set((0..<10).map { "m\($0)" } + (0..<10).map { "after\($0)" }))
            #expect(worker.outcomes == [.acked: 20])
            #expect(try await drainedAtBroker(queue))
            try await client.deleteQueue(queue)
        }
    }

    @Test func withoutItsTopologyAWorkerWaitsForItsQueueToComeBackAndStopsWhileWaiting() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("healing.waiting")
            try await client.declare(Queue(queue))
            let probe = WorkerProbe()
            let recovery = RabbitMQClient.Configuration.Recovery(initialDelay: .milliseconds(50), maxDelay: .milliseconds(200))
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, recovery: recovery)) { delivery in
                probe.enter(delivery)
                probe.leave()
            }
            let events = WorkerEventLog(worker)
            let run = WorkerRun(worker)
            #expect(try await eventually { events.subscriptions == 1 })

            // The queue goes; the worker does not own it, so it tries again (404) until someone declares it.
            try await client.deleteQueue(queue)
            #expect(try await eventually { events.subscribeFailures.count >= 2 })
            #expect(events.subscribeFailures.allSatisfy { $0.replyCode == 404 })
            #expect(!run.hasEnded)
            try await client.declare(Queue(queue))
            #expect(try await eventually(timeout: .seconds(60)) { events.subscriptions == 2 })
            try await publishNumbered(client, count: 5, to: queue)
            #expect(try await eventually { probe.finished == 5 })

            // Lost again, then stopped while it waits to subscribe again: run() returns without an error.
            let waitsBefore = events.resubscribes
            try await client.deleteQueue(queue)
            #expect(try await eventually { events.losses.count == 2 && events.resubscribes > waitsBefore })
            worker.stop()
            try await run.task.value
            #expect(events.stoppedCleanly)
            #expect(events.losses.map(\.code) == [.consumerCancelled, .consumerCancelled])
            #expect(worker.outcomes == [.acked: 5])
        }
    }

    @Test func aHandlerOverrunningItsTimeoutIsRetriedThroughItsTier() async throws {
        let metrics = TestMetrics()
        try await TestBroker.withClient(configure: { $0.observability.metricsFactory = metrics }) { client in
            let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(200), multiplier: 2, jitter: 0)
            let retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName("healing.timeout")), policy: policy)
            try await client.declare(retry.topology)
            var properties = MessageProperties()
            properties.messageID = "slow-1"
            try await client.publish(Data("slow".utf8), routingKey: retry.queueName, properties: properties)

            let probe = WorkerProbe()
            let sawCancellation = Locked(false)
            let worker = QueueWorker(client: client, configuration: .init(
                queue: retry.queueName, concurrency: 2, retry: retry, handlerTimeout: .seconds(1)
            )) { delivery in
                probe.enter(delivery)
                defer { probe.leave() }
                guard RetryTopology.attempts(of: delivery) == 0 else { return }
                do {
                    try await Task.sleep(for: .seconds(60))
                } catch {
                    if error is CancellationError { sawCancellation.withLock { $0 = true } }
                    throw error
                }
            }
            let events = WorkerEventLog(worker)
            let run = WorkerRun(worker)
            #expect(try await eventually(timeout: .seconds(60)) { worker.outcomes == [.retried: 1, .acked: 1] })
            worker.stop()
            try await run.task.value

            #expect(sawCancellation.withLock { $0 })
            // The second attempt came through the tier: the broker's x-death says so, and the attempt header.
            let second = try #require(probe.deliveries.last)
            #expect(RetryTopology.attempts(of: second) == 1)
            #expect(second.deaths.first?.queue == retry.tierName(for: .milliseconds(200)))
            #expect(second.deaths.first?.reason == .expired)
            #expect(second.properties.headers[RetryTopology.lastErrorHeader]?.stringValue?
                .contains("handler timeout") == true)
            #expect(!second.isRedelivered)
            // No channel closure: one subscription, no loss.
            #expect(events.subscriptions == 1)
            #expect(events.losses.isEmpty)
            #expect(events.timeouts == ["slow-1"])
            #expect(try metrics.expectCounter("rabbitmq.handler.timeouts", [("queue", retry.queueName)])
                .totalValue == 1)
            #expect(try await eventuallyAtBroker { counts in
                retry.topology.queues.allSatisfy { counts[$0.name].map { $0.ready == 0 && $0.unacked == 0 } ?? false }
            })
            for queue in retry.topology.queues { try await client.deleteQueue(queue.name) }
        }
    }

    @Test func aHandlerIgnoringCancellationIsSettledAtItsTimeoutWithoutWaitingForIt() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("healing.stubborn")
            try await client.declare(Queue(queue))
            try await client.publish(Data("stubborn".utf8), routingKey: queue)

            let probe = WorkerProbe()
            let gate = Gate()
            let worker = QueueWorker(client: client, configuration: .init(
                queue: queue, concurrency: 1, handlerTimeout: .milliseconds(500)
            )) { delivery in
                let attempt = probe.enter(delivery)
                defer { probe.leave() }
                if attempt == 1 { await gate.wait() }
            }
            let run = WorkerRun(worker)
            // Requeued at the timeout and handled again, while the first handler still waits: its delivery was
            // settled without it, and it holds no concurrency slot (the limit is 1).
            #expect(try await eventually(timeout: .seconds(60)) { worker.outcomes == [.requeued: 1, .acked: 1] })
            #expect(probe.invocations == 2)
            #expect(probe.finished == 1)
            gate.open()
            #expect(try await eventually { probe.finished == 2 })
            worker.stop()
            try await run.task.value
            // What the abandoned handler returned later was ignored.
            #expect(worker.outcomes == [.requeued: 1, .acked: 1])
            #expect(probe.deliveries.last?.isRedelivered == true)
            #expect(try await drainedAtBroker(queue))
            try await client.deleteQueue(queue)
        }
    }

    @Test func accessRefusedEndsTheWorkerWithThatError() async throws {
        let user = TestBroker.uniqueName("h3-limited")
        try await TestBroker.rabbitmqctl("add_user", user, "secret")
        do {
            try await TestBroker.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
            try await TestBroker.withClient { admin in
                try await TestBroker.withClient(configure: {
                    $0.username = user
                    $0.password = "secret"
                }) { client in
                    let queue = TestBroker.uniqueName("healing.refused")
                    let worker = QueueWorker(client: client, configuration: .init(
                        queue: queue, topology: Topology { Queue(queue) }
                    )) { _ in }
                    let events = WorkerEventLog(worker)
                    let run = WorkerRun(worker)
                    #expect(try await eventually { events.subscriptions == 1 })
                    // The user loses its rights, then the queue goes: declaring it again is refused.
                    try await TestBroker.rabbitmqctl("set_permissions", "-p", "/", user, "^$", "^$", "^$")
                    try await admin.deleteQueue(queue)
                    #expect(try await eventually(timeout: .seconds(60)) { run.hasEnded })
                    let error = await #expect(throws: RabbitMQError.self) { try await run.task.value }
                    #expect(error?.replyCode == 403)
                    #expect(events.losses.map(\.code) == [.consumerCancelled])
                    #expect(try await eventually { events.stoppedWith?.replyCode == 403 })
                    _ = try? await admin.deleteQueue(queue)
                }
            }
        } catch {
            _ = try? await TestBroker.rabbitmqctl("delete_user", user)
            throw error
        }
        try await TestBroker.rabbitmqctl("delete_user", user)
    }
}
