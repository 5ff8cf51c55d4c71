import Foundation
import RabbitMQ
import Synchronization
import Testing
import RabbitMQTestSupport

/// A failed delivery that cannot be moved to its retry queue: nothing is lost, and the worker does not spin on it.
@Suite("Redelivery: failed moves")
struct RedeliveryFailedMoveTests {
    static let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(100), multiplier: 2, jitter: 0)

    /// A retry queue deleted under a running worker: the move is refused as unroutable instead of being confirmed
    /// and dropped, the worker declares its retry queues again, and the requeued message is handled.
    @Test func aDeletedRetryQueueIsDeclaredAgainAndNothingIsLost() async throws {
        try await TestBroker.withClient { client in
            let retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName("failedmove.deleted")),
                                      policy: Self.policy)
            try await client.declare(retry.topology)
            let tier = retry.tierName(for: .milliseconds(100))
            try await client.publish(Data("fails once".utf8), routingKey: retry.queueName)

            let calls = Atomic<Int>(0)
            // The worker declares its retry queues when it starts, so the first call deletes the tier under it.
            let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry)) { _ in
                if calls.add(1, ordering: .relaxed).newValue == 1 {
                    try await client.deleteQueue(tier)
                    throw RetryableError("downstream timeout")
                }
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually { worker.outcomes[.acked] == 1 })
            worker.stop()
            try await run.value
            // Moving the first failure hit the missing queue: requeued after a pause, then handled.
            #expect(worker.outcomes == [.requeued: 1, .acked: 1])
            #expect(calls.load(ordering: .relaxed) == 2)
            // The worker declared the deleted retry queue again (queue.declare passive would fail with 404).
            #expect(try await readyCount(client, tier) == 0)
            #expect(try await drainedAtBroker(retry.queueName))
            for queue in retry.topology.queues { try await client.deleteQueue(queue.name) }
        }
    }

    /// A retry queue that refuses every publish (a full queue with `reject-publish`): the failed delivery is
    /// requeued after pauses that grow, not thousands of times a second, and moves on once the queue has room.
    @Test func aRefusedMoveIsRequeuedAfterGrowingPausesUntilItSucceeds() async throws {
        try await TestBroker.withClient { client in
            let retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName("failedmove.refused")),
                                      policy: Self.policy)
            try await client.declare(retry.topology)
            let tier = retry.tierName(for: .milliseconds(100))
            let policyName = "refuse-\(tier)"
            try await TestBroker.rabbitmqctl("set_policy", policyName, "^\(NSRegularExpression.escapedPattern(for: tier))$",
                                             #"{"max-length":0,"overflow":"reject-publish"}"#, "--apply-to", "queues")
            #expect(try await eventually {
                try await BrokerNode.shared.list("list_queues", ["name", "policy"]).contains([tier, policyName])
            })
            try await client.publish(Data("fails while refused".utf8), routingKey: retry.queueName)

            let refusing = Atomic<Bool>(true)
            let calls = Atomic<Int>(0)
            var configuration = QueueWorker.Configuration(queue: retry.queueName, retry: retry)
            configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
            let worker = QueueWorker(client: client, configuration: configuration) { _ in
                calls.add(1, ordering: .relaxed)
                if refusing.load(ordering: .relaxed) { throw RetryableError("downstream timeout") }
            }
            let run = Task { try await worker.run() }
            #expect(try await eventually { worker.outcomes[.requeued, default: 0] >= 2 })
            try await Task.sleep(for: .seconds(3))
            // Pauses of 100, 200, 400, 800 ms, then 1 s: about 7 attempts in these 3 s plus the first two; an
            // immediate requeue made thousands.
            let attemptsWhileRefused = calls.load(ordering: .relaxed)
            print("failed moves: \(attemptsWhileRefused) handler calls while the retry queue refused publishes")
            #expect(attemptsWhileRefused <= 20)
            try await TestBroker.rabbitmqctl("clear_policy", policyName)
            refusing.store(false, ordering: .relaxed)
            #expect(try await eventually { worker.outcomes[.acked] == 1 })
            worker.stop()
            try await run.value
            #expect(worker.outcomes[.requeued, default: 0] >= 2)
            #expect(try await drainedAtBroker(retry.queueName))
            for queue in retry.topology.queues { try await client.deleteQueue(queue.name) }
        }
    }
}
