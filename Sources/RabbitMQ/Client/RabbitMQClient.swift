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
///     try await delivery.ack()
/// }
/// await client.close()
/// ```
/// The client connects on first use (or ``connect()``), trying ``Configuration/endpoints`` in order, and
/// recovers a lost connection (see ``RecoveryConfiguration``). Requests such as declarations run on pooled
/// channels, one request per channel at a time, so a channel error (404, 406) affects only the call that
/// caused it. ``publish(_:to:routingKey:properties:mandatory:)`` shares one confirm-mode channel between all
/// tasks; each consumer gets a channel of its own.
///
/// As a `Service` (swift-service-lifecycle), ``run()`` connects, waits for the graceful shutdown, then waits
/// for outstanding publisher confirms and closes the connection.
public final class RabbitMQClient: Service, Sendable {
    /// The configuration the client was created with.
    public let configuration: Configuration
    let logger: Logger
    let manager: ConnectionManager
    private let publisher = SingleFlight<Channel>()
    private let pool = StateLock<[Channel]>([])
    private let isClosed = Atomic<Bool>(false)

    /// Channels kept open for client-level requests between calls.
    private static let pooledChannels = 8

    /// Creates a client. It connects on first use, or in ``connect()`` or ``run()``.
    public init(configuration: Configuration, logger: Logger = Logger(label: "rabbitmq")) {
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "rabbitmq.connection"] =
            "\(configuration.connectionName ?? configuration.endpoints.first?.description ?? "")"
        self.logger = logger
        manager = ConnectionManager(configuration: configuration, logger: logger)
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
        let channel = Channel(link: link, engine: engine, manager: manager)
        manager.register(channel)
        return channel
    }

    /// Runs `body` with a pooled channel; the channel goes back to the pool if it is still open after.
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

    func publisherChannel() async throws -> Channel {
        try await publisher.get(isValid: { $0.isOpen || self.manager.willRecover(from: $0.closeReason) }) { [self] in
            let channel = try await openChannel()
            try await channel.enableConfirms()
            return channel
        }
    }

    private func pooledChannel() async throws -> Channel {
        let engine = try await engine()
        while let channel = pool.withLock({ $0.popLast() }) {
            if channel.isOpen, channel.engine === engine { return channel }
        }
        return Channel(link: try await engine.openChannel(window: configuration.publishWindow), engine: engine,
                       manager: manager)
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

/// A value created once on demand and shared: concurrent callers wait for the same creation, and a value that
/// is no longer valid (a closed channel) is created afresh by the next caller.
final class SingleFlight<Value: Sendable>: Sendable {
    private enum State {
        case empty
        case creating(Task<Value, any Error>)
        case ready(Value)
        case closed
    }

    private let state = StateLock<State>(.empty)

    /// The value, if one is ready.
    var current: Value? {
        state.withLock { if case .ready(let value) = $0 { value } else { nil } }
    }

    func get(isValid: (Value) -> Bool, create: @escaping @Sendable () async throws -> Value) async throws -> Value {
        let task = try state.withLock { state throws(RabbitMQError) -> Task<Value, any Error> in
            switch state {
            case .ready(let value) where isValid(value):
                return Task { value }
            case .creating(let task):
                return task
            case .closed:
                throw RabbitMQError(.clientClosed, "the client is closed")
            default:
                let task = Task { try await create() }
                state = .creating(task)
                return task
            }
        }
        do {
            let value = try await task.value
            state.withLock { state in
                if case .creating = state { state = .ready(value) }
            }
            return value
        } catch {
            state.withLock { state in
                if case .creating = state { state = .empty }
            }
            throw error
        }
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
