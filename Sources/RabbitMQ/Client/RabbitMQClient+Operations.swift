import Foundation

extension RabbitMQClient {
    /// Declares every exchange, queue and binding of `topology`, in that order. Idempotent: declaring what
    /// exists with the same settings succeeds.
    /// - Returns: the declared queues' names and counts, in the topology's order.
    /// - Throws: ``RabbitMQError`` with reply code 406 when something exists with other settings.
    @discardableResult
    public func declare(_ topology: Topology) async throws -> [QueueInfo] {
        // Every check that needs no broker runs before connecting, so bad input is reported as such.
        try topology.validate()
        return try await withChannel { try await $0.declare(topology) }
    }

    /// Declares an exchange. See ``Channel/declare(_:)-(Exchange)``.
    public func declare(_ exchange: Exchange) async throws {
        try exchange.validate()
        try await withChannel { try await $0.declare(exchange) }
    }

    /// Declares a queue and returns its name and counts. See ``Channel/declare(_:)-(Queue)``.
    @discardableResult
    public func declare(_ queue: Queue) async throws -> QueueInfo {
        try queue.validate()
        return try await withChannel { try await $0.declare(queue) }
    }

    /// Adds a binding.
    public func bind(_ binding: Binding) async throws {
        try binding.validate()
        try await withChannel { try await $0.bind(binding) }
    }

    /// Removes a binding.
    public func unbind(_ binding: Binding) async throws {
        try binding.validate()
        try await withChannel { try await $0.unbind(binding) }
    }

    /// A queue's message and consumer counts, without creating it.
    /// - Throws: ``RabbitMQError`` with reply code 404 when the queue does not exist.
    public func queueInfo(_ name: String) async throws -> QueueInfo {
        try NameValidation.validateEntityName(name, as: "queue name", operation: "queue.declare")
        return try await withChannel { try await $0.queueInfo(name) }
    }

    /// Checks that an exchange exists.
    /// - Throws: ``RabbitMQError`` with reply code 404 when it does not.
    public func checkExchange(_ name: String) async throws {
        try NameValidation.validate(name, as: "exchange name", operation: "exchange.declare")
        try await withChannel { try await $0.checkExchange(name) }
    }

    /// Deletes a queue and returns how many messages it held.
    @discardableResult
    public func deleteQueue(_ name: String, ifUnused: Bool = false, ifEmpty: Bool = false) async throws -> UInt32 {
        try NameValidation.validateEntityName(name, as: "queue name", operation: "queue.delete")
        return try await withChannel { try await $0.deleteQueue(name, ifUnused: ifUnused, ifEmpty: ifEmpty) }
    }

    /// Deletes an exchange.
    public func deleteExchange(_ name: String, ifUnused: Bool = false) async throws {
        try NameValidation.validateEntityName(name, as: "exchange name", operation: "exchange.delete")
        try await withChannel { try await $0.deleteExchange(name, ifUnused: ifUnused) }
    }

    /// Removes every ready message from a queue and returns how many there were.
    @discardableResult
    public func purge(_ queue: String) async throws -> UInt32 {
        try NameValidation.validateEntityName(queue, as: "queue name", operation: "queue.purge")
        return try await withChannel { try await $0.purge(queue) }
    }

    /// Publishes a message and returns once the broker has confirmed it (publisher confirms).
    ///
    /// Many tasks may publish at once: they share one confirm channel whose window
    /// (``Configuration/publishWindow``) bounds the messages in flight. For the highest rate from one task,
    /// open a ``Channel``, ``Channel/enableConfirms(window:)`` and await confirmations in bulk.
    /// - Throws: ``RabbitMQError``: ``RabbitMQError/Code/publishNacked``, ``RabbitMQError/Code/unroutable``
    ///   (mandatory only), ``RabbitMQError/Code/timeout``, ``RabbitMQError/Code/messageTooLarge``, or the
    ///   channel's or connection's failure.
    public func publish(
        _ body: Data,
        to exchange: String = "",
        routingKey: String,
        properties: MessageProperties = MessageProperties(),
        mandatory: Bool = false
    ) async throws {
        // Checked once, before connecting, so bad input is reported as such.
        try Channel.validatePublish(body, to: exchange, routingKey: routingKey, properties: properties)
        // One deadline for the whole call: the exchange check, the channel (or recovery), room, the confirm.
        let deadline = ContinuousClock.now + configuration.confirmTimeout
        try await checkExchangeBeforePublishing(exchange, until: deadline)
        var previous: Channel?
        while true {
            let channel = try await publisherChannel(until: deadline)
            let confirmation: PublishConfirmation
            do {
                confirmation = try await channel.enqueuePublish(
                    body, to: exchange, routingKey: routingKey, properties: properties, mandatory: mandatory,
                    deadline: deadline, observability: manager.observability)
            } catch let error as RabbitMQError where channel !== previous
                && (error.isCollateral || !channel.isOpen && !manager.willRecover(from: channel.closeReason)) {
                // The shared channel closed (the broker closed it because of another publish, say) before this
                // publish was sent: send it on the channel that replaces it (once per channel: this cannot spin).
                previous = channel
                continue
            }
            do {
                return try await confirmation.wait()
            } catch let error as RabbitMQError where error.replyCode == 404 {
                // The exchange was deleted since it was checked: check it again next time.
                manager.exchanges.remove(exchange)
                throw error
            }
        }
    }

    /// Makes sure `exchange` exists before the first publish to it through the shared confirm channel, so that a
    /// publish to a missing exchange fails alone, on a pooled channel, rather than make the broker close the
    /// channel every task publishes on.
    /// - Throws: ``RabbitMQError/Code/channelClosed`` with reply code 404 when the exchange does not exist.
    private func checkExchangeBeforePublishing(_ exchange: String, until deadline: ContinuousClock.Instant)
        async throws
    {
        do {
            try await manager.exchanges.ensureExists(exchange, until: deadline) { [self] in
                try await withChannel { try await $0.checkExchange(exchange) }
            }
        } catch var error as RabbitMQError where error.replyCode == 404 {
            error.operation = "basic.publish"
            error.message = "cannot publish to exchange '\(exchange)': it does not exist"
            throw error
        }
    }

    /// Publishes `value` as JSON and returns once the broker has confirmed it.
    public func publish(
        json value: some Encodable,
        to exchange: String = "",
        routingKey: String,
        properties: MessageProperties = MessageProperties(),
        mandatory: Bool = false,
        encoder: JSONEncoder = JSONEncoder()
    ) async throws {
        let message = try Channel.jsonMessage(value, properties: properties, encoder: encoder)
        try await publish(message.body, to: exchange, routingKey: routingKey, properties: message.properties,
                          mandatory: mandatory)
    }

    /// Consumes `queue` on a channel of its own, with at most `prefetch` unacknowledged deliveries.
    /// Ending the loop over the result (or ``Consumer/cancel()``) cancels the consumer and closes its
    /// channel; unacknowledged deliveries go back to the queue.
    public func consume(_ queue: String, prefetch: UInt16 = 100, options: ConsumeOptions = ConsumeOptions())
        async throws -> Consumer
    {
        guard prefetch > 0 else {
            throw RabbitMQError(.invalidArgument, "prefetch must be at least 1: 0 would mean unlimited buffering",
                                operation: "basic.qos")
        }
        let channel = try await openChannel()
        do {
            try await channel.setPrefetch(prefetch)
            return try await channel.consume(queue, options: options, ownsChannel: true)
        } catch {
            try? await channel.close()
            throw error
        }
    }

    /// Fetches one message from `queue`, or `nil` if it is empty. With manual acknowledgement, settle it
    /// before the client closes (a pooled channel carries it).
    public func get(from queue: String, acknowledgement: ConsumeOptions.Acknowledgement = .manual) async throws
        -> Delivery?
    {
        try await withChannel { try await $0.get(from: queue, acknowledgement: acknowledgement) }
    }
}
