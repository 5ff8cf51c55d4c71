import Foundation
import Logging
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
/// The client connects on first use (or ``connect()``), trying ``Configuration/endpoints`` in order.
/// Declarations and other requests run on pooled channels, one request per channel at a time, so a channel
/// error (404, 406) affects only the call that caused it. ``publish(_:to:routingKey:properties:mandatory:)``
/// shares one confirm-mode channel between all tasks; each consumer gets a channel of its own.
public final class RabbitMQClient: Sendable {
    /// The configuration the client was created with.
    public let configuration: Configuration
    let logger: Logger
    private let connection: SingleFlight<ConnectionEngine>
    private let publisher: SingleFlight<Channel>
    private let pool = Mutex<[Channel]>([])
    private let isClosed = Atomic<Bool>(false)

    /// Channels kept open for client-level requests between calls.
    private static let pooledChannels = 8

    /// Creates a client. It connects on first use.
    public init(configuration: Configuration, logger: Logger = Logger(label: "rabbitmq")) {
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "rabbitmq.connection"] = "\(configuration.connectionName ?? configuration.endpoints.first?.description ?? "")"
        self.logger = logger
        connection = SingleFlight()
        publisher = SingleFlight()
    }

    /// Connects now rather than on first use, so that a wrong URL, password or port shows up at start-up.
    /// - Throws: ``RabbitMQError``: ``RabbitMQError/Code/connectionRefused``, ``RabbitMQError/Code/hostNotFound``,
    ///   ``RabbitMQError/Code/authenticationFailed``, ``RabbitMQError/Code/vhostNotFound``,
    ///   ``RabbitMQError/Code/timeout``, ``RabbitMQError/Code/tlsFailure``...
    public func connect() async throws {
        _ = try await engine()
    }

    /// Opens a channel for channel-scoped work. Close it when done.
    public func openChannel() async throws -> Channel {
        let engine = try await engine()
        let link = try await engine.openChannel(window: configuration.publishWindow)
        return Channel(link: link, engine: engine)
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
        if let engine = connection.close() {
            await engine.close()
            logger.info("connection closed")
        }
        _ = publisher.close()
    }

    // MARK: Internals

    func engine() async throws -> ConnectionEngine {
        guard !isClosed.load(ordering: .acquiring) else {
            throw RabbitMQError(.clientClosed, "the client is closed")
        }
        return try await connection.get(isValid: { !$0.isClosed }) { [configuration, logger] in
            try await Self.connectToFirstReachable(configuration, logger: logger)
        }
    }

    private static func connectToFirstReachable(_ configuration: Configuration, logger: Logger) async throws
        -> ConnectionEngine
    {
        guard !configuration.endpoints.isEmpty else {
            throw RabbitMQError(.invalidArgument, "the configuration lists no endpoint")
        }
        var lastError: (any Error)?
        for endpoint in configuration.endpoints {
            do {
                return try await ConnectionEngine.connect(configuration, endpoint: endpoint, logger: logger)
            } catch let error as RabbitMQError where error.isRetryable {
                logger.warning("cannot connect", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
                lastError = error
            }
        }
        throw lastError!
    }

    func publisherChannel() async throws -> Channel {
        try await publisher.get(isValid: { $0.isOpen }) { [self] in
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
        return Channel(link: try await engine.openChannel(window: configuration.publishWindow), engine: engine)
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
/// is no longer valid (a lost connection, a closed channel) is created afresh by the next caller.
final class SingleFlight<Value: Sendable>: Sendable {
    private enum State {
        case empty
        case creating(Task<Value, any Error>)
        case ready(Value)
        case closed
    }

    private let state = Mutex<State>(.empty)

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
