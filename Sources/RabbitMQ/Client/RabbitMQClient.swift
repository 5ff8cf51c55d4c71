import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// A RabbitMQ client: one connection, with channels managed for you.
///
/// ```swift
/// let client = RabbitMQClient(configuration: try .init(url: "amqp://guest:guest@localhost:5673/"))
/// try await client.declare(topology)
/// try await client.publish(event, to: "orders", routingKey: "order.placed")   // returns once confirmed
/// for try await delivery in try await client.consume("orders.coupon", prefetch: 50) {
///     try delivery.ack()
/// }
/// await client.close()
/// ```
/// The client connects on first use (or ``connect()``), trying ``Configuration/endpoints`` (shuffled by default), and
/// recovers a lost connection (see ``Configuration/Recovery``). Its ``ChannelOperations`` (declarations and
/// the like) run on pooled channels, one request per channel at a time, so a channel error (404, 406) affects
/// only the call that caused it. ``publish(_:to:routingKey:properties:mandatory:)`` shares one confirm-mode channel
/// between all tasks; each consumer gets a channel of its own.
///
/// As a `Service` (swift-service-lifecycle), ``run()`` connects, waits for the graceful shutdown, then waits
/// for outstanding publisher confirms and closes the connection.
///
/// Background work: the client starts a few tasks of its own, whether or not ``run()`` is used: the connection
/// attempt that callers wait for (so that one caller giving up at its deadline does not cancel it for the others),
/// connection recovery, and the closing of channels it replaces. ``close()`` ends them: it cancels a connection
/// attempt or recovery in progress, closes the connection, and fails whatever still waits with
/// ``RabbitMQError/Code/clientClosed``. The connection's socket I/O runs on a thread of its own, which ends with the
/// connection.
public final class RabbitMQClient: ChannelOperations, Service, Sendable {
    /// The configuration the client was created with.
    public let configuration: Configuration
    let logger: Logger
    let manager: ConnectionManager
    private let publisher = SingleFlight<Channel>()
    /// The reply channel and the calls waiting for replies of ``call(_:to:routingKey:properties:timeout:)``.
    let replies = ReplyDispatcher()
    private let pool = StateLock<[Channel]>([])
    private let isClosed = Atomic<Bool>(false)

    /// Channels kept open for client-level requests between calls.
    private static let pooledChannels = 8

    /// Creates a client. It connects on first use, or in ``connect()`` or ``run()``.
    public convenience init(configuration: Configuration, logger: Logger = Logger(label: "rabbitmq")) {
        self.init(configuration: configuration, logger: logger, clock: ContinuousClock())
    }

    /// Creates a client whose backoff pauses (connection recovery, a worker subscribing again or requeueing after a
    /// failed move) are timed by `clock`: a test clock in unit tests.
    init(configuration: Configuration, logger: Logger, clock: any Clock<Duration>) {
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "rabbitmq.connection"] =
            "\(configuration.connectionName ?? configuration.endpoints.first?.description ?? "")"
        self.logger = logger
        manager = ConnectionManager(configuration: configuration, logger: logger, clock: clock)
    }

    /// Connects now rather than on first use, so that a wrong URL, password or port shows up at start-up.
    /// - Throws: ``RabbitMQError``: ``RabbitMQError/Code/connectionRefused``, ``RabbitMQError/Code/hostNotFound``,
    ///   ``RabbitMQError/Code/authenticationFailed``, ``RabbitMQError/Code/vhostNotFound``,
    ///   ``RabbitMQError/Code/timeout``, ``RabbitMQError/Code/tlsFailure``...
    public func connect() async throws {
        _ = try await engine()
    }

    /// Connects, then waits for the service group's graceful shutdown (or task cancellation), then shuts
    /// down gracefully: waits for the shared publisher's outstanding confirms (at most the confirm timeout)
    /// and closes the connection.
    public func run() async throws {
        try await connect()
        try? await gracefulShutdown()
        if let channel = publisher.current, channel.isOpen {
            try? await channel.waitForConfirms()
        }
        await close()
    }

    /// A stream of connection events: connected, lost, reconnecting, recovered, blocked... Each call makes a
    /// new stream that keeps the latest 100 events if not read; it ends when the client closes.
    public func connectionEvents() -> AsyncStream<ConnectionEvent> {
        manager.events()
    }

    /// Opens a channel for channel-scoped work. Close it when done. It survives connection recovery.
    public func openChannel() async throws -> Channel {
        let engine = try await engine()
        let link = try await engine.openChannel(window: configuration.publishWindow)
        let channel = Channel(link: link, engine: engine, windowCapacity: configuration.publishWindow, host: manager)
        manager.register(channel)
        return channel
    }

    /// Runs `body` with a pooled channel; the channel goes back to the pool if it is still open after. Every
    /// ``ChannelOperations`` call of the client runs this way.
    public func withChannel<T: Sendable>(_ body: (Channel) async throws -> T) async throws -> T {
        let channel = try await pooledChannel()
        let result: T
        do {
            result = try await body(channel)
        } catch {
            returnToPool(channel)
            throw error
        }
        returnToPool(channel)
        return result
    }

    /// Closes the connection with the AMQP handshake. Waiting operations fail with
    /// ``RabbitMQError/Code/clientClosed``. Safe to call more than once.
    public func close() async {
        guard !isClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        pool.withLock { $0.removeAll() }
        _ = publisher.close()
        await replies.close()
        await manager.close()
        logger.info("client closed")
    }

    // MARK: Internals

    func engine() async throws -> ConnectionEngine {
        guard !isClosed.load(ordering: .acquiring) else {
            throw RabbitMQError(.clientClosed, "the client is closed")
        }
        return try await manager.engine(until: .now + configuration.connectTimeout + configuration.handshakeTimeout
                                            + configuration.requestTimeout)
    }

    /// The shared confirm channel of ``publish(_:to:routingKey:properties:mandatory:)``, waiting for it (a new
    /// one, or recovery) until `deadline`. A channel the broker closed, or one that nacks every publish
    /// (``ChannelLink/keepsNacking``), is replaced; the replaced one is closed once its publishes are settled.
    nonisolated(nonsending) func publisherChannel(until deadline: ContinuousClock.Instant) async throws -> Channel {
        // The common case, without the closures below (one of them escapes, an allocation per call).
        if let channel = publisher.current, channel.isOpen, !channel.link.keepsNacking { return channel }
        return try await publisher.get(
            until: deadline, operation: "basic.publish",
            isValid: { $0.isOpen ? !$0.link.keepsNacking : self.manager.willRecover(from: $0.closeReason) },
            retire: { channel in
                Task {
                    try? await channel.waitForConfirms()
                    try? await channel.close()
                }
            },
            create: { [self] in
                let channel = try await openChannel()
                try await channel.enableConfirms()
                return channel
            })
    }

    private func pooledChannel() async throws -> Channel {
        let engine = try await engine()
        while let channel = pool.withLock({ $0.popLast() }) {
            if channel.isOpen, channel.engine === engine { return channel }
        }
        return Channel(link: try await engine.openChannel(window: configuration.publishWindow), engine: engine,
                       windowCapacity: configuration.publishWindow, host: manager)
    }

    private func returnToPool(_ channel: Channel) {
        guard channel.isOpen, !isClosed.load(ordering: .acquiring) else { return }
        let kept = pool.withLock { pool -> Bool in
            guard pool.count < Self.pooledChannels else { return false }
            pool.append(channel)
            return true
        }
        if !kept { Task { try? await channel.close() } }
    }
}

/// A value created once on demand and shared: concurrent callers wait for the same creation, each until its own
/// deadline, and a value that is no longer valid (a closed channel) is created afresh by the next caller.
final class SingleFlight<Value: Sendable>: Sendable {
    private enum State {
        case empty
        case creating(SharedResult<Value>)
        case ready(Value)
        case closed
    }

    private let state = StateLock<State>(.empty)

    /// The value, if one is ready.
    var current: Value? {
        state.withLock { if case .ready(let value) = $0 { value } else { nil } }
    }

    /// The valid value, or the one being created, waiting for it until `deadline`.
    /// - Parameters:
    ///   - retire: called with a value that is replaced because it is no longer valid.
    ///   - create: runs in a task of its own, which a caller giving up at its deadline does not cancel.
    nonisolated(nonsending) func get(until deadline: ContinuousClock.Instant, operation: String,
                                     isValid: (Value) -> Bool, retire: (Value) -> Void = { _ in },
                                     create: @escaping @Sendable () async throws -> Value) async throws -> Value {
        let (ready, creation, retired) = try state.withLock {
            state throws(RabbitMQError) -> (Value?, SharedResult<Value>?, Value?) in
            var retired: Value?
            switch state {
            case .ready(let value) where isValid(value):
                return (value, nil, nil)
            case .creating(let creation):
                return (nil, creation, nil)
            case .closed:
                throw RabbitMQError(.clientClosed, "the client is closed", operation: operation)
            case .ready(let value):
                retired = value
            case .empty:
                break
            }
            let creation = SharedResult<Value>()
            state = .creating(creation)
            Task { self.finish(creation, with: await Self.run(create)) }
            return (nil, creation, retired)
        }
        if let ready { return ready }
        if let retired { retire(retired) }
        return try await creation!.value(until: deadline, operation: operation, awaited: "a new channel")
    }

    private static func run(_ create: @Sendable () async throws -> Value) async -> Result<Value, any Error> {
        do { return .success(try await create()) } catch { return .failure(error) }
    }

    private func finish(_ creation: SharedResult<Value>, with outcome: Result<Value, any Error>) {
        state.withLock { state in
            guard case .creating(let current) = state, current === creation else { return }
            if case .success(let value) = outcome { state = .ready(value) } else { state = .empty }
        }
        creation.complete(outcome)
    }

    /// Refuses further creation and returns the current value, if any.
    func close() -> Value? {
        state.withLock { state in
            defer { state = .closed }
            if case .ready(let value) = state { return value }
            return nil
        }
    }
}
