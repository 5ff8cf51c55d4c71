import Foundation
import RabbitMQ
import RabbitMQTestSupport

/// An outbox in memory, for the relay's unit tests; it can be told to fail marking events sent, as a process that
/// dies between a confirm and its commit would.
final class FakeOutboxStore: OutboxStore {
    struct Row {
        var record: OutboxRecord
        var isSent = false
    }

    private let rows = Locked<[Row]>([])
    /// Calls of ``markSent(_:)`` from which on it throws (1 is the first call); `nil` never.
    let failMarkSentFromCall = Locked<Int?>(nil)
    private let markSentCalls = Locked(0)

    /// Appends events, as a committed transaction would.
    @discardableResult
    func enqueue(_ events: [OutboxEvent]) -> [Int64] {
        rows.withLock { rows in
            events.map { event in
                let sequence = Int64(rows.count + 1)
                rows.append(Row(record: OutboxRecord(sequence: sequence, event: event)))
                return sequence
            }
        }
    }

    var all: [Row] { rows.withLock { $0 } }
    var unsent: [OutboxRecord] { rows.withLock { $0.filter { !$0.isSent }.map(\.record) } }

    func pending(limit: Int) async throws -> [OutboxRecord] {
        rows.withLock { Array($0.filter { !$0.isSent }.prefix(limit).map(\.record)) }
    }

    func markSent(_ sequences: [Int64]) async throws {
        let call = markSentCalls.withLock { calls in
            calls += 1
            return calls
        }
        if let from = failMarkSentFromCall.withLock({ $0 }), call >= from {
            throw RabbitMQError(.connectionLost, "the database is gone")
        }
        rows.withLock { rows in
            for sequence in sequences { rows[Int(sequence) - 1].isSent = true }
        }
    }

    func markFailed(_ sequence: Int64, reason: String) async throws {
        rows.withLock { $0[Int(sequence) - 1].record.attempts += 1 }
    }

    func pendingCount() async throws -> Int {
        rows.withLock { $0.count { !$0.isSent } }
    }
}

/// A publisher for the relay's unit tests: it records what it publishes, in which order and how many at once,
/// takes a little while per message, and fails while ``failing`` says so.
final class FakePublisher: Sendable {
    struct State {
        /// (aggregate key, message id) of every publish attempt that succeeded, in the order they completed.
        var confirmed: [(key: String?, messageID: String)] = []
        var inFlight: [String?: Int] = [:]
        var inFlightTotal = 0
        var maxInFlightPerKey = 0
        var maxInFlightTotal = 0
        var attempts = 0
    }

    let state = Locked(State())
    /// Whether a publish of an event with this key fails now.
    let failing = Locked<@Sendable (OutboxEvent) -> Bool>({ _ in false })

    func publish(_ event: OutboxEvent) async throws {
        state.withLock { state in
            state.attempts += 1
            state.inFlight[event.aggregateKey, default: 0] += 1
            state.inFlightTotal += 1
            state.maxInFlightPerKey = max(state.maxInFlightPerKey, state.inFlight[event.aggregateKey] ?? 0)
            state.maxInFlightTotal = max(state.maxInFlightTotal, state.inFlightTotal)
        }
        defer {
            state.withLock { state in
                state.inFlight[event.aggregateKey, default: 0] -= 1
                state.inFlightTotal -= 1
            }
        }
        // Real time, not the relay's clock: the point is that several publishes overlap.
        try? await Task.sleep(for: .microseconds(Int.random(in: 200...2000)))
        if failing.withLock({ $0 })(event) {
            throw RabbitMQError(.connectionLost, "the broker is down")
        }
        state.withLock { $0.confirmed.append((event.aggregateKey, event.messageID)) }
    }
}
