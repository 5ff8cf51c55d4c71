import CoreMetrics
import Foundation
import Logging
import MetricsTestKit
@testable import RabbitMQ
import Testing
import RabbitMQTestSupport
import Tracing

@Suite("Observability (unit)")
struct ObservabilityUnitTests {
    private static func makeObservability(metrics: TestMetrics? = nil,
                                          tracer: TestTracer? = nil) -> Observability {
        Observability(RabbitMQClient.Configuration.Observability(metricsFactory: metrics, tracer: tracer),
                      logger: Logger(label: "test"))
    }

    private static func makeDelivery(properties: MessageProperties, exchange: String = "orders") throws -> Delivery {
        let link = ChannelLink.unserved(commands: try EngineCommandQueue(), windowCapacity: 10)
        return Delivery(body: Data("body".utf8), properties: properties, exchange: exchange,
                        routingKey: "order.placed", isRedelivered: false, deliveryTag: 7, consumerTag: "tag",
                        link: link)
    }

    // MARK: Headers

    @Test func injectorWritesStringHeadersAndExtractorReadsStringsAndBytes() {
        var headers: FieldTable = ["other": 1]
        FieldTableInjector().inject("00-abc-def-01", forKey: "traceparent", into: &headers)
        FieldTableInjector().inject("00-xyz-def-01", forKey: "traceparent", into: &headers)
        #expect(headers.count == 2)
        #expect(headers["traceparent"] == .string("00-xyz-def-01"))
        #expect(FieldTableExtractor().extract(key: "traceparent", from: headers) == "00-xyz-def-01")
        headers["tracestate"] = .bytes(Array("vendor=1".utf8))
        #expect(FieldTableExtractor().extract(key: "tracestate", from: headers) == "vendor=1")
        #expect(FieldTableExtractor().extract(key: "other", from: headers) == nil)
        #expect(FieldTableExtractor().extract(key: "missing", from: headers) == nil)
    }

    @Test func requestIDIsTheXRequestIDHeader() throws {
        var properties = MessageProperties()
        #expect(properties.requestID == nil)
        properties.requestID = "req-1"
        #expect(properties.headers["x-request-id"] == .string("req-1"))
        #expect(properties.requestID == "req-1")
        #expect(try Self.makeDelivery(properties: properties).requestID == "req-1")
        properties.requestID = nil
        #expect(properties.headers.isEmpty)

        var context = ServiceContext.topLevel
        #expect(context.requestID == nil)
        context.requestID = "req-2"
        #expect(context.requestID == "req-2")
        #expect(RequestIDKey.name == "x-request-id")
    }

    // MARK: Metrics

    @Test func handlesAreCachedPerExchangeAndQueue() throws {
        let metrics = TestMetrics()
        let observability = Self.makeObservability(metrics: metrics)
        let orders = try #require(observability.exchange("orders"))
        #expect(observability.exchange("orders") === orders)
        #expect(observability.exchange("") !== orders)
        let queue = try #require(observability.queue("q"))
        #expect(observability.queue("q") === queue)

        observability.exchange("orders")?.recordPublished()
        observability.exchange("orders")?.recordPublished()
        observability.exchange("")?.recordPublished()
        #expect(try metrics.expectCounter("rabbitmq.published", [("exchange", "orders")]).totalValue == 2)
        #expect(try metrics.expectCounter("rabbitmq.published", [("exchange", "amq.default")]).totalValue == 1)

        queue.recordDelivered()
        queue.recordAcked()
        queue.recordRejected()
        queue.recordRetried()
        queue.recordParked()
        queue.recordDeduplicated()
        queue.recordHandler(.milliseconds(3), outcome: QueueWorker.Outcome.retried.rawValue)
        for label in ["delivered", "acked", "rejected", "retried", "parked", "deduplicated"] {
            #expect(try metrics.expectCounter("rabbitmq.\(label)", [("queue", "q")]).totalValue == 1, "\(label)")
        }
        let timer = try metrics.expectTimer("rabbitmq.handler.duration", [("queue", "q"), ("outcome", "retried")])
        #expect(timer.values == [3_000_000])

        observability.recordRecovery()
        #expect(try metrics.expectCounter("rabbitmq.recoveries").totalValue == 1)

        #expect(try metrics.expectCounter("rabbitmq.settlements.stale").totalValue == 0)
        observability.recordStaleSettlement(.ack(deliveryTag: 3, multiple: false), channel: 1,
                                            closedWith: RabbitMQError(.connectionLost, "lost"))
        observability.recordStaleSettlement(.reject(deliveryTag: 4, requeue: true), channel: 1, closedWith: nil)
        #expect(try metrics.expectCounter("rabbitmq.settlements.stale").totalValue == 2)
    }

    @Test func dimensionValuesAreBounded() throws {
        let metrics = TestMetrics()
        let observability = Self.makeObservability(metrics: metrics)
        for index in 0..<Observability.maximumDimensionValues {
            _ = observability.queue("queue-\(index)")
        }
        observability.queue("one-too-many")?.recordDelivered()
        observability.queue("another")?.recordDelivered()
        observability.queue("queue-0")?.recordDelivered()
        #expect(try metrics.expectCounter("rabbitmq.delivered", [("queue", "_other")]).totalValue == 2)
        #expect(try metrics.expectCounter("rabbitmq.delivered", [("queue", "queue-0")]).totalValue == 1)
    }

    @Test func noOpBackendsTurnTheHooksOff() throws {
        let configuration = RabbitMQClient.Configuration.Observability(metricsFactory: NOOPMetricsHandler.instance,
                                                                       tracer: NoOpTracer())
        let observability = Observability(configuration, logger: Logger(label: "test"))
        #expect(observability.factory == nil)
        #expect(observability.tracer == nil)
        #expect(observability.exchange("orders") == nil)
        #expect(observability.queue("q") == nil)
        var properties = MessageProperties()
        #expect(observability.willPublish(exchange: "orders", routingKey: "k", properties: &properties) == nil)
        #expect(properties.headers.isEmpty)
        #expect(observability.context(forMessageWith: try Self.makeDelivery(properties: properties).properties) == nil)
    }

    @Test func ticketCountsTheBrokersVerdictOnce() throws {
        let metrics = TestMetrics()
        let observability = Self.makeObservability(metrics: metrics)
        let instruments = try #require(observability.exchange("orders"))
        func ticket() -> PublishTicket {
            PublishTicket(deadline: .now + .seconds(30), instruments: instruments, started: .now)
        }
        let confirmed = ticket()
        #expect(confirmed.complete(.success(())))
        #expect(!confirmed.complete(.success(())))
        #expect(!confirmed.complete(.failure(RabbitMQError(.publishNacked, "late"))))
        #expect(ticket().complete(.failure(RabbitMQError(.publishNacked, "nack"))))
        #expect(ticket().complete(.failure(RabbitMQError(.unroutable, "returned"))))
        #expect(ticket().complete(.failure(RabbitMQError(.timeout, "too late"))))

        let dimensions = [("exchange", "orders")]
        #expect(try metrics.expectCounter("rabbitmq.confirmed", dimensions).totalValue == 1)
        #expect(try metrics.expectCounter("rabbitmq.nacked", dimensions).totalValue == 1)
        #expect(try metrics.expectCounter("rabbitmq.returned", dimensions).totalValue == 1)
        let latency = try metrics.expectTimer("rabbitmq.confirm.latency", dimensions)
        #expect(latency.values.count == 2)
        #expect(latency.values.allSatisfy { $0 >= 0 && $0 < 60_000_000_000 })
    }

    // MARK: Tracing and request ids

    @Test func publishTakesTheRequestIDOfTheContextUnlessTheMessageHasOne() {
        let observability = Self.makeObservability()
        var context = ServiceContext.topLevel
        context.requestID = "from-context"
        ServiceContext.withValue(context) {
            var properties = MessageProperties()
            _ = observability.willPublish(exchange: "", routingKey: "k", properties: &properties)
            #expect(properties.requestID == "from-context")

            var own = MessageProperties()
            own.requestID = "own"
            _ = observability.willPublish(exchange: "", routingKey: "k", properties: &own)
            #expect(own.requestID == "own")
        }
        var outside = MessageProperties()
        _ = observability.willPublish(exchange: "", routingKey: "k", properties: &outside)
        #expect(outside.requestID == nil)
    }

    @Test func publishStartsAProducerSpanAndInjectsTraceparent() throws {
        let tracer = TestTracer()
        let observability = Self.makeObservability(tracer: tracer)
        var properties = MessageProperties(messageID: "m-1")
        let span = try #require(observability.willPublish(exchange: "", routingKey: "jobs", properties: &properties)
            as? TestSpan)
        #expect(span.operationName == "amq.default publish")
        #expect(span.kind == .producer)
        #expect(span.attributes.get("messaging.system") == .string("rabbitmq"))
        #expect(span.attributes.get("messaging.operation") == .string("publish"))
        #expect(span.attributes.get("messaging.destination.name") == .string("amq.default"))
        #expect(span.attributes.get("messaging.rabbitmq.destination.routing_key") == .string("jobs"))
        #expect(span.attributes.get("messaging.message.id") == .string("m-1"))
        let traceparent = try #require(properties.headers["traceparent"]?.stringValue)
        #expect(traceparent == "00-\(span.traceID)-\(span.spanID)-01")

        // The ticket ends the span with the outcome.
        let failed = PublishTicket(deadline: .now + .seconds(1), span: span)
        #expect(tracer.finished.isEmpty)
        failed.complete(.failure(RabbitMQError(.publishNacked, "nack")))
        let finished = try #require(tracer.finished.first)
        #expect(finished === span)
        #expect(span.status?.code == .error)
        #expect(span.errors.count == 1)
    }

    @Test func deliveryContextContinuesTheTraceAndCarriesTheRequestID() throws {
        let tracer = TestTracer()
        let observability = Self.makeObservability(tracer: tracer)
        var properties = MessageProperties(messageID: "m-2")
        properties.requestID = "req-9"
        let producer = try #require(observability.willPublish(exchange: "orders", routingKey: "order.placed",
                                                              properties: &properties) as? TestSpan)
        let delivery = try Self.makeDelivery(properties: properties)
        let context = try #require(observability.context(forMessageWith: delivery.properties))
        #expect(context.requestID == "req-9")
        let consumer = try #require(observability.startProcessSpan(delivery, queue: "orders.coupon",
                                                                   context: context) as? TestSpan)
        #expect(consumer.operationName == "orders.coupon process")
        #expect(consumer.kind == .consumer)
        #expect(consumer.traceID == producer.traceID)
        #expect(consumer.parentSpanID == producer.spanID)
        #expect(consumer.attributes.get("messaging.operation") == .string("process"))
        #expect(consumer.attributes.get("messaging.destination.name") == .string("orders"))
        #expect(consumer.attributes.get("messaging.rabbitmq.destination.routing_key") == .string("order.placed"))
        #expect(consumer.attributes.get("messaging.message.id") == .string("m-2"))
        #expect(consumer.attributes.get("messaging.rabbitmq.message.delivery_tag") == .int64(7))

        // Without a tracer the request id alone still makes a context.
        let plain = Self.makeObservability()
        #expect(plain.context(forMessageWith: delivery.properties)?.requestID == "req-9")
    }
}
