extension Channel {
    /// Limits how many unacknowledged deliveries the broker sends to each consumer started afterwards on this
    /// channel (or, with `global`, to the channel as a whole).
    public func setPrefetch(_ count: UInt16, global: Bool = false) async throws {
        _ = try await request(.basicQos(prefetchCount: count, global: global))
        recordPrefetch(count, global: global)
    }

    /// Starts a consumer on `queue`. Set the prefetch with ``setPrefetch(_:global:)`` first.
    /// - Throws: ``RabbitMQError`` with reply code 404 if the queue does not exist, 403 or 405 if another
    ///   consumer holds it exclusively (either closes the channel).
    public func consume(_ queue: String, options: ConsumeOptions = ConsumeOptions()) async throws -> Consumer {
        try await consume(queue, options: options, ownsChannel: false)
    }

    /// Starts a consumer; a stream consumer reads from `cursor` (a ``QueueWorker``'s, kept across its
    /// subscriptions), or from a cursor of its own when ``ConsumeOptions/streamOffset`` is set.
    func consume(_ queue: String, options: ConsumeOptions, ownsChannel: Bool, cursor: StreamCursor? = nil)
        async throws -> Consumer
    {
        try NameValidation.validateEntityName(queue, as: "queue name", operation: "basic.consume")
        let tag = options.consumerTag ?? ConsumerCore.makeTag()
        try NameValidation.validate(tag, as: "consumer tag", operation: "basic.consume")
        try NameValidation.validate(options.arguments, as: "consumer arguments", operation: "basic.consume")
        var arguments = options.arguments
        if let priority = options.priority { arguments["x-priority"] = .int32(priority) }
        if let offset = options.streamOffset {
            try offset.validate(operation: "basic.consume")
            guard options.acknowledgement != .noAck else {
                throw RabbitMQError(.invalidArgument, "a stream consumer needs acknowledgements, not noAck (the broker "
                                        + "refuses no-ack consumers on streams)", operation: "basic.consume")
            }
        }
        let cursor = cursor ?? options.streamOffset.map(StreamCursor.init(initial:))
        if let cursor { arguments[StreamCursor.header] = cursor.resumeOffset.argument }
        let buffer = DeliveryBuffer()
        let (link, engine) = try await activeSession(for: "basic.consume", until: .now + engine.requestTimeout)
        let noAck = options.acknowledgement == .noAck
        try link.submit(.registerConsumer(link, consumerTag: tag, buffer, noAck: noAck))
        _ = try await engine.request(.basicConsume(queue: queue, consumerTag: tag, noAck: noAck,
                                                   exclusive: options.exclusive, arguments: arguments), on: link)
        recordConsumer(tag: tag, ConsumerRegistration(queue: queue, exclusive: options.exclusive, noAck: noAck,
                                                      arguments: arguments, sink: buffer, resumption: cursor))
        return Consumer(core: ConsumerCore(tag: tag, channel: self, buffer: buffer, ownsChannel: ownsChannel,
                                           acknowledgesAutomatically: options.acknowledgement == .automatic,
                                           instruments: host.observability.queue(queue), streamCursor: cursor))
    }
}
