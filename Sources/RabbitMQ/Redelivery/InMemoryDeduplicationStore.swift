import Foundation
import Synchronization

/// An in-process ``DeduplicationStore`` that remembers at most ``capacity`` processed keys, each for
/// ``retention``. The oldest keys are forgotten first. It forgets everything when the process stops, and is not
/// shared with other processes.
public final class InMemoryDeduplicationStore: DeduplicationStore {
    private struct State {
        /// When each key was processed: the time since the store was created.
        var processed: [String: Duration] = [:]
        var order: [String] = []
        var orderStart = 0
        /// When each current claim expires: the time since the store was created.
        var claims: [String: Duration] = [:]
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

    /// Creates a store whose retention and claims are timed by `clock`: a test clock in unit tests.
    init<C: Clock>(capacity: Int, retention: Duration, clock: C) where C.Duration == Duration {
        self.capacity = max(1, capacity)
        self.retention = retention
        let start = clock.now
        elapsed = { start.duration(to: clock.now) }
    }

    public func claim(_ id: String, for ttl: Duration) async throws -> DeduplicationClaim {
        state.withLock { state in
            let now = elapsed()
            if let processedAt = state.processed[id], now - processedAt < retention { return .processed }
            if let expiry = state.claims[id], now < expiry { return .inProgress }
            state.claims[id] = now + ttl
            return .claimed
        }
    }

    public func markProcessed(_ id: String) async throws {
        state.withLock { state in
            state.claims.removeValue(forKey: id)
            if state.processed.updateValue(elapsed(), forKey: id) == nil { state.order.append(id) }
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

    public func release(_ id: String) async throws {
        _ = state.withLock { $0.claims.removeValue(forKey: id) }
    }

    /// Keys currently remembered as processed.
    public var count: Int { state.withLock { $0.processed.count } }
}
