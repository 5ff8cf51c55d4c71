import Synchronization

/// Hands events to any number of subscribers, each an `AsyncStream` that keeps the latest 100 events its reader
/// has not taken yet (an event stream must never grow without bound, nor block the code that emits).
final class EventBroadcaster<Event: Sendable>: Sendable {
    private struct State {
        var subscribers: [UInt64: AsyncStream<Event>.Continuation] = [:]
        var nextID: UInt64 = 0
        var isFinished = false
    }

    private let state = StateLock(State())

    /// Events a subscriber's stream keeps for its reader.
    static var bufferSize: Int { 100 }

    /// A new stream of the events emitted from now on; already finished once ``finish()`` has been called.
    func subscribe() -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(Self.bufferSize))
        let id = state.withLock { state -> UInt64? in
            guard !state.isFinished else { return nil }
            state.nextID += 1
            state.subscribers[state.nextID] = continuation
            return state.nextID
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Hands `event` to every subscriber.
    func emit(_ event: Event) {
        let subscribers = state.withLock { Array($0.subscribers.values) }
        for subscriber in subscribers { subscriber.yield(event) }
    }

    /// Ends every stream after the events it holds; later subscriptions get a finished stream.
    func finish() {
        // Finish outside the lock: a stream's onTermination handler takes it to unsubscribe.
        let subscribers = state.withLock { state in
            state.isFinished = true
            defer { state.subscribers.removeAll() }
            return Array(state.subscribers.values)
        }
        for subscriber in subscribers { subscriber.finish() }
    }
}
