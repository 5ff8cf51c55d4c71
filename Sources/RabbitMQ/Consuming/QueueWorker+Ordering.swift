import Synchronization

/// Per-key ordering for a ``QueueWorker`` (``QueueWorker/Configuration/ordering``): deliveries with the same key (an
/// order id, say) run one at a time, in delivery order; deliveries with different keys run side by side, up to
/// ``QueueWorker/Configuration/concurrency``.
///
/// ```swift
/// let ordering = KeyOrdering { $0.properties.headers["order-id"]?.stringValue }
/// let worker = QueueWorker(client: client, configuration: .init(queue: "orders.ledger", retry: retry,
///                                                               ordering: ordering)) { delivery in ... }
/// ```
/// A delivery waiting for an earlier one of its key does not hold a handler slot: other keys' deliveries run
/// meanwhile, and it starts in the earlier one's slot once that one is settled. A delivery whose key is `nil` is not
/// ordered. Deliveries waiting for their key count against ``QueueWorker/Configuration/prefetch``: with many
/// deliveries of a few keys in flight, raise the prefetch so that enough keys are within reach.
///
/// What survives a failure:
/// - **In-process retries keep the order** (the default, ``retriesMayOvertake`` `false`). A retryable failure of
///   a delivery with a key is tried again by the worker itself, after the delay and within the attempt limit of
///   ``QueueWorker/Configuration/retry``'s policy, while the later deliveries of its key wait; its handler slot stays
///   taken during the delay. Its last attempt, or a non-retryable failure, parks it as usual.
/// - **No order survives a retry tier.** With ``retriesMayOvertake`` `true`, retries go through the retry tiers as
///   without ordering: the later deliveries of the key run while the failed one waits in its tier, and it comes back
///   after them.
/// - **Parking removes a message from the order**: the next delivery of its key runs once it is parked, and a replay
///   brings it back after whatever its key received meanwhile.
/// - Without ``QueueWorker/Configuration/retry``, a retryable failure is requeued as without ordering; the later
///   deliveries of its key already handed to the worker run before it comes back.
/// - The order is the broker's delivery order, per worker: several workers (or processes) consuming one queue each
///   order only what they get. A delivery the broker hands out again (after a lost channel, or a stop that returned
///   waiting deliveries to the queue) is ordered by its redelivery.
/// - A handler that ignores the cancellation at ``QueueWorker/Configuration/handlerTimeout`` runs on unobserved: the
///   next delivery of its key may then run beside it.
public struct KeyOrdering: Sendable {
    /// Whether a retryable failure of a delivery with a key goes through the retry tiers (`true`), so that later
    /// deliveries of its key overtake it, or is retried in process while they wait (`false`). Default `false`.
    public var retriesMayOvertake: Bool
    /// The ordering key of a delivery; `nil` for a delivery that needs no order.
    public var key: @Sendable (Delivery) -> String?

    /// Creates an ordering.
    /// - Parameters:
    ///   - retriesMayOvertake: see ``retriesMayOvertake``. Default `false`.
    ///   - key: the ordering key of a delivery; `nil` for one that needs no order.
    public init(retriesMayOvertake: Bool = false, key: @escaping @Sendable (Delivery) -> String?) {
        self.retriesMayOvertake = retriesMayOvertake
        self.key = key
    }
}

extension QueueWorker {
    /// One attempt at a delivery: what its handler, its settlement and what follows in its slot need.
    struct Job: Sendable {
        let delivery: Delivery
        let run: Run
        let subscription: WorkerSubscription
        /// Its ordering key: `nil` without ordering, or when the key function gives none.
        let key: String?
        /// Whether a retryable failure is retried in process, its key's lane blocked, rather than through a tier.
        let retriesInPlace: Bool
        /// Attempts made in process before this one.
        let earlierAttempts: Int
        /// Where this attempt leaves the backoff it asks for before an in-process retry; `nil` when failures are
        /// not retried in process (no allocation for unordered deliveries).
        let retryRequest: RetryRequest?

        init(delivery: Delivery, run: Run, subscription: WorkerSubscription, key: String?, retriesInPlace: Bool,
             earlierAttempts: Int) {
            self.delivery = delivery
            self.run = run
            self.subscription = subscription
            self.key = key
            self.retriesInPlace = retriesInPlace
            self.earlierAttempts = earlierAttempts
            retryRequest = retriesInPlace ? RetryRequest() : nil
        }

        /// The next in-process attempt at the same delivery.
        func retried() -> Job {
            Job(delivery: delivery, run: run, subscription: subscription, key: key, retriesInPlace: retriesInPlace,
                earlierAttempts: earlierAttempts + 1)
        }
    }

    /// Where an attempt leaves the backoff it wants before its delivery is tried again in process.
    final class RetryRequest: Sendable {
        private let delay = StateLock<Duration?>(nil)

        /// Asks for another attempt after `delay`.
        func request(after delay: Duration) { self.delay.withLock { $0 = delay } }
        /// The backoff asked for, if any.
        var requested: Duration? { delay.withLock { $0 } }
    }

    /// The key lanes of a worker run, shared by its subscriptions: a redelivered message waits behind a delivery of
    /// its key that an earlier subscription still runs.
    final class Lanes: Sendable {
        let state = StateLock(KeyLanes<Job>())
    }

    /// Takes a delivery from the consumer: `nil` if it waits in its key's lane, else the job to start once a handler
    /// slot is free.
    func admit(_ delivery: Delivery, _ run: Run, _ subscription: WorkerSubscription, _ lanes: Lanes) -> Job? {
        let key = configuration.ordering?.key(delivery)
        let job = Job(delivery: delivery, run: run, subscription: subscription, key: key,
                      retriesInPlace: key != nil && configuration.ordering?.retriesMayOvertake == false,
                      earlierAttempts: 0)
        guard let key else { return job }
        return lanes.state.withLock { $0.admit(job, key: key) } ? job : nil
    }

    /// Starts `job` in a slot of `pool` the caller holds.
    func start(_ job: Job, _ pool: HandlerPool<ContinuousClock>, _ lanes: Lanes) {
        job.subscription.handlerStarted()
        pool.start(handlerJob(job, pool, lanes))
    }

    private func handlerJob(_ job: Job, _ pool: HandlerPool<ContinuousClock>, _ lanes: Lanes)
        -> HandlerPool<ContinuousClock>.Job
    {
        HandlerPool.Job(
            work: { id in await self.handle(job, pool: pool, id: id) },
            onTimeout: { await self.settleTimedOut(job) },
            whenDone: {
                let next = await self.followUp(of: job, lanes)
                // Counted first: the channel of both may be the same, and must stay open for the next one.
                next?.subscription.handlerStarted()
                await job.subscription.handlerEnded()
                return next.map { self.handlerJob($0, pool, lanes) }
            })
    }

    /// What runs next in the slot of `job`, now settled (or left to its channel's close): the same delivery after
    /// its backoff if it asked for an in-process retry, else the next delivery waiting in its key's lane, if any.
    private func followUp(of job: Job, _ lanes: Lanes) async -> Job? {
        if let delay = job.retryRequest?.requested {
            // Its lane stays blocked meanwhile. Stopping cancels the wait: the channel's close requeues the delivery.
            guard !lanes.state.withLock({ $0.isClosed }),
                  (try? await client.manager.clock.sleep(for: delay)) != nil
            else { return nil }
            return job.retried()
        }
        guard let key = job.key else { return nil }
        return lanes.state.withLock { $0.next(after: key) }
    }
}
