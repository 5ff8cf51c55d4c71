import Foundation
import Synchronization

/// Where a ``Deduplicator`` remembers the messages it has processed.
///
/// Implement it over a shared store (a database table with a unique key, Redis `SET NX`) when several
/// processes consume the same queue; ``InMemoryDeduplicationStore`` suits a single process.
public protocol DeduplicationStore: Sendable {
    /// Claims `key` for processing. Returns `false` if it was processed already or is being processed now.
    func claim(_ key: String) async throws -> Bool
    /// Records that processing under `key` succeeded: later deliveries with the key are duplicates.
    func commit(_ key: String) async throws
    /// Releases a claim after a failure, so that a redelivery can be processed.
    func release(_ key: String) async throws
}

/// Suppresses duplicate deliveries, keyed by message id or by a business id.
///
/// RabbitMQ delivers at least once: a message can arrive twice when a consumer fails after processing but
/// before its ack reaches the broker, when a connection drops with deliveries unacknowledged, when a
/// publisher resends after a lost confirm, or when a retry is republished and the worker stops before acking
/// the original. A worker with a deduplicator acks such duplicates without running the handler.
public struct Deduplicator: Sendable {
    /// Where processed keys are kept.
    public var store: any DeduplicationStore
    /// The key of a delivery; `nil` means it cannot be deduplicated and is always processed.
    public var key: @Sendable (Delivery) -> String?

    /// Deduplicates by ``MessageProperties/messageID``.
    public init(store: any DeduplicationStore = InMemoryDeduplicationStore()) {
        self.store = store
        self.key = { $0.properties.messageID }
    }

    /// Deduplicates by a key taken from the delivery, such as a business id decoded from the body.
    public init(store: any DeduplicationStore = InMemoryDeduplicationStore(),
                key: @escaping @Sendable (Delivery) -> String?) {
        self.store = store
        self.key = key
    }
}

/// An in-process ``DeduplicationStore`` that remembers at most ``capacity`` keys, each for ``retention``.
/// The oldest keys are forgotten first.
public final class InMemoryDeduplicationStore: DeduplicationStore {
    private struct State {
        /// When each key was processed: the time since the store was created.
        var processed: [String: Duration] = [:]
        var order: [String] = []
        var orderStart = 0
        var inProgress: Set<String> = []
    }

    /// Most keys remembered. Default 100,000.
    public let capacity: Int
    /// How long a key is remembered. Default 24 hours.
    public let retention: Duration
    /// The time since the store was created, on its clock.
    private let elapsed: @Sendable () -> Duration
    private let state = StateLock(State())

    /// Creates a store.
    public convenience init(capacity: Int = 100_000, retention: Duration = .seconds(86_400)) {
        self.init(capacity: capacity, retention: retention, clock: ContinuousClock())
    }

    /// Creates a store whose retention is timed by `clock`: a test clock in unit tests.
    init<C: Clock>(capacity: Int, retention: Duration, clock: C) where C.Duration == Duration {
        self.capacity = max(1, capacity)
        self.retention = retention
        let start = clock.now
        elapsed = { start.duration(to: clock.now) }
    }

    public func claim(_ key: String) async throws -> Bool {
        state.withLock { state in
            if let processedAt = state.processed[key], elapsed() - processedAt < retention { return false }
            return state.inProgress.insert(key).inserted
        }
    }

    public func commit(_ key: String) async throws {
        state.withLock { state in
            state.inProgress.remove(key)
            if state.processed.updateValue(elapsed(), forKey: key) == nil { state.order.append(key) }
            while state.processed.count > capacity, state.orderStart < state.order.count {
                state.processed.removeValue(forKey: state.order[state.orderStart])
                state.orderStart += 1
            }
            if state.orderStart > capacity {
                state.order.removeFirst(state.orderStart)
                state.orderStart = 0
            }
        }
    }

    public func release(_ key: String) async throws {
        _ = state.withLock { $0.inProgress.remove(key) }
    }

    /// Keys currently remembered as processed.
    public var count: Int { state.withLock { $0.processed.count } }
}
