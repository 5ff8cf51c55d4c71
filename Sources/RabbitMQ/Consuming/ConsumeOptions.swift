/// How a consumer receives messages.
public struct ConsumeOptions: Sendable, Hashable {
    /// When deliveries are acknowledged.
    public enum Acknowledgement: Sendable, Hashable {
        /// The application settles each delivery with ``Delivery/ack(multiple:)``, ``Delivery/nack(requeue:multiple:)``
        /// or ``Delivery/reject(requeue:)``. The default.
        case manual
        /// The library acknowledges each delivery as the sequence hands it over. Unlike AMQP's `no-ack`, the
        /// prefetch limit still applies, so a slow consumer never buffers more than the prefetch.
        case automatic
        /// AMQP `no-ack`: the broker considers each message acknowledged as it sends it. Nothing is settled (settling
        /// throws ``RabbitMQError/Code/alreadySettled``), the prefetch limit does not apply, and messages on the
        /// way when the connection or channel fails are lost. Direct reply-to (`amq.rabbitmq.reply-to`) requires it;
        /// ``RabbitMQClient/call(_:to:routingKey:properties:timeout:)`` uses it for its replies.
        case noAck
    }

    /// When deliveries are acknowledged. Default ``Acknowledgement/manual``.
    public var acknowledgement: Acknowledgement
    /// Whether this must be the queue's only consumer. Default `false`.
    public var exclusive: Bool
    /// Consumer priority (`x-priority`): higher-priority consumers get messages first. Default `nil`.
    public var priority: Int32?
    /// Consumer tag; `nil` lets the library generate a unique one. Default `nil`.
    public var consumerTag: String?
    /// Extra consumer arguments. Default empty.
    public var arguments: FieldTable
    /// Where to start reading a stream queue (`x-stream-offset`); `nil` for other queues. When set, the consumer
    /// also tracks the offset of the last delivery it handed out, and connection recovery resumes from the one
    /// after it (``Consumer/lastStreamOffset``). A stream consumer needs a prefetch and acknowledgements at the
    /// broker: ``Acknowledgement/manual`` or ``Acknowledgement/automatic``, not ``Acknowledgement/noAck`` (refused
    /// before anything is sent). Default `nil` (the broker then starts at `next`).
    public var streamOffset: StreamOffset?

    /// Creates options; every argument has its documented default.
    public init(acknowledgement: Acknowledgement = .manual, exclusive: Bool = false, priority: Int32? = nil,
                consumerTag: String? = nil, arguments: FieldTable = [:], streamOffset: StreamOffset? = nil) {
        self.acknowledgement = acknowledgement
        self.exclusive = exclusive
        self.priority = priority
        self.consumerTag = consumerTag
        self.arguments = arguments
        self.streamOffset = streamOffset
    }
}
