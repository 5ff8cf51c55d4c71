import Foundation
import Logging
import Synchronization

/// Owns the client's connection over time: connects on demand, notices when the connection ends, and
/// recovers it (reconnect with backoff, topology, channels, consumers) when recovery is on.
final class ConnectionManager: Sendable {
    private enum State {
        case idle
        case connecting(Attempt)
        case connected(ConnectionEngine)
        case recovering(Attempt)
        case closed
    }

    /// A first connection or a recovery under way: the task doing it, and its outcome, which callers wait for
    /// each until their own deadline (never for the task, which may sleep between attempts for a long time).
    private struct Attempt {
        let task: Task<ConnectionEngine, any Error>
        let result: SharedResult<ConnectionEngine>

        init(_ work: @escaping @Sendable () async throws -> ConnectionEngine) {
            let result = SharedResult<ConnectionEngine>()
            self.result = result
            task = Task {
                do {
                    let engine = try await work()
                    result.complete(.success(engine))
                    return engine
                } catch {
                    result.complete(.failure(error))
                    throw error
                }
            }
        }
    }

    /// What a caller of ``engine(until:operation:)`` gets: the live connection, or an attempt to wait for.
    private enum Availability {
        case now(ConnectionEngine)
        case later(Attempt)
    }

    private struct WeakChannel {
        weak var channel: Channel?
    }

    let configuration: RabbitMQClient.Configuration
    let logger: Logger
    let recorder = TopologyRecorder()
    /// The exchanges known to exist on the broker, for ``RabbitMQClient``'s publishes.
    let exchanges = KnownExchanges()
    /// Metrics, tracing and logging of the client, shared by its channels across reconnections.
    let observability: Observability
    /// Times the pauses between recovery attempts, and the worker pauses that follow the same backoff: the continuous
    /// clock, or a test clock in unit tests. An existential is enough: it is read once per pause, never per message.
    let clock: any Clock<Duration>
    private let state = StateLock<State>(.idle)
    private let channels = StateLock<[WeakChannel]>([])
    private let subscribers = StateLock<[UInt64: AsyncStream<ConnectionEvent>.Continuation]>([:])
    private let nextSubscriber = Atomic<UInt64>(0)

    init(configuration: RabbitMQClient.Configuration, logger: Logger, clock: any Clock<Duration>) {
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
        observability = Observability(configuration.observability, logger: logger)
    }

    // MARK: Connection

    /// The live connection: connecting, or waiting for recovery, until `deadline` at the latest, whatever the
    /// connection attempt or the recovery is doing then.
    nonisolated(nonsending) func engine(until deadline: ContinuousClock.Instant, operation: String = "connect")
        async throws -> ConnectionEngine
    {
        let availability = try state.withLock { state throws(RabbitMQError) -> Availability in
            switch state {
            case .connected(let engine) where !engine.isClosed:
                return .now(engine)
            case .connected(let engine):
                // The connection ended and the I/O thread's notice has not arrived yet.
                return .later(startRecoveryOrReconnect(&state, after: engine.closedError))
            case .connecting(let attempt), .recovering(let attempt):
                return .later(attempt)
            case .idle:
                let attempt = Attempt { try await self.connectFirstTime() }
                state = .connecting(attempt)
                return .later(attempt)
            case .closed:
                throw RabbitMQError(.clientClosed, "the client is closed", operation: operation)
            }
        }
        switch availability {
        case .now(let engine):
            return engine
        case .later(let attempt):
            return try await attempt.result.value(until: deadline, operation: operation, awaited: "the connection")
        }
    }

    /// Whether a channel closed with `error` will be brought back by recovery.
    func willRecover(from error: RabbitMQError?) -> Bool {
        guard configuration.recovery.isEnabled, let error else { return false }
        guard [.connectionLost, .connectionClosed, .protocolError].contains(error.code) else { return false }
        return state.withLock { if case .closed = $0 { false } else { true } }
    }

    /// Closes the connection and stops any recovery; returns the engine that was open, if any.
    func close() async {
        let (engine, task) = state.withLock { state -> (ConnectionEngine?, Task<ConnectionEngine, any Error>?) in
            defer { state = .closed }
            switch state {
            case .connected(let engine): return (engine, nil)
            case .connecting(let attempt), .recovering(let attempt): return (nil, attempt.task)
            case .idle, .closed: return (nil, nil)
            }
        }
        task?.cancel()
        var engineToClose = engine
        if engineToClose == nil, let task { engineToClose = try? await task.value }
        await engineToClose?.close()
        let error = RabbitMQError(.clientClosed, "the client is closed")
        for channel in liveChannels() { channel.failConsumers(error) }
        emit(.closed)
        // Finish outside the lock: a stream's onTermination handler takes the lock to unsubscribe.
        let continuations = subscribers.withLock { subscribers in
            defer { subscribers.removeAll() }
            return Array(subscribers.values)
        }
        for continuation in continuations { continuation.finish() }
    }

    private func connectFirstTime() async throws -> ConnectionEngine {
        do {
            let engine = try await connectToFirstReachable()
            state.withLock { state in
                if case .connecting = state { state = .connected(engine) }
            }
            return engine
        } catch {
            state.withLock { state in
                if case .connecting = state { state = .idle }
            }
            throw error
        }
    }

    private func connectToFirstReachable() async throws -> ConnectionEngine {
        guard !configuration.endpoints.isEmpty else {
            throw RabbitMQError(.invalidArgument, "the configuration lists no endpoint")
        }
        var lastError: RabbitMQError?
        for endpoint in configuration.endpoints {
            do {
                let engine = try await ConnectionEngine.connect(
                    ConnectionParameters(configuration, endpoint: endpoint), logger: logger,
                    makeLink: { [observability] number, window, commands in
                        ChannelLink(number: number, commands: commands, windowCapacity: window,
                                    observability: observability)
                    }) {
                    [weak self] event, engine in self?.handle(event, from: engine)
                }
                emit(.connected(endpoint: endpoint.description))
                return engine
            } catch let error as RabbitMQError where error.isRetryable && configuration.endpoints.count > 1 {
                logger.warning("cannot connect", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
                lastError = error
            }
        }
        throw lastError ?? RabbitMQError(.connectionLost, "no endpoint could be reached")
    }

    // MARK: Recovery

    /// Called on a connection's I/O thread.
    private func handle(_ event: EngineEvent, from engine: ObjectIdentifier) {
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
    private func startRecoveryOrReconnect(_ state: inout State, after error: RabbitMQError?) -> Attempt {
        let error = error ?? RabbitMQError(.connectionLost, "the connection ended")
        emit(.connectionLost(error))
        guard configuration.recovery.isEnabled else {
            for channel in liveChannels() { channel.failConsumers(error) }
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
        let channel = Channel(link: link, engine: engine, manager: self)
        try await recorder.redeclare(on: channel)
        try await channel.close()
        for channel in liveChannels() {
            do {
                _ = try await channel.reattach(to: engine)
            } catch let error as RabbitMQError where !error.isRetryable {
                // This channel cannot come back (its queue is gone, say): end its consumers, keep the others.
                logger.warning("a channel could not be recovered", metadata: ["error": "\(error)"])
                channel.failConsumers(error)
            }
        }
    }

    private func giveUp(_ error: RabbitMQError) throws -> ConnectionEngine {
        logger.error("recovery failed", metadata: ["error": "\(error)"])
        state.withLock { state in
            if case .recovering = state { state = .idle }
        }
        for channel in liveChannels() { channel.failConsumers(error) }
        emit(.recoveryFailed(error))
        throw error
    }

    // MARK: Channels

    /// Keeps `channel` for recovery.
    func register(_ channel: Channel) {
        guard configuration.recovery.isEnabled else { return }
        channel.link.isRecoverable = true
        channels.withLock { channels in
            channels.removeAll { $0.channel == nil }
            channels.append(WeakChannel(channel: channel))
        }
    }

    private func liveChannels() -> [Channel] {
        channels.withLock { channels in channels.compactMap(\.channel) }
    }

    // MARK: Events

    func events() -> AsyncStream<ConnectionEvent> {
        let (stream, continuation) = AsyncStream<ConnectionEvent>.makeStream(bufferingPolicy: .bufferingNewest(100))
        let id = nextSubscriber.add(1, ordering: .relaxed).newValue
        let closed = state.withLock { if case .closed = $0 { true } else { false } }
        if closed {
            continuation.finish()
            return stream
        }
        subscribers.withLock { $0[id] = continuation }
        continuation.onTermination = { [weak self] _ in
            _ = self?.subscribers.withLock { $0.removeValue(forKey: id) }
        }
        return stream
    }

    private func emit(_ event: ConnectionEvent) {
        let continuations = subscribers.withLock { Array($0.values) }
        for continuation in continuations { continuation.yield(event) }
    }
}
