import Foundation

/// A message delivered by the broker, to a consumer or by ``Channel/get(from:acknowledgement:)``.
///
/// Settle it exactly once with ``ack()``, ``nack(requeue:)`` or ``reject(requeue:)``, unless it was received
/// with automatic acknowledgement. Settling is cheap: it is queued for the connection's I/O thread, which
/// merges the acks of many deliveries into one frame where it can.
public struct Delivery: Sendable {
    /// The message body, copied once out of the connection's frame buffers.
    ///
    /// A large body (64 KiB or more) lives in memory that the connection reuses for later bodies once every copy
    /// of this `Data` is released, so that consuming large messages does not make the kernel map fresh pages for
    /// each one. Holding deliveries holds that memory; what is not needed again is freed within seconds.
    public let body: Data
    /// The message's properties and headers.
    public let properties: MessageProperties
    /// The exchange the message was published to (empty for the default exchange).
    public let exchange: String
    /// The routing key it was published with.
    public let routingKey: String
    /// Whether the broker delivered it before (to this or another consumer) without it being acked.
    public let isRedelivered: Bool
    /// The channel-scoped tag that identifies the delivery when settling it.
    public let deliveryTag: UInt64
    /// The consumer it was delivered to; `nil` for ``Channel/get(from:acknowledgement:)``.
    public let consumerTag: String?
    let link: ChannelLink
    /// The metric handles of the queue it came from, set by ``QueueWorker``; settling counts into them.
    var instruments: QueueInstruments?

    init(body: Data, properties: MessageProperties, exchange: String, routingKey: String, isRedelivered: Bool,
         deliveryTag: UInt64, consumerTag: String?, link: ChannelLink) {
        self.body = body
        self.properties = properties
        self.exchange = exchange
        self.routingKey = routingKey
        self.isRedelivered = isRedelivered
        self.deliveryTag = deliveryTag
        self.consumerTag = consumerTag
        self.link = link
    }

    /// The body as a UTF-8 string (invalid bytes are replaced).
    public var bodyString: String { String(decoding: body, as: UTF8.self) }

    /// Tells the broker the message was processed; it is removed from the queue.
    /// - Parameter multiple: also acknowledge every earlier unsettled delivery on the same channel.
    /// - Throws: ``RabbitMQError`` with ``RabbitMQError/Code/channelClosed`` (or the channel's closing code)
    ///   when its channel has closed: the broker has already requeued the message, and acking it on another
    ///   channel would be wrong.
    public func ack(multiple: Bool = false) async throws {
        try settle(.ack(deliveryTag: deliveryTag, multiple: multiple), "basic.ack")
        instruments?.recordAcked()
    }

    /// Tells the broker the message was not processed.
    /// - Parameters:
    ///   - requeue: put it back in the queue (`true`, the default) or drop or dead-letter it (`false`).
    ///   - multiple: also settle every earlier unsettled delivery on the same channel.
    public func nack(requeue: Bool = true, multiple: Bool = false) async throws {
        try settle(.nack(deliveryTag: deliveryTag, multiple: multiple, requeue: requeue), "basic.nack")
        instruments?.recordRejected()
    }

    /// Rejects the message: requeue it, or (with `requeue: false`) drop it or route it to the queue's
    /// dead-letter exchange.
    public func reject(requeue: Bool = true) async throws {
        try settle(.reject(deliveryTag: deliveryTag, requeue: requeue), "basic.reject")
        instruments?.recordRejected()
    }

    private func settle(_ settlement: Settlement, _ operation: String) throws {
        try link.checkOpen(operation)
        try link.submit(.settle(link, settlement))
    }
}
