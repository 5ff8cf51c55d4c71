import Synchronization
import Tracing

/// The shared outcome of one publish: completed once by the I/O thread, awaited by the publisher.
final class PublishTicket: Sendable {
    private struct State {
        var outcome: Result<Void, RabbitMQError>?
        var waiter: UnsafeContinuation<Void, any Error>?
    }

    private let state = StateLock(State())
    /// When the publish must be confirmed by; the I/O thread fails it after that.
    let deadline: ContinuousClock.Instant
    /// The exchange published to: a broker's 404 for a missing exchange is charged to the publishes to it.
    let exchange: String
    /// The exchange's metric handles, `nil` without metrics.
    private let instruments: (any PublishOutcomeRecorder)?
    /// When the message was handed to the I/O thread, for the confirm latency (only read with metrics).
    private let started: ContinuousClock.Instant
    /// The producer span, ended with the outcome; `nil` without tracing.
    private let span: (any Span)?

    init(deadline: ContinuousClock.Instant, exchange: String = "", instruments: (any PublishOutcomeRecorder)? = nil,
         started: ContinuousClock.Instant? = nil, span: (any Span)? = nil) {
        self.deadline = deadline
        self.exchange = exchange
        self.instruments = instruments
        self.started = started ?? deadline
        self.span = span
    }

    /// Records the outcome; later calls are ignored. Returns whether this call decided it.
    @discardableResult
    func complete(_ outcome: Result<Void, RabbitMQError>) -> Bool {
        let (decided, waiter) = state.withLock { state -> (Bool, UnsafeContinuation<Void, any Error>?) in
            guard state.outcome == nil else { return (false, nil) }
            state.outcome = outcome
            defer { state.waiter = nil }
            return (true, state.waiter)
        }
        if decided {
            instruments?.record(outcome, since: started)
            if let span {
                if case .failure(let error) = outcome { span.fail(error) }
                span.end()
            }
        }
        waiter?.resume(with: outcome.mapError { $0 as any Error })
        return decided
    }

    /// Whether the outcome is known.
    var isCompleted: Bool { state.withLock { $0.outcome != nil } }

    /// Waits for the outcome. An unchecked continuation (no allocation per wait, unlike a checked one): it is
    /// taken out of the state under the lock before it is resumed, so it is resumed exactly once.
    nonisolated(nonsending) func wait() async throws {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                let outcome = state.withLock { state -> Result<Void, RabbitMQError>? in
                    if state.outcome == nil, !Task.isCancelled { state.waiter = continuation }
                    return state.outcome
                }
                if let outcome {
                    continuation.resume(with: outcome.mapError { $0 as any Error })
                } else if Task.isCancelled {
                    continuation.resume(throwing: CancellationError())
                }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }
}

/// Records the broker's verdict on publishes (an exchange's publish metrics): implemented above this folder, by the
/// client's observability.
protocol PublishOutcomeRecorder: Sendable {
    /// Records `outcome`, for a publish handed to the connection at `start`.
    func record(_ outcome: Result<Void, RabbitMQError>, since start: ContinuousClock.Instant)
}
