import Foundation
import Logging
import Synchronization
import Tracing

extension QueueWorker {
    /// What the handling of every delivery of one subscription shares.
    struct Run: Sendable {
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

    /// Handles one delivery: deduplication, then the handler in the delivery's context (its trace continued in a
    /// consumer span, its request id), then the settlement, unless the handler timed out meanwhile (`pool` settled
    /// the delivery without it, through ``settleTimedOut(_:)``).
    func handle(_ job: Job, pool: HandlerPool<ContinuousClock>, id: UInt64) async {
        let (delivery, run) = (job.delivery, job.run)
        // Its channel closed while it waited for a free handler (the client was closed, the connection lost): the
        // broker has requeued it, so it must not run now.
        guard delivery.canBeSettled else { return }
        let key = configuration.deduplicator.flatMap { $0.key(delivery) }
        if let key, let deduplicator = configuration.deduplicator {
            do {
                switch try await deduplicator.store.claim(key, for: deduplicator.claimTTL) {
                case .claimed:
                    break
                case .processed:
                    guard pool.handlerReturned(id) else { return }
                    try delivery.ack()
                    run.instruments?.recordDeduplicated()
                    record(.duplicate, delivery, run)
                    return
                case .inProgress:
                    await deferClaimed(delivery, after: deduplicator.inProgressDelay, run, pool, id)
                    return
                }
            } catch {
                run.logger.warning("deduplication store failed; processing the delivery",
                                   metadata: [LogMetadataKey.error: "\(error)"])
            }
        }
        guard let context = observability.context(forMessageWith: delivery.properties) else {
            await process(job, key: key, span: nil, pool, id)
            return
        }
        let span = observability.startProcessSpan(delivery, queue: configuration.queue, context: context)
        await ServiceContext.withValue(span?.context ?? context) {
            await process(job, key: key, span: span, pool, id)
        }
        span?.end()
    }

    private func process(_ job: Job, key: String?, span: (any Span)?, _ pool: HandlerPool<ContinuousClock>,
                         _ id: UInt64) async {
        let (delivery, run) = (job.delivery, job.run)
        // The handler's duration is read only for metrics or debug logs.
        let started = run.timesHandlers ? ContinuousClock.now : nil
        do {
            try await handler(delivery)
        } catch {
            let duration = started.map { ContinuousClock.now - $0 }
            span?.fail(error)
            guard pool.handlerReturned(id) else { return }
            if let key { try? await configuration.deduplicator?.store.release(key) }
            // A handler cancelled by the drain timeout leaves its delivery to be requeued by the channel close.
            guard !Task.isCancelled else { return }
            await fail(job, error, duration: duration)
            return
        }
        let duration = started.map { ContinuousClock.now - $0 }
        // Past its timeout the delivery was settled as a failed attempt; what the handler did is not recorded.
        guard pool.handlerReturned(id) else { return }
        // The work is done: remember it even if the ack cannot be sent, so that the redelivery the broker makes
        // after a lost channel is recognised as a duplicate instead of being processed again.
        if let key { try? await configuration.deduplicator?.store.markProcessed(key) }
        do {
            try delivery.ack()
            record(.acked, delivery, run, duration: duration)
        } catch {
            run.logger.warning("handled a delivery but could not ack it; the broker will redeliver it",
                               metadata: [LogMetadataKey.error: "\(error)"])
        }
    }

    /// Requeues a delivery whose key another handler has claimed, after a pause: that handler may still succeed
    /// (then the redelivery is a duplicate) or fail (then it is processed). Acking it now would lose the message
    /// if the other handler fails; requeueing it at once would spin. The pause holds this handler slot.
    private func deferClaimed(_ delivery: Delivery, after pause: Duration, _ run: Run,
                              _ pool: HandlerPool<ContinuousClock>, _ id: UInt64) async {
        // Cancelled (the worker is stopping): the channel's close requeues it.
        guard (try? await client.manager.clock.sleep(for: pause)) != nil else { return }
        guard pool.handlerReturned(id) else { return }
        do {
            try delivery.nack(requeue: true)
            record(.requeued, delivery, run)
        } catch {
            run.logger.warning("cannot requeue a delivery claimed by another handler", metadata: [
                LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)", LogMetadataKey.error: "\(error)"])
        }
    }

    /// Settles the delivery of a handler that ran past ``Configuration/handlerTimeout`` (and was cancelled) as a
    /// failed attempt, with a retryable ``RabbitMQError/Code/timeout``.
    func settleTimedOut(_ job: Job) async {
        let (delivery, run) = (job.delivery, job.run)
        let error = RabbitMQError(.timeout, "the handler ran longer than the worker's handler timeout "
                                      + "(\(configuration.handlerTimeout)) and was cancelled", operation: "handler")
        run.instruments?.recordHandlerTimeout()
        broadcaster.emit(.handlerTimedOut(messageID: delivery.properties.messageID))
        run.logger.warning("handler timed out; its attempt fails as retryable", metadata: [
            LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)",
            LogMetadataKey.messageID: "\(delivery.properties.messageID ?? "")"])
        if let key = configuration.deduplicator.flatMap({ $0.key(delivery) }) {
            try? await configuration.deduplicator?.store.release(key)
        }
        // Cancelled by the drain timeout: the channel's close requeues it.
        guard !Task.isCancelled else { return }
        await fail(job, error, duration: run.timesHandlers ? configuration.handlerTimeout : nil)
    }

    private func fail(_ job: Job, _ error: any Error, duration: Duration?) async {
        let (delivery, run) = (job.delivery, job.run)
        let disposition = configuration.classifier.disposition(of: error)
        guard let retry = configuration.retry else {
            let requeue = disposition == .retry
            do {
                try delivery.nack(requeue: requeue)
                record(requeue ? .requeued : .rejected, delivery, run, duration: duration, error: error)
            } catch {
                run.logger.warning("cannot settle a failed delivery", metadata: [
                    LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)", LogMetadataKey.error: "\(error)"])
            }
            return
        }
        let attempt = RetryTopology.attempts(of: delivery) + job.earlierAttempts + 1
        if let request = job.retryRequest, disposition == .retry, attempt < retry.policy.maxAttempts {
            // A tier would let the later deliveries of its key overtake it: it is tried again here, after the same
            // delay, while they wait (see KeyOrdering).
            request.request(after: retry.policy.jittered(retry.policy.delay(afterAttempt: attempt)))
            run.instruments?.recordRetried()
            record(.retried, delivery, run, duration: duration, error: error)
            return
        }
        var properties = delivery.properties
        properties.headers[RetryTopology.attemptHeader] = .int64(Int64(attempt))
        if properties.headers[RetryTopology.firstFailureHeader] == nil {
            properties.headers[RetryTopology.firstFailureHeader] = .timestamp(Date())
        }
        // From here on it travels through the default exchange: remember how it was first routed, once.
        RetryTopology.recordOriginalRouting(of: delivery, in: &properties.headers)
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
        // Publish first, confirmed, then ack: a crash in between gives a duplicate, never a loss. Mandatory, so that
        // a deleted retry queue or parking lot fails the move instead of dropping the message.
        do {
            try await client.publish(delivery.body, to: "", routingKey: target, properties: properties,
                                     mandatory: true)
        } catch let publishError {
            await requeueAfterFailedMove(delivery, target: target, publishError, duration: duration, run)
            return
        }
        failedMoves.store(0, ordering: .relaxed)
        if outcome == .retried { run.instruments?.recordRetried() } else { run.instruments?.recordParked() }
        record(outcome, delivery, run, duration: duration, error: error)
        do {
            try delivery.ack()
        } catch {
            // Moved, but the original's channel is gone: the broker redelivers it, a duplicate of the moved copy.
            run.logger.warning("moved a failed delivery but could not ack the original", metadata: [
                LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)", LogMetadataKey.error: "\(error)"])
        }
    }

    /// Requeues a failed delivery that could not be moved to its retry queue or the parking lot, after a pause
    /// that grows with the worker's consecutive failed moves (``Configuration/recovery``'s delays): requeued at
    /// once, it would come straight back and fail the same way, thousands of times a second, for as long as the
    /// broker refuses the move (a node failing over, a full queue). Holding it also holds its handler slot, which
    /// slows the worker down while moves fail. A retry queue or parking lot found missing is declared again.
    private func requeueAfterFailedMove(_ delivery: Delivery, target: String, _ publishError: any Error,
                                        duration: Duration?, _ run: Run) async {
        let failures = failedMoves.add(1, ordering: .relaxed).newValue
        let pause = configuration.recovery.delay(beforeAttempt: failures)
        run.logger.error("cannot move a failed delivery; requeueing it after a pause", metadata: [
            LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)", "target": "\(target)", "pause": "\(pause)",
            LogMetadataKey.error: "\(publishError)"])
        if (publishError as? RabbitMQError)?.code == .unroutable {
            do {
                _ = try await client.declare(configuration.ownedTopology)
            } catch {
                run.logger.warning("cannot declare the worker's retry queues again",
                                   metadata: [LogMetadataKey.error: "\(error)"])
            }
        }
        // Cancelled (the worker is stopping): the channel's close requeues it.
        guard (try? await client.manager.clock.sleep(for: pause)) != nil else { return }
        do {
            try delivery.nack(requeue: true)
            record(.requeued, delivery, run, duration: duration, error: publishError)
        } catch {
            run.logger.warning("cannot requeue a failed delivery", metadata: [
                LogMetadataKey.deliveryTag: "\(delivery.deliveryTag)", LogMetadataKey.error: "\(error)"])
        }
    }

    /// Counts the outcome, times the handler by outcome, and logs both at debug.
    private func record(_ outcome: Outcome, _ delivery: Delivery, _ run: Run, duration: Duration? = nil,
                        error: (any Error)? = nil) {
        count(outcome)
        if let duration { run.instruments?.recordHandler(duration, outcome: outcome.rawValue) }
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
