import Logging
import Synchronization

/// Recovery: noticing that the connection ended, reconnecting with backoff, declaring the recorded topology again
/// and re-opening the application's channels (``RecoverableChannel``).
extension ConnectionManager {
    /// Called on a connection's I/O thread.
    func handle(_ event: EngineEvent, from engine: ObjectIdentifier) {
        switch event {
        case .blocked(let reason):
            emit(.blocked(reason: reason))
        case .unblocked:
            emit(.unblocked)
        case .terminated(let error):
            guard error.code != .clientClosed else { return }
            state.withLock { state in
                // The I/O thread names its connection by its command queue.
                guard case .connected(let current) = state, ObjectIdentifier(current.commands) == engine else {
                    return
                }
                _ = startRecoveryOrReconnect(&state, after: error)
            }
        }
    }

    /// Leaves the `connected` state of a connection that ended. Called with the state locked, by whichever
    /// notices first (the I/O thread's notice, or a caller finding the engine closed), so once per connection:
    /// the `connectionLost` event is emitted here, before any `reconnecting`.
    func startRecoveryOrReconnect(_ state: inout State, after error: RabbitMQError?) -> Attempt {
        let error = error ?? RabbitMQError(.connectionLost, "the connection ended")
        emit(.connectionLost(error))
        guard configuration.recovery.isEnabled else {
            for recoverable in liveChannels() { recoverable.channel?.failConsumers(error) }
            let attempt = Attempt { try await self.connectFirstTime() }
            state = .connecting(attempt)
            return attempt
        }
        logger.warning("connection lost; recovering", metadata: ["error": "\(error)"])
        let attempt = Attempt { try await self.recover(after: error) }
        state = .recovering(attempt)
        return attempt
    }

    private func recover(after error: RabbitMQError) async throws -> ConnectionEngine {
        let recovery = configuration.recovery
        var attempt = 0
        var lastError = error
        while true {
            attempt += 1
            if let maxAttempts = recovery.maxAttempts, attempt > maxAttempts {
                return try giveUp(RabbitMQError(.connectionLost, "recovery gave up after \(maxAttempts) attempts; "
                                                    + "last error: \(lastError.message)"))
            }
            let delay = recovery.delay(beforeAttempt: attempt)
            emit(.reconnecting(attempt: attempt, delay: delay))
            do {
                try await clock.sleep(for: delay)
            } catch {
                throw RabbitMQError(.clientClosed, "the client was closed during recovery")
            }
            do {
                let engine = try await connectToFirstReachable()
                try await restore(on: engine)
                let stillRecovering = state.withLock { state -> Bool in
                    guard case .recovering = state else { return false }
                    state = .connected(engine)
                    return true
                }
                guard stillRecovering else {
                    await engine.close()
                    throw RabbitMQError(.clientClosed, "the client was closed during recovery")
                }
                logger.info("connection recovered", metadata: ["endpoint": "\(engine.negotiated.endpoint)",
                                                               "attempts": "\(attempt)"])
                observability.recordRecovery()
                emit(.recovered(endpoint: engine.negotiated.endpoint.description))
                return engine
            } catch let failure as RabbitMQError where failure.isRetryable {
                logger.warning("recovery attempt failed", metadata: ["attempt": "\(attempt)", "error": "\(failure)"])
                lastError = failure
            } catch let failure as RabbitMQError {
                return try giveUp(failure)
            }
        }
    }

    /// Declares the recorded topology again and re-opens every channel the application still uses.
    private func restore(on engine: ConnectionEngine) async throws {
        // The broker may have lost exchanges while the connection was down; the recorded ones are declared again.
        exchanges.removeAll()
        let link = try await engine.openChannel(window: 1)
        let channel = Channel(link: link, engine: engine, windowCapacity: 1, host: self)
        try await recorder.redeclare(on: channel)
        try await channel.close()
        for recoverable in liveChannels() {
            do {
                _ = try await recoverable.reattach(to: engine, renamed: recorder.renamed)
            } catch let error as RabbitMQError where !error.isRetryable {
                // This channel cannot come back (its queue is gone, say): end its consumers, keep the others.
                logger.warning("a channel could not be recovered", metadata: ["error": "\(error)"])
                recoverable.channel?.failConsumers(error)
            }
        }
    }

    private func giveUp(_ error: RabbitMQError) throws -> ConnectionEngine {
        logger.error("recovery failed", metadata: ["error": "\(error)"])
        state.withLock { state in
            if case .recovering = state { state = .idle }
        }
        for recoverable in liveChannels() { recoverable.channel?.failConsumers(error) }
        emit(.recoveryFailed(error))
        throw error
    }
}
