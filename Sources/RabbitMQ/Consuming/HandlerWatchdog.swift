import Synchronization

/// Bounds how long a ``QueueWorker``'s handlers run (``QueueWorker/Configuration/handlerTimeout``).
///
/// Each handler runs in a task of its own, so that it can be cancelled alone; one watching task per worker run
/// sleeps until the oldest handler's deadline (handlers start in order and share one timeout, so no deadline can
/// come before the oldest), cancels every handler that reached its deadline and answers its waiter at once with
/// ``Verdict/timedOut``, without waiting for the handler to notice the cancellation. A handler that ignores
/// cancellation is left to end on its own; what it returns then is ignored.
final class HandlerWatchdog: Sendable {
    /// How a handler's run ended, for the worker.
    enum Verdict: Sendable {
        /// The handler returned or threw in time (or the worker is being torn down: then it is a cancellation).
        case finished(Result<Void, any Error>)
        /// The handler reached its deadline: it was cancelled, and its delivery is the worker's to settle.
        case timedOut
    }

    private struct Running {
        let deadline: ContinuousClock.Instant
        let waiter: CheckedContinuation<Verdict, Never>
        var task: Task<Void, Never>?
    }

    private struct State {
        var running: [UInt64: Running] = [:]
        var nextID: UInt64 = 0
        var isWatching = true
    }

    /// The longest a handler may run.
    let timeout: Duration
    private let state = StateLock(State())

    init(timeout: Duration) {
        self.timeout = timeout
    }

    /// Runs `handler` in a task of its own and returns how it ended. Cancelling the calling task cancels the
    /// handler (and waits for it, or for its deadline).
    func run(_ handler: @escaping @Sendable () async throws -> Void) async -> Verdict {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (waiter: CheckedContinuation<Verdict, Never>) in
                let watched = state.withLock { state -> Bool in
                    guard state.isWatching else { return false }
                    state.running[id] = Running(deadline: .now + timeout, waiter: waiter)
                    return true
                }
                guard watched else {
                    // The worker is being torn down (its run was cancelled): the handler does not start.
                    waiter.resume(returning: .finished(.failure(CancellationError())))
                    return
                }
                // The new task inherits the caller's task-local values: its ServiceContext, so its trace.
                let task = Task {
                    let result: Result<Void, any Error>
                    do {
                        try await handler()
                        result = .success(())
                    } catch {
                        result = .failure(error)
                    }
                    self.answer(id, .finished(result))
                }
                state.withLock { $0.running[id]?.task = task }
                // A cancellation that came before the task existed found nothing to cancel.
                if Task.isCancelled { task.cancel() }
            }
        } onCancel: {
            state.withLock { $0.running[id]?.task }?.cancel()
        }
    }

    /// Cancels handlers at their deadlines until the calling task is cancelled; then lets go of every handler
    /// still running (their waiters get a cancellation) and refuses new ones.
    func watch() async {
        while !Task.isCancelled {
            let wake = state.withLock { $0.running.values.map(\.deadline).min() } ?? .now + timeout
            try? await Task.sleep(until: wake, clock: .continuous)
            let now = ContinuousClock.now
            let overdue = state.withLock { state -> [Running] in
                let ids = state.running.filter { $0.value.deadline <= now }.keys
                return ids.compactMap { state.running.removeValue(forKey: $0) }
            }
            for handler in overdue {
                handler.task?.cancel()
                handler.waiter.resume(returning: .timedOut)
            }
        }
        let abandoned = state.withLock { state -> [Running] in
            state.isWatching = false
            defer { state.running.removeAll() }
            return Array(state.running.values)
        }
        for handler in abandoned {
            handler.task?.cancel()
            handler.waiter.resume(returning: .finished(.failure(CancellationError())))
        }
    }

    /// Answers the waiter of handler `id`, unless the deadline (or the end of the watch) answered it first.
    private func answer(_ id: UInt64, _ verdict: Verdict) {
        state.withLock { $0.running.removeValue(forKey: id) }?.waiter.resume(returning: verdict)
    }
}
