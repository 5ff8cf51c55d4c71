import Synchronization

/// The exchanges a client knows to exist: declared or checked through it since the connection was last
/// recovered.
///
/// ``RabbitMQClient/publish(_:to:routingKey:properties:mandatory:)`` checks an exchange it does not know (a passive
/// declare on a pooled channel) before publishing to it through the confirm channel all tasks share: a publish to a
/// missing exchange makes the broker close the channel it arrives on, which would fail every other publish in
/// flight there. Concurrent publishes to the same unknown exchange share one check.
final class KnownExchanges: Sendable {
    private struct State {
        var known: Set<String> = []
        var checks: [String: SharedResult<Void>] = [:]
    }

    private let state = StateLock(State())

    /// Forgetting everything beyond this many keeps the set bounded for applications with many exchanges.
    private static let capacity = 10_000

    /// Whether `exchange` needs no check: the default exchange and the broker's `amq.*` exchanges always exist.
    static func alwaysExists(_ exchange: String) -> Bool {
        exchange.isEmpty || exchange.hasPrefix("amq.")
    }

    /// Returns once `exchange` is known to exist, running `check` (in a task of its own) if nobody has yet;
    /// waits at most until `deadline`.
    /// - Throws: what `check` throws (404 for a missing exchange), or a timeout.
    nonisolated(nonsending) func ensureExists(_ exchange: String, until deadline: ContinuousClock.Instant,
                      check: @escaping @Sendable () async throws -> Void) async throws {
        if Self.alwaysExists(exchange) { return }
        let pending = state.withLock { state -> SharedResult<Void>? in
            if state.known.contains(exchange) { return nil }
            if let running = state.checks[exchange] { return running }
            let result = SharedResult<Void>()
            state.checks[exchange] = result
            Task {
                do {
                    try await check()
                    self.finishCheck(exchange, result, exists: true)
                    result.complete(.success(()))
                } catch {
                    self.finishCheck(exchange, result, exists: false)
                    result.complete(.failure(error))
                }
            }
            return result
        }
        try await pending?.value(until: deadline, operation: "basic.publish", awaited: "the exchange check")
    }

    private func finishCheck(_ exchange: String, _ result: SharedResult<Void>, exists: Bool) {
        state.withLock { state in
            if state.checks[exchange] === result { state.checks[exchange] = nil }
            if exists { Self.insert(exchange, into: &state) }
        }
    }

    /// Records that `exchange` exists (it was declared).
    func add(_ exchange: String) {
        guard !Self.alwaysExists(exchange) else { return }
        state.withLock { Self.insert(exchange, into: &$0) }
    }

    /// Forgets `exchange` (deleted, or reported missing).
    func remove(_ exchange: String) {
        _ = state.withLock { $0.known.remove(exchange) }
    }

    /// Forgets every exchange (after a recovery, exchanges may be gone).
    func removeAll() {
        state.withLock { $0.known.removeAll() }
    }

    private static func insert(_ exchange: String, into state: inout State) {
        if state.known.count >= capacity { state.known.removeAll() }
        state.known.insert(exchange)
    }
}
