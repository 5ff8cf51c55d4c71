import Foundation
import RabbitMQTestSupport

/// The result of an operation run with a time bound (``run(_:_:)``).
enum Bounded<T: Sendable>: Sendable {
    case value(T)
    case error(any Error)
    case timedOut

    /// Runs `body`, returning `.timedOut` if it takes longer than `limit` (it is then cancelled, and this
    /// returns without waiting for it, so a hung operation cannot hang the test). `limit` is a hang guard.
    static func run(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async -> Bounded<T> {
        let gate = BoundedGate<T>()
        return await withCheckedContinuation { continuation in
            gate.continuation.withLock { $0 = continuation }
            let work = Task {
                let result: Bounded<T>
                do { result = .value(try await body()) } catch { result = .error(error) }
                _ = gate.resume(result)
                gate.timer.withLock { $0 }?.cancel()
            }
            let timer = Task {
                do { try await Task.sleep(for: limit) } catch { return }
                if gate.resume(.timedOut) { work.cancel() }
            }
            gate.timer.withLock { $0 = timer }
        }
    }
}

/// Resumes a bounded operation's waiter once: with the result, or with `.timedOut`.
private final class BoundedGate<T: Sendable>: Sendable {
    let continuation = Locked<CheckedContinuation<Bounded<T>, Never>?>(nil)
    let timer = Locked<Task<Void, Never>?>(nil)

    func resume(_ result: Bounded<T>) -> Bool {
        guard let continuation = continuation.withLock({ $0.take() }) else { return false }
        continuation.resume(returning: result)
        return true
    }
}

extension TestBroker {
    /// Runs `body` and returns its result or throws its error; throws ``DeadlineExceeded`` if it has not
    /// finished after `limit` (a hang guard: a body that ignores cancellation and never returns fails the test
    /// rather than hanging it).
    static func withDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T)
        async throws -> T
    {
        switch await Bounded.run(limit, body) {
        case .value(let value): return value
        case .error(let error): throw error
        case .timedOut: throw DeadlineExceeded(limit: limit)
        }
    }
}

/// The error ``TestBroker/withDeadline(_:_:)`` throws when its body runs too long.
struct DeadlineExceeded: Error, CustomStringConvertible {
    let limit: Duration
    var description: String { "the operation did not finish within \(limit)" }
}
