import Foundation

/// A message delivered by the broker, to a consumer or by ``ChannelOperations/get(from:acknowledgement:)``.
///
/// Settle it exactly once with ``ack(multiple:)``, ``nack(requeue:multiple:)`` or ``reject(requeue:)``, unless it
/// was received with automatic acknowledgement. Settling is synchronous and cheap, so it can be called from
/// synchronous code: it is queued for the connection's I/O thread, which merges the acks of many deliveries into one
/// frame where it can. Nothing waits for the broker: it does not answer settlements.
///
/// Settling a delivery whose channel has closed since (the connection was lost and recovered, the broker or the
/// application closed the channel, the client was closed) does nothing and does not throw: the broker requeued the
/// message when the channel closed and delivers it again. Such settlements are logged at debug and counted in the
/// `rabbitmq.settlements.stale` metric. Settling a delivery a second time throws
/// ``RabbitMQError/Code/alreadySettled``.
public struct Delivery: TraceableDelivery, Sendable {
    /// The message body, copied once out of the connection's frame buffers.
    ///
    /// A large body (64 KiB or more) lives in memory that the connection reuses for later bodies once every copy
    /// of this `Data` is released, so that consuming large messages does not make the kernel map fresh pages for
    /// each one. Holding deliveries holds that memory; what is not needed again is freed within seconds.
    public let body: Data
    /// The message's properties and headers.
    public let properties: MessageProperties
    /// The exchange this copy of the message was published to (empty for the default exchange). For a message a
    /// ``QueueWorker`` moved to a retry tier or the parking lot, that is the default exchange, from its second
    /// attempt on: ``originalExchange`` is the one it was first published to.
    public let exchange: String
    /// The routing key this copy was published with: the queue's name for a message that came back from a retry
    /// tier. ``originalRoutingKey`` is the one it was first published with.
    public let routingKey: String
    /// Whether the broker delivered it before (to this or another consumer) without it being acked.
    public let isRedelivered: Bool
    /// The channel-scoped tag that identifies the delivery when settling it.
    public let deliveryTag: UInt64
    /// The consumer it was delivered to; `nil` for ``ChannelOperations/get(from:acknowledgement:)``.
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

    /// The exchange the message was first published to: the `x-original-exchange` header a ``QueueWorker`` records
    /// when the message first moves to a retry tier or the parking lot; for a message the broker dead-lettered
    /// without it, the exchange of its first dead-lettering (`x-first-death-exchange`); else ``exchange``.
    public var originalExchange: String {
        if let exchange = properties.headers[RetryTopology.originalExchangeHeader]?.stringValue { return exchange }
        return firstDeath?.exchange ?? exchange
    }

    /// The routing key the message was first published with: the `x-original-routing-key` header, else the first
    /// routing key of its first dead-lettering, else ``routingKey`` (see ``originalExchange``).
    public var originalRoutingKey: String {
        if let key = properties.headers[RetryTopology.originalRoutingKeyHeader]?.stringValue { return key }
        return firstDeath?.routingKeys.first ?? routingKey
    }

    /// The `x-death` record of the message's first dead-lettering, named by the `x-first-death-*` headers.
    private var firstDeath: DeathRecord? {
        guard let queue = properties.headers["x-first-death-queue"]?.stringValue,
              let reason = properties.headers["x-first-death-reason"]?.stringValue
        else { return nil }
        return deaths.first { $0.queue == queue && $0.reason.rawValue == reason }
    }

    /// The request id the message carries (`x-request-id`), if any.
    public var requestID: String? { properties.requestID }

    /// The body as a UTF-8 string (invalid bytes are replaced).
    public var bodyString: String { String(decoding: body, as: UTF8.self) }

    /// Tells the broker the message was processed; it is removed from the queue.
    /// - Parameter multiple: also acknowledge every earlier unsettled delivery on the same channel.
    /// - Throws: ``RabbitMQError`` with ``RabbitMQError/Code/alreadySettled`` if the delivery was settled before
    ///   (or covered by an earlier `multiple` settlement, or acknowledged automatically); the first settlement
    ///   stands. Does nothing if its channel has closed: the broker has requeued the message.
    public func ack(multiple: Bool = false) throws(RabbitMQError) {
        guard try settle(.ack(deliveryTag: deliveryTag, multiple: multiple), "basic.ack") else { return }
        instruments?.recordAcked()
    }

    /// Tells the broker the message was not processed.
    /// - Parameters:
    ///   - requeue: put it back in the queue (`true`, the default) or drop or dead-letter it (`false`).
    ///   - multiple: also settle every earlier unsettled delivery on the same channel.
    /// - Throws: ``RabbitMQError`` with ``RabbitMQError/Code/alreadySettled`` if the delivery was settled before;
    ///   the first settlement stands. Does nothing if its channel has closed: the broker has requeued the message.
    public func nack(requeue: Bool = true, multiple: Bool = false) throws(RabbitMQError) {
        guard try settle(.nack(deliveryTag: deliveryTag, multiple: multiple, requeue: requeue), "basic.nack") else {
            return
        }
        instruments?.recordRejected()
    }

    /// Rejects the message: requeue it, or (with `requeue: false`) drop it or route it to the queue's
    /// dead-letter exchange.
    /// - Throws: ``RabbitMQError`` with ``RabbitMQError/Code/alreadySettled`` if the delivery was settled before;
    ///   the first settlement stands. Does nothing if its channel has closed: the broker has requeued the message.
    public func reject(requeue: Bool = true) throws(RabbitMQError) {
        guard try settle(.reject(deliveryTag: deliveryTag, requeue: requeue), "basic.reject") else { return }
        instruments?.recordRejected()
    }

    /// Whether its channel is still open, so that it can still be settled (one atomic load).
    var canBeSettled: Bool { link.isOpen }

    /// Records the settlement, once, and hands it to the I/O thread.
    /// - Returns: `false` if its channel has closed: the settlement is dropped (the broker has requeued the
    ///   delivery).
    /// - Throws: ``RabbitMQError/Code/alreadySettled`` if the delivery was settled before.
    func settle(_ settlement: Settlement, _ operation: String) throws(RabbitMQError) -> Bool {
        guard link.markSettled(settlement) else {
            throw RabbitMQError(
                .alreadySettled, "delivery \(deliveryTag) of channel \(link.number) was already settled (acked, "
                    + "nacked or rejected, covered by an earlier multiple settlement, or acknowledged automatically)",
                operation: operation)
        }
        // The I/O thread drops it as well if the channel closes before the settlement gets there.
        guard link.isOpen, (try? link.submit(.settle(link, settlement))) != nil else {
            link.dropStaleSettlement(settlement)
            return false
        }
        return true
    }
}
