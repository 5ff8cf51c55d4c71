/// The kind of a queue (`x-queue-type`).
///
/// Extensible: `QueueType(rawValue:)` names a type this library does not list.
public struct QueueType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    /// The type's name as the broker knows it, such as `quorum`.
    public var rawValue: String

    /// Creates a type from its name.
    public init(rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }

    /// A single-node queue; may be non-durable, exclusive or auto-delete.
    public static let classic = QueueType(rawValue: "classic")
    /// A replicated, durable queue (Raft); must be durable, not exclusive, not auto-delete, and named by the client.
    public static let quorum = QueueType(rawValue: "quorum")
    /// A replicated, append-only log read with offsets; the same constraints as a quorum queue.
    public static let stream = QueueType(rawValue: "stream")
}

/// What a queue does when it reaches its length limit (`x-overflow`).
public struct OverflowBehavior: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    /// The behaviour's name as the broker knows it, such as `reject-publish`.
    public var rawValue: String

    /// Creates a behaviour from its name.
    public init(rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }

    /// Drops (or dead-letters) the oldest messages to make room: `drop-head`, the broker's default.
    public static let dropHead = OverflowBehavior(rawValue: "drop-head")
    /// Refuses new messages; a publisher using confirms gets a `basic.nack`: `reject-publish`.
    public static let rejectPublish = OverflowBehavior(rawValue: "reject-publish")
    /// Refuses new messages and dead-letters them (classic queues only): `reject-publish-dlx`.
    public static let rejectPublishDeadLetter = OverflowBehavior(rawValue: "reject-publish-dlx")
}

/// How a quorum queue dead-letters its messages (`x-dead-letter-strategy`).
public struct DeadLetterStrategy: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    /// The strategy's name as the broker knows it, such as `at-least-once`.
    public var rawValue: String

    /// Creates a strategy from its name.
    public init(rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }

    /// Publishes a dead-lettered message without waiting for its target queues: `at-most-once`, the default (and
    /// the only way of classic queues). A message whose target is missing or unavailable is lost.
    public static let atMostOnce = DeadLetterStrategy(rawValue: "at-most-once")
    /// Keeps a dead-lettered message in the source queue until every target queue has confirmed it, and tries
    /// again while one is missing or unavailable: `at-least-once` (quorum queues, RabbitMQ 3.10 and later, with
    /// ``OverflowBehavior/rejectPublish``; otherwise the broker falls back to at most once).
    public static let atLeastOnce = DeadLetterStrategy(rawValue: "at-least-once")
}
