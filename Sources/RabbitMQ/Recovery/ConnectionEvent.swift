/// Something that happened to the client's connection. See ``RabbitMQClient/connectionEvents()``.
public enum ConnectionEvent: Sendable {
    /// Connected (or reconnected) to an endpoint.
    case connected(endpoint: String)
    /// The connection failed; recovery starts if enabled.
    case connectionLost(RabbitMQError)
    /// A reconnection attempt is about to start after `delay`.
    case reconnecting(attempt: Int, delay: Duration)
    /// The connection, topology, channels and consumers are back.
    case recovered(endpoint: String)
    /// Recovery gave up (attempts exhausted, or a permanent error such as a changed password).
    case recoveryFailed(RabbitMQError)
    /// The broker stopped accepting publishes (a resource alarm); publishes wait.
    case blocked(reason: String)
    /// The broker accepts publishes again.
    case unblocked
    /// The client closed the connection.
    case closed
}
