import Foundation

/// A message written to an outbox in the application's own database transaction, published later by an
/// ``OutboxRelay``.
///
/// Every event has a message id (``MessageProperties/messageID``): the one given, else a random UUID assigned when
/// the event is created. It is stored with the event, so a copy published again after a relay's crash or a lost
/// confirm carries the same id, and a consumer with a ``Deduplicator`` keyed by message id drops it.
public struct OutboxEvent: Sendable, Hashable {
    /// The exchange to publish to; `""` is the default exchange.
    public var exchange: String
    /// The routing key.
    public var routingKey: String
    /// The message body.
    public var body: Data
    /// Headers and basic properties; ``MessageProperties/messageID`` is always set.
    public var properties: MessageProperties
    /// Events with the same key are published one at a time, in the order they were written, each only after the
    /// previous one is confirmed (an order id, an account id). Events without a key have no order among themselves.
    public var aggregateKey: String?

    /// The message id the event is published with.
    public var messageID: String { properties.messageID ?? "" }

    /// Creates an event.
    /// - Parameters:
    ///   - exchange: the exchange to publish to.
    ///   - routingKey: the routing key.
    ///   - body: the message body.
    ///   - properties: headers and basic properties; a missing message id is set to a random UUID. Messages are
    ///     persistent unless `properties` says otherwise.
    ///   - aggregateKey: the key whose events keep their order; `nil` for none.
    public init(exchange: String, routingKey: String, body: Data, properties: MessageProperties = MessageProperties(),
                aggregateKey: String? = nil) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        var properties = properties
        if properties.messageID == nil { properties.messageID = UUID().uuidString.lowercased() }
        self.properties = properties
        self.aggregateKey = aggregateKey
    }

    /// Creates an event whose body is `value` encoded as JSON (content type `application/json` unless
    /// `properties` sets one).
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` if `value` cannot be encoded.
    public init(json value: some Encodable, exchange: String, routingKey: String,
                properties: MessageProperties = MessageProperties(), aggregateKey: String? = nil,
                encoder: JSONEncoder = JSONEncoder()) throws {
        let message = try Channel.jsonMessage(value, properties: properties, encoder: encoder)
        self.init(exchange: exchange, routingKey: routingKey, body: message.body, properties: message.properties,
                  aggregateKey: aggregateKey)
    }

    /// Checks what publishing the event would refuse without contacting the broker (names, header keys, body
    /// size), so that an outbox refuses a bad event in the application's transaction rather than keeping it.
    /// - Throws: ``RabbitMQError`` with ``RabbitMQError/Code/invalidArgument`` or
    ///   ``RabbitMQError/Code/messageTooLarge``.
    public func validate() throws {
        try Channel.validatePublish(body, to: exchange, routingKey: routingKey, properties: properties)
    }
}

/// An event kept by an ``OutboxStore``, with its place in the outbox.
public struct OutboxRecord: Sendable, Hashable {
    /// The event's position in the outbox: larger for events written later. The relay publishes the events of one
    /// aggregate key in this order.
    public var sequence: Int64
    /// The event.
    public var event: OutboxEvent
    /// Failed attempts to publish it so far.
    public var attempts: Int

    /// Creates a record.
    public init(sequence: Int64, event: OutboxEvent, attempts: Int = 0) {
        self.sequence = sequence
        self.event = event
        self.attempts = attempts
    }
}
