import Foundation

extension RabbitMQClient {
    /// Publishes a message and returns once the broker has confirmed it (publisher confirms).
    ///
    /// Many tasks may publish at once: they share one confirm channel whose window
    /// (``Configuration/publishWindow``) bounds the messages in flight. For the highest rate from one task,
    /// open a ``Channel``, ``Channel/enableConfirms(window:)`` and publish with
    /// ``Channel/publishWithDeferredConfirm(_:to:routingKey:properties:mandatory:)``.
    /// - Throws: ``RabbitMQError``: ``RabbitMQError/Code/publishNacked``, ``RabbitMQError/Code/unroutable``
    ///   (mandatory only), ``RabbitMQError/Code/timeout``, ``RabbitMQError/Code/messageTooLarge``, or the
    ///   channel's or connection's failure.
    nonisolated(nonsending) public func publish(
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
        if !KnownExchanges.alwaysExists(exchange) { try await checkExchangeBeforePublishing(exchange, until: deadline) }
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
    nonisolated(nonsending) private func checkExchangeBeforePublishing(_ exchange: String,
                                                                       until deadline: ContinuousClock.Instant)
        async throws
    {
        do {
            try await manager.exchanges.ensureExists(exchange, until: deadline) { [self] in
                try await inspectExchange(exchange)
            }
        } catch var error as RabbitMQError where error.replyCode == 404 {
            error.operation = "basic.publish"
            error.message = "cannot publish to exchange '\(exchange)': it does not exist"
            throw error
        }
    }
}
