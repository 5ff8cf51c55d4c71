/// The log metadata keys of the library, in one place so that every log line names things the same way.
///
/// Connection events are logged at info; per-message detail only at debug and trace. No password is ever logged.
enum LogMetadataKey {
    /// The connection's name (or its first endpoint).
    static let connection = "rabbitmq.connection"
    /// The channel number.
    static let channel = "rabbitmq.channel"
    /// An exchange name.
    static let exchange = "rabbitmq.exchange"
    /// A queue name.
    static let queue = "rabbitmq.queue"
    /// A routing key.
    static let routingKey = "rabbitmq.routing_key"
    /// A delivery tag.
    static let deliveryTag = "rabbitmq.delivery_tag"
    /// A message id.
    static let messageID = "rabbitmq.message_id"
    /// A request id (`x-request-id`).
    static let requestID = "rabbitmq.request_id"
    /// What happened to a delivery (acked, retried, parked...).
    static let outcome = "rabbitmq.outcome"
    /// How long a handler ran.
    static let duration = "rabbitmq.duration"
    /// An error.
    static let error = "error"
}
