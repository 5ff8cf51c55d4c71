import Foundation

/// The operations that run on a channel, written once for ``Channel`` and ``RabbitMQClient``.
///
/// A ``Channel`` runs each on itself. A ``RabbitMQClient`` runs each on one of the channels it pools, so that a
/// channel error (404, 406) fails only the call that caused it. Every operation checks its input (names, sizes,
/// arguments) before contacting the broker, and waits for a reply at most the configured request timeout.
///
/// ```swift
/// try await client.declare(topology)
/// let info = try await client.inspectQueue("orders.coupon")
/// try await client.publish(body, to: "orders", routingKey: "order.placed")   // returns once confirmed
/// ```
public protocol ChannelOperations: Sendable {
    /// Runs `body` with a channel: a ``Channel`` passes itself; a ``RabbitMQClient`` passes a pooled channel, which
    /// goes back to the pool if it is still open afterwards.
    func withChannel<T: Sendable>(_ body: (Channel) async throws -> T) async throws -> T

    /// Publishes a message and returns once the broker has confirmed it (on a ``Channel`` without publisher
    /// confirms, once it is written). See ``RabbitMQClient/publish(_:to:routingKey:properties:mandatory:)`` and
    /// ``Channel/publish(_:to:routingKey:properties:mandatory:)``.
    nonisolated(nonsending) func publish(_ body: Data, to exchange: String, routingKey: String,
                                         properties: MessageProperties, mandatory: Bool) async throws
}
