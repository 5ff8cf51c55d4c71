import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Tracing

/// Consumes a queue with an async handler per delivery: the form worker services use.
///
/// ```swift
/// let worker = QueueWorker(client: client, configuration: .init(queue: "orders.coupon", concurrency: 8)) { delivery in
///     try await issueCoupon(for: try JSONDecoder().decode(OrderPlaced.self, from: delivery.body))
/// }
/// try await worker.run()   // or add it to a ServiceGroup
/// ```
/// At most ``Configuration/concurrency`` handlers run at once, on at most ``Configuration/prefetch``
/// buffered deliveries. A handler that returns acks its delivery; one that throws is classified
/// (``FailureClassifier``): with ``Configuration/retry`` set, a retryable failure is republished (with
/// confirms) to the retry tier for its next attempt and only then acked, and a permanent failure, or the last
/// attempt, is parked with the reason in its headers. Without it, a retryable failure is requeued and a
/// permanent one rejected (dead-lettered if the queue has a dead-letter exchange).
///
/// Stopping (``stop()``, or a graceful shutdown of the `ServiceGroup` running it) takes no new deliveries,
/// lets running handlers finish within ``Configuration/drainTimeout``, then closes the channel: every
/// delivery not acked returns to the queue, so nothing is lost.
public final class QueueWorker: Service, Sendable {
    /// The worker's settings. Every default is stated on its property.
    public struct Configuration: Sendable {
        /// The queue to consume.
        public var queue: String
        /// Deliveries the broker may send ahead of acknowledgement. Default 50.
        public var prefetch: UInt16
        /// Handlers running at once. Default 8.
        public var concurrency: Int
        /// How long stopping waits for running handlers before cancelling them. Default 30 s.
        public var drainTimeout: Duration
        /// Delayed retries and parking; `nil` for none. Default `nil`.
        public var retry: RetryTopology?
        /// Which failures are worth retrying. Default: by ``ClassifiedError``, else retry.
        public var classifier: FailureClassifier
        /// Suppresses duplicate deliveries; `nil` for none. Default `nil`.
        public var deduplicator: Deduplicator?

        /// Creates settings; every argument but the queue has its documented default.
        public init(queue: String, prefetch: UInt16 = 50, concurrency: Int = 8, drainTimeout: Duration = .seconds(30),
                    retry: RetryTopology? = nil, classifier: FailureClassifier = FailureClassifier(),
                    deduplicator: Deduplicator? = nil) {
            self.queue = queue
            self.prefetch = prefetch
            self.concurrency = concurrency
            self.drainTimeout = drainTimeout
            self.retry = retry
            self.classifier = classifier
            self.deduplicator = deduplicator
        }
    }

    /// Processes one delivery; throwing marks it failed.
    public typealias Handler = @Sendable (Delivery) async throws -> Void

    /// What happened to a delivery.
    public enum Outcome: String, Sendable, Hashable {
        /// The handler succeeded and the delivery was acked.
        case acked
        /// It failed and was scheduled for another attempt.
        case retried
        /// It failed for good and was parked.
        case parked
        /// It failed and was requeued (no retry topology).
        case requeued
        /// It failed and was rejected (no retry topology).
        case rejected
        /// It was a duplicate and was acked without running the handler.
        case duplicate
    }

    private enum RunState {
        case idle
        case running(ConsumerCore?)
        case stopping
        case finished
    }

    /// The worker's settings.
    public let configuration: Configuration
    let client: RabbitMQClient
    private let handler: Handler
    private let logger: Logger
    private let observability: Observability
    private let state = StateLock<RunState>(.idle)
    private let counters = StateLock<[Outcome: Int]>([:])

    /// Creates a worker; it starts consuming when ``run()`` is called.
    public init(client: RabbitMQClient, configuration: Configuration, handler: @escaping Handler) {
        self.client = client
        self.configuration = configuration
        self.handler = handler
        var logger = client.logger
        logger[metadataKey: LogMetadataKey.queue] = "\(configuration.queue)"
        self.logger = logger
        // Until the client hands its own Observability to workers: one from the same configuration.
        observability = client.manager.observability
    }

    /// How many deliveries ended in each outcome so far.
    public var outcomes: [Outcome: Int] { counters.withLock { $0 } }

    /// Consumes until ``stop()`` or a graceful shutdown, then drains. May be called once.
    /// - Throws: the consumer's failure (a lost connection, a deleted queue) after draining.
    public func run() async throws {
        try configuration.retry?.policy.validate()
        guard configuration.concurrency >= 1, configuration.prefetch >= 1 else {
            throw RabbitMQError(.invalidArgument, "concurrency and prefetch must be at least 1")
        }
        let start = state.withLock { state -> Bool? in
            switch state {
            case .idle:
                state = .running(nil)
                return true
            case .stopping:
                return false  // stopped before it ran: nothing to do
            case .running, .finished:
                return nil
            }
        }
        guard let start else { throw RabbitMQError(.invalidArgument, "a QueueWorker runs once") }
        guard start else { return }
        defer { state.withLock { $0 = .finished } }
        try await withGracefulShutdownHandler {
            try await consume()
        } onGracefulShutdown: {
            self.stop()
        }
    }

    /// Stops taking deliveries; ``run()`` returns once running handlers have finished.
    public func stop() {
        let consumer = state.withLock { state -> ConsumerCore? in
            switch state {
            case .running(let consumer):
                state = .stopping
                return consumer
            case .idle:
                state = .stopping
                return nil
            case .stopping, .finished:
                return nil
            }
        }
        consumer?.stopDeliveries()
    }

    private func consume() async throws {
        let channel = try await client.openChannel()
        var failure: (any Error)?
        do {
            try await channel.setPrefetch(configuration.prefetch)
            let consumer = try await channel.consume(configuration.queue)
            let stopNow = state.withLock { state -> Bool in
                guard case .running = state else { return true }
                state = .running(consumer.core)
                return false
            }
            if stopNow { consumer.core.stopDeliveries() }
            var logger = logger
            logger[metadataKey: LogMetadataKey.channel] = "\(channel.number)"
            logger.info("worker started", metadata: ["concurrency": "\(configuration.concurrency)",
                                                     "prefetch": "\(configuration.prefetch)"])
            let run = Run(logger: logger, instruments: observability.queue(configuration.queue))
            failure = await process(consumer, run)
        } catch {
            failure = error
        }
        try? await channel.close()
        logger.info("worker stopped", metadata: ["outcomes": "\(outcomes)"])
        if let failure { throw failure }
    }

    /// What the handling of every delivery of one run shares.
    private struct Run: Sendable {
        /// The worker's logger with the channel number.
        let logger: Logger
        /// The queue's metric handles; `nil` without metrics.
        let instruments: QueueInstruments?
        /// Whether handlers are timed: for the metrics, or for debug logs.
        let timesHandlers: Bool

        init(logger: Logger, instruments: QueueInstruments?) {
            self.logger = logger
            self.instruments = instruments
            timesHandlers = instruments != nil || logger.logLevel <= .debug
        }
    }

    /// Runs handlers for the consumer's deliveries until it ends, then waits for them (bounded).
    private func process(_ consumer: Consumer, _ run: Run) async -> (any Error)? {
        await withTaskGroup(of: Bool.self) { group -> (any Error)? in
            var running = 0
            var failure: (any Error)?
            do {
                for try await delivery in consumer {
                    if running >= configuration.concurrency, await group.next() != nil { running -= 1 }
                    group.addTask { await self.handle(delivery, run); return true }
                    running += 1
                }
            } catch {
                failure = error
            }
            guard running > 0 else { return failure }
            let timeout = configuration.drainTimeout
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            while let finishedHandler = await group.next() {
                if finishedHandler {
                    running -= 1
                    if running == 0 { group.cancelAll() }
                } else if running > 0 {
                    run.logger.warning(
                        "drain timeout: cancelling running handlers; their deliveries return to the queue",
                        metadata: ["running": "\(running)"])
                    group.cancelAll()
                }
            }
            return failure
        }
    }

    /// Handles one delivery: deduplication, then the handler in the delivery's context (its trace continued in a
    /// consumer span, its request id), then the settlement.
    private func handle(_ delivery: Delivery, _ run: Run) async {
        // Its channel closed while it waited for a free handler (the client was closed, the connection lost): the
        // broker has requeued it, so it must not run now.
        guard delivery.canBeSettled else { return }
        let key = configuration.deduplicator.flatMap { $0.key(delivery) }
        if let key, let store = configuration.deduplicator?.store {
            do {
                guard try await store.claim(key) else {
                    try await delivery.ack()
                    run.instruments?.recordDeduplicated()
                    record(.duplicate, delivery, run)
                    return
                }
            } catch {
                run.logger.warning("deduplication store failed; processing the delivery",
                                   metadata: [LogMetadataKey.error: "\(error)"])
            }
        }
        guard let context = observability.context(for: delivery) else {
            await process(delivery, key: key, span: nil, run)
            return
        }
        let span = observability.startProcessSpan(delivery, queue: configuration.queue, context: context)
        await ServiceContext.withValue(span?.context ?? context) {
            await process(delivery, key: key, span: span, run)
        }
        span?.end()
    }

    private func process(_ delivery: Delivery, key: String?, span: (any Span)?, _ run: Run) async {
        // The handler's duration is read only for metrics or debug logs.
        let started = run.timesHandlers ? ContinuousClock.now : nil
        do {
            try await handler(delivery)
        } catch {
            let duration = started.map { ContinuousClock.now - $0 }
            span?.fail(error)
            if let key { try? await configuration.deduplicator?.store.release(key) }
            // A handler cancelled by the drain timeout leaves its delivery to be requeued by the channel close.
            guard !Task.isCancelled else { return }
            await fail(delivery, error, duration: duration, run)
            return
        }
        let duration = started.map { ContinuousClock.now - $0 }
        // The work is done: remember it even if the ack cannot be sent, so that the redelivery the broker makes
        // after a lost channel is recognised as a duplicate instead of being processed again.
        if let key { try? await configuration.deduplicator?.store.commit(key) }
        do {
            try await delivery.ack()
            record(.acked, delivery, run, duration: duration)
        } catch {
            run.logger.warning("handled a delivery but could not ack it; the broker will redeliver it",
                               metadata: [LogMetadataKey.error: "\(error)"])
        }
    }

    private func fail(_ delivery: Delivery, _ error: any Error, duration: Duration?, _ run: Run) async {
        let disposition = configuration.classifier.disposition(of: error)
        guard let retry = configuration.retry else {
            let requeue = disposition == .retry
            do {
                try await delivery.nack(requeue: requeue)
                record(requeue ? .requeued : .rejected, delivery, run, duration: duration, error: error)
            } catch {
                run.logger.warning("cannot settle a failed delivery", metadata: [
                    LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)", LogMetadataKey.error: "\(error)"])
            }
            return
        }
        let attempt = RetryTopology.attempts(of: delivery) + 1
        var properties = delivery.properties
        properties.headers[RetryTopology.attemptHeader] = .int64(Int64(attempt))
        if properties.headers[RetryTopology.firstFailureHeader] == nil {
            properties.headers[RetryTopology.firstFailureHeader] = .timestamp(Date())
        }
        properties.headers[RetryTopology.lastErrorHeader] = .string(String(describing: error).prefix(1000).description)
        // The next attempt continues this attempt's trace (the publish below may replace it with its own span).
        observability.injectCurrentContext(into: &properties.headers)
        let target: String
        let outcome: Outcome
        if disposition == .retry, attempt < retry.policy.maxAttempts {
            let delay = retry.policy.delay(afterAttempt: attempt)
            target = retry.tierName(for: delay)
            properties.expiration = retry.policy.jittered(delay)
            outcome = .retried
        } else {
            target = retry.parkingLotName
            properties.expiration = nil
            properties.headers[RetryTopology.parkedReasonHeader] = .string(
                disposition == .park ? "not retryable: \(error)" : "failed \(attempt) attempts; last: \(error)")
            properties.headers[RetryTopology.parkedAtHeader] = .timestamp(Date())
            outcome = .parked
        }
        // Publish first, confirmed, then ack: a crash in between gives a duplicate, never a loss.
        do {
            try await client.publish(delivery.body, to: "", routingKey: target, properties: properties)
        } catch let publishError {
            run.logger.error("cannot move a failed delivery; requeueing it", metadata: [
                LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)", "target": "\(target)",
                LogMetadataKey.error: "\(publishError)"])
            try? await delivery.nack(requeue: true)
            return
        }
        if outcome == .retried { run.instruments?.recordRetried() } else { run.instruments?.recordParked() }
        record(outcome, delivery, run, duration: duration, error: error)
        do {
            try await delivery.ack()
        } catch {
            // Moved, but the original's channel is gone: the broker redelivers it, a duplicate of the moved copy.
            run.logger.warning("moved a failed delivery but could not ack the original", metadata: [
                LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)", LogMetadataKey.error: "\(error)"])
        }
    }

    /// Counts the outcome, times the handler by outcome, and logs both at debug.
    private func record(_ outcome: Outcome, _ delivery: Delivery, _ run: Run, duration: Duration? = nil,
                        error: (any Error)? = nil) {
        counters.withLock { $0[outcome, default: 0] += 1 }
        if let duration { run.instruments?.recordHandler(duration, outcome: outcome) }
        guard run.logger.logLevel <= .debug else { return }
        var metadata: Logger.Metadata = [
            LogMetadataKey.outcome: "\(outcome.rawValue)",
            LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)",
            LogMetadataKey.exchange: "\(delivery.exchange)",
            LogMetadataKey.routingKey: "\(delivery.routingKey)",
        ]
        if let duration { metadata[LogMetadataKey.duration] = "\(duration)" }
        if let id = delivery.properties.messageID { metadata[LogMetadataKey.messageID] = "\(id)" }
        if let id = delivery.requestID { metadata[LogMetadataKey.requestID] = "\(id)" }
        if let error { metadata[LogMetadataKey.error] = "\(error)" }
        run.logger.debug("delivery handled", metadata: metadata)
    }
}
