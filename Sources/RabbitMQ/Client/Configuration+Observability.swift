import CoreMetrics
import Logging
import Tracing

extension RabbitMQClient.Configuration {
    /// How the client reports what it does: metrics, traces and request ids.
    ///
    /// Metrics (swift-metrics) are counters `rabbitmq.published`, `rabbitmq.confirmed`, `rabbitmq.nacked`,
    /// `rabbitmq.returned` (dimension `exchange`), `rabbitmq.delivered`, `rabbitmq.acked`, `rabbitmq.rejected`,
    /// `rabbitmq.retried`, `rabbitmq.parked`, `rabbitmq.deduplicated` (dimension `queue`), `rabbitmq.recoveries` and
    /// `rabbitmq.settlements.stale` (settlements of deliveries whose channel had closed, which do nothing), and timers
    /// `rabbitmq.confirm.latency` (dimension `exchange`) and `rabbitmq.handler.duration` (dimensions `queue` and
    /// `outcome`). The default exchange is reported as `amq.default`.
    ///
    /// Traces (swift-distributed-tracing): each publish runs in a producer span `"<exchange> publish"` whose context
    /// travels in the message headers (W3C `traceparent` and `tracestate` with an OpenTelemetry tracer);
    /// ``QueueWorker`` runs each handler in a consumer span `"<queue> process"` continuing that trace, and its
    /// retries carry the trace on to the next attempt.
    ///
    /// Request ids: a publish without an `x-request-id` header takes ``MessageProperties/requestID`` from the
    /// current `ServiceContext` (``RequestIDKey``); ``QueueWorker`` sets it in the handler's `ServiceContext` and in
    /// its log metadata.
    public struct Observability: Sendable {
        /// Where metrics go; `nil` for `MetricsSystem.factory`, read when the client is created (so bootstrap the
        /// metrics system first). Default `nil`. With the no-op factory (nothing bootstrapped) the library skips its
        /// metrics work entirely.
        public var metricsFactory: (any MetricsFactory)?
        /// The tracer that creates spans and propagates their context; `nil` for `InstrumentationSystem.tracer`,
        /// read when the client is created. Default `nil`. With the no-op tracer (nothing bootstrapped) the library
        /// creates no spans and adds no trace headers.
        public var tracer: (any Tracer)?

        /// Creates the default settings: the process-wide metrics factory and tracer.
        public init(metricsFactory: (any MetricsFactory)? = nil, tracer: (any Tracer)? = nil) {
            self.metricsFactory = metricsFactory
            self.tracer = tracer
        }
    }
}

extension Observability {
    /// The observability state of a client configured with `configuration`.
    convenience init(_ configuration: RabbitMQClient.Configuration.Observability, logger: Logger) {
        self.init(metricsFactory: configuration.metricsFactory, tracer: configuration.tracer, logger: logger)
    }
}
