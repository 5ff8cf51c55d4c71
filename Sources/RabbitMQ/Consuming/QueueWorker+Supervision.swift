import Logging
import Synchronization

extension QueueWorker {
    /// Subscribes, runs handlers for the deliveries, and subscribes again after losing the consumer, until
    /// stopped or an error that ends the worker; then drains: waits for running handlers, at most the drain
    /// timeout, then cancels them.
    func supervise() async throws {
        let pool = HandlerPool(limit: configuration.concurrency, timeout: configuration.handlerTimeout)
        let watch = Task { await pool.watch() }
        defer { watch.cancel() }
        let lanes = Lanes()
        let failure = await withTaskCancellationHandler {
            let failure = await consumeWhileHealthy(pool, lanes)
            // Deliveries waiting for their key are not run: the channel's close requeues them. Nor are in-process
            // retries waiting out their backoff.
            _ = lanes.state.withLock { $0.close() }
            pool.cancelFollowUps()
            await drain(pool)
            return failure
        } onCancel: {
            pool.cancelAll()
        }
        if let failure { throw failure }
    }

    /// The subscription loop: returns the error that ends the worker, or `nil` once it is stopped.
    private func consumeWhileHealthy(_ pool: HandlerPool<ContinuousClock>, _ lanes: Lanes) async -> (any Error)? {
        var attempt = 0  // since the worker last consumed for a while
        var lastError: RabbitMQError?
        var hasConsumed = false
        while !isStopping {
            if let lastError {
                guard configuration.recovery.isEnabled else { return lastError }
                if let maxAttempts = configuration.recovery.maxAttempts, attempt > maxAttempts {
                    logger.error("worker gives up subscribing", metadata: ["attempts": "\(maxAttempts)",
                                                                           LogMetadataKey.error: "\(lastError)"])
                    return lastError
                }
                guard await pause(before: attempt) else { break }
            }
            let subscription: WorkerSubscription
            do {
                subscription = try await subscribe()
            } catch {
                guard !isStopping else { break }
                guard let error = error as? RabbitMQError, !Self.endsWorker(error, hasConsumed: hasConsumed) else {
                    logger.error("worker cannot subscribe", metadata: [LogMetadataKey.error: "\(error)"])
                    return error
                }
                logger.warning("worker cannot subscribe; trying again", metadata: [LogMetadataKey.error: "\(error)"])
                broadcaster.emit(.subscribeFailed(error))
                lastError = error
                attempt += 1
                continue
            }
            hasConsumed = true
            var logger = logger
            logger[metadataKey: LogMetadataKey.channel] = "\(subscription.channel.number)"
            logger.info("worker consuming", metadata: ["concurrency": "\(configuration.concurrency)",
                                                       "prefetch": "\(configuration.prefetch)"])
            broadcaster.emit(.consuming(channel: subscription.channel.number))
            let run = Run(logger: logger, instruments: observability.queue(configuration.queue))
            let loss = await consume(subscription, run, pool, lanes)
            await subscription.consumerEnded()
            guard let loss, !isStopping else { break }
            guard let error = loss as? RabbitMQError else { return loss }  // the task was cancelled
            logger.error("worker lost its consumer; running handlers carry on, and it subscribes again",
                         metadata: [LogMetadataKey.error: "\(error)"])
            run.instruments?.recordConsumerLost()
            broadcaster.emit(.consumerLost(error))
            if Self.endsWorker(error, hasConsumed: true) { return error }
            lastError = error
            let lived = ContinuousClock.now - subscription.started
            attempt = lived >= configuration.recovery.maxDelay ? 1 : attempt + 1
        }
        // Stopped; or its task was cancelled while it waited to subscribe again.
        return Task.isCancelled && !isStopping ? CancellationError() : nil
    }

    /// Opens a channel, declares the topology the worker owns, sets the prefetch and starts the consumer.
    private func subscribe() async throws -> WorkerSubscription {
        let channel = try await client.openChannel()
        do {
            let topology = configuration.ownedTopology
            if !topology.isEmpty { try await channel.declare(topology) }
            try await channel.setPrefetch(configuration.prefetch)
            let consumer = try await channel.consume(configuration.queue, options: ConsumeOptions(), ownsChannel: false,
                                                     cursor: streamCursor)
            // Stopped meanwhile: the consumer's sequence ends at once, and its channel is closed after.
            if !enter(.consuming(consumer.core)) { consumer.core.stopDeliveries() }
            return WorkerSubscription(channel: channel, consumer: consumer)
        } catch {
            try? await channel.close()
            throw error
        }
    }

    /// Runs a handler for each delivery, at most ``Configuration/concurrency`` at once (counting those of earlier
    /// subscriptions still running), until the consumer ends; returns its error, or `nil` when it was stopped. With
    /// ``Configuration/ordering``, a delivery whose key has one running waits in its lane, without a slot.
    private func consume(_ subscription: WorkerSubscription, _ run: Run, _ pool: HandlerPool<ContinuousClock>,
                         _ lanes: Lanes) async -> (any Error)? {
        do {
            for try await delivery in subscription.consumer {
                guard let job = admit(delivery, run, subscription, lanes) else { continue }
                await pool.waitForSlot()
                start(job, pool, lanes)
            }
            return nil
        } catch {
            return error
        }
    }

    /// Waits before subscribing again; `false` when stopped or cancelled meanwhile.
    private func pause(before attempt: Int) async -> Bool {
        let delay = configuration.recovery.delay(beforeAttempt: attempt)
        broadcaster.emit(.resubscribing(attempt: attempt, delay: delay))
        let clock = client.manager.clock
        let pause = Task<Void, Never> { try? await clock.sleep(for: delay) }
        guard enter(.pausing(pause)) else {
            pause.cancel()
            return false
        }
        await withTaskCancellationHandler { await pause.value } onCancel: { pause.cancel() }
        return enter(.subscribing) && !Task.isCancelled
    }

    /// Waits for running handlers, at most the drain timeout, then cancels them: a cancelled handler's delivery is
    /// not settled, and returns to the queue when its channel closes. A handler that ignores the cancellation is let
    /// go at its handler timeout.
    private func drain(_ pool: HandlerPool<ContinuousClock>) async {
        guard await !pool.waitUntilIdle(timeout: configuration.drainTimeout) else { return }
        logger.warning("drain timeout: cancelling running handlers; their deliveries return to the queue")
        pool.cancelAll()
        _ = await pool.waitUntilIdle()
    }

    /// Whether `error` ends the worker rather than a new subscription: access refused (403), the client closed,
    /// invalid settings or credentials, and, before the worker has consumed at all, any error that is not
    /// retryable (a queue that does not exist and that the worker does not declare, a conflicting declaration).
    static func endsWorker(_ error: RabbitMQError, hasConsumed: Bool) -> Bool {
        if error.replyCode == 403 { return true }
        switch error.code {
        case .clientClosed, .invalidArgument, .invalidURL, .authenticationFailed, .vhostNotFound:
            return true
        default:
            return !hasConsumed && !error.isRetryable
        }
    }
}
