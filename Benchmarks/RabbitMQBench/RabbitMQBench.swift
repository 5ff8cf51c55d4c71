import ArgumentParser
import Foundation
import Histogram
import Logging
import RabbitMQ

/// `rabbitmq-bench`: the library's throughput and latency, with the same workloads and output as the C
/// baseline in Benchmarks/CBaseline so that `make bench` can compare them.
@main
struct RabbitMQBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rabbitmq-bench",
        abstract: "Measures swift-rabbitmq against a RabbitMQ broker.",
        subcommands: [Publish.self, Consume.self, Latency.self, Multi.self, ConnectFailures.self])
}

struct ConnectionOptions: ParsableArguments {
    @Option(help: "Broker URL.")
    var url = ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5673/"

    @Option(help: "Durable queue to use.")
    var queue = "bench-swift"

    @Option(help: "Number of messages.")
    var count = 100_000

    @Option(help: "PEM file of the CA that signed the broker's certificate (amqps URLs).")
    var tlsCA: String?

    func makeClient(publishWindow: Int? = nil) throws -> RabbitMQClient {
        var configuration = try RabbitMQClient.Configuration(url: url)
        configuration.connectionName = "rabbitmq-bench"
        configuration.confirmTimeout = .seconds(120)
        if let tlsCA { configuration.tls?.caCertificatePath = tlsCA }
        if let publishWindow { configuration.publishWindow = publishWindow }
        var logger = Logger(label: "rabbitmq-bench")
        logger.logLevel = .warning
        return RabbitMQClient(configuration: configuration, logger: logger)
    }
}

func report(_ label: String, messages: Int, from start: ContinuousClock.Instant) {
    let seconds = Double((ContinuousClock.now - start).components.attoseconds) / 1e18
        + Double((ContinuousClock.now - start).components.seconds)
    print(String(format: "%@ msgs=%d secs=%.3f rate=%d", label, messages, seconds, Int(Double(messages) / seconds)))
}

struct Publish: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publishes messages with confirms (persistent unless --transient), at most --window unconfirmed.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Body size in bytes.") var size = 128
    @Option(help: "Unconfirmed messages in flight at most.") var window = 1000
    /// 0: one loop publishing with a window on a channel. N > 0: N tasks, each calling client.publish and awaiting
    /// its confirm, the client's publish window set to --window.
    @Option(help: "0: one windowed loop; N: N tasks each calling client.publish and awaiting its confirm.")
    var tasks = 0
    @Flag(help: "Run the publish loop on the main actor.") var mainActor = false
    @Flag(help: "Publish transient messages (delivery mode 1) rather than persistent ones.") var transient = false

    func run() async throws {
        let client = try connection.makeClient(publishWindow: window)
        let properties = MessageProperties(deliveryMode: transient ? .transient : .persistent)
        let channel = try await client.openChannel()
        try await channel.declare(Queue(connection.queue))
        try await channel.purgeQueue(connection.queue)
        try await channel.enableConfirms(window: window)
        let body = Data(repeating: 0x61, count: size)
        // Read once: an option's getter looks up generic metadata on every call.
        let (queue, count) = (connection.queue, connection.count)
        let start = ContinuousClock.now
        if tasks > 0 {
            try await Self.publishFromTasks(client, tasks: tasks, count: count, body: body, queue: queue,
                                            properties: properties)
        } else if mainActor {
            try await Self.publishOnMainActor(channel, count: count, body: body, queue: queue, properties: properties)
        } else {
            try await Self.publish(channel, count: count, body: body, queue: queue, properties: properties)
        }
        report("pub", messages: connection.count, from: start)
        await client.close()
    }

    /// Runs on its caller's executor (`nonisolated(nonsending)`): the main actor for ``publishOnMainActor``.
    nonisolated(nonsending) static func publish(_ channel: Channel, count: Int, body: Data, queue: String,
                                                properties: MessageProperties = MessageProperties())
        async throws
    {
        for _ in 0..<count {
            _ = try await channel.publishWithDeferredConfirm(body, routingKey: queue, properties: properties)
        }
        try await channel.waitForConfirms()
    }

    /// The same loop as top-level code in main.swift would run it.
    @MainActor
    static func publishOnMainActor(_ channel: Channel, count: Int, body: Data, queue: String,
                                   properties: MessageProperties = MessageProperties()) async throws {
        try await publish(channel, count: count, body: body, queue: queue, properties: properties)
    }

    /// The request-handler pattern: many tasks, each publishing and awaiting the broker's confirm.
    static func publishFromTasks(_ client: RabbitMQClient, tasks: Int, count: Int, body: Data, queue: String,
                                 properties: MessageProperties = MessageProperties()) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<tasks {
                let share = count / tasks + (index < count % tasks ? 1 : 0)
                group.addTask {
                    for _ in 0..<share { try await client.publish(body, routingKey: queue, properties: properties) }
                }
            }
            try await group.waitForAll()
        }
    }
}

struct Consume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Consumes --count messages, acking each.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Prefetch count.") var prefetch: UInt16 = 1000
    @Flag(help: "Run the consume loop on the main actor.") var mainActor = false

    func run() async throws {
        let client = try connection.makeClient()
        let channel = try await client.openChannel()
        try await channel.declare(Queue(connection.queue))
        try await channel.setPrefetch(prefetch)
        let consumer = try await channel.consume(connection.queue)
        let (received, start) = mainActor
            ? try await Self.consumeOnMainActor(consumer, count: connection.count)
            : try await Self.consume(consumer, count: connection.count)
        try await channel.close()
        report("con", messages: received, from: start ?? .now)
        await client.close()
    }

    /// Runs on its caller's executor (`nonisolated(nonsending)`): the main actor for ``consumeOnMainActor``.
    nonisolated(nonsending) static func consume(_ consumer: Consumer, count: Int) async throws
        -> (Int, ContinuousClock.Instant?)
    {
        var received = 0
        var start: ContinuousClock.Instant?
        for try await delivery in consumer {
            if start == nil { start = .now }
            try delivery.ack()
            received += 1
            if received == count { break }
        }
        return (received, start)
    }

    /// The same loop as top-level code in main.swift would run it.
    @MainActor
    static func consumeOnMainActor(_ consumer: Consumer, count: Int) async throws -> (Int, ContinuousClock.Instant?) {
        try await consume(consumer, count: count)
    }
}

struct Latency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publish-to-delivery latency at a fixed rate, publisher and consumer in this process.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Messages per second.") var rate = 5000
    @Option(help: "Body size in bytes (at least 8).") var size = 128

    func run() async throws {
        let client = try connection.makeClient()
        let queue = connection.queue + "-latency"
        try await client.declare(Queue(queue))
        try await client.purgeQueue(queue)
        let count = connection.count
        let origin = ContinuousClock.now
        func nanosecondsSinceOrigin() -> UInt64 {
            let elapsed = ContinuousClock.now - origin
            return UInt64(elapsed.components.seconds) * 1_000_000_000 + UInt64(elapsed.components.attoseconds / 1_000_000_000)
        }
        let consumer = try await client.consume(queue, prefetch: 1000)
        let histogram = Task {
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
            var received = 0
            for try await delivery in consumer {
                let sent = delivery.body.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                _ = histogram.record((nanosecondsSinceOrigin() - sent) / 1000)
                try delivery.ack()
                received += 1
                if received == count { break }
            }
            return histogram
        }
        let publisher = try await client.openChannel()
        try await publisher.enableConfirms(window: 1000)
        let interval = 1.0 / Double(rate)
        let start = ContinuousClock.now
        var body = Data(repeating: 0, count: max(size, 8))
        for index in 0..<count {
            let due = start + .seconds(Double(index) * interval)
            if due > .now { try await Task.sleep(until: due, clock: .continuous) }
            var sent = nanosecondsSinceOrigin()
            withUnsafeBytes(of: &sent) { body.replaceSubrange(0..<8, with: $0) }
            _ = try await publisher.publishWithDeferredConfirm(body, routingKey: queue)
        }
        try await publisher.waitForConfirms()
        let result = try await histogram.value
        print("lat msgs=\(count) p50us=\(result.valueAtPercentile(50)) p99us=\(result.valueAtPercentile(99))")
        await client.close()
    }
}
