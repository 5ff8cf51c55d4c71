import Synchronization

/// Runs a ``QueueWorker``'s handlers, each in a task of its own so that it can be cancelled alone, at most
/// ``limit`` at once, and bounds how long each runs (``QueueWorker/Configuration/handlerTimeout``).
///
/// A handler that reaches its deadline is cancelled and loses its delivery: the pool runs its `onTimeout` work (the
/// worker settles the delivery as a failed attempt) in a new task at once, without waiting for the handler to
/// notice the cancellation. A handler that ignores cancellation is left to end on its own, no longer counted; what
/// it does afterwards must not settle the delivery (``handlerReturned(_:)`` tells it so).
///
/// A handler's `whenDone` may return a follow-up, which starts at once in the handler's slot: a ``QueueWorker`` with
/// ``QueueWorker/Configuration/ordering`` starts the next delivery of the key, or the same delivery again (an
/// in-process retry), without the consumer taking the slot in between. The handler stays counted until then.
///
/// Costs per handler: one task and a few lock operations, as a task group child would; a continuation only while
/// the pool is full (the consumer waits for a slot) or draining. One watching task per worker run sleeps until the
/// oldest handler's deadline (handlers share one timeout, so no deadline comes before the oldest).
///
/// Deadlines are kept on `C`: the continuous clock in a worker, a test clock in unit tests. Generic rather than an
/// existential, so that reading the clock per handler costs what `ContinuousClock.now` costs.
final class HandlerPool<C: Clock>: Sendable where C.Duration == Duration {
    /// A handler to start: its body, given its id; what settles its delivery instead once it reaches its deadline;
    /// then what runs once either of them is over, which may return a follow-up to start in its slot.
    struct Job: Sendable {
        let work: @Sendable (UInt64) async -> Void
        let onTimeout: @Sendable () async -> Void
        let whenDone: @Sendable () async -> Job?
    }

    /// The work of one handler: its body, given its id, then what runs once it is over.
    private struct Running {
        /// When the handler times out; `nil` once it returned (its settlement is under way) or for timeout work.
        var deadline: C.Instant?
        var task: Task<Void, Never>?
        let onTimeout: (@Sendable () async -> Void)?
        let whenDone: @Sendable () async -> Job?
        /// Whether it is over and running `whenDone`.
        var isEnding = false
    }

    private struct State {
        var running: [UInt64: Running] = [:]
        var nextID: UInt64 = 0
        var isCancelled = false
        var slotWaiter: CheckedContinuation<Void, Never>?
        var idleWaiter: CheckedContinuation<Bool, Never>?
    }

    /// Handlers running at once, at most.
    let limit: Int
    /// The longest a handler may run.
    let timeout: Duration
    private let clock: C
    private let state = StateLock(State())

    init(limit: Int, timeout: Duration, clock: C) {
        self.limit = limit
        self.timeout = timeout
        self.clock = clock
    }

    /// Returns once fewer than ``limit`` handlers run.
    func waitForSlot() async {
        guard state.withLock({ $0.running.count >= limit }) else { return }
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let free = state.withLock { state -> Bool in
                guard state.running.count >= limit else { return true }
                state.slotWaiter = waiter
                return false
            }
            if free { waiter.resume() }
        }
    }

    /// Starts a handler: `work` (given the handler's id, for ``handlerReturned(_:)``), or `onTimeout` instead once
    /// it reaches its deadline; then `whenDone`, once, after whichever of them settled the delivery.
    func start(_ work: @escaping @Sendable (UInt64) async -> Void, onTimeout: @escaping @Sendable () async -> Void,
               whenDone: @escaping @Sendable () async -> Void) {
        start(Job(work: work, onTimeout: onTimeout, whenDone: {
            await whenDone()
            return nil
        }))
    }

    /// Starts `job` (see ``start(_:onTimeout:whenDone:)``); the follow-up its `whenDone` returns starts in its slot.
    func start(_ job: Job) {
        start(deadline: clock.now.advanced(by: timeout), job.work, onTimeout: job.onTimeout, whenDone: job.whenDone)
    }

    /// Starts a handler, in place of handler `replacing` if given (which is no longer counted).
    private func start(deadline: C.Instant?, _ work: @escaping @Sendable (UInt64) async -> Void,
                       onTimeout: (@Sendable () async -> Void)?, whenDone: @escaping @Sendable () async -> Job?,
                       replacing: UInt64? = nil) {
        let id = state.withLock { state in
            if let replacing { state.running[replacing] = nil }
            state.nextID += 1
            state.running[state.nextID] = Running(deadline: deadline, onTimeout: onTimeout, whenDone: whenDone)
            return state.nextID
        }
        let task = Task {
            await work(id)
            await self.end(id)
        }
        let cancel = state.withLock { state -> Bool in
            state.running[id]?.task = task
            return state.isCancelled
        }
        if cancel { task.cancel() }
    }

    /// Called by a handler's work once the handler returned: `true` if it still owns its delivery and should settle
    /// it, `false` if it timed out (the delivery was settled without it).
    func handlerReturned(_ id: UInt64) -> Bool {
        state.withLock { state in
            guard state.running[id] != nil else { return false }
            state.running[id]?.deadline = nil
            return true
        }
    }

    /// Cancels handlers at their deadlines until the calling task is cancelled.
    func watch() async {
        while !Task.isCancelled {
            let wake = state.withLock { $0.running.values.compactMap(\.deadline).min() }
                ?? clock.now.advanced(by: timeout)
            try? await clock.sleep(until: wake, tolerance: nil)
            let now = clock.now
            let overdue = state.withLock { state -> [Running] in
                let ids = state.running.filter { $0.value.deadline.map { $0 <= now } ?? false }.keys
                return ids.compactMap { state.running.removeValue(forKey: $0) }
            }
            for handler in overdue {
                handler.task?.cancel()
                // Not counted any more: its timeout work takes its place.
                guard let onTimeout = handler.onTimeout else { continue }
                start(deadline: nil, { _ in await onTimeout() }, onTimeout: nil, whenDone: handler.whenDone)
            }
            resumeWaiters()
        }
    }

    /// Waits until no handler runs, or `timeout` passed on the pool's clock; returns `false` on the timeout.
    func waitUntilIdle(timeout: Duration? = nil) async -> Bool {
        var timer: Task<Void, Never>?
        defer { timer?.cancel() }
        return await withCheckedContinuation { (waiter: CheckedContinuation<Bool, Never>) in
            let idle = state.withLock { state -> Bool in
                guard !state.running.isEmpty else { return true }
                state.idleWaiter = waiter
                return false
            }
            guard !idle else {
                waiter.resume(returning: true)
                return
            }
            // Started once the waiter is registered: a timer firing before that would find no one to answer.
            timer = timeout.map { timeout in
                let deadline = clock.now.advanced(by: timeout)
                return Task {
                    do { try await self.clock.sleep(until: deadline, tolerance: nil) } catch { return }
                    self.answerIdleWaiter(false)
                }
            }
        }
    }

    /// Cancels the handlers that are over and finding their follow-up (waiting out an in-process retry's backoff):
    /// stopping does not wait for those.
    func cancelFollowUps() {
        let tasks = state.withLock { $0.running.values.filter(\.isEnding).compactMap(\.task) }
        for task in tasks { task.cancel() }
    }

    /// Cancels every running handler, and those started afterwards.
    func cancelAll() {
        let tasks = state.withLock { state in
            state.isCancelled = true
            return state.running.values.compactMap(\.task)
        }
        for task in tasks { task.cancel() }
    }

    /// A handler's task ended: unless its deadline had taken its delivery, it runs its `whenDone`, still counted
    /// (and past any deadline), then its follow-up takes its slot, or it is no longer counted.
    private func end(_ id: UInt64) async {
        let handler = state.withLock { state -> Running? in
            state.running[id]?.deadline = nil
            state.running[id]?.isEnding = true
            return state.running[id]
        }
        guard let handler else { return }
        guard let next = await handler.whenDone() else {
            state.withLock { $0.running[id] = nil }
            resumeWaiters()
            return
        }
        start(deadline: clock.now.advanced(by: timeout), next.work, onTimeout: next.onTimeout,
              whenDone: next.whenDone, replacing: id)
    }

    private func resumeWaiters() {
        let (slot, idle) = state.withLock { state in
            var slot: CheckedContinuation<Void, Never>?
            var idle: CheckedContinuation<Bool, Never>?
            if state.running.count < limit { swap(&slot, &state.slotWaiter) }
            if state.running.isEmpty { swap(&idle, &state.idleWaiter) }
            return (slot, idle)
        }
        slot?.resume()
        idle?.resume(returning: true)
    }

    private func answerIdleWaiter(_ idle: Bool) {
        var waiter: CheckedContinuation<Bool, Never>?
        state.withLock { swap(&waiter, &$0.idleWaiter) }
        waiter?.resume(returning: idle)
    }
}

extension HandlerPool where C == ContinuousClock {
    /// A pool whose deadlines are on the continuous clock, as a worker's are.
    convenience init(limit: Int, timeout: Duration) {
        self.init(limit: limit, timeout: timeout, clock: ContinuousClock())
    }
}
