import Logging

/// A RabbitMQ client: one connection, channels managed for you.
public final class RabbitMQClient: Sendable {
    /// The configuration the client was created with.
    public let configuration: Configuration
    let logger: Logger

    /// Creates a client. It connects when first used.
    public init(configuration: Configuration, logger: Logger = Logger(label: "rabbitmq")) {
        self.configuration = configuration
        self.logger = logger
    }
}
