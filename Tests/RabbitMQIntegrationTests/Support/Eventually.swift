import Foundation

extension TestBroker {
    /// Waits until `condition` holds, checking every `interval`, and returns whether it did within `timeout`.
    ///
    /// The one way the tests wait for a state: what the broker reports (quorum queue counts lag confirmations,
    /// connections close asynchronously), what consumers have received, what a client has recovered. `timeout`
    /// is a hang guard, long enough for a loaded two-core machine: a passing test never waits it out, so a
    /// generous one costs nothing. A condition that throws counts as not holding yet (a node being restarted,
    /// a `rabbitmqctl` run that failed under load); if it still throws when the time is up, its error is thrown.
    static func eventually(timeout: Duration = .seconds(30), every interval: Duration = .milliseconds(50),
                           _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return true }
            try await Task.sleep(for: interval)
        }
        return try await condition()
    }
}

/// Waits until the counts of `node`'s queues satisfy `condition` (see ``TestBroker/eventually(timeout:every:_:)``;
/// one `list_queues` run per check).
func eventuallyAtBroker(_ node: BrokerNode = .shared, timeout: Duration = .seconds(30),
                        _ condition: ([String: BrokerQueueCounts]) -> Bool) async throws -> Bool {
    try await TestBroker.eventually(timeout: timeout, every: .milliseconds(100)) {
        condition(try await node.queueCounts())
    }
}

/// Waits until the shared node holds nothing of `queue`: no ready or unacknowledged message, no consumer.
func drainedAtBroker(_ queue: String) async throws -> Bool {
    try await eventuallyAtBroker { $0[queue] == BrokerQueueCounts(ready: 0, unacked: 0, consumers: 0) }
}
