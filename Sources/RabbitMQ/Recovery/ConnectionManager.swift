import Foundation
import Logging
import Synchronization

/// Owns the client's connection over time: connects on demand, notices when the connection ends, and
/// recovers it (reconnect with backoff, topology, channels, consumers) when recovery is on.
final class ConnectionManager: Sendable {
    enum State {
        case idle
        case connecting(Attempt)
        case connected(ConnectionEngine)
        case recovering(Attempt)
        case closed
    }

    /// A first connection or a recovery under way: the task doing it, and its outcome, which callers wait for
    /// each until their own deadline (never for the task, which may sleep between attempts for a long time).
    struct Attempt {
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

    let configuration: RabbitMQClient.Configuration
    let logger: Logger
    /// The declarations recovery repeats.
    let recorder = TopologyRecorder()
    /// The exchanges known to exist on the broker, for ``RabbitMQClient``'s publishes.
    let exchanges = KnownExchanges()
    /// Metrics, tracing and logging of the client, shared by its channels across reconnections.
    let observability: Observability
    /// Times the pauses between recovery attempts, and the worker pauses that follow the same backoff: the continuous
    /// clock, or a test clock in unit tests. An existential is enough: it is read once per pause, never per message.
    let clock: any Clock<Duration>
    let state = StateLock<State>(.idle)
    private let channels = StateLock<[RecoverableChannel]>([])
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
        for recoverable in liveChannels() { recoverable.channel?.failConsumers(error) }
        emit(.closed)
        // Finish outside the lock: a stream's onTermination handler takes the lock to unsubscribe.
        let continuations = subscribers.withLock { subscribers in
            defer { subscribers.removeAll() }
            return Array(subscribers.values)
        }
        for continuation in continuations { continuation.finish() }
    }

    func connectFirstTime() async throws -> ConnectionEngine {
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

    func connectToFirstReachable() async throws -> ConnectionEngine {
        guard !configuration.endpoints.isEmpty || configuration.endpointResolver != nil else {
            throw RabbitMQError(.invalidArgument, "the configuration lists no endpoint")
        }
        var lastError: RabbitMQError?
        // Both asked once per attempt, so that every reconnect uses a refreshed secret and the endpoints of now.
        let endpoints = try await EndpointPlan.endpoints(
            configured: configuration.endpoints, resolver: configuration.endpointResolver,
            timeout: configuration.connectTimeout, shuffled: configuration.shuffleEndpoints)
        let login = try await configuration.loginCredentials()
        for endpoint in endpoints {
            do {
                let engine = try await ConnectionEngine.connect(
                    ConnectionParameters(configuration, endpoint: endpoint, login: login), logger: logger,
                    makeLink: { [observability] number, window, commands in
                        ChannelLink(number: number, commands: commands, windowCapacity: window,
                                    staleSettlements: observability)
                    }) {
                    [weak self] event, engine in self?.handle(event, from: engine)
                }
                emit(.connected(endpoint: endpoint.description))
                return engine
            } catch let error as RabbitMQError where error.isRetryable && endpoints.count > 1 {
                logger.warning("cannot connect", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
                lastError = error
            }
        }
        throw lastError ?? RabbitMQError(.connectionLost, "no endpoint could be reached")
    }

    // MARK: Channels

    /// Keeps `channel` for recovery.
    func register(_ channel: Channel) {
        guard configuration.recovery.isEnabled else { return }
        channel.link.isRecoverable = true
        channels.withLock { channels in
            channels.removeAll { $0.channel == nil }
            channels.append(RecoverableChannel(channel: channel))
        }
    }

    /// The channels recovery re-opens (those the application still holds).
    func liveChannels() -> [RecoverableChannel] {
        channels.withLock { channels in channels.filter { $0.channel != nil } }
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

    func emit(_ event: ConnectionEvent) {
        let continuations = subscribers.withLock { Array($0.values) }
        for continuation in continuations { continuation.yield(event) }
    }
}

extension ConnectionManager: ChannelHost, TopologyKeeper {
    var requestTimeout: Duration { configuration.requestTimeout }

    var confirmTimeout: Duration { configuration.confirmTimeout }

    func connection(until deadline: ContinuousClock.Instant, operation: String) async throws -> ConnectionEngine {
        try await engine(until: deadline, operation: operation)
    }
}
