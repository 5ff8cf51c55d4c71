/// A binding to declare: a rule by which a source exchange routes messages to a queue or to another exchange.
///
/// ```swift
/// Binding.queue("orders.coupon", to: "orders", routingKey: "order.placed")   // queue.bind
/// Binding.exchange("audit", to: "orders", routingKey: "#")                  // exchange.bind
/// ```
///
/// A binding is identified by all four of its parts, so two bindings that differ only in their arguments are two
/// bindings. Declaring a binding that exists does nothing.
public struct Binding: Sendable, Hashable {
    /// What a binding routes to.
    public enum Destination: Sendable, Hashable {
        /// A queue, by name (`queue.bind`).
        case queue(String)
        /// An exchange, by name (`exchange.bind`, a RabbitMQ extension).
        case exchange(String)

        /// The destination's name.
        public var name: String {
            switch self {
            case .queue(let name), .exchange(let name): name
            }
        }
    }

    /// The exchange messages come from. Not empty: the default exchange cannot be bound.
    public var source: String
    /// The queue or exchange messages go to.
    public var destination: Destination
    /// The key (direct), pattern (topic) or nothing (fanout, headers) the binding matches. Default empty.
    public var routingKey: String
    /// Binding arguments, such as `x-match` and the headers to match for a headers exchange. Default empty.
    public var arguments: FieldTable

    /// Creates a binding.
    ///
    /// - Parameters:
    ///   - source: The exchange messages come from.
    ///   - destination: The queue or exchange they go to.
    ///   - routingKey: The key or pattern to match. Default empty.
    ///   - arguments: Binding arguments. Default empty.
    public init(
        from source: String, to destination: Destination, routingKey: String = "", arguments: FieldTable = [:]
    ) {
        self.source = source
        self.destination = destination
        self.routingKey = routingKey
        self.arguments = arguments
    }

    /// Binds the queue `queue` to the exchange `exchange`.
    ///
    /// - Parameters:
    ///   - queue: The destination queue's name.
    ///   - exchange: The source exchange's name.
    ///   - routingKey: The key or pattern to match. Default empty.
    ///   - arguments: Binding arguments. Default empty.
    public static func queue(
        _ queue: String, to exchange: String, routingKey: String = "", arguments: FieldTable = [:]
    ) -> Binding {
        Binding(from: exchange, to: .queue(queue), routingKey: routingKey, arguments: arguments)
    }

    /// Binds the exchange `destination` to the exchange `source`: messages routed by `source` also go through
    /// `destination`.
    ///
    /// - Parameters:
    ///   - destination: The destination exchange's name.
    ///   - source: The source exchange's name.
    ///   - routingKey: The key or pattern to match. Default empty.
    ///   - arguments: Binding arguments. Default empty.
    public static func exchange(
        _ destination: String, to source: String, routingKey: String = "", arguments: FieldTable = [:]
    ) -> Binding {
        Binding(from: source, to: .exchange(destination), routingKey: routingKey, arguments: arguments)
    }

    /// The AMQP method that declares this binding: `queue.bind` or `exchange.bind`.
    var operation: String {
        switch destination {
        case .queue: "queue.bind"
        case .exchange: "exchange.bind"
        }
    }

    /// Checks what the broker would refuse, without contacting it. The source and destination need not be in the
    /// same ``Topology``: they may exist already.
    ///
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` (operation `queue.bind` or `exchange.bind`) when the source
    ///   or the destination name is empty (the default exchange cannot be bound, and an empty queue name would
    ///   mean the channel's last declared queue), when a name or the routing key is longer than 255 bytes, or
    ///   when an argument key is longer than 128 bytes.
    public func validate() throws(RabbitMQError) {
        let operation = operation
        guard !source.isEmpty else {
            throw RabbitMQError(
                .invalidArgument,
                "binding to \(describe(destination)) has an empty source: the default exchange cannot be bound",
                operation: operation
            )
        }
        try NameValidation.validate(source, as: "source exchange name", operation: operation)
        switch destination {
        case .queue(let name):
            guard !name.isEmpty else {
                throw RabbitMQError(
                    .invalidArgument,
                    "binding from exchange \(NameValidation.quoted(source)) has an empty queue name; bind a "
                        + "server-named queue with the name its declaration returned",
                    operation: operation
                )
            }
            try NameValidation.validate(name, as: "destination queue name", operation: operation)
        case .exchange(let name):
            guard !name.isEmpty else {
                throw RabbitMQError(
                    .invalidArgument,
                    "binding from exchange \(NameValidation.quoted(source)) has an empty destination exchange: "
                        + "the default exchange cannot be bound",
                    operation: operation
                )
            }
            try NameValidation.validate(name, as: "destination exchange name", operation: operation)
        }
        try NameValidation.validate(routingKey, as: "routing key", operation: operation)
        try NameValidation.validate(arguments, as: "binding arguments", operation: operation)
    }

    private func describe(_ destination: Destination) -> String {
        switch destination {
        case .queue(let name): "queue \(NameValidation.quoted(name))"
        case .exchange(let name): "exchange \(NameValidation.quoted(name))"
        }
    }
}
