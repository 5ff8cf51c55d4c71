import Foundation

extension RabbitMQClient {
    /// Sends a request and waits for its reply: request/reply over RabbitMQ's direct reply-to.
    ///
    /// ```swift
    /// let reply = try await client.call(Data("SKU-42".utf8), routingKey: "prices", timeout: .seconds(2))
    /// let price = reply.bodyString
    /// ```
    /// The request is published (mandatory, with confirms) with `reply_to` set to `amq.rabbitmq.reply-to` and a
    /// correlation id (``MessageProperties/correlationID``, generated unless `properties` sets one); a
    /// ``Responder``, or any consumer that publishes to the `reply_to` queue with the same correlation id, answers.
    /// Concurrent calls share one channel and one no-ack reply consumer, opened on the first call and recovered
    /// with the connection; replies are matched by correlation id. A reply that comes after its call gave up is
    /// dropped and counted in ``droppedReplyCount``. A call under way when the connection is lost is not answered
    /// (its reply address belonged to the lost channel) and times out; calls made after recovery are answered.
    ///
    /// The reply is a ``Delivery`` received with AMQP no-ack: there is nothing to settle.
    /// - Parameters:
    ///   - body: the request body.
    ///   - exchange: the exchange; `""` (the default exchange) routes to the queue named `routingKey`.
    ///   - routingKey: the routing key (the request queue, with the default exchange).
    ///   - properties: the request's properties; `replyTo` is set by the call.
    ///   - timeout: how long to wait for the reply, counted from the call; `nil` for
    ///     ``Configuration/requestTimeout``.
    /// - Throws: ``RabbitMQError``: ``RabbitMQError/Code/timeout`` (no reply in time),
    ///   ``RabbitMQError/Code/unroutable`` (no queue takes the request), ``RabbitMQError/Code/responderFailed`` (the responder's handler threw), or the
    ///   publish's failure.
    public func call(_ body: Data, to exchange: String = "", routingKey: String,
                     properties: MessageProperties = MessageProperties(), timeout: Duration? = nil) async throws
        -> Delivery
    {
        var properties = properties
        properties.replyTo = ReplyDispatcher.replyQueue
        let correlationID = properties.correlationID ?? UUID().uuidString
        properties.correlationID = correlationID
        try Channel.validatePublish(body, to: exchange, routingKey: routingKey, properties: properties)
        let deadline = ContinuousClock.now + (timeout ?? configuration.requestTimeout)
        let channel = try await replies.channel(of: self, until: deadline)
        let reply = replies.expect(correlationID)
        defer { replies.forget(correlationID) }
        try await channel.enqueuePublish(
            body, to: exchange, routingKey: routingKey, properties: properties, mandatory: true,
            deadline: deadline, observability: manager.observability
        ).wait()
        let delivery = try await reply.value(until: deadline, operation: "call",
                                             awaited: "the reply to \(correlationID)")
        if let failure = delivery.properties.headers[ReplyDispatcher.errorHeader] {
            let text = failure.stringValue ?? "\(failure)"
            throw RabbitMQError(.responderFailed, "the responder failed: \(text)", operation: "call")
        }
        return delivery
    }

    /// Replies to ``call(_:to:routingKey:properties:timeout:)`` that arrived after their call gave up (timed out
    /// or was cancelled), or that matched no call; they are dropped.
    public var droppedReplyCount: Int { replies.droppedReplyCount }
}
