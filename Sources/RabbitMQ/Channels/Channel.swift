import Synchronization

/// An AMQP channel: a lightweight session on the client's connection, for channel-scoped work
/// (a prefetch limit, publisher confirms, exclusive consumers).
///
/// Most applications never need one: ``RabbitMQClient`` declares, publishes and consumes on channels it
/// manages. A channel the broker closes (for example 404 on a passive declare) reports the reply code and
/// text on the failing call and on every later one; the connection and other channels carry on. When the
/// connection is lost and recovered, the channel is re-opened with its prefetch, confirm mode and consumers.
public final class Channel: Sendable {
    private let session: StateLock<ChannelSession>
    /// Whoever manages the connection: the channel's settings, and the connection while it is recovered.
    let host: any ChannelHost

    init(link: ChannelLink, engine: ConnectionEngine, windowCapacity: Int, host: any ChannelHost) {
        session = StateLock(ChannelSession(link: link, engine: engine,
                                           setup: ChannelSetup(windowCapacity: windowCapacity)))
        self.host = host
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
            guard !closedByApplication, host.willRecover(from: link.closedError) else {
                try link.checkOpen(operation)
                return (link, engine)
            }
            _ = try await host.connection(until: deadline, operation: operation)
            // Recovery is over; if it could not bring this channel back, report why.
            if self.link === link { try link.checkOpen(operation) }
        }
    }

    /// Sends `method` on the channel's open incarnation and waits for the reply: within the request timeout
    /// in all, also while the connection is being recovered.
    func request(_ method: OutgoingMethod) async throws -> MethodReply {
        let deadline = ContinuousClock.now + host.requestTimeout
        let (link, engine) = try await activeSession(for: method.name, until: deadline)
        return try await engine.request(method, on: link, until: deadline)
    }

    // MARK: What recovery applies again

    func recordPrefetch(_ count: UInt16, global: Bool) {
        session.withLock { $0.setup.prefetch = (count, global) }
    }

    func recordConfirms(window: Int?) {
        session.withLock { session in
            session.setup.confirms = true
            if let window { session.setup.windowCapacity = window }
        }
    }

    /// Records transaction mode, the transaction beginning on `link`.
    func recordTransactions(on link: ChannelLink) {
        session.withLock { session in
            session.setup.transactions = true
            session.transactionLink = link
        }
    }

    /// Whether the channel is in confirm mode, in transaction mode, and the incarnation its transaction began on.
    var modes: (confirms: Bool, transactions: Bool, transactionLink: ChannelLink?) {
        session.withLock { ($0.setup.confirms, $0.setup.transactions, $0.transactionLink) }
    }

    func recordConsumer(tag: String, _ registration: ConsumerRegistration) {
        session.withLock { $0.setup.consumers[tag] = registration }
    }

    func forgetConsumer(tag: String) {
        session.withLock { _ = $0.setup.consumers.removeValue(forKey: tag) }
    }

    /// What the application set up, unless it closed the channel (then there is nothing to recover).
    var setupToRecover: ChannelSetup? {
        session.withLock { $0.isClosedByApplication ? nil : $0.setup }
    }

    /// Makes `link` on `engine` the channel's incarnation (recovery re-opened it there).
    /// - Returns: `false` if the application closed the channel meanwhile: the caller closes `link`.
    func adopt(_ link: ChannelLink, on engine: ConnectionEngine) -> Bool {
        session.withLock { session in
            session.link = link
            session.engine = engine
            return !session.isClosedByApplication
        }
    }

    /// Ends the channel's consumers with `error` (recovery gave up, or recovery is off).
    func failConsumers(_ error: RabbitMQError) {
        let consumers = session.withLock { session in
            defer { session.setup.consumers.removeAll() }
            return Array(session.setup.consumers.values)
        }
        for consumer in consumers { consumer.sink.finish(error) }
    }
}

extension Channel: ChannelOperations {
    /// Runs `body` with this channel.
    public func withChannel<T: Sendable>(_ body: (Channel) async throws -> T) async throws -> T {
        try await body(self)
    }
}
