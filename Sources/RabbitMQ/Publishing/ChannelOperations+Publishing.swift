import Foundation

extension ChannelOperations {
    /// Publishes `value` encoded as JSON (content type `application/json` unless `properties` sets one) and
    /// returns once the broker has confirmed it.
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` if `value` cannot be encoded, else what
    ///   ``publish(_:to:routingKey:properties:mandatory:)`` throws.
    nonisolated(nonsending) public func publish(
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
}
