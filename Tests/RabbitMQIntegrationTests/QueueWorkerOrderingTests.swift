import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// What ordered handlers did: starts per key in order, and how many ran at once, per key and in all.
private final class OrderProbe: Sendable {
    private struct State {
        var starts: [String: [String]] = [:]
        var runningPerKey: [String: Int] = [:]
        var maxPerKey = 0
        var running = 0
        var maxRunning = 0
        var timeline: [String] = []
    }

    private let state = Locked(State())

    /// Records the start of a handler for `body` (`<key>:<label>`).
    func enter(_ body: String) {
        let key = String(body.prefix { $0 != ":" })
        state.withLock { state in
            state.starts[key, default: []].append(body)
            state.timeline.append(body)
            state.runningPerKey[key, default: 0] += 1
            state.maxPerKey = max(state.maxPerKey, state.runningPerKey[key]!)
            state.running += 1
            state.maxRunning = max(state.maxRunning, state.running)
        }
    }

    /// Records the end of a handler for `body`.
    func leave(_ body: String) {
        let key = String(body.prefix { $0 != ":" })
        state.withLock { state in
            state.runningPerKey[key, default: 0] -= 1
            state.running -= 1
        }
    }

    var starts: [String: [String]] { state.withLock { $0.starts } }
    var timeline: [String] { state.withLock { $0.timeline } }
    var maxPerKey: Int { state.withLock { $0.maxPerKey } }
    var maxRunning: Int { state.withLock { $0.maxRunning } }
}

/// The ordering key of the tests' messages: the body up to its colon.
private let keyOfBody = KeyOrdering { delivery in String(delivery.bodyString.prefix { $0 != ":" }) }

@Suite("Queue worker: per-key ordering")
struct QueueWorkerOrderingTests {
    /// 600 messages of 40 keys, interleaved at random, through a worker with concurrency 8: each key's handlers
    /// start in publish order and never overlap, while different keys do run side by side.
    @Test func deliveriesOfOneKeyRunOneAtATimeInOrderUnderConcurrency8() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.ordering")
            try await client.declare(Queue(queue))
            var generator = SystemRandomNumberGenerator()
            var sent: [String: [String]] = [:]
            let channel = try await client.openChannel()
            for index in 0..<600 {
                let key = "order-\(Int.random(in: 0..<40, using: &generator))"
                let body = "\(key):\(index)"
                sent[key, default: []].append(body)
                _ = try await channel.publishWithDeferredConfirm(Data(body.utf8), routingKey: queue)
            }
            try await channel.waitForConfirms()
            try await channel.close()

            let probe = OrderProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, prefetch: 100, concurrency: 8,
                                                                          ordering: keyOfBody)) { delivery in
                let body = delivery.bodyString
                probe.enter(body)
                defer { probe.leave(body) }
                try await Task.sleep(for: .milliseconds(Int.random(in: 1...6)))
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually(timeout: .seconds(60)) { worker.outcomes[.acked] == 600 })
            worker.stop()
            try await run.value

            #expect(probe.starts == sent)
            #expect(probe.maxPerKey == 1)
            #expect(probe.maxRunning > 1 && probe.maxRunning <= 8, "max running \(probe.maxRunning)")
            print("ordering: 600 deliveries of 40 keys, at most \(probe.maxRunning) handlers at once")
            #expect(try await readyCount(client, queue) == 0)
            try await client.deleteQueue(queue)
        }
    }

    /// Deliveries waiting for their key hold no handler slot: behind ten deliveries of one key, with concurrency 2,
    /// a delivery of another key starts while the first key's second one waits.
    @Test func aDeliveryWaitingForItsKeyHoldsNoSlot() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("worker.ordering.slots")
            try await client.declare(Queue(queue))
            for body in (0..<10).map({ "hot:\($0)" }) + ["cold:0"] {
                try await client.publish(Data(body.utf8), routingKey: queue)
            }
            let probe = OrderProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, prefetch: 20, concurrency: 2,
                                                                          ordering: keyOfBody)) { delivery in
                let body = delivery.bodyString
                probe.enter(body)
                defer { probe.leave(body) }
                try await Task.sleep(for: .milliseconds(body.hasPrefix("hot") ? 200 : 1))
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually(timeout: .seconds(30)) { worker.outcomes[.acked] == 11 })
            worker.stop()
            try await run.value
            let timeline = probe.timeline
            #expect(timeline.firstIndex(of: "cold:0")! < timeline.firstIndex(of: "hot:1")!, "\(timeline)")
            #expect(probe.starts["hot"] == (0..<10).map { "hot:\($0)" })
            try await client.deleteQueue(queue)
        }
    }

    /// Stopping does not wait for deliveries waiting for their key, nor for an in-process retry's backoff: they
    /// return to the queue unsettled, and nothing is lost.
    @Test func stoppingReturnsWaitingDeliveriesToTheQueue() async throws {
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: .seconds(60), jitter: 0)
        let retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName("worker.ordering.stop")), policy: policy)
        try await TestBroker.withClient { client in
            try await client.declare(retry.topology)
            for body in ["a:1", "a:2", "a:3", "b:1", "b:2"] {
                try await client.publish(Data(body.utf8), routingKey: retry.queueName)
            }
            let probe = OrderProbe()
            let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry,
                                                                          ordering: keyOfBody)) { delivery in
                let body = delivery.bodyString
                probe.enter(body)
                defer { probe.leave(body) }
                if body == "a:1" { throw RetryableError("backs off for a minute") }
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually { worker.outcomes[.retried] == 1 && worker.outcomes[.acked] == 2 })
            let stopping = ContinuousClock.now
            worker.stop()
            try await run.value
            let took = ContinuousClock.now - stopping
            #expect(took < .seconds(10), "stopping took \(took)")
            #expect(probe.starts["a"] == ["a:1"])
            // a:1 (backing off), a:2 and a:3 (waiting behind it) are back in the work queue; no tier holds anything.
            #expect(try await eventually { try await readyCount(client, retry.queueName) == 3 })
            for queue in retry.topology.queues where queue.name != retry.queueName {
                #expect(try await readyCount(client, queue.name) == 0)
            }
            for queue in retry.topology.queues { try await client.deleteQueue(queue.name) }
        }
    }

    /// By default a retryable failure of a key is retried in process while the key's later deliveries wait: `a:1`
    /// fails once and still runs before `a:2`, and another key is not held up meanwhile. `c:1` fails every attempt:
    /// after the policy's last attempt it is parked, and then `c:2` runs. No message went through a retry tier.
    @Test func aRetryKeepsItsKeysOrderByDefault() async throws {
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(400), multiplier: 1, jitter: 0)
        let retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName("worker.ordering.retry")), policy: policy)
        let probe = OrderProbe()
        let (outcomes, parked) = try await runOrdered(retry, KeyOrdering(key: keyOfBody.key), probe,
                                                      bodies: ["a:1", "c:1", "a:2", "a:3", "b:1", "c:2"],
                                                      until: { $0[.acked] == 5 && $0[.parked] == 1 }) { body, attempt in
            if body == "c:1" || (body == "a:1" && attempt == 1) { throw RetryableError("downstream busy") }
        }
        #expect(outcomes == [.retried: 3, .acked: 5, .parked: 1])
        #expect(probe.starts["a"] == ["a:1", "a:1", "a:2", "a:3"])
        #expect(probe.starts["c"] == ["c:1", "c:1", "c:1", "c:2"])
        #expect(parked.map(\.delivery.bodyString) == ["c:1"])
        #expect(parked.first?.attempts == 3)
        #expect(probe.maxPerKey == 1)
        // b:1 ran while a:1 waited for its retry.
        let timeline = probe.timeline
        #expect(timeline.firstIndex(of: "b:1")! < timeline.lastIndex(of: "a:1")!)
    }

    /// With `retriesMayOvertake`, a retry goes through the tier and the key's later deliveries run before it.
    @Test func aRetryMayOvertakeWhenAllowed() async throws {
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(400), jitter: 0)
        let retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName("worker.ordering.overtake")), policy: policy)
        let probe = OrderProbe()
        let ordering = KeyOrdering(retriesMayOvertake: true, key: keyOfBody.key)
        let (outcomes, _) = try await runOrdered(retry, ordering, probe, bodies: ["a:1", "a:2", "a:3"],
                                                 until: { $0[.acked] == 3 }) { body, attempt in
            if body == "a:1" && attempt == 1 { throw RetryableError("downstream busy") }
        }
        #expect(outcomes == [.retried: 1, .acked: 3])
        #expect(probe.starts["a"] == ["a:1", "a:2", "a:3", "a:1"])
    }

    /// Declares `retry`, publishes `bodies` in order, runs an ordered worker with `handler` (given the body and the
    /// attempt, counted per body) until its outcomes satisfy `until`; returns its outcomes, after checking that
    /// every queue of `retry` is empty but the parking lot, and what that holds; then deletes them.
    private func runOrdered(_ retry: RetryTopology, _ ordering: KeyOrdering, _ probe: OrderProbe, bodies: [String],
                            until done: @escaping @Sendable ([QueueWorker.Outcome: Int]) -> Bool,
                            handler: @escaping @Sendable (String, Int) throws -> Void) async throws
        -> (outcomes: [QueueWorker.Outcome: Int], parked: [ParkedMessage])
    {
        try await TestBroker.withClient { client in
            try await client.declare(retry.topology)
            for body in bodies { try await client.publish(Data(body.utf8), routingKey: retry.queueName) }
            let attempts = Locked<[String: Int]>([:])
            let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, concurrency: 8,
                                                                          retry: retry, ordering: ordering)) {
                delivery in
                let body = delivery.bodyString
                let attempt = attempts.withLock { $0[body, default: 0] += 1; return $0[body]! }
                probe.enter(body)
                defer { probe.leave(body) }
                try await Task.sleep(for: .milliseconds(20))
                try handler(body, attempt)
            }
            let run = Task { try await worker.run() }
            let finished = try await eventually(timeout: .seconds(30)) { done(worker.outcomes) }
            worker.stop()
            try await run.value
            #expect(finished, "\(worker.outcomes)")
            for queue in retry.topology.queues where queue.name != retry.parkingLotName {
                #expect(try await readyCount(client, queue.name) == 0, "\(queue.name)")
            }
            let parked = try await client.parkedMessages(in: retry)
            for queue in retry.topology.queues { try await client.deleteQueue(queue.name) }
            return (worker.outcomes, parked)
        }
    }
}
