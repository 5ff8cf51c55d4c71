import Foundation

/// What ``DeduplicationStore/claim(_:for:)`` found for a key.
public enum DeduplicationClaim: Sendable, Hashable {
    /// The key is now claimed by the caller, which processes the delivery, then calls
    /// ``DeduplicationStore/markProcessed(_:)`` or, if processing failed, ``DeduplicationStore/release(_:)``.
    case claimed
    /// The key was processed already: the delivery is a duplicate, acked without running the handler.
    case processed
    /// Another handler (in this process or another one) holds a claim on the key that has not expired: the
    /// delivery is requeued after ``Deduplicator/inProgressDelay``, to be seen again once that handler finished
    /// (then it is a duplicate) or failed (then it is processed).
    case inProgress
}

/// Where a ``Deduplicator`` remembers the messages being processed and processed.
///
/// A claim expires after the time-to-live given to ``claim(_:for:)``: the claim of a handler that crashed (its
/// process killed, its machine lost) does not block the key for ever, and a later delivery claims it again.
/// ``InMemoryDeduplicationStore`` suits a single process. For several processes on one host, or replicas on
/// several machines, use a durable store: `SQLiteDeduplicationStore` (product `RabbitMQSQLite`) or
/// `PostgresDeduplicationStore` (product `RabbitMQPostgres`).
public protocol DeduplicationStore: Sendable {
    /// Claims `id` for processing, for at most `ttl` unless ``markProcessed(_:)`` or ``release(_:)`` comes first.
    /// An expired claim of someone else is taken over.
    func claim(_ id: String, for ttl: Duration) async throws -> DeduplicationClaim
    /// Records that processing under `id` succeeded: later deliveries with the id are duplicates.
    func markProcessed(_ id: String) async throws
    /// Releases a claim after a failure, so that a redelivery can be processed. An id already processed stays so.
    func release(_ id: String) async throws
}

/// Suppresses duplicate deliveries, keyed by message id or by a business id.
///
/// RabbitMQ delivers at least once: a message can arrive twice when a consumer fails after processing but
/// before its ack reaches the broker, when a connection drops with deliveries unacknowledged, when a
/// publisher resends after a lost confirm, or when a retry is republished and the worker stops before acking
/// the original. A worker with a deduplicator acks such duplicates without running the handler, and requeues
/// (after ``inProgressDelay``) a delivery whose key another handler is processing right now.
///
/// The claim and the record of success are separate from the handler's own side effect: a process that dies
/// after the effect and before ``DeduplicationStore/markProcessed(_:)`` leaves a claim that expires, and the
/// redelivery runs the handler again. To make the effect and the record commit together, have the handler
/// call the store's `processOnce(id:_:)` (SQLite and PostgreSQL stores), which writes both in one transaction.
public struct Deduplicator: Sendable {
    /// Where claimed and processed keys are kept.
    public var store: any DeduplicationStore
    /// The key of a delivery; `nil` means it cannot be deduplicated and is always processed.
    public var key: @Sendable (Delivery) -> String?
    /// How long a claim holds before another delivery of the key may take it over: longer than a handler runs
    /// (``QueueWorker/Configuration/handlerTimeout`` is 300 s by default). Default 600 s.
    public var claimTTL: Duration
    /// How long a delivery whose key is claimed by another handler waits before it is requeued. Default 1 s.
    public var inProgressDelay: Duration

    /// Deduplicates by ``MessageProperties/messageID``.
    public init(store: any DeduplicationStore = InMemoryDeduplicationStore(), claimTTL: Duration = .seconds(600),
                inProgressDelay: Duration = .seconds(1)) {
        self.init(store: store, claimTTL: claimTTL, inProgressDelay: inProgressDelay) { $0.properties.messageID }
    }

    /// Deduplicates by a key taken from the delivery, such as a business id decoded from the body.
    public init(store: any DeduplicationStore = InMemoryDeduplicationStore(), claimTTL: Duration = .seconds(600),
                inProgressDelay: Duration = .seconds(1), key: @escaping @Sendable (Delivery) -> String?) {
        self.store = store
        self.key = key
        self.claimTTL = claimTTL
        self.inProgressDelay = inProgressDelay
    }
}
