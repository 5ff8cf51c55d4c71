import Foundation
import RabbitMQ
import Synchronization
import Testing
import RabbitMQTestSupport

/// The broker's memory alarm blocks publishing connections (connection.blocked). Each test raises the alarm on a
/// node of its own: the shared node must keep accepting other tests' publishes. The tests share the port, so
/// they run one after the other.
@Suite("Flow control", .serialized)
struct FlowControlTests {
    static let nodeName = "t-pub-flow"
    static let port = 5712

    @Test func publishesWaitWhileTheBrokerBlocksAndCompleteAfter() async throws {
        try await DedicatedBroker.with(name: Self.nodeName, port: Self.port) { broker in
            var configuration = try broker.configuration
            let connectionName = TestBroker.uniqueName("flow.wait")
            configuration.connectionName = connectionName
            // A hang guard: the publishes wait through four rabbitmqctl runs, each of which took up to 216 s on a
            // two-core machine with both cores busy elsewhere.
            configuration.confirmTimeout = .seconds(600)
            let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
            do {
                try await client.connect()
                let queue = TestBroker.uniqueName("flow.wait")
                try await client.declare(Queue(queue))
                try await client.publish(Data("before the alarm".utf8), routingKey: queue)

                try await broker.rabbitmqctl("set_vm_memory_high_watermark", "0")
                #expect(try await eventually {
                    let states = try await broker.connectionStates(named: connectionName)
                    return states == ["blocking"] || states == ["blocked"]
                }, "the alarm did not reach the connection")

                let completed = Counter()
                let publishers = (0..<20).map { index in
                    Task {
                        try await client.publish(Data("while blocked \(index)".utf8), routingKey: queue)
                        completed.increment()
                    }
                }
                // Asserting that nothing happens needs a pause: a second is plenty on loopback.
                try await Task.sleep(for: .seconds(1))
                #expect(completed.value == 0, "publishes completed while the broker blocked")
                #expect(try await broker.queueStats(queue)?.ready == 1, "the broker took messages while blocked")
                #expect(try await broker.connectionStates(named: connectionName) == ["blocked"])

                try await broker.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
                for publisher in publishers { try await publisher.value }
                #expect(completed.value == 20)
                #expect(try await broker.queueStats(queue)?.ready == 21)
                // Unblocked for good: publishing goes on as usual.
                try await client.publish(Data("after".utf8), routingKey: queue)
                #expect(try await broker.queueStats(queue)?.ready == 22)
                await client.close()
            } catch {
                await client.close()
                throw error
            }
        }
    }

    @Test func aPublishTimingOutWhileBlockedIsNeverSent() async throws {
        try await DedicatedBroker.with(name: Self.nodeName, port: Self.port) { broker in
            var configuration = try broker.configuration
            let connectionName = TestBroker.uniqueName("flow.timeout")
            configuration.connectionName = connectionName
            configuration.confirmTimeout = .seconds(1)
            let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
            do {
                try await client.connect()
                let queue = TestBroker.uniqueName("flow.timeout")
                try await client.declare(Queue(queue))
                // Opened before the alarm: a blocked connection is not read at all, so channel.open would hang.
                let channel = try await client.openChannel()
                try await channel.enableConfirms()

                try await broker.rabbitmqctl("set_vm_memory_high_watermark", "0")
                #expect(try await eventually {
                    let states = try await broker.connectionStates(named: connectionName)
                    return states == ["blocking"] || states == ["blocked"]
                }, "the alarm did not reach the connection")

                // The broker tells a connection it is blocked only when it publishes: this first message goes out
                // (the broker reads its method frame, then stops reading) and cannot be called back. It times out
                // unconfirmed, and the broker takes it once unblocked.
                let trigger = await #expect(throws: RabbitMQError.self) {
                    try await client.publish(Data("trigger".utf8), routingKey: queue)
                }
                #expect(trigger?.code == .timeout)
                #expect(try await broker.connectionStates(named: connectionName) == ["blocked"])

                // The client knows it is blocked now: these wait, time out and must never be sent.
                for index in 0..<3 {
                    let error = await #expect(throws: RabbitMQError.self) {
                        try await client.publish(Data("timed out \(index)".utf8), routingKey: queue)
                    }
                    #expect(error?.code == .timeout)
                }
                let channelError = await #expect(throws: RabbitMQError.self) {
                    try await channel.publish(Data("timed out on a channel".utf8), routingKey: queue)
                }
                #expect(channelError?.code == .timeout)
                #expect(try await broker.queueStats(queue)?.ready == 0)

                try await broker.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
                // Running again means connection.unblocked is on its way: the markers need not wait (1 s at most).
                #expect(try await eventually {
                    try await broker.connectionStates(named: connectionName) == ["running"]
                }, "the connection stayed blocked")
                // Publishes on one channel are taken in order, and the connection's frames are read in order: once
                // this marker is confirmed, anything written before it has arrived too.
                try await client.publish(Data("marker".utf8), routingKey: queue)
                try await channel.publish(Data("channel marker".utf8), routingKey: queue)
                #expect(try await broker.queueStats(queue)?.ready == 3)
                var bodies: [String] = []
                while bodies.count < 10, let delivery = try await client.get(from: queue, acknowledgement: .automatic) {
                    bodies.append(delivery.bodyString)
                }
                #expect(bodies == ["trigger", "marker", "channel marker"])
                await client.close()
            } catch {
                await client.close()
                throw error
            }
        }
    }
}

/// A count shared between tasks.
private final class Counter: Sendable {
    private let count = Atomic<Int>(0)

    func increment() { count.add(1, ordering: .relaxed) }

    var value: Int { count.load(ordering: .relaxed) }
}
