import CoreMetrics
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// Publishes the events of an outbox (``OutboxStore``) with publisher confirms, and marks them sent.
///
/// ```swift
/// let relay = OutboxRelay(client: client, store: outbox, wakeup: outbox.wakeup)
/// let services = ServiceGroup(services: [client, relay, ...], gracefulShutdownSignals: [.sigterm], logger: logger)
/// ```
/// The application writes its rows and their events in one database transaction and returns; the relay does the
/// publishing, so no event is lost when the broker is down or the process dies between the write and the publish.
///
/// **Order.** Events with the same ``OutboxEvent/aggregateKey`` are published one at a time, in the order they
/// were written: an event is published only once the previous one of its key is confirmed. Events of different
/// keys (and events without one) are published concurrently, up to ``Configuration/batchSize`` at once.
///
/// **Outages.** A publish that fails (broker down, connection lost, nacked, timed out) leaves its event pending,
/// and the later events of its key wait behind it; other keys carry on. The relay counts the attempt
/// (``OutboxStore/markFailed(_:reason:)``), waits with backoff (``Configuration/retry``) and tries again, for as
/// long as it runs. Nothing is held in memory: a relay that restarts finds the pending events in the store.
///
/// **Duplicates.** Delivery is at least once: an event confirmed but not yet marked sent when the process dies, or
/// whose confirm was lost with the connection, is published again. The copy carries the same message id, so a
/// consumer with a ``Deduplicator`` keyed by message id drops it, and it keeps its place in its key's order.
///
/// Run one relay per outbox: two relays on one table would publish its events twice and out of order.
public final class OutboxRelay: Service, Sendable {
    /// The relay's settings. Every default is stated on its property.
    public struct Configuration: Sendable {
        /// The most events fetched, and published concurrently, at once. Default 256.
        public var batchSize: Int
        /// How long the relay waits for a ``OutboxWakeup/nudge()`` before looking for new events when the outbox is
        /// empty: the delay for events written by other processes. Default 1 s.
        public var pollInterval: Duration
        /// The waits between failed rounds (`maxAttempts` is ignored: the relay never gives up). Default 100 ms
        /// doubling up to 5 s, 20% jitter.
        public var retry: RabbitMQClient.Configuration.Recovery

        /// Creates settings; every argument has its documented default.
        public init(batchSize: Int = 256, pollInterval: Duration = .seconds(1),
                    retry: RabbitMQClient.Configuration.Recovery = .init(maxDelay: .seconds(5))) {
            self.batchSize = batchSize
            self.pollInterval = pollInterval
            self.retry = retry
        }

        func validate() throws {
            guard batchSize >= 1, pollInterval > .zero else {
                throw RabbitMQError(.invalidArgument, "the batch size and the poll interval must be positive")
            }
        }
    }

    /// What the relay has done so far.
    public struct Statistics: Sendable, Hashable {
        /// Events published, confirmed and marked sent.
        public var published = 0
        /// Publishes that failed; their events stayed pending.
        public var failedPublishes = 0
        /// Rounds that failed (a publish or the store) and were followed by a pause.
        public var failedRounds = 0
    }

    /// Publishes one event and returns once it is confirmed.
    typealias Publish = @Sendable (OutboxEvent) async throws -> Void

    private enum RunState {
        case idle
        case running
        case finished
    }

    /// The relay's settings.
    public let configuration: Configuration
    /// The wakeup the relay waits on while the outbox is empty.
    public let wakeup: OutboxWakeup
    let store: any OutboxStore
    let publish: Publish
    let clock: any Clock<Duration>
    let logger: Logger
    let broadcaster = EventBroadcaster<Event>()
    let stopSignal = Signal(latches: true)
    private let state = StateLock(RunState.idle)
    let counters = StateLock(Statistics())
    let publishedCounter: Counter?
    let failureCounter: Counter?

    /// Creates a relay that publishes the events of `store` through `client` (on its confirmed channel).
    /// - Parameters:
    ///   - client: the client to publish with.
    ///   - store: the outbox.
    ///   - wakeup: what writers nudge after a commit; pass the outbox's own (the SQLite and PostgreSQL outboxes
    ///     have one).
    ///   - configuration: the relay's settings.
    public convenience init(client: RabbitMQClient, store: any OutboxStore, wakeup: OutboxWakeup = OutboxWakeup(),
                            configuration: Configuration = Configuration()) {
        let factory = client.manager.observability.factory
        self.init(store: store, wakeup: wakeup, configuration: configuration, clock: client.manager.clock,
                  logger: client.logger, metricsFactory: factory) { event in
            try await client.publish(event.body, to: event.exchange, routingKey: event.routingKey,
                                     properties: event.properties)
        }
    }

    /// Creates a relay publishing with `publish`: in unit tests, a fake publisher and a test clock.
    init(store: any OutboxStore, wakeup: OutboxWakeup, configuration: Configuration, clock: any Clock<Duration>,
         logger: Logger, metricsFactory: (any MetricsFactory)?, publish: @escaping Publish) {
        self.store = store
        self.wakeup = wakeup
        self.configuration = configuration
        self.clock = clock
        self.logger = logger
        self.publish = publish
        publishedCounter = metricsFactory.map {
            Counter(label: "rabbitmq.outbox.published", dimensions: [], factory: $0)
        }
        failureCounter = metricsFactory.map { Counter(label: "rabbitmq.outbox.failures", dimensions: [], factory: $0) }
    }

    /// What the relay has done so far.
    public var statistics: Statistics { counters.withLock { $0 } }

    /// A stream of what the relay does: batches published, failures, pauses, and finally ``Event/stopped(_:)``,
    /// after which the stream ends. Each call makes a new stream, which keeps the latest 100 events if not read.
    public func events() -> AsyncStream<Event> {
        broadcaster.subscribe()
    }

    /// Publishes pending events until ``stop()``, a graceful shutdown or the task's cancellation; the batch under
    /// way is finished first (each publish within the client's confirm timeout). May be called once.
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` for invalid settings or a second call;
    ///   `CancellationError` when its task is cancelled.
    public func run() async throws {
        let first = state.withLock { state -> Bool in
            guard case .idle = state else { return false }
            state = .running
            return true
        }
        guard first else { throw RabbitMQError(.invalidArgument, "an outbox relay runs once") }
        do {
            try configuration.validate()
        } catch {
            finish(error as? RabbitMQError)
            throw error
        }
        await withGracefulShutdownHandler {
            await relay()
        } onGracefulShutdown: {
            self.stop()
        }
        finish(nil)
        try Task.checkCancellation()
    }

    /// Stops the relay: it finishes the batch under way, then ``run()`` returns. Pending events stay in the
    /// outbox for the next relay.
    public func stop() {
        stopSignal.fire()
    }

    private func finish(_ error: RabbitMQError?) {
        state.withLock { $0 = .finished }
        broadcaster.emit(.stopped(error))
        broadcaster.finish()
    }

    /// Whether the relay should go on.
    var isRunning: Bool { !stopSignal.isFired && !Task.isCancelled }

    /// Waits before round `failures + 1`, unless the relay is stopped meanwhile.
    func pause(afterFailures failures: Int) async {
        let delay = configuration.retry.delay(beforeAttempt: failures)
        counters.withLock { $0.failedRounds += 1 }
        broadcaster.emit(.retrying(attempt: failures + 1, delay: delay))
        await clock.sleep(for: delay, interruptedBy: [stopSignal])
    }

    /// Waits for a nudge, the poll interval, or a stop.
    func waitForEvents() async {
        await clock.sleep(for: configuration.pollInterval, interruptedBy: [wakeup.signal, stopSignal])
    }
}
