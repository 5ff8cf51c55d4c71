import Synchronization

/// An AMQP channel: a lightweight session on the client's connection, for channel-scoped work
/// (a prefetch limit, publisher confirms, exclusive consumers).
///
/// Most applications never need one: ``RabbitMQClient`` declares, publishes and consumes on channels it
/// manages. A channel the broker closes (for example 404 on a passive declare) reports the reply code and
/// text on the failing call and on every later one; the connection and other channels carry on. When the
/// connection is lost and recovered, the channel is re-opened with its prefetch, confirm mode and consumers.
public final class Channel: Sendable {
    private struct Session {
        var link: ChannelLink
        var engine: ConnectionEngine
        var isClosedByApplication = false
        var prefetch: (count: UInt16, global: Bool)?
        var confirms = false
        var windowCapacity: Int
        var consumers: [String: ConsumerRegistration] = [:]
    }

    /// What recovery needs to start a consumer again.
    struct ConsumerRegistration: Sendable {
        let queue: String
        let options: ConsumeOptions
        let arguments: FieldTable
        let buffer: DeliveryBuffer
        /// Where a stream consumer is, so that it starts again after the last delivery handed out.
        var streamCursor: StreamCursor? = nil

        /// The arguments to consume with now: a stream consumer's offset is where its cursor is.
        var currentArguments: FieldTable {
            guard let streamCursor else { return arguments }
            var arguments = arguments
            arguments[StreamCursor.header] = streamCursor.resumeOffset.argument
            return arguments
        }
    }

    private let session: StateLock<Session>
    let manager: ConnectionManager

    init(link: ChannelLink, engine: ConnectionEngine, manager: ConnectionManager) {
        session = StateLock(Session(link: link, engine: engine, windowCapacity: manager.configuration.publishWindow))
        self.manager = manager
    }

    /// The current incarnation of the channel on the connection.
    var link: ChannelLink { session.withLock { $0.link } }

    /// The connection the channel is on now.
    var engine: ConnectionEngine { session.withLock { $0.engine } }

    /// The channel number on the connection.
    public var number: UInt16 { link.number }

    /// Whether the channel is open.
    public var isOpen: Bool { link.isOpen }

    /// Why the channel closed, once it has.
    public var closeReason: RabbitMQError? { link.closedError }

    /// Closes the channel. Unacknowledged deliveries on it go back to their queues. Does nothing if closed.
    public func close() async throws {
        let (link, alreadyClosing) = session.withLock { session in
            defer { session.isClosedByApplication = true }
            return (session.link, session.isClosedByApplication)
        }
        guard link.isOpen, !alreadyClosing else { return }
        do {
            _ = try await engine.request(.channelClose(replyCode: 200, replyText: "closed by the application"),
                                         on: link)
        } catch let error as RabbitMQError where !link.isOpen && error.code == .clientClosed {
            return
        }
    }

    /// The open incarnation of the channel, waiting (until `deadline`) while the connection is recovered.
    nonisolated(nonsending) func activeSession(for operation: String, until deadline: ContinuousClock.Instant)
        async throws -> (link: ChannelLink, engine: ConnectionEngine)
    {
        while true {
            let (link, engine, closedByApplication) = session.withLock {
                ($0.link, $0.engine, $0.isClosedByApplication)
            }
            if link.isOpen { return (link, engine) }
            guard !closedByApplication, manager.willRecover(from: link.closedError) else {
                try link.checkOpen(operation)
                return (link, engine)
            }
            _ = try await manager.engine(until: deadline, operation: operation)
            // Recovery is over; if it could not bring this channel back, report why.
            if self.link === link { try link.checkOpen(operation) }
        }
    }

    /// Sends `method` on the channel's open incarnation and waits for the reply: within the request timeout
    /// in all, also while the connection is being recovered.
    func request(_ method: OutgoingMethod) async throws -> MethodReply {
        let deadline = ContinuousClock.now + manager.configuration.requestTimeout
        let (link, engine) = try await activeSession(for: method.name, until: deadline)
        return try await engine.request(method, on: link, until: deadline)
    }

    func recordPrefetch(_ count: UInt16, global: Bool) {
        session.withLock { $0.prefetch = (count, global) }
    }

    func recordConfirms(window: Int?) {
        session.withLock { session in
            session.confirms = true
            if let window { session.windowCapacity = window }
        }
    }

    func recordConsumer(tag: String, _ registration: ConsumerRegistration) {
        session.withLock { $0.consumers[tag] = registration }
    }

    func forgetConsumer(tag: String) {
        session.withLock { _ = $0.consumers.removeValue(forKey: tag) }
    }

    /// Re-opens the channel on a recovered connection: prefetch, confirm mode, then consumers.
    /// Returns `false` if the application had closed it (nothing to recover).
    func reattach(to engine: ConnectionEngine) async throws -> Bool {
        let snapshot = session.withLock { $0 }
        guard !snapshot.isClosedByApplication else { return false }
        let link = try await engine.openChannel(window: snapshot.windowCapacity)
        link.isRecoverable = true
        if let prefetch = snapshot.prefetch {
            _ = try await engine.request(.basicQos(prefetchCount: prefetch.count, global: prefetch.global), on: link)
        }
        if snapshot.confirms { _ = try await engine.request(.confirmSelect, on: link) }
        for (tag, consumer) in snapshot.consumers {
            let noAck = consumer.options.acknowledgement == .noAck
            try link.submit(.registerConsumer(link, consumerTag: tag, consumer.buffer, noAck: noAck))
            _ = try await engine.request(.basicConsume(
                queue: manager.recorder.renamed(consumer.queue), consumerTag: tag, noAck: noAck,
                exclusive: consumer.options.exclusive, arguments: consumer.currentArguments), on: link)
        }
        let closedMeanwhile = session.withLock { session in
            session.link = link
            session.engine = engine
            return session.isClosedByApplication
        }
        if closedMeanwhile {
            _ = try? await engine.request(.channelClose(replyCode: 200, replyText: "closed by the application"), on: link)
            return false
        }
        return true
    }

    /// Ends the channel's consumers with `error` (recovery gave up, or recovery is off).
    func failConsumers(_ error: RabbitMQError) {
        let consumers = session.withLock { session in
            defer { session.consumers.removeAll() }
            return Array(session.consumers.values)
        }
        for consumer in consumers { consumer.buffer.finish(error) }
    }
}

extension Channel: ChannelOperations {
    /// Runs `body` with this channel.
    public func withChannel<T: Sendable>(_ body: (Channel) async throws -> T) async throws -> T {
        try await body(self)
    }
}

/// What the broker reports about a queue.
public struct QueueInfo: Sendable, Hashable {
    /// The queue's name (generated by the broker for a server-named queue).
    public var name: String
    /// Messages ready for delivery (not counting unacknowledged ones).
    public var messageCount: UInt32
    /// Active consumers.
    public var consumerCount: UInt32
}
