import Foundation

/// A message the broker answered a basic.get with, copied out of librabbitmq's memory. (A consumer's deliveries
/// go to its ``DeliveryCollector`` part by part instead.)
struct InboundMessage: Sendable {
    var body: Data
    var properties: MessageProperties
    var exchange: String
    var routingKey: String
    var isRedelivered: Bool
    var deliveryTag: UInt64
    /// The consumer it was delivered to; `nil` for basic.get.
    var consumerTag: String?
    /// The channel it came on, which settles it.
    let link: ChannelLink
}

/// Where one consumer's deliveries go: handed to the I/O thread with the consumer's registration, and
/// implemented above the engine, which names no consuming type.
protocol DeliverySink: Sendable {
    /// Called once on the I/O thread, at registration: the object that collects the consumer's deliveries.
    func makeCollector() -> any DeliveryCollector
    /// Ends the stream at once (the consumer was registered on a channel that has closed).
    func finish(_ error: RabbitMQError?)
}

/// Collects one consumer's deliveries on the I/O thread and hands them over once per pass. Confined to that
/// thread.
protocol DeliveryCollector: AnyObject {
    /// Adds a delivery to the pass's batch. Its parts are passed one by one and owned, so that they move into
    /// the consumer's value without a copy (a delivery's properties alone are a dozen references).
    func collect(body: consuming Data, properties: consuming MessageProperties, exchange: consuming String,
                 routingKey: consuming String, isRedelivered: Bool, deliveryTag: UInt64, consumerTag: consuming String,
                 link: ChannelLink)
    /// Hands the pass's batch to the consumer, in one crossing.
    func handOver()
    /// Hands over what is collected, then ends the stream (`nil`: cancelled normally).
    func finish(_ error: RabbitMQError?)
    /// The channel `link` refers to has closed: its deliveries, collected or handed over and not yet taken, can no
    /// longer be settled (the broker requeues them) and are dropped; the stream ends with `error` unless it is
    /// `nil` (a consumer kept for recovery).
    func abandon(deliveriesOf link: ChannelLink, ending error: RabbitMQError?)
}
