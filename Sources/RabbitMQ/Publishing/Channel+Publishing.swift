import Foundation

extension Channel {
    /// The largest body the library sends: RabbitMQ's hard limit (a broker may be configured lower, in which
    /// case it closes the channel and the publish fails with ``RabbitMQError/Code/messageTooLarge``).
    public static let maximumBodySize = 536_870_912

    /// Header carried by mandatory messages published in confirm mode: the publish's sequence number on its
    /// channel, which tells the library which publish a returned (unroutable) message was. Consumers see it too.
    public static let publishSequenceHeader = OutgoingMessage.publishSequenceHeader

    /// Turns on publisher confirms: from now on every publish on this channel is confirmed by the broker.
    /// - Parameter window: the most unconfirmed publishes in flight; further publishes wait for room. Default:
    ///   the window the channel was opened with (``RabbitMQClient/Configuration/publishWindow``).
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` if the channel is in transaction mode
    ///   (``enableTransactions()``).
    public func enableConfirms(window: Int? = nil) async throws {
        guard !modes.transactions else {
            throw RabbitMQError(.invalidArgument, "a channel in transaction mode cannot use publisher confirms",
                                operation: "confirm.select")
        }
        if let window {
            guard window > 0 else { throw RabbitMQError(.invalidArgument, "the publish window must be at least 1") }
            link.window.setCapacity(window)
        }
        _ = try await request(.confirmSelect)
        recordConfirms(window: window)
    }

    /// Publishes a message and returns once the broker has confirmed it, or, on a channel without publisher
    /// confirms, once it is written to the socket. Messages are persistent unless `properties` says otherwise.
    ///
    /// For many messages from one task, ``publishWithDeferredConfirm(_:to:routingKey:properties:mandatory:)``
    /// keeps a window of them in flight instead of one.
    /// - Parameters:
    ///   - body: the message body. Over 16 KiB it is written to the socket from this buffer; a smaller one is
    ///     copied once, into the connection's write buffer.
    ///   - exchange: the exchange; `""` is the default exchange, which routes to the queue named `routingKey`.
    ///   - routingKey: the routing key.
    ///   - properties: headers and basic properties.
    ///   - mandatory: fail with ``RabbitMQError/Code/unroutable`` if no queue gets it (needs publisher confirms
    ///     to be reported; such messages carry the ``publishSequenceHeader``).
    /// - Throws: ``RabbitMQError``: ``RabbitMQError/Code/publishNacked``, ``RabbitMQError/Code/unroutable``,
    ///   ``RabbitMQError/Code/timeout`` (the confirm timeout), ``RabbitMQError/Code/messageTooLarge``, an invalid
    ///   name, or the channel's or connection's failure.
    nonisolated(nonsending) public func publish(
        _ body: Data,
        to exchange: String = "",
        routingKey: String,
        properties: MessageProperties = MessageProperties(),
        mandatory: Bool = false
    ) async throws {
        try await publishWithDeferredConfirm(body, to: exchange, routingKey: routingKey, properties: properties,
                                             mandatory: mandatory).wait()
    }

    /// Publishes a message and returns without waiting for the broker's confirmation, unless the window of
    /// messages in flight is full or the broker has blocked the connection (then it waits for room, at most the
    /// confirm timeout). This is the fast way to publish many messages from one task.
    ///
    /// Await ``PublishConfirmation/wait()`` on the result, or ``waitForConfirms()`` for everything published.
    /// The parameters are those of ``publish(_:to:routingKey:properties:mandatory:)``.
    /// - Throws: ``RabbitMQError`` for an invalid name or an oversized body, a closed channel, or a timeout
    ///   waiting for room. The broker's verdict comes through the returned confirmation.
    nonisolated(nonsending) public func publishWithDeferredConfirm(
        _ body: Data,
        to exchange: String = "",
        routingKey: String,
        properties: MessageProperties = MessageProperties(),
        mandatory: Bool = false
    ) async throws -> PublishConfirmation {
        try await publishWithDeferredConfirm(body, to: exchange, routingKey: routingKey, properties: properties,
                                             mandatory: mandatory, observability: host.observability)
    }

    /// ``publishWithDeferredConfirm(_:to:routingKey:properties:mandatory:)`` reporting to `observability`: the
    /// request id of the current `ServiceContext`, a producer span whose context goes into the headers, the
    /// publish metrics.
    nonisolated(nonsending) func publishWithDeferredConfirm(
        _ body: Data,
        to exchange: String,
        routingKey: String,
        properties: MessageProperties,
        mandatory: Bool,
        observability: Observability
    ) async throws -> PublishConfirmation {
        try Self.validatePublish(body, to: exchange, routingKey: routingKey, properties: properties)
        return try await enqueuePublish(body, to: exchange, routingKey: routingKey, properties: properties,
                                        mandatory: mandatory, deadline: .now + host.confirmTimeout,
                                        observability: observability)
    }

    /// Checks what a publish sends without contacting the broker: names, header keys, body size.
    static func validatePublish(_ body: Data, to exchange: String, routingKey: String,
                                properties: MessageProperties) throws(RabbitMQError) {
        try NameValidation.validate(exchange, as: "exchange name", operation: "basic.publish")
        try NameValidation.validate(routingKey, as: "routing key", operation: "basic.publish")
        if !properties.headers.isEmpty {
            try NameValidation.validate(properties.headers, as: "message headers", operation: "basic.publish")
        }
        guard body.count <= maximumBodySize else {
            throw RabbitMQError(.messageTooLarge, "the body has \(body.count) bytes; RabbitMQ accepts at most "
                                    + "\(maximumBodySize)", operation: "basic.publish")
        }
    }

    /// The body and properties of `value` published as JSON (content type `application/json` unless set).
    static func jsonMessage(_ value: some Encodable, properties: MessageProperties, encoder: JSONEncoder)
        throws(RabbitMQError) -> (body: Data, properties: MessageProperties)
    {
        let body: Data
        do {
            body = try encoder.encode(value)
        } catch {
            throw RabbitMQError(.invalidArgument, "cannot encode the message as JSON: \(error)", operation: "basic.publish")
        }
        var properties = properties
        if properties.contentType == nil { properties.contentType = "application/json" }
        return (body, properties)
    }

    /// Publishes a message ``validatePublish(_:to:routingKey:properties:)`` has accepted; it must be sent and
    /// confirmed by `deadline`.
    nonisolated(nonsending) func enqueuePublish(
        _ body: Data,
        to exchange: String,
        routingKey: String,
        properties: MessageProperties,
        mandatory: Bool,
        deadline: ContinuousClock.Instant,
        observability: Observability
    ) async throws -> PublishConfirmation {
        var properties = properties
        if properties.deliveryMode == nil { properties.deliveryMode = .persistent }
        let span = observability.willPublish(exchange: exchange, routingKey: routingKey, properties: &properties)
        let link: ChannelLink
        do {
            link = try await acquirePublishSlot(until: deadline)
        } catch {
            span?.end(failing: error)
            throw error
        }
        let instruments = observability.exchange(exchange)
        let ticket = PublishTicket(deadline: deadline, exchange: exchange, instruments: instruments,
                                   started: instruments == nil ? nil : .now, span: span)
        let message = OutgoingMessage(exchange: exchange, routingKey: routingKey, mandatory: mandatory,
                                      properties: properties, body: body)
        do {
            try link.submit(.publish(OutgoingPublish(link: link, message: message, ticket: ticket)))
        } catch {
            link.window.release(1)
            span?.end(failing: error)
            throw error
        }
        instruments?.recordPublished()
        return PublishConfirmation(ticket: ticket)
    }

    /// Waits until every message published on this channel so far is confirmed (or written, without confirms).
    /// - Throws: the first failure since the previous call (nack, unroutable, timeout), with the number of
    ///   failures in its message; or a timeout if confirms take longer than the confirm timeout.
    nonisolated(nonsending) public func waitForConfirms() async throws {
        try await link.window.waitUntilDrained(deadline: .now + host.confirmTimeout)
    }

    /// A slot in the publish window of the channel's open incarnation: during an outage this waits for the
    /// recovered channel, until `deadline`.
    nonisolated(nonsending) private func acquirePublishSlot(until deadline: ContinuousClock.Instant) async throws
        -> ChannelLink
    {
        // The common case without suspension points: the channel is open and its window has room.
        let current = link
        if current.isOpen, (try? current.window.tryAcquire()) == true { return current }
        while true {
            let (link, _) = try await activeSession(for: "basic.publish", until: deadline)
            do {
                try await link.window.acquire(deadline: deadline)
                return link
            } catch let error as RabbitMQError where !link.isOpen && host.willRecover(from: error) {
                continue
            }
        }
    }

    /// Messages published on this channel and not yet confirmed.
    public var unconfirmedCount: Int { link.window.inFlight }
}
