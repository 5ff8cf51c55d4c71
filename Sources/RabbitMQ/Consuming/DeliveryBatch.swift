import Foundation
import DequeModule

/// A consumer's deliveries of the current I/O pass, not yet handed to its ``DeliveryBuffer``. Created and used on
/// the I/O thread only.
final class DeliveryBatch: DeliveryCollector {
    let buffer: DeliveryBuffer
    private var deliveries: Deque<Delivery> = []

    init(buffer: DeliveryBuffer) {
        self.buffer = buffer
    }

    func collect(body: consuming Data, properties: consuming MessageProperties, exchange: consuming String,
                 routingKey: consuming String, isRedelivered: Bool, deliveryTag: UInt64, consumerTag: consuming String,
                 link: ChannelLink) {
        deliveries.append(Delivery(body: body, properties: properties, exchange: exchange, routingKey: routingKey,
                                   isRedelivered: isRedelivered, deliveryTag: deliveryTag, consumerTag: consumerTag,
                                   link: link))
    }

    func handOver() {
        buffer.push(&deliveries)
    }

    func finish(_ error: RabbitMQError?) {
        if !deliveries.isEmpty { buffer.push(&deliveries) }
        buffer.finish(error)
    }

    func abandon(deliveriesOf link: ChannelLink, ending error: RabbitMQError?) {
        deliveries.removeAll()
        buffer.drop(deliveriesOf: link)
        if let error { buffer.finish(error) }
    }
}

extension DeliveryBuffer: DeliverySink {
    func makeCollector() -> any DeliveryCollector {
        DeliveryBatch(buffer: self)
    }
}

extension Delivery {
    /// The delivery of a message the engine received.
    init(_ message: consuming InboundMessage) {
        self.init(body: message.body, properties: message.properties, exchange: message.exchange,
                  routingKey: message.routingKey, isRedelivered: message.isRedelivered,
                  deliveryTag: message.deliveryTag, consumerTag: message.consumerTag, link: message.link)
    }
}
