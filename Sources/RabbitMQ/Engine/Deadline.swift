/// Runs `operation`, failing with a ``RabbitMQError/Code/timeout`` that names `operation` if it is still
/// running at `deadline` on `clock` (a test clock in unit tests).
///
/// Costs a child task and a timer, so it guards waits that suspend anyway, never a per-message fast path.
func withDeadline<T: Sendable, C: Clock>(
    _ deadline: C.Instant,
    clock: C = ContinuousClock(),
    operation name: String,
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try? await clock.sleep(until: deadline, tolerance: nil)
            return nil
        }
        defer { group.cancelAll() }
        while let result = try await group.next() {
            if let value = result { return value }
            if Task.isCancelled { throw CancellationError() }
            throw RabbitMQError(.timeout, "\(name) did not finish in time", operation: name)
        }
        throw CancellationError()
    }
}
