import Synchronization

/// The outcome of work that any number of tasks wait for, each until its own deadline.
///
/// A waiter is resumed by whichever comes first: the outcome, its deadline, or the cancellation of its task. It
/// never awaits the work itself, so its deadline is a hard bound even while the work ignores cancellation
/// (connection recovery sleeping between attempts, a broker that stays down). Costs a continuation per waiter and,
/// with a deadline, a timer task: it guards waits that suspend anyway, never a per-message fast path.
final class SharedResult<Value: Sendable>: Sendable {
    private struct Waiter {
        let continuation: CheckedContinuation<Value, any Error>
        var timer: Task<Void, Never>?
    }

    private struct State {
        var outcome: Result<Value, any Error>?
        var waiters: [UInt64: Waiter] = [:]
        var nextWaiterID: UInt64 = 0
    }

    private let state = StateLock(State())

    init() {}

    /// Records the outcome and resumes every waiter with it; later calls are ignored.
    func complete(_ outcome: Result<Value, any Error>) {
        let waiters = state.withLock { state -> [Waiter] in
            guard state.outcome == nil else { return [] }
            state.outcome = outcome
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters {
            waiter.timer?.cancel()
            waiter.continuation.resume(with: outcome)
        }
    }

    /// Waits for the outcome, at most until `deadline` (`nil`: no limit) on `clock` (a test clock in unit tests).
    /// - Parameters:
    ///   - operation: the caller's operation, named in the timeout error.
    ///   - awaited: what the caller waits for, in the timeout error's message ("the connection").
    /// - Throws: the work's error, a ``RabbitMQError/Code/timeout`` at `deadline`, or `CancellationError`.
    nonisolated(nonsending) func value<C: Clock>(until deadline: C.Instant?, clock: C = ContinuousClock(),
                                                 operation: String, awaited: String) async throws -> Value {
        if let outcome = state.withLock({ $0.outcome }) { return try outcome.get() }
        let id = state.withLock { state in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        let timeout: @Sendable () -> RabbitMQError = {
            RabbitMQError(.timeout, "\(operation) timed out waiting for \(awaited)", operation: operation)
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
                let early = state.withLock { state -> Result<Value, any Error>? in
                    if let outcome = state.outcome { return outcome }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let deadline, deadline <= clock.now { return .failure(timeout()) }
                    state.waiters[id] = Waiter(continuation: continuation)
                    return nil
                }
                if let early {
                    continuation.resume(with: early)
                    return
                }
                guard let deadline else { return }
                let timer = Task {
                    do { try await clock.sleep(until: deadline, tolerance: nil) } catch { return }
                    self.resume(id, with: .failure(timeout()))
                }
                let waiting = state.withLock { state -> Bool in
                    guard state.waiters[id] != nil else { return false }
                    state.waiters[id]!.timer = timer
                    return true
                }
                if !waiting { timer.cancel() }
            }
        } onCancel: {
            resume(id, with: .failure(CancellationError()))
        }
    }

    private func resume(_ id: UInt64, with outcome: Result<Value, any Error>) {
        guard let waiter = state.withLock({ $0.waiters.removeValue(forKey: id) }) else { return }
        waiter.timer?.cancel()
        waiter.continuation.resume(with: outcome)
    }
}
