import CoreMetrics
import Metrics
import Logging
import Synchronization
import Tracing

/// One client's observability state, created once from its configuration's metrics factory and tracer: the
/// resolved metrics factory and tracer, and the metric handles, created on first use and cached per exchange and per
/// queue (creating swift-metrics handles per message would cost far more than the message itself).
///
/// With the no-op metrics factory and the no-op tracer (nothing bootstrapped, nothing injected), ``factory`` and
/// ``tracer`` are `nil` and the per-message hooks do nothing but test for that.
final class Observability: StaleSettlementReporter {
    /// The metrics factory; `nil` when metrics go nowhere.
    let factory: (any MetricsFactory)?
    /// The tracer; `nil` when it is the no-op tracer.
    let tracer: (any Tracer)?
    let logger: Logger
    private let exchanges = StateLock<[String: ExchangeInstruments]>([:])
    private let queues = StateLock<[String: QueueInstruments]>([:])
    private let recoveries: Counter?
    private let staleSettlements: Counter?

    /// The most exchanges and queues that get a dimension value of their own; later ones share
    /// ``overflowDimension``, so that generated names cannot grow the metrics without bound.
    static let maximumDimensionValues = 1000
    /// The dimension value of exchanges and queues past ``maximumDimensionValues``.
    static let overflowDimension = "_other"
    /// How the default exchange (empty name) is named in metrics and spans.
    static let defaultExchangeName = "amq.default"

    /// - Parameters:
    ///   - metricsFactory: where metrics go; `nil` for `MetricsSystem.factory`.
    ///   - tracer: the tracer; `nil` for `InstrumentationSystem.tracer`.
    init(metricsFactory: (any MetricsFactory)?, tracer: (any Tracer)?, logger: Logger) {
        let factory = metricsFactory ?? MetricsSystem.factory
        self.factory = factory is NOOPMetricsHandler ? nil : factory
        let tracer = tracer ?? InstrumentationSystem.tracer
        self.tracer = tracer is NoOpTracer ? nil : tracer
        self.logger = logger
        recoveries = self.factory.map { Counter(label: "rabbitmq.recoveries", dimensions: [], factory: $0) }
        staleSettlements = self.factory.map {
            Counter(label: "rabbitmq.settlements.stale", dimensions: [], factory: $0)
        }
    }

    /// Counts one connection recovery (`rabbitmq.recoveries`); called by connection recovery.
    func recordRecovery() {
        recoveries?.increment()
    }

    /// Counts (`rabbitmq.settlements.stale`) and logs at debug a settlement dropped because the delivery's channel
    /// had closed (`closedWith` says why): the broker requeued the delivery when the channel closed.
    func recordStaleSettlement(_ settlement: Settlement, channel: UInt16, closedWith reason: RabbitMQError?) {
        staleSettlements?.increment()
        logger.debug("dropped the settlement of a delivery whose channel has closed; the broker requeued it",
                     metadata: [LogMetadataKey.channel: "\(channel)",
                                LogMetadataKey.deliveryTag: "\(settlement.deliveryTag)",
                                "settlement": "\(settlement)",
                                LogMetadataKey.error: "\(reason.map { "\($0)" } ?? "closed")"])
    }

    /// The cached publishing handles of `exchange`, or `nil` without metrics.
    func exchange(_ exchange: String) -> ExchangeInstruments? {
        guard let factory else { return nil }
        return exchanges.withLock { cache in
            if let cached = cache[exchange] { return cached }
            let dimension = cache.count < Self.maximumDimensionValues
                ? Self.displayName(ofExchange: exchange) : Self.overflowDimension
            let created = ExchangeInstruments(exchange: dimension, factory: factory)
            cache[exchange] = created
            return created
        }
    }

    /// The cached consuming handles of `queue`, or `nil` without metrics.
    func queue(_ queue: String) -> QueueInstruments? {
        guard let factory else { return nil }
        return queues.withLock { cache in
            if let cached = cache[queue] { return cached }
            let dimension = cache.count < Self.maximumDimensionValues ? queue : Self.overflowDimension
            let created = QueueInstruments(queue: dimension, factory: factory)
            cache[queue] = created
            return created
        }
    }

    static func displayName(ofExchange exchange: String) -> String {
        exchange.isEmpty ? defaultExchangeName : exchange
    }

    // MARK: Publishing

    /// Prepares one publish: sets the request id from the current `ServiceContext` when the message has none,
    /// and with a tracer starts the producer span and injects its context into the headers.
    /// - Returns: the span, to be ended when the publish is settled.
    func willPublish(exchange: String, routingKey: String, properties: inout MessageProperties) -> (any Span)? {
        let current = ServiceContext.current
        if let requestID = current?.requestID, properties.requestID == nil {
            properties.requestID = requestID
        }
        guard let tracer else { return nil }
        let destination = Self.displayName(ofExchange: exchange)
        let span = tracer.startSpan("\(destination) publish", context: current ?? .topLevel, ofKind: .producer)
        var attributes = SpanAttributes()
        attributes["messaging.system"] = "rabbitmq"
        attributes["messaging.operation"] = "publish"
        attributes["messaging.destination.name"] = destination
        attributes["messaging.rabbitmq.destination.routing_key"] = routingKey
        if let messageID = properties.messageID { attributes["messaging.message.id"] = messageID }
        span.attributes = attributes
        tracer.inject(span.context, into: &properties.headers, using: FieldTableInjector())
        return span
    }

    /// Injects the current `ServiceContext` (trace context) into `headers`, for a message republished on behalf
    /// of a delivery being processed.
    func injectCurrentContext(into headers: inout FieldTable) {
        guard let tracer, let context = ServiceContext.current else { return }
        tracer.inject(context, into: &headers, using: FieldTableInjector())
    }

    // MARK: Consuming

    /// The context the handler of a message with `properties` runs in: the current one, with the trace context of
    /// the message's headers and its request id. `nil` when there is nothing to add (no tracer, no request id).
    func context(forMessageWith properties: MessageProperties) -> ServiceContext? {
        let requestID = properties.requestID
        guard tracer != nil || requestID != nil else { return nil }
        var context = ServiceContext.current ?? .topLevel
        tracer?.extract(properties.headers, into: &context, using: FieldTableExtractor())
        if let requestID { context.requestID = requestID }
        return context
    }

    /// Starts the consumer span of a message delivered from `queue`, as a child of `context` (see
    /// ``context(forMessageWith:)``).
    func startProcessSpan(_ message: some TraceableDelivery, queue: String, context: ServiceContext) -> (any Span)? {
        guard let tracer else { return nil }
        let span = tracer.startSpan("\(queue) process", context: context, ofKind: .consumer)
        var attributes = SpanAttributes()
        attributes["messaging.system"] = "rabbitmq"
        attributes["messaging.operation"] = "process"
        attributes["messaging.destination.name"] = Self.displayName(ofExchange: message.exchange)
        attributes["messaging.rabbitmq.destination.routing_key"] = message.routingKey
        attributes["messaging.rabbitmq.message.delivery_tag"] = Int64(truncatingIfNeeded: message.deliveryTag)
        if let messageID = message.properties.messageID { attributes["messaging.message.id"] = messageID }
        span.attributes = attributes
        return span
    }
}

/// What a consumer span describes of a delivered message.
protocol TraceableDelivery {
    var exchange: String { get }
    var routingKey: String { get }
    var deliveryTag: UInt64 { get }
    var properties: MessageProperties { get }
}

extension Span {
    /// Marks the span failed with `error`.
    func fail(_ error: any Error) {
        recordError(error)
        setStatus(SpanStatus(code: .error))
    }

    /// Marks the span failed with `error` and ends it.
    func end(failing error: any Error) {
        fail(error)
        end()
    }
}

/// The metric handles of one exchange, created once.
final class ExchangeInstruments: PublishOutcomeRecorder {
    private let published: Counter
    private let confirmed: Counter
    private let nacked: Counter
    private let returned: Counter
    private let confirmLatency: Timer

    init(exchange: String, factory: any MetricsFactory) {
        let dimensions = [("exchange", exchange)]
        published = Counter(label: "rabbitmq.published", dimensions: dimensions, factory: factory)
        confirmed = Counter(label: "rabbitmq.confirmed", dimensions: dimensions, factory: factory)
        nacked = Counter(label: "rabbitmq.nacked", dimensions: dimensions, factory: factory)
        returned = Counter(label: "rabbitmq.returned", dimensions: dimensions, factory: factory)
        confirmLatency = Timer(label: "rabbitmq.confirm.latency", dimensions: dimensions, factory: factory)
    }

    /// Counts a message handed to the connection for publishing.
    func recordPublished() { published.increment() }

    /// Counts the broker's verdict on one publish and, for a confirm or a nack, its latency since `start`.
    func record(_ outcome: Result<Void, RabbitMQError>, since start: ContinuousClock.Instant) {
        switch outcome {
        case .success:
            confirmed.increment()
            confirmLatency.record(duration: ContinuousClock.now - start)
        case .failure(let error) where error.code == .publishNacked:
            nacked.increment()
            confirmLatency.record(duration: ContinuousClock.now - start)
        case .failure(let error) where error.code == .unroutable:
            returned.increment()
        case .failure:
            break
        }
    }
}

/// The metric handles of one queue, created once.
final class QueueInstruments: Sendable {
    private let delivered: Counter
    private let acked: Counter
    private let rejected: Counter
    private let retried: Counter
    private let parked: Counter
    private let deduplicated: Counter
    private let consumersLost: Counter
    private let handlerTimeouts: Counter
    private let handlerDurations: [String: Timer]

    init(queue: String, factory: any MetricsFactory) {
        let dimensions = [("queue", queue)]
        delivered = Counter(label: "rabbitmq.delivered", dimensions: dimensions, factory: factory)
        acked = Counter(label: "rabbitmq.acked", dimensions: dimensions, factory: factory)
        rejected = Counter(label: "rabbitmq.rejected", dimensions: dimensions, factory: factory)
        retried = Counter(label: "rabbitmq.retried", dimensions: dimensions, factory: factory)
        parked = Counter(label: "rabbitmq.parked", dimensions: dimensions, factory: factory)
        deduplicated = Counter(label: "rabbitmq.deduplicated", dimensions: dimensions, factory: factory)
        consumersLost = Counter(label: "rabbitmq.consumer.lost", dimensions: dimensions, factory: factory)
        handlerTimeouts = Counter(label: "rabbitmq.handler.timeouts", dimensions: dimensions, factory: factory)
        var durations: [String: Timer] = [:]
        for outcome in Self.handlerOutcomes {
            durations[outcome] = Timer(label: "rabbitmq.handler.duration",
                                       dimensions: dimensions + [("outcome", outcome)], factory: factory)
        }
        handlerDurations = durations
    }

    /// Counts a delivery received.
    func recordDelivered() { delivered.increment() }
    /// Counts a basic.ack sent (after success, or after moving a failed delivery to a retry tier or parking it).
    func recordAcked() { acked.increment() }
    /// Counts a basic.nack or basic.reject sent.
    func recordRejected() { rejected.increment() }
    /// Counts a failed delivery moved to a retry tier.
    func recordRetried() { retried.increment() }
    /// Counts a failed delivery parked.
    func recordParked() { parked.increment() }
    /// Counts a duplicate delivery acked without running the handler.
    func recordDeduplicated() { deduplicated.increment() }
    /// Counts a worker's consumer lost without being stopped (channel closed or consumer cancelled by the broker,
    /// or not brought back by connection recovery).
    func recordConsumerLost() { consumersLost.increment() }
    /// Counts a worker's handler cancelled at its timeout.
    func recordHandlerTimeout() { handlerTimeouts.increment() }

    /// The values of the `outcome` dimension of `rabbitmq.handler.duration`: what became of a handled delivery.
    static let handlerOutcomes = ["acked", "retried", "parked", "requeued", "rejected"]

    /// Records how long a handler ran, by the outcome of its delivery (one of ``handlerOutcomes``).
    func recordHandler(_ duration: Duration, outcome: String) {
        handlerDurations[outcome]?.record(duration: duration)
    }
}
