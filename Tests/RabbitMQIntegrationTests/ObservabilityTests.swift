import Foundation
import Logging
import MetricsTestKit
@testable import RabbitMQ
import Testing
import RabbitMQTestSupport
import Tracing

// Publishing here goes through `Channel.publish(…, observability:)` with an Observability made from the test's
// configuration: the path `client.publish` takes once the client hands its own Observability to its channels.

/// Publishes on the client's shared confirm channel, reporting to `observability`, and waits for the verdict.
private func publish(_ client: RabbitMQClient, _ observability: Observability, _ body: String, to exchange: String,
                     routingKey: String = "", properties: MessageProperties = MessageProperties(),
                     mandatory: Bool = false) async throws {
    let channel = try await client.publisherChannel(until: .now + client.configuration.confirmTimeout)
    try await channel.publishWithDeferredConfirm(Data(body.utf8), to: exchange, routingKey: routingKey,
                                                 properties: properties, mandatory: mandatory,
                                                 observability: observability).wait()
}

/// A retryable failure of a test handler.
private struct TransientFailure: Error, CustomStringConvertible {
    var description: String { "transient failure" }
}

/// Declares a retry topology for a fresh work queue and an exchange of its own bound to the work queue, runs
/// `body`, and deletes them all, also when `body` fails.
private func withRoutedRetryTopology(_ client: RabbitMQClient, _ prefix: String, policy: RetryPolicy,
                                     _ body: (RetryTopology, String) async throws -> Void) async throws {
    let retry = RetryTopology(workQueue: Queue(TestBroker.uniqueName(prefix)), policy: policy)
    let exchange = TestBroker.uniqueName("\(prefix).exchange")
    try await client.declare(retry.topology)
    try await client.declare(Exchange(exchange, type: .fanout, durable: false))
    try await client.bind(.queue(retry.queueName, to: exchange))
    func cleanUp() async throws {
        try await client.deleteExchange(exchange)
        for queue in retry.topology.queues { try await client.deleteQueue(queue.name) }
    }
    do {
        try await body(retry, exchange)
    } catch {
        try? await cleanUp()
        throw error
    }
    try await cleanUp()
}

@Suite("Observability")
struct ObservabilityTests {
    @Test func metricsCountAPlainConsumersDeliveriesAcksAndRejects() async throws {
        let metrics = TestMetrics()
        try await TestBroker.withClient(configure: { $0.observability.metricsFactory = metrics }) { client in
            let queue = TestBroker.uniqueName("obs.consume")
            try await client.declare(Queue(queue))
            for index in 0..<5 { try await client.publish(Data("m\(index)".utf8), routingKey: queue) }
            var seen = 0
            for try await delivery in try await client.consume(queue, prefetch: 10) {
                seen += 1
                if seen == 5 { try delivery.reject(requeue: false) } else { try delivery.ack() }
                if seen == 5 { break }
            }
            let byQueue = [("queue", queue)]
            #expect(try metrics.expectCounter("rabbitmq.delivered", byQueue).totalValue == 5)
            #expect(try metrics.expectCounter("rabbitmq.acked", byQueue).totalValue == 4)
            #expect(try metrics.expectCounter("rabbitmq.rejected", byQueue).totalValue == 1)

            // Automatic acknowledgement counts its acks too.
            for index in 0..<3 { try await client.publish(Data("a\(index)".utf8), routingKey: queue) }
            var automatic = 0
            let options = ConsumeOptions(acknowledgement: .automatic)
            for try await _ in try await client.consume(queue, prefetch: 10, options: options) {
                automatic += 1
                if automatic == 3 { break }
            }
            #expect(try metrics.expectCounter("rabbitmq.delivered", byQueue).totalValue == 8)
            #expect(try metrics.expectCounter("rabbitmq.acked", byQueue).totalValue == 7)
            #expect(try await eventually { try await client.inspectQueue(queue).messageCount == 0 })
            try await client.deleteQueue(queue)
        }
    }

    @Test func metricsCountPublishesConfirmsDeliveriesAcksRetriesAndParkingExactly() async throws {
        let metrics = TestMetrics()
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(50), jitter: 0)
        try await TestBroker.withClient(configure: { $0.observability.metricsFactory = metrics }) { client in
            let observability = Observability(client.configuration.observability, logger: client.logger)
            try await withRoutedRetryTopology(client, "obs.metrics", policy: policy) { retry, exchange in
                let bodies = (0..<6).map { "ok-\($0)" } + ["retry-0", "retry-1", "park-0", "park-1"]
                for body in bodies { try await publish(client, observability, body, to: exchange) }

                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry)) {
                    delivery in
                    if delivery.bodyString.hasPrefix("park") { throw NonRetryableError("bad input") }
                    if delivery.bodyString.hasPrefix("retry"), RetryTopology.attempts(of: delivery) == 0 {
                        throw TransientFailure()
                    }
                }
                let run = Task { try await worker.run() }
                let expected: [QueueWorker.Outcome: Int] = [.acked: 8, .retried: 2, .parked: 2]
                let done = try await eventually(timeout: .seconds(30)) { worker.outcomes == expected }
                worker.stop()
                try await run.value
                try #require(done, "outcomes: \(worker.outcomes)")
                #expect(try await eventually {
                    let parked = try await TestBroker.messageCount(retry.parkingLotName)
                    let stats = try await TestBroker.queueStats(retry.queueName)
                    return parked == 2 && stats.map { $0.ready + $0.unacked } == 0
                })

                let byExchange = [("exchange", exchange)]
                #expect(try metrics.expectCounter("rabbitmq.published", byExchange).totalValue == 10)
                #expect(try metrics.expectCounter("rabbitmq.confirmed", byExchange).totalValue == 10)
                #expect(try metrics.expectCounter("rabbitmq.nacked", byExchange).totalValue == 0)
                #expect(try metrics.expectCounter("rabbitmq.returned", byExchange).totalValue == 0)
                #expect(try metrics.expectTimer("rabbitmq.confirm.latency", byExchange).values.count == 10)

                let byQueue = [("queue", retry.queueName)]
                // 10 published, and the 2 retried ones again after their delay.
                #expect(try metrics.expectCounter("rabbitmq.delivered", byQueue).totalValue == 12)
                // Every delivery is acked: 6 + 2 on success, 2 after moving to a retry tier, 2 after parking.
                #expect(try metrics.expectCounter("rabbitmq.acked", byQueue).totalValue == 12)
                #expect(try metrics.expectCounter("rabbitmq.rejected", byQueue).totalValue == 0)
                #expect(try metrics.expectCounter("rabbitmq.retried", byQueue).totalValue == 2)
                #expect(try metrics.expectCounter("rabbitmq.parked", byQueue).totalValue == 2)
                #expect(try metrics.expectCounter("rabbitmq.deduplicated", byQueue).totalValue == 0)
                for (outcome, count) in expected {
                    let timer = try metrics.expectTimer("rabbitmq.handler.duration",
                                                        byQueue + [("outcome", outcome.rawValue)])
                    #expect(timer.values.count == count, "\(outcome)")
                }
            }
        }
    }

    @Test func metricsCountNackedAndReturnedPublishes() async throws {
        let metrics = TestMetrics()
        try await TestBroker.withClient(configure: { $0.observability.metricsFactory = metrics }) { client in
            let observability = Observability(client.configuration.observability, logger: client.logger)
            let queue = TestBroker.uniqueName("obs.nack")
            let exchange = TestBroker.uniqueName("obs.unbound")
            try await client.declare(Queue(queue, arguments: QueueArguments(maxLength: 1, overflow: .rejectPublish)))
            try await client.declare(Exchange(exchange, durable: false))
            var failures: [RabbitMQError.Code] = []
            for index in 0..<3 {
                do {
                    try await publish(client, observability, "m\(index)", to: "", routingKey: queue)
                } catch let error as RabbitMQError {
                    failures.append(error.code)
                }
            }
            do {
                try await publish(client, observability, "nowhere", to: exchange, routingKey: "none", mandatory: true)
            } catch let error as RabbitMQError {
                failures.append(error.code)
            }
            #expect(failures == [.publishNacked, .publishNacked, .unroutable])
            #expect(try await TestBroker.messageCount(queue) == 1)

            let byDefault = [("exchange", "amq.default")]
            #expect(try metrics.expectCounter("rabbitmq.published", byDefault).totalValue == 3)
            #expect(try metrics.expectCounter("rabbitmq.confirmed", byDefault).totalValue == 1)
            #expect(try metrics.expectCounter("rabbitmq.nacked", byDefault).totalValue == 2)
            #expect(try metrics.expectTimer("rabbitmq.confirm.latency", byDefault).values.count == 3)
            let byExchange = [("exchange", exchange)]
            #expect(try metrics.expectCounter("rabbitmq.published", byExchange).totalValue == 1)
            #expect(try metrics.expectCounter("rabbitmq.returned", byExchange).totalValue == 1)
            #expect(try metrics.expectCounter("rabbitmq.confirmed", byExchange).totalValue == 0)

            try await client.deleteExchange(exchange)
            try await client.deleteQueue(queue)
        }
    }

    @Test func oneTraceRunsFromTheProducerThroughARetryToTheConsumer() async throws {
        let tracer = TestTracer()
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(50), jitter: 0)
        try await TestBroker.withClient(configure: { $0.observability.tracer = tracer }) { client in
            let observability = Observability(client.configuration.observability, logger: client.logger)
            try await withRoutedRetryTopology(client, "obs.trace", policy: policy) { retry, exchange in
                try await publish(client, observability, "fails once", to: exchange, routingKey: "order.placed",
                                  properties: MessageProperties(messageID: "order-1"))

                let seen = Locked<[String]>([])
                let worker = QueueWorker(client: client, configuration: .init(queue: retry.queueName, retry: retry)) {
                    delivery in
                    // The handler runs in its consumer span's context.
                    let ids = ServiceContext.current?[TestSpanContextKey.self]
                    seen.withLock { $0.append(ids?.spanID ?? "none") }
                    if RetryTopology.attempts(of: delivery) == 0 { throw TransientFailure() }
                }
                let run = Task { try await worker.run() }
                let processName = "\(retry.queueName) process"
                let done = try await eventually(timeout: .seconds(30)) {
                    tracer.finished.filter { $0.operationName == processName }.count == 2
                }
                worker.stop()
                try await run.value
                try #require(done)
                #expect(worker.outcomes == [.retried: 1, .acked: 1])

                let spans = tracer.finished
                let producer = try #require(spans.first { $0.operationName == "\(exchange) publish" })
                let consumers = spans.filter { $0.operationName == processName }
                try #require(consumers.count == 2)
                // Spans end in any order (the first attempt's ends after its retry is confirmed and it is acked,
                // which can be after the retry came back and finished); the handlers ran in attempt order, each
                // in its own span's context.
                let handlerSpanIDs = seen.withLock { $0 }
                try #require(handlerSpanIDs.count == 2)
                let first = try #require(consumers.first { $0.spanID == handlerSpanIDs[0] })
                let second = try #require(consumers.first { $0.spanID == handlerSpanIDs[1] })
                #expect(producer.kind == .producer)
                #expect(producer.parentSpanID == nil)
                #expect(producer.attributes.get("messaging.system") == .string("rabbitmq"))
                #expect(producer.attributes.get("messaging.operation") == .string("publish"))
                #expect(producer.attributes.get("messaging.destination.name") == .string(exchange))
                #expect(producer.attributes.get("messaging.rabbitmq.destination.routing_key")
                    == .string("order.placed"))
                #expect(producer.attributes.get("messaging.message.id") == .string("order-1"))

                // One trace: producer → first attempt → (the retry's publish, if traced) → second attempt.
                #expect(Set(consumers.map(\.traceID)) == [producer.traceID])
                #expect(first.kind == .consumer && second.kind == .consumer)
                #expect(first.parentSpanID == producer.spanID)
                #expect(first.status?.code == .error)
                #expect(first.errors == ["transient failure"])
                #expect(second.status == nil)
                #expect(second.attributes.get("messaging.operation") == .string("process"))
                #expect(second.attributes.get("messaging.message.id") == .string("order-1"))
                var ancestors: [String] = []
                var parent = second.parentSpanID
                while let id = parent, ancestors.count < 10 {
                    ancestors.append(id)
                    parent = spans.first { $0.spanID == id }?.parentSpanID
                }
                #expect(ancestors.first(where: { $0 == first.spanID }) != nil, "ancestors: \(ancestors)")
                #expect(ancestors.last == producer.spanID)
            }
        }
    }

    @Test func requestIDTravelsFromThePublishersContextToTheHandlersContextAndLogs() async throws {
        let logs = CapturedLogs()
        let queue = TestBroker.uniqueName("obs.request-id")
        var configuration = try TestBroker.configuration
        configuration.connectionName = "test request id"
        var logger = Logger(label: "rabbitmq.tests.observability") { _ in CapturingLogHandler(logs) }
        logger.logLevel = .debug
        let client = RabbitMQClient(configuration: configuration, logger: logger)
        do {
            try await client.declare(Queue(queue))
            var context = ServiceContext.topLevel
            context.requestID = "req-from-context"
            try await ServiceContext.withValue(context) {
                try await client.publish(Data("implicit".utf8), routingKey: queue)
                var properties = MessageProperties()
                properties.requestID = "req-explicit"
                try await client.publish(Data("explicit".utf8), routingKey: queue, properties: properties)
            }
            try await client.publish(Data("none".utf8), routingKey: queue)

            let seen = Locked<[String: (header: FieldValue?, delivery: String?, context: String?)]>([:])
            let worker = QueueWorker(client: client, configuration: .init(queue: queue, concurrency: 1)) { delivery in
                seen.withLock {
                    $0[delivery.bodyString] = (delivery.properties.headers["x-request-id"], delivery.requestID,
                                               ServiceContext.current?.requestID)
                }
            }
            let run = Task { try await worker.run() }
            let done = try await eventually(timeout: .seconds(30)) { worker.outcomes == [.acked: 3] }
            worker.stop()
            try await run.value
            try #require(done)
            #expect(try await drainedAtBroker(queue))

            let results = seen.withLock { $0 }
            #expect(results["implicit"]?.header == .string("req-from-context"))
            #expect(results["implicit"]?.delivery == "req-from-context")
            #expect(results["implicit"]?.context == "req-from-context")
            #expect(results["explicit"]?.delivery == "req-explicit")
            #expect(results["explicit"]?.context == "req-explicit")
            #expect(results["none"].map { $0.header == nil && $0.delivery == nil && $0.context == nil } == true)

            let handled = logs.entries.filter { $0.message == "delivery handled" }
            #expect(handled.count == 3)
            #expect(handled.allSatisfy { $0.level == .debug })
            let implicit = try #require(handled.first { $0.metadata["rabbitmq.request_id"] == "req-from-context" })
            #expect(implicit.metadata["rabbitmq.outcome"] == "acked")
            #expect(implicit.metadata["rabbitmq.queue"] == .string(queue))
            #expect(implicit.metadata["rabbitmq.connection"] == "test request id")
            #expect(implicit.metadata["rabbitmq.channel"] != nil)
            #expect(implicit.metadata["rabbitmq.delivery_tag"] != nil)
            #expect(implicit.metadata["rabbitmq.duration"] != nil)
            #expect(handled.contains { $0.metadata["rabbitmq.request_id"] == "req-explicit" })

            try await client.deleteQueue(queue)
            await client.close()
        } catch {
            _ = try? await client.deleteQueue(queue)
            await client.close()
            throw error
        }
    }
}

// MARK: - Log capture

/// Log entries captured by ``CapturingLogHandler``.
final class CapturedLogs: Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }

    private let storage = Locked<[Entry]>([])

    var entries: [Entry] { storage.withLock { $0 } }

    func append(_ entry: Entry) { storage.withLock { $0.append(entry) } }
}

/// A log handler that records entries with their merged metadata.
struct CapturingLogHandler: LogHandler {
    let logs: CapturedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    init(_ logs: CapturedLogs) { self.logs = logs }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        logs.append(.init(level: event.level, message: "\(event.message)",
                          metadata: metadata.merging(event.metadata ?? [:]) { $1 }))
    }
}
