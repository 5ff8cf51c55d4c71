import Foundation
import Logging
import ServiceLifecycle
import Synchronization

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
/// permanent one rejected (dead-lettered if the queue has a dead-letter exchange). A handler that runs longer
/// than ``Configuration/handlerTimeout`` is cancelled and its attempt fails as retryable. With
/// ``Configuration/ordering``, deliveries with the same key run one at a time in delivery order (see ``KeyOrdering``).
///
/// **It heals itself.** When the broker closes the worker's channel (406 after a delivery stayed unacknowledged
/// past the broker's `consumer_timeout`), cancels its consumer (its queue was deleted or failed over), or
/// connection recovery cannot bring the consumer back, the worker logs it at error level, counts it
/// (`rabbitmq.consumer.lost`), reports it in ``events()``, and subscribes again after a backoff
/// (``Configuration/recovery``) on a new channel, declaring first the topology it owns: the queues of
/// ``Configuration/retry`` and ``Configuration/topology``, so that a deleted queue comes back. Handlers already
/// running carry on; their settlements on the dead channel change nothing at the broker, which has already
/// returned their messages to the queue. ``run()`` ends only on ``stop()``, a graceful shutdown, the cancellation
/// of its task, or an error retrying cannot fix: access refused (403), the client closed, an invalid
/// configuration, or, on the first subscription, any error that is not retryable (a queue that does not exist
/// and that the worker does not declare, say).
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
        /// Delayed retries and parking; `nil` for none. The worker declares its queues before each subscription.
        /// Default `nil`.
        public var retry: RetryTopology?
        /// Which failures are worth retrying. Default: by ``ClassifiedError``, else retry.
        public var classifier: FailureClassifier
        /// Suppresses duplicate deliveries; `nil` for none. Default `nil`.
        public var deduplicator: Deduplicator?
        /// How long one handler may run. Past it the handler is cancelled and its attempt fails with a retryable
        /// ``RabbitMQError/Code/timeout`` (through ``classifier``): the message goes to its retry tier, or back
        /// to the queue without ``retry``. The broker closes the channel of a consumer that keeps a delivery
        /// unacknowledged longer than its `consumer_timeout` (30 minutes by default), which ends every other
        /// handler's chance to ack: keep this well below it. The delivery is settled at the timeout even if the
        /// handler ignores the cancellation; such a handler runs on unobserved, no longer counted in
        /// ``concurrency``, and what it returns is ignored. Default 5 minutes.
        public var handlerTimeout: Duration
        /// How the worker subscribes again after losing its consumer, or after a failed subscription: the wait
        /// before attempt *n* (counted since the worker last consumed for at least `maxDelay`), and when to give
        /// up (`maxAttempts`, then ``QueueWorker/run()`` throws the last error). With `isEnabled` false the first
        /// loss ends ``QueueWorker/run()``. Default: ``RabbitMQClient/Configuration/Recovery``'s defaults, 100 ms
        /// doubling up to 10 s, 20% jitter, never giving up.
        public var recovery: RabbitMQClient.Configuration.Recovery
        /// The exchanges, queues and bindings the worker owns, declared (with ``retry``'s queues) before each
        /// subscription, so that its queue and bindings come back if they are deleted. Default `nil`: nothing
        /// beyond ``retry``'s queues.
        public var topology: Topology?
        /// Where to start reading when ``queue`` is a stream queue; `nil` for other queues. The worker then tracks
        /// the offset of the last delivery it handed to a handler, and every later subscription (after recovery,
        /// or after losing its consumer) starts from the one after it. To resume after a restart, store
        /// ``Delivery/streamOffset`` once a handler is done and start with ``StreamOffset/after(_:)``. Default `nil`.
        public var streamOffset: StreamOffset?
        /// Per-key ordering: deliveries with the same key run one at a time, in delivery order; different keys run
        /// side by side up to ``concurrency``. See ``KeyOrdering`` for what survives retries. Default `nil`: no
        /// ordering.
        public var ordering: KeyOrdering?

        /// Creates settings; every argument but the queue has its documented default.
        public init(queue: String, prefetch: UInt16 = 50, concurrency: Int = 8, drainTimeout: Duration = .seconds(30),
                    retry: RetryTopology? = nil, classifier: FailureClassifier = FailureClassifier(),
                    deduplicator: Deduplicator? = nil, handlerTimeout: Duration = .seconds(300),
                    recovery: RabbitMQClient.Configuration.Recovery = .init(), topology: Topology? = nil,
                    streamOffset: StreamOffset? = nil, ordering: KeyOrdering? = nil) {
            self.queue = queue
            self.prefetch = prefetch
            self.concurrency = concurrency
            self.drainTimeout = drainTimeout
            self.retry = retry
            self.classifier = classifier
            self.deduplicator = deduplicator
            self.handlerTimeout = handlerTimeout
            self.recovery = recovery
            self.topology = topology
            self.streamOffset = streamOffset
            self.ordering = ordering
        }

        /// What the worker declares before each subscription: ``retry``'s queues, then ``topology``.
        var ownedTopology: Topology {
            (retry?.topology ?? Topology()).merging(topology ?? Topology())
        }

        func validate() throws {
            try retry?.policy.validate()
            guard concurrency >= 1, prefetch >= 1 else {
                throw RabbitMQError(.invalidArgument, "concurrency and prefetch must be at least 1")
            }
            guard handlerTimeout > .zero else {
                throw RabbitMQError(.invalidArgument, "the handler timeout must be positive")
            }
            try ownedTopology.validate()
            try streamOffset?.validate(operation: "basic.consume")
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
        /// It failed and was requeued: without a retry topology, or because moving it to its retry queue failed.
        case requeued
        /// It failed and was rejected (no retry topology).
        case rejected
        /// It was a duplicate and was acked without running the handler.
        case duplicate
    }

    /// What the worker is doing while it runs, for ``stop()`` to interrupt.
    enum Activity {
        /// Opening a channel, declaring, starting the consumer.
        case subscribing
        /// Consuming.
        case consuming(ConsumerCore)
        /// Waiting before subscribing again.
        case pausing(Task<Void, Never>)
    }

    private enum RunState {
        case idle
        case running(Activity)
        case stopping
        case finished
    }

    /// The worker's settings.
    public let configuration: Configuration
    let client: RabbitMQClient
    let handler: Handler
    let logger: Logger
    let observability: Observability
    let broadcaster = EventBroadcaster<Event>()
    private let state = StateLock<RunState>(.idle)
    private let counters = StateLock<[Outcome: Int]>([:])
    /// Failed deliveries in a row that could not be moved to a retry queue or the parking lot.
    let failedMoves = Atomic<Int>(0)
    /// Where the worker is in its stream queue, kept across its subscriptions; `nil` for other queues.
    let streamCursor: StreamCursor?

    /// Creates a worker; it starts consuming when ``run()`` is called.
    public init(client: RabbitMQClient, configuration: Configuration, handler: @escaping Handler) {
        self.client = client
        self.configuration = configuration
        self.handler = handler
        streamCursor = configuration.streamOffset.map(StreamCursor.init(initial:))
        var logger = client.logger
        logger[metadataKey: LogMetadataKey.queue] = "\(configuration.queue)"
        self.logger = logger
        // Until the client hands its own Observability to workers: one from the same configuration.
        observability = client.manager.observability
    }

    /// How many deliveries ended in each outcome so far.
    public var outcomes: [Outcome: Int] { counters.withLock { $0 } }

    /// A stream of what happens to the worker's consumer: consuming, lost, resubscribing, handler timeouts, and
    /// finally ``Event/stopped(_:)``, after which the stream ends. Each call makes a new stream, which keeps the
    /// latest 100 events if not read.
    public func events() -> AsyncStream<Event> {
        broadcaster.subscribe()
    }

    /// Consumes until ``stop()``, a graceful shutdown or the task's cancellation, then drains; subscribes again
    /// on its own after losing its consumer. May be called once.
    /// - Throws: ``RabbitMQError`` that retrying cannot fix (access refused, the client closed, an invalid
    ///   configuration, a missing queue at the start), or the last one once ``Configuration/recovery`` gives up;
    ///   `CancellationError` when its task is cancelled.
    public func run() async throws {
        do {
            try configuration.validate()
        } catch {
            finishEvents(error)
            throw error
        }
        let start = state.withLock { state -> Bool? in
            switch state {
            case .idle:
                state = .running(.subscribing)
                return true
            case .stopping:
                return false  // stopped before it ran: nothing to do
            case .running, .finished:
                return nil
            }
        }
        guard let start else { throw RabbitMQError(.invalidArgument, "a QueueWorker runs once") }
        guard start else {
            state.withLock { $0 = .finished }
            finishEvents(nil)
            return
        }
        var failure: (any Error)?
        do {
            try await withGracefulShutdownHandler {
                try await supervise()
            } onGracefulShutdown: {
                self.stop()
            }
        } catch {
            failure = error
        }
        state.withLock { $0 = .finished }
        logger.info("worker stopped", metadata: ["outcomes": "\(outcomes)"])
        finishEvents(failure)
        if let failure { throw failure }
    }

    /// Stops taking deliveries; ``run()`` returns once running handlers have finished.
    public func stop() {
        let activity = state.withLock { state -> Activity? in
            switch state {
            case .running(let activity):
                state = .stopping
                return activity
            case .idle:
                state = .stopping
                return nil
            case .stopping, .finished:
                return nil
            }
        }
        switch activity {
        case .consuming(let consumer): consumer.stopDeliveries()
        case .pausing(let pause): pause.cancel()
        case .subscribing, nil: break
        }
    }

    /// Records what the worker does now; `false` (and nothing recorded) once it is stopping.
    func enter(_ activity: Activity) -> Bool {
        state.withLock { state in
            guard case .running = state else { return false }
            state = .running(activity)
            return true
        }
    }

    /// Whether ``stop()`` has been called (or a graceful shutdown started).
    var isStopping: Bool {
        state.withLock { if case .running = $0 { false } else { true } }
    }

    /// Counts an outcome.
    func count(_ outcome: Outcome) {
        counters.withLock { $0[outcome, default: 0] += 1 }
    }

    private func finishEvents(_ failure: (any Error)?) {
        broadcaster.emit(.stopped(failure as? RabbitMQError))
        broadcaster.finish()
    }
}
