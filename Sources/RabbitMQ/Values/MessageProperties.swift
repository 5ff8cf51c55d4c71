import Foundation

/// The AMQP basic properties of a message: everything but its body and routing.
///
/// All fields are optional; an unset field is not sent. ``deliveryMode`` defaults to ``DeliveryMode/persistent``
/// on publish, since the library exists to deliver messages safely.
public struct MessageProperties: Sendable, Hashable {
    /// MIME type of the body, such as `application/json`.
    public var contentType: String?
    /// Encoding of the body, such as `gzip`.
    public var contentEncoding: String?
    /// Application headers. The library's own headers (retry attempts, request id, trace context) live here too.
    public var headers: FieldTable
    /// Whether the broker writes the message to disk (persistent) or keeps it in memory only (transient).
    public var deliveryMode: DeliveryMode?
    /// Priority, 0 to 9 by convention, for queues declared with a maximum priority.
    public var priority: UInt8?
    /// Correlates a reply with its request.
    public var correlationID: String?
    /// The queue a reply should go to.
    public var replyTo: String?
    /// Per-message time to live, whole milliseconds (AMQP carries it as a decimal string).
    public var expiration: Duration?
    /// Application message identifier; the default key for deduplication.
    public var messageID: String?
    /// Creation time, with one-second resolution.
    public var timestamp: Date?
    /// Application message type name, such as `order.placed`.
    public var type: String?
    /// The user that published; when set, RabbitMQ checks it equals the connection's user.
    public var userID: String?
    /// The publishing application's name.
    public var appID: String?

    /// Creates properties; every argument is optional.
    public init(
        contentType: String? = nil,
        contentEncoding: String? = nil,
        headers: FieldTable = [:],
        deliveryMode: DeliveryMode? = nil,
        priority: UInt8? = nil,
        correlationID: String? = nil,
        replyTo: String? = nil,
        expiration: Duration? = nil,
        messageID: String? = nil,
        timestamp: Date? = nil,
        type: String? = nil,
        userID: String? = nil,
        appID: String? = nil
    ) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headers = headers
        self.deliveryMode = deliveryMode
        self.priority = priority
        self.correlationID = correlationID
        self.replyTo = replyTo
        self.expiration = expiration
        self.messageID = messageID
        self.timestamp = timestamp
        self.type = type
        self.userID = userID
        self.appID = appID
    }
}

/// Whether the broker keeps a message on disk.
public enum DeliveryMode: UInt8, Sendable, Hashable {
    /// Kept in memory only; lost when the broker restarts.
    case transient = 1
    /// Written to disk when routed to a durable queue.
    case persistent = 2
}
