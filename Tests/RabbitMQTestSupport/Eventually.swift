/// Waits until `condition` holds, checking every `interval`, and returns whether it did within `timeout`.
///
/// The one way the tests wait for a state: what the broker reports (quorum queue counts lag confirmations,
/// connections close asynchronously), what consumers have received, what a client has recovered, what a handler
/// has started. `timeout` is a hang guard, long enough for a loaded two-core machine: a passing test never waits it
/// out, so a generous one costs nothing. A condition that throws counts as not holding yet (a node being
/// restarted, a `rabbitmqctl` run that failed under load); if it still throws when the time is up, its error is
/// thrown.
public func eventually(timeout: Duration = .seconds(30), every interval: Duration = .milliseconds(50),
                       _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return true }
        try await Task.sleep(for: interval)
    }
    return try await condition()
}
