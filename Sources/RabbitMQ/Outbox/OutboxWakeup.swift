import Synchronization

/// Tells an ``OutboxRelay`` that new events were committed, so that it publishes them at once rather than at its
/// next poll (``OutboxRelay/Configuration/pollInterval``).
///
/// Nudge it after the transaction that wrote the events commits (the SQLite outbox does so itself). A nudge while
/// the relay is busy is remembered: the relay looks for pending events again as soon as it is done. A relay in
/// another process is not reached; it finds the events at its next poll.
public final class OutboxWakeup: Sendable {
    let signal = Signal(latches: false)

    /// Creates a wakeup.
    public init() {}

    /// Wakes the relay waiting on this wakeup, or, if none is waiting, makes its next wait return at once.
    public func nudge() {
        signal.fire()
    }
}

/// A flag a task can wait for. Firing it resumes every waiting task; with no waiter, the next wait returns at once.
/// A latching signal stays fired (a stop request); otherwise a wait consumes the firing (a wakeup).
final class Signal: Sendable {
    private struct State {
        var isFired = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var cancelled: Set<UInt64> = []
        var nextID: UInt64 = 0
    }

    private let latches: Bool
    private let state = StateLock(State())

    init(latches: Bool) {
        self.latches = latches
    }

    /// Whether the signal has fired and no wait has consumed it.
    var isFired: Bool { state.withLock { $0.isFired } }

    func fire() {
        let waiters = state.withLock { state in
            defer { state.waiters.removeAll() }
            if state.waiters.isEmpty || latches { state.isFired = true }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when the signal fires, or at once if it has fired; or when the task is cancelled.
    func wait() async {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.cancelled.remove(id) != nil { return true }
                    if state.isFired {
                        if !latches { state.isFired = false }
                        return true
                    }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
                state.cancelled.insert(id)
                return nil
            }
            waiter?.resume()
        }
        // A cancellation that came after the firing left the id behind.
        state.withLock { _ = $0.cancelled.remove(id) }
    }
}

extension Clock where Duration == Swift.Duration {
    /// Sleeps for `duration`, or less if one of `signals` fires (or the task is cancelled) first.
    func sleep(for duration: Duration, interruptedBy signals: [Signal]) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await self.sleep(for: duration) }
            for signal in signals { group.addTask { await signal.wait() } }
            await group.next()
            group.cancelAll()
        }
    }
}
