import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// Stream queues over AMQP 0-9-1: offsets, the offset of each delivery, and resuming where the application left
/// off, after connection recovery and after a restart. The node needs only the `stream_queue` feature flag, on for
/// a fresh 3.10 node; the `rabbitmq_stream` plugin (the stream protocol) is not involved.
@Suite("Streams")
struct StreamTests {
    /// Declares a stream queue, publishes `count` messages `PREFIX0…` (each confirmed), runs `body`, deletes it.
    static func withStream<T>(_ client: RabbitMQClient, count: Int = 0, prefix: String = "m",
                              _ body: (String) async throws -> T) async throws -> T {
        let queue = TestBroker.uniqueName("stream")
        try await client.declare(Queue(queue, arguments: .stream(maxAge: .seconds(3600))))
        do {
            try await publish(client, queue, (0..<count).map { "\(prefix)\($0)" })
            let result = try await body(queue)
            _ = try? await client.deleteQueue(queue)
            return result
        } catch {
            _ = try? await client.deleteQueue(queue)
            throw error
        }
    }

    static func publish(_ client: RabbitMQClient, _ queue: String, _ bodies: [String]) async throws {
        for body in bodies { try await client.publish(Data(body.utf8), routingKey: queue) }
    }

    /// The first `count` deliveries of a consumer starting at `offset`, acked, as (body, offset) pairs.
    static func read(_ client: RabbitMQClient, _ queue: String, from offset: StreamOffset, count: Int,
                     prefetch: UInt16 = 10) async throws -> [(body: String, offset: Int64?)] {
        let consumer = try await client.consume(queue, prefetch: prefetch,
                                                options: ConsumeOptions(streamOffset: offset))
        var read: [(body: String, offset: Int64?)] = []
        for try await delivery in consumer {
            read.append((delivery.bodyString, delivery.streamOffset))
            try delivery.ack()
            if read.count == count { break }
        }
        return read
    }

    @Test("stream arguments are declared as typed and read back")
    func typedArguments() async throws {
        let arguments = QueueArguments.stream(maxAge: .seconds(7 * 86_400), maxLengthBytes: 50_000_000,
                                              maxSegmentSizeBytes: 1_000_000)
        #expect(arguments.table == ["x-queue-type": "stream", "x-max-length-bytes": .int64(50_000_000),
                                    "x-max-age": "604800s", "x-stream-max-segment-size-bytes": .int64(1_000_000)])
        let readBack = QueueArguments(table: ["x-queue-type": "stream", "x-max-age": "7D"])
        #expect(readBack.maxAge == .seconds(7 * 86_400))
        #expect(readBack.type == .stream)
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("stream.args")
            try await client.declare(Queue(queue, arguments: arguments))
            let rows = try await BrokerNode.shared.list("list_queues", ["name", "type", "arguments"])
            let row = try #require(rows.first { $0[0] == queue })
            #expect(row[1] == "stream")
            for expected in ["604800s", "50000000", "1000000"] { #expect(row[2].contains(expected), "\(row)") }
            _ = try await client.deleteQueue(queue)
        }
    }

    @Test("first, offset, next, timestamp and interval choose where reading starts; each delivery has its offset")
    func offsets() async throws {
        try await TestBroker.withClient { client in
            try await Self.withStream(client, count: 10) { queue in
                try await TestBroker.withDeadline(ConsumingTests.hangGuard) {
                    let all = try await Self.read(client, queue, from: .first, count: 10)
                    #expect(all.map(\.body) == (0..<10).map { "m\($0)" })
                    #expect(all.map(\.offset) == (0..<10).map { Int64($0) })

                    let fromFive = try await Self.read(client, queue, from: .offset(5), count: 5)
                    #expect(fromFive.map(\.body) == (5..<10).map { "m\($0)" })
                    #expect(fromFive.first?.offset == 5)

                    let hour = try await Self.read(client, queue, from: .interval(.seconds(3600)), count: 1)
                    #expect(hour.first?.body == "m0")

                    // next: only what is published after the consumer starts.
                    let consumer = try await client.consume(queue, prefetch: 10,
                                                            options: ConsumeOptions(streamOffset: .next))
                    try await Self.publish(client, queue, ["m10"])
                    var iterator = consumer.makeAsyncIterator()
                    let next = try #require(try await iterator.next())
                    #expect(next.bodyString == "m10")
                    #expect(next.streamOffset == 10)
                    #expect(consumer.lastStreamOffset == 10)
                    try next.ack()
                    await consumer.cancel()

                    // timestamp: chunk times have second resolution; publish a later batch well after the mark.
                    try await Task.sleep(for: .milliseconds(1100))
                    let mark = Date()
                    try await Task.sleep(for: .milliseconds(1100))
                    try await Self.publish(client, queue, ["late0", "late1"])
                    let late = try await Self.read(client, queue, from: .timestamp(mark), count: 2)
                    #expect(late.map(\.body) == ["late0", "late1"])
                    #expect(late.map(\.offset) == [11, 12])
                }
            }
        }
    }

    @Test("a negative offset, a sub-second interval or a no-ack stream consumer is refused before it is sent")
    func invalidOffsets() async throws {
        try await TestBroker.withClient { client in
            for offset in [StreamOffset.offset(-1), .interval(.milliseconds(500))] {
                let error = await #expect(throws: RabbitMQError.self) {
                    _ = try await client.consume("any", options: ConsumeOptions(streamOffset: offset))
                }
                #expect(error?.code == .invalidArgument)
            }
            let error = await #expect(throws: RabbitMQError.self) {
                _ = try await client.consume("any", options: ConsumeOptions(acknowledgement: .noAck, streamOffset: .first))
            }
            #expect(error?.code == .invalidArgument)
        }
    }

    @Test("after the broker closes the connection, recovery resumes after the last delivery handed out")
    func resumesAfterRecovery() async throws {
        let name = TestBroker.uniqueName("stream.recovery")
        try await TestBroker.withClient(configure: { $0.connectionName = name }) { client in
            try await Self.withStream(client, count: 20) { queue in
                try await TestBroker.withDeadline(ConsumingTests.hangGuard) {
                    let consumer = try await client.consume(queue, prefetch: 5,
                                                            options: ConsumeOptions(streamOffset: .first))
                    var bodies: [String] = []
                    var offsets: [Int64] = []
                    for try await delivery in consumer {
                        bodies.append(delivery.bodyString)
                        offsets.append(delivery.streamOffset ?? -1)
                        try delivery.ack()
                        if bodies.count == 10 {
                            // Deliveries buffered now are dropped with the channel, and read again after recovery.
                            try await TestBroker.closeConnections(named: name)
                            try await Self.publish(client, queue, (20..<30).map { "m\($0)" })  // waits for recovery
                        }
                        if bodies.count == 30 { break }
                    }
                    #expect(bodies == (0..<30).map { "m\($0)" })
                    #expect(offsets == (0..<30).map { Int64($0) })
                    #expect(consumer.lastStreamOffset == 29)
                }
            }
        }
    }

    @Test("after a restart, a consumer resumes from the offset the application stored")
    func resumesFromAStoredOffset() async throws {
        try await TestBroker.withClient { admin in
            try await Self.withStream(admin, count: 10) { queue in
                // The first "process" handles four messages and stores the last offset it processed.
                var stored: Int64?
                try await TestBroker.withClient(name: "stream.first.process") { client in
                    for (_, offset) in try await Self.read(client, queue, from: .first, count: 4) { stored = offset }
                }
                #expect(stored == 3)
                let restarted = try await TestBroker.withClient(name: "stream.second.process") { client in
                    try await Self.read(client, queue, from: .after(try #require(stored)), count: 6)
                }
                #expect(restarted.map(\.body) == (4..<10).map { "m\($0)" })
            }
        }
    }

    @Test("a QueueWorker reads a stream from its offset, resumes after recovery, and a new one after a stored offset")
    func queueWorker() async throws {
        let name = TestBroker.uniqueName("stream.worker")
        try await TestBroker.withClient(configure: { $0.connectionName = name }) { client in
            try await Self.withStream(client, count: 10) { queue in
                let seen = Locked<[(String, Int64)]>([])
                let handler: QueueWorker.Handler = { delivery in
                    seen.withLock { $0.append((delivery.bodyString, delivery.streamOffset ?? -1)) }
                }
                let configuration = QueueWorker.Configuration(queue: queue, prefetch: 5, concurrency: 1,
                                                              streamOffset: .first)
                let worker = QueueWorker(client: client, configuration: configuration, handler: handler)
                let run = Task { try await worker.run() }
                #expect(try await eventually(timeout: ConsumingTests.hangGuard) { seen.withLock { $0.count } >= 10 })
                try await TestBroker.closeConnections(named: name)
                try await Self.publish(client, queue, (10..<20).map { "m\($0)" })
                #expect(try await eventually(timeout: ConsumingTests.hangGuard) { seen.withLock { $0.count } >= 20 })
                worker.stop()
                try await run.value
                let first = seen.withLock { $0 }
                #expect(first.map(\.0) == (0..<20).map { "m\($0)" })
                #expect(first.map(\.1) == (0..<20).map { Int64($0) })

                // A new worker (a restarted process) from the last offset stored.
                seen.withLock { $0 = [] }
                try await Self.publish(client, queue, (20..<25).map { "m\($0)" })
                var again = configuration
                again.streamOffset = .after(try #require(first.last?.1))
                let second = QueueWorker(client: client, configuration: again, handler: handler)
                let secondRun = Task { try await second.run() }
                #expect(try await eventually(timeout: ConsumingTests.hangGuard) { seen.withLock { $0.count } >= 5 })
                try await Task.sleep(for: .milliseconds(300))  // nothing more arrives
                second.stop()
                try await secondRun.value
                #expect(seen.withLock { $0.map(\.0) } == (20..<25).map { "m\($0)" })
                #expect(second.outcomes[.acked] == 5)
            }
        }
    }
}
