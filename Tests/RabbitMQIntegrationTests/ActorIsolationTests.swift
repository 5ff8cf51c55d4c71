import Dispatch
import Foundation
import RabbitMQ
import Synchronization
import Testing
import RabbitMQTestSupport

/// Publishing and consuming from an actor (issue 18): the hot calls are `nonisolated(nonsending)`, so they run
/// on the caller's executor instead of hopping off the actor and back for every message. An actor whose
/// executor counts the jobs it is given shows the difference without timing anything: a hop costs a job per
/// call, running in place costs one only when the call really waits (a full window, an empty buffer).
@Suite("Actor isolation")
struct ActorIsolationTests {
    static let count = 2000

    @Test("publishing and consuming on an actor's executor take a job per wait, not one per message")
    func actorRunsCallsInPlace() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("actor")
            try await client.declare(Queue(queue))
            let worker = CountingActor()
            let channel = try await client.openChannel()
            // A window larger than the count: the publisher never waits for room, only for the last confirms.
            try await channel.enableConfirms(window: 2 * Self.count)
            let jobsBefore = worker.jobs
            try await worker.publish(Self.count, on: channel, to: queue)
            let publishJobs = worker.jobs - jobsBefore
            #expect(try await TestBroker.messageCount(queue) == Self.count)
            #expect(publishJobs < Self.count / 10, "\(publishJobs) jobs for \(Self.count) publishes")

            try await channel.setPrefetch(UInt16(Self.count))
            let consumer = try await channel.consume(queue)
            let consumeBefore = worker.jobs
            let received = try await worker.consume(Self.count, from: consumer)
            let consumeJobs = worker.jobs - consumeBefore
            #expect(received == Self.count)
            // Deliveries cross in batches; a hop per next() would take at least one job per delivery.
            #expect(consumeJobs < Self.count / 2, "\(consumeJobs) jobs for \(Self.count) deliveries")
            #expect(try await eventually { try await TestBroker.queueStats(queue).map { $0.ready + $0.unacked } == 0 })
            try await channel.close()
            _ = try await client.deleteQueue(queue)
        }
    }

    @Test("the windowed publish loop, client.publish and the consume loop work from the main actor")
    func mainActorPublishAndConsume() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("main-actor")
            try await client.declare(Queue(queue))
            let bodies = try await Self.publishAndConsumeOnMainActor(client, queue: queue)
            #expect(bodies == (0..<Self.count).map { "m\($0)" } + (0..<10).map { "c\($0)" })
            #expect(try await eventually { try await TestBroker.queueStats(queue).map { $0.ready + $0.unacked } == 0 })
            _ = try await client.deleteQueue(queue)
        }
    }

    /// The loops as top-level code in main.swift runs them; returns the bodies consumed.
    @MainActor
    private static func publishAndConsumeOnMainActor(_ client: RabbitMQClient, queue: String) async throws -> [String] {
        let channel = try await client.openChannel()
        try await channel.enableConfirms(window: 100)
        for index in 0..<count {
            _ = try await channel.publishWithDeferredConfirm(Data("m\(index)".utf8), routingKey: queue)
            MainActor.assertIsolated()
        }
        try await channel.waitForConfirms()
        for index in 0..<10 { try await client.publish(Data("c\(index)".utf8), routingKey: queue) }
        #expect(try await TestBroker.messageCount(queue) == count + 10)

        try await channel.setPrefetch(500)
        var bodies: [String] = []
        for try await delivery in try await channel.consume(queue) {
            MainActor.assertIsolated()
            bodies.append(String(decoding: delivery.body, as: UTF8.self))
            try delivery.ack()
            if bodies.count == count + 10 { break }
        }
        try await channel.close()
        return bodies
    }
}

/// An actor on a serial executor of its own that counts the jobs it runs.
private actor CountingActor {
    private let executor = CountingExecutor()

    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// Jobs enqueued on the actor so far.
    nonisolated var jobs: Int { executor.jobs.load(ordering: .relaxed) }

    func publish(_ count: Int, on channel: Channel, to queue: String) async throws {
        for index in 0..<count {
            _ = try await channel.publishWithDeferredConfirm(Data("a\(index)".utf8), routingKey: queue)
        }
        try await channel.waitForConfirms()
    }

    func consume(_ count: Int, from consumer: Consumer) async throws -> Int {
        var received = 0
        for try await delivery in consumer {
            try delivery.ack()
            received += 1
            if received == count { break }
        }
        return received
    }
}

private final class CountingExecutor: SerialExecutor {
    let jobs = Atomic<Int>(0)
    private let queue = DispatchQueue(label: "counting-executor")

    func enqueue(_ job: consuming ExecutorJob) {
        jobs.add(1, ordering: .relaxed)
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedSerialExecutor()) }
    }
}
