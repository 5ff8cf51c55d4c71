import DequeModule
import Synchronization

/// Bounds the messages a channel has in flight (unconfirmed, or not yet written without confirms), and
/// holds publishers back while the broker blocks the connection.
///
/// A publisher takes a slot without suspending while there is room; when the window is full it suspends
/// once and is resumed once when the I/O thread releases slots, not once per confirm.
final class PublishWindow: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var capacity: Int
        var inFlight = 0
        var blocked = false
        var closed: RabbitMQError?
        var nextWaiterID: UInt64 = 0
        var waiters: Deque<Waiter> = []
        var drainWaiters: [Waiter] = []
        var firstFailureSinceDrain: RabbitMQError?
        var failuresSinceDrain = 0
    }

    private let state: StateLock<State>

    init(capacity: Int) {
        state = StateLock(State(capacity: max(1, capacity)))
    }

    /// Messages in flight.
    var inFlight: Int { state.withLock { $0.inFlight } }

    /// Changes the number of messages allowed in flight.
    func setCapacity(_ capacity: Int) {
        let admitted = state.withLock { state in
            state.capacity = max(1, capacity)
            return Self.admitWaiters(&state)
        }
        for waiter in admitted { waiter.continuation.resume() }
    }

    /// Takes a slot, waiting until `deadline` on `clock` (a test clock in unit tests) while the window is full or the
    /// connection blocked. The clock is read only when the publisher has to wait.
    nonisolated(nonsending) func acquire<C: Clock>(deadline: C.Instant, clock: C = ContinuousClock()) async throws {
        if try tryAcquire() { return }
        let operation = "publish (waiting for room in the publish window)"
        try await withDeadline(deadline, clock: clock, operation: operation) {
            try await self.wait { state, waiter in state.waiters.append(waiter) }
        }
    }

    /// Takes a slot if there is room now, without waiting; `false` when the publisher would have to wait.
    /// - Throws: the window's error once it is closed.
    func tryAcquire() throws(RabbitMQError) -> Bool {
        try state.withLock { state throws(RabbitMQError) -> Bool in
            if let closed = state.closed { throw closed }
            guard !state.blocked, state.inFlight < state.capacity, state.waiters.isEmpty else { return false }
            state.inFlight += 1
            return true
        }
    }

    /// Releases `count` slots (called by the I/O thread once per pass) and admits waiting publishers.
    func release(_ count: Int) {
        let (admitted, drained) = state.withLock { state in
            state.inFlight = max(0, state.inFlight - count)
            return (Self.admitWaiters(&state), Self.takeDrainWaiters(&state))
        }
        for waiter in admitted { waiter.continuation.resume() }
        for waiter in drained { waiter.continuation.resume() }
    }

    /// Records a publish that failed (nack, return, timeout) for the next ``waitUntilDrained(deadline:clock:)``.
    func recordFailure(_ error: RabbitMQError) {
        state.withLock { state in
            state.failuresSinceDrain += 1
            if state.firstFailureSinceDrain == nil { state.firstFailureSinceDrain = error }
        }
    }

    /// Holds publishers while the broker blocks the connection (connection.blocked), lets them go after.
    func setBlocked(_ blocked: Bool) {
        let admitted = state.withLock { state in
            state.blocked = blocked
            return Self.admitWaiters(&state)
        }
        for waiter in admitted { waiter.continuation.resume() }
    }

    /// Fails waiting and future publishers with `error`.
    func close(_ error: RabbitMQError) {
        let waiters = state.withLock { state -> [Waiter] in
            guard state.closed == nil else { return [] }
            state.closed = error
            var all = state.drainWaiters
            all.append(contentsOf: state.waiters)
            state.waiters.removeAll()
            state.drainWaiters.removeAll()
            return all
        }
        for waiter in waiters { waiter.continuation.resume(throwing: error) }
    }

    /// Waits until nothing is in flight, at most until `deadline` on `clock` (a test clock in unit tests); then throws
    /// if any publish failed since the last call.
    nonisolated(nonsending) func waitUntilDrained<C: Clock>(deadline: C.Instant, clock: C = ContinuousClock())
        async throws
    {
        let drained = try state.withLock { state throws(RabbitMQError) -> Bool in
            if state.inFlight == 0 {
                try Self.takeFailures(&state)
                return true
            }
            if let closed = state.closed { throw closed }
            return false
        }
        if drained { return }
        try await withDeadline(deadline, clock: clock, operation: "waiting for publisher confirms") {
            try await self.wait { state, waiter in state.drainWaiters.append(waiter) }
        }
        try state.withLock { state throws(RabbitMQError) in try Self.takeFailures(&state) }
    }

    nonisolated(nonsending) private func wait(register: @Sendable (inout State, Waiter) -> Void) async throws {
        let id = state.withLock { state in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let (failure, admitted) = state.withLock { state -> ((any Error)?, [Waiter]) in
                    if let closed = state.closed { return (closed, []) }
                    if Task.isCancelled { return (CancellationError(), []) }
                    register(&state, Waiter(id: id, continuation: continuation))
                    return (nil, Self.admitWaiters(&state) + Self.takeDrainWaiters(&state))
                }
                if let failure { continuation.resume(throwing: failure) }
                for waiter in admitted { waiter.continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                if let index = state.waiters.firstIndex(where: { $0.id == id }) {
                    return state.waiters.remove(at: index)
                }
                if let index = state.drainWaiters.firstIndex(where: { $0.id == id }) {
                    return state.drainWaiters.remove(at: index)
                }
                return nil
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    private static func admitWaiters(_ state: inout State) -> [Waiter] {
        var admitted: [Waiter] = []
        while !state.blocked, state.inFlight < state.capacity, let waiter = state.waiters.popFirst() {
            state.inFlight += 1
            admitted.append(waiter)
        }
        return admitted
    }

    private static func takeDrainWaiters(_ state: inout State) -> [Waiter] {
        guard state.inFlight == 0, !state.drainWaiters.isEmpty else { return [] }
        defer { state.drainWaiters.removeAll() }
        return state.drainWaiters
    }

    private static func takeFailures(_ state: inout State) throws(RabbitMQError) {
        guard let first = state.firstFailureSinceDrain else { return }
        let count = state.failuresSinceDrain
        state.firstFailureSinceDrain = nil
        state.failuresSinceDrain = 0
        var error = first
        if count > 1 { error.message = "\(count) publishes failed; the first: \(first.message)" }
        throw error
    }
}
