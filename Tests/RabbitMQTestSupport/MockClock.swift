/// A clock whose time moves only when a test says so, for tests whose point is a deadline or a delay.
///
/// ``now`` starts at zero and changes only in ``advance(by:)``, which resumes, before it returns, every sleeper
/// whose deadline has been reached, in deadline order. A sleeper whose task is cancelled throws
/// `CancellationError` at once. ``sleeps(count:)`` lets a test wait until the code under test has gone to
/// sleep before moving time, so that nothing depends on how fast tasks are scheduled.
public final class MockClock: Clock, Sendable {
    /// A point on a ``MockClock``: the time since the clock was created.
    public struct Instant: InstantProtocol, CustomStringConvertible {
        /// The time since the clock was created.
        public let offset: Duration

        /// Creates the instant `offset` after the clock's creation.
        public init(offset: Duration) {
            self.offset = offset
        }

        public func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        public func duration(to other: Instant) -> Duration { other.offset - offset }
        public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
        public var description: String { "\(offset)" }
    }

    /// A test waiting in ``sleeps(count:)``.
    private typealias Observer = CheckedContinuation<[Instant], Never>

    private struct Sleeper {
        let id: UInt64
        let deadline: Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now = Instant(offset: .zero)
        var sleepers: [Sleeper] = []
        var nextID: UInt64 = 0
        var observers: [(count: Int, continuation: Observer)] = []

        var sortedDeadlines: [Instant] { sleepers.map(\.deadline).sorted() }
    }

    private let state = Locked(State())

    /// Creates a clock at instant zero.
    public init() {}

    public var now: Instant { state.withLock { $0.now } }
    public var minimumResolution: Duration { .nanoseconds(1) }

    /// The deadlines of the tasks sleeping now, earliest first.
    public var deadlines: [Instant] { state.withLock { $0.sortedDeadlines } }

    public func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let (early, observers, deadlines) = state.withLock {
                    state -> (Result<Void, any Error>?, [Observer], [Instant]) in
                    if Task.isCancelled { return (.failure(CancellationError()), [], []) }
                    if deadline <= state.now { return (.success(()), [], []) }
                    state.sleepers.append(Sleeper(id: id, deadline: deadline, continuation: continuation))
                    return (nil, Self.takeSatisfiedObservers(&state), state.sortedDeadlines)
                }
                for observer in observers { observer.resume(returning: deadlines) }
                if let early { continuation.resume(with: early) }
            }
        } onCancel: {
            let sleeper = state.withLock { state -> Sleeper? in
                guard let index = state.sleepers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.sleepers.remove(at: index)
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves time forward by `duration` and resumes the sleepers whose deadline it reached, earliest first.
    public func advance(by duration: Duration) {
        let due = state.withLock { state -> [Sleeper] in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.deadline <= now }.sorted { $0.deadline < $1.deadline }
            state.sleepers.removeAll { $0.deadline <= now }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// Waits until at least `count` tasks sleep on the clock; returns their deadlines, earliest first.
    @discardableResult
    public func sleeps(count: Int = 1) async -> [Instant] {
        await withCheckedContinuation { (continuation: Observer) in
            let deadlines = state.withLock { state -> [Instant]? in
                guard state.sleepers.count < count else { return state.sortedDeadlines }
                state.observers.append((count, continuation))
                return nil
            }
            if let deadlines { continuation.resume(returning: deadlines) }
        }
    }

    private static func takeSatisfiedObservers(_ state: inout State) -> [Observer] {
        let count = state.sleepers.count
        let satisfied = state.observers.filter { $0.count <= count }.map(\.continuation)
        state.observers.removeAll { $0.count <= count }
        return satisfied
    }
}
