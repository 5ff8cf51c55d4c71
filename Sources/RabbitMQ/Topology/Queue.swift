/// A queue to declare: where messages wait for consumers.
///
/// ```swift
/// let coupons = Queue("orders.coupon", arguments: QueueArguments(type: .quorum, deliveryLimit: 5))
/// let replies = Queue.temporary()
/// ```
///
/// Declaring a queue that exists with the same settings does nothing; with different settings, the broker
/// refuses with 406 PRECONDITION_FAILED and closes the channel.
public struct Queue: Sendable, Hashable {
    /// The queue's name: at most 255 bytes of UTF-8, not starting with `amq.` (reserved by the broker).
    /// Empty asks the broker to choose a unique name (`amq.gen-…`), returned by the declaration.
    public var name: String
    /// Whether the queue survives a broker restart. Default `true`.
    public var durable: Bool
    /// Whether only the declaring connection may use the queue, which is deleted when that connection closes.
    /// Default `false`.
    public var exclusive: Bool
    /// Whether the broker deletes the queue when its last consumer is cancelled (a queue that never had one
    /// stays). Default `false`.
    public var autoDelete: Bool
    /// The optional `x-` arguments. Default none.
    public var arguments: QueueArguments

    /// Creates a queue description.
    ///
    /// - Parameters:
    ///   - name: The queue's name; empty for a server-named queue.
    ///   - durable: Whether it survives a broker restart. Default `true`.
    ///   - exclusive: Whether it belongs to the declaring connection. Default `false`.
    ///   - autoDelete: Whether it is deleted with its last consumer. Default `false`.
    ///   - arguments: The `x-` arguments. Default none.
    public init(
        _ name: String,
        durable: Bool = true,
        exclusive: Bool = false,
        autoDelete: Bool = false,
        arguments: QueueArguments = QueueArguments()
    ) {
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.arguments = arguments
    }

    /// A server-named, non-durable, exclusive, auto-delete queue: private to the connection that declares it and
    /// gone with it, such as a reply queue or a subscriber's copy of a fanout.
    ///
    /// Each declaration creates a new queue; the broker returns its name.
    ///
    /// - Parameter arguments: The `x-` arguments. Default none.
    public static func temporary(arguments: QueueArguments = QueueArguments()) -> Queue {
        Queue("", durable: false, exclusive: true, autoDelete: true, arguments: arguments)
    }

    /// Whether the broker chooses the name (``name`` is empty).
    public var isServerNamed: Bool { name.isEmpty }

    /// The argument table to send with `queue.declare`: ``QueueArguments/table``.
    public var declareArguments: FieldTable { arguments.table }

    /// Checks what the broker would refuse, without contacting it.
    ///
    /// - Throws: ``RabbitMQError/Code/invalidArgument`` (operation `queue.declare`) when the name starts with
    ///   `amq.`, is longer than 255 bytes or contains CR or LF; when a quorum or stream queue is not durable, is
    ///   exclusive, is auto-delete or is server-named; or when ``QueueArguments/validate()`` fails.
    public func validate() throws(RabbitMQError) {
        let operation = "queue.declare"
        try NameValidation.validateEntityName(name, as: "queue name", operation: operation)
        if name.hasPrefix(Exchange.reservedPrefix) {
            throw RabbitMQError(
                .invalidArgument,
                "queue name \(NameValidation.quoted(name)) starts with the reserved prefix \"amq.\"; "
                    + "the broker refuses to create it (403)",
                operation: operation
            )
        }
        if let type = arguments.effectiveType, type == .quorum || type == .stream {
            var problems: [String] = []
            if !durable { problems.append("durable") }
            if exclusive { problems.append("not exclusive") }
            if autoDelete { problems.append("not auto-delete") }
            if isServerNamed { problems.append("named by the client") }
            if !problems.isEmpty {
                let subject = isServerNamed
                    ? "a server-named \(type) queue" : "\(type) queue \(NameValidation.quoted(name))"
                throw RabbitMQError(
                    .invalidArgument,
                    "\(subject) must be \(problems.joined(separator: ", ")): \(type) queues are always durable, "
                        + "shared and named by the client",
                    operation: operation
                )
            }
        }
        try arguments.validate()
    }
}
