import Foundation
import Logging
import RabbitMQ
import Synchronization

/// One of the pipeline's workers (coupon issuer, notification sender, recommendation-cache updater): builds
/// its ``QueueWorker`` and can stop and start it again, keeping its counts across restarts.
///
/// The handler decodes the order, parks it at once if it is invalid (``NonRetryableError``), calls the
/// simulated downstream (which may time out: ``RetryableError``, retried with backoff), then records the side
/// effect in SQLite. Duplicates are suppressed by order id with a ``Deduplicator`` on a SQLite store, durable and
/// shared with the worker's other processes; the effect and the record of the order id commit together, and the
/// table's unique constraint is the last guard.
final class PipelineWorker: Sendable {
    /// Counts of one worker, across its restarts.
    struct Counts: Sendable, Hashable {
        /// Orders whose side effect this worker recorded.
        var processed = 0
        /// Failed attempts sent to a retry tier.
        var retried = 0
        /// Deliveries parked.
        var parked = 0
        /// Duplicates acked without processing: by the deduplicator, or in the side effect's transaction.
        var duplicates = 0
        /// Of ``duplicates``, those that got past the deduplicator's claim and were caught by the transaction.
        var caughtByDatabase = 0

        /// Deliveries finished for good (not waiting for a retry).
        var settled: Int { processed + parked + duplicates }
        // `processed` counts side effects recorded, not acks: if an ack fails after the handler succeeded, the
        // broker redelivers the message and the redelivery counts as a duplicate.
    }

    private struct RunningWorker {
        var worker: QueueWorker
        var task: Task<Void, any Error>
    }

    /// Which worker this is.
    let kind: WorkerKind
    /// Its queue, retry tiers and parking lot.
    let retry: RetryTopology
    private let client: RabbitMQClient
    private let store: SideEffectStore
    private let downstream: SimulatedDownstream
    private let deduplicator: Deduplicator
    private let logger: Logger
    private let running = Mutex<RunningWorker?>(nil)
    private let finished = Mutex<[QueueWorker.Outcome: Int]>([:])
    private let recorded = Atomic<Int>(0)
    private let databaseDuplicates = Atomic<Int>(0)
    private let lastFailure = Mutex<(any Error)?>(nil)

    /// Creates the worker; ``start()`` starts consuming.
    init(kind: WorkerKind, topology: PipelineTopology, client: RabbitMQClient, store: SideEffectStore,
         timeoutRate: Double, logger: Logger) {
        self.kind = kind
        self.retry = topology.retry(kind)
        self.client = client
        self.store = store
        self.downstream = SimulatedDownstream(kind: kind, timeoutRate: timeoutRate)
        // Keyed by the business id, decoded from the body: a re-sent order is a duplicate whatever its
        // message id. One table per worker in the database, kept across restarts and shared between processes.
        self.deduplicator = Deduplicator(store: store.deduplication(kind)) { delivery in
            try? OrderPlaced.decode(delivery.body).orderID
        }
        var logger = logger
        logger[metadataKey: "worker"] = "\(kind.rawValue)"
        self.logger = logger
    }

    /// A new ``QueueWorker`` for this worker's queue; run it yourself (the `worker` subcommand adds it to a
    /// `ServiceGroup`) or use ``start()``.
    func makeQueueWorker() -> QueueWorker {
        let profile = kind.profile
        let configuration = QueueWorker.Configuration(
            queue: retry.queueName,
            prefetch: profile.prefetch,
            concurrency: profile.concurrency,
            drainTimeout: .seconds(10),
            retry: retry,
            classifier: FailureClassifier { error in error is DecodingError ? .park : nil },
            deduplicator: deduplicator)
        return QueueWorker(client: client, configuration: configuration) { [self] delivery in
            try await handle(delivery)
        }
    }

    private func handle(_ delivery: Delivery) async throws {
        let order = try OrderPlaced.decode(delivery.body)
        if let reason = order.validationError {
            throw NonRetryableError("invalid order \(order.orderID): \(reason)")
        }
        try await downstream.call(for: order, attempt: RetryTopology.attempts(of: delivery) + 1)
        if try await store.recordSideEffect(kind, for: order) {
            recorded.add(1, ordering: .relaxed)
        } else {
            databaseDuplicates.add(1, ordering: .relaxed)
            logger.debug("duplicate caught by the database", metadata: ["order_id": "\(order.orderID)"])
        }
    }

    /// Starts consuming (again, after ``stop()``). Does nothing if it is running.
    func start() {
        running.withLock { running in
            guard running == nil else { return }
            let worker = makeQueueWorker()
            let task = Task { [self] in
                do {
                    try await worker.run()
                } catch {
                    logger.error("worker failed", metadata: ["error": "\(error)"])
                    lastFailure.withLock { $0 = error }
                    throw error
                }
            }
            running = RunningWorker(worker: worker, task: task)
        }
    }

    /// Stops consuming: running handlers finish, buffered deliveries return to the queue.
    /// - Throws: the worker's failure, if it failed rather than stopped.
    func stop() async throws {
        guard let current = running.withLock({ $0 }) else { return }
        current.worker.stop()
        let result = await current.task.result
        running.withLock { running in
            running = nil
            finished.withLock { finished in
                finished.merge(current.worker.outcomes, uniquingKeysWith: +)
            }
        }
        try result.get()
    }

    /// Whether it is consuming.
    var isRunning: Bool { running.withLock { $0 != nil } }

    /// The failure of a worker that ended on its own (a lost connection, a deleted queue), if any.
    var failure: (any Error)? { lastFailure.withLock { $0 } }

    /// Counts so far, over every run.
    var counts: Counts {
        var outcomes = finished.withLock { $0 }
        if let current = running.withLock({ $0?.worker }) {
            outcomes.merge(current.outcomes, uniquingKeysWith: +)
        }
        let caught = databaseDuplicates.load(ordering: .relaxed)
        return Counts(processed: recorded.load(ordering: .relaxed),
                      retried: outcomes[.retried, default: 0],
                      parked: outcomes[.parked, default: 0],
                      duplicates: outcomes[.duplicate, default: 0] + caught,
                      caughtByDatabase: caught)
    }
}
