import DequeModule
import Synchronization

/// Carries one consumer's deliveries from the I/O thread to the consuming task, a batch per crossing.
///
/// The I/O thread appends every delivery it read in one pass at once and resumes the consumer at most once;
/// the consumer takes everything buffered in one call. The broker's prefetch bounds what can be buffered,
/// since it sends no more while that many deliveries are unacknowledged.
final class DeliveryBuffer: Sendable {
    private struct State {
        var buffered: Deque<Delivery> = []
        var waiter: CheckedContinuation<Deque<Delivery>, any Error>?
        var finished = false
        var failure: RabbitMQError?
    }

    private let state = StateLock(State())

    /// Appends a batch (the I/O thread's `batch` is left empty).
    ///
    /// An empty batch changes nothing: a waiting iterator resumed with nothing would end the sequence, as if the
    /// consumer had been cancelled (a lost connection empties the batch of its last pass, and the sequence must
    /// live on through recovery).
    func push(_ batch: inout Deque<Delivery>) {
        guard !batch.isEmpty else { return }
        let (waiter, taken) = state.withLock { state -> (CheckedContinuation<Deque<Delivery>, any Error>?, Deque<Delivery>) in
            guard !state.finished else {
                batch.removeAll(keepingCapacity: true)
                return (nil, [])
            }
            if state.buffered.isEmpty {
                swap(&state.buffered, &batch)  // the usual case: no delivery is copied (a retain per field)
            } else {
                state.buffered.append(contentsOf: batch)
                batch.removeAll(keepingCapacity: true)
            }
            guard let waiter = state.waiter else { return (nil, []) }
            state.waiter = nil
            return (waiter, Self.takeAll(&state))
        }
        waiter?.resume(returning: taken)
    }

    /// Ends the stream after what is buffered, with `error` if it failed. (What is buffered from a channel that
    /// closed was dropped by ``drop(deliveriesOf:)``, and the consumer skips any such delivery it still holds.)
    func finish(_ error: RabbitMQError?) {
        let waiter = state.withLock { state -> CheckedContinuation<Deque<Delivery>, any Error>? in
            guard !state.finished else { return nil }
            state.finished = true
            state.failure = error
            defer { state.waiter = nil }
            return state.waiter
        }
        guard let waiter else { return }
        if let error { waiter.resume(throwing: error) } else { waiter.resume(returning: []) }
    }

    /// Everything buffered, waiting if nothing is; an empty batch means the stream ended normally.
    /// The consumer pops deliveries off the batch as it hands them out, so their bodies are freed as it goes.
    nonisolated(nonsending) func next() async throws -> Deque<Delivery> {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Deque<Delivery>, any Error>) in
                let result = state.withLock { state -> Result<Deque<Delivery>, any Error>? in
                    if !state.buffered.isEmpty { return .success(Self.takeAll(&state)) }
                    if state.finished { return state.failure.map { .failure($0) } ?? .success([]) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiter = continuation
                    return nil
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Ends the stream now, dropping what is buffered: those deliveries stay unacknowledged and return to
    /// the queue when their channel closes.
    func close() {
        let waiter = state.withLock { state -> CheckedContinuation<Deque<Delivery>, any Error>? in
            state.buffered.removeAll()
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: [])
    }

    /// Drops the buffered deliveries of the channel `link` refers to, which has closed: they can no longer be
    /// settled, and the broker requeues them. Deliveries of a channel re-opened by recovery stay.
    func drop(deliveriesOf link: ChannelLink) {
        state.withLock { state in state.buffered.removeAll { $0.link === link } }
    }

    private static func takeAll(_ state: inout State) -> Deque<Delivery> {
        var batch: Deque<Delivery> = []
        swap(&batch, &state.buffered)
        return batch
    }
}

extension Deque<Delivery> {
    /// Removes and returns the first delivery that can still be settled, dropping those before it whose channel
    /// has closed (the broker requeues them); `nil` once none is left. One atomic load per delivery.
    mutating func popFirstSettleable() -> Delivery? {
        while let delivery = popFirst() {
            if delivery.canBeSettled { return delivery }
        }
        return nil
    }
}
