import Foundation
import RabbitMQTestSupport

/// Waits until the counts of `node`'s queues satisfy `condition` (see `eventually(timeout:every:_:)`;
/// one `list_queues` run per check).
func eventuallyAtBroker(_ node: BrokerNode = .shared, timeout: Duration = .seconds(30),
                        _ condition: ([String: BrokerQueueCounts]) -> Bool) async throws -> Bool {
    try await eventually(timeout: timeout, every: .milliseconds(100)) {
        condition(try await node.queueCounts())
    }
}

/// Waits until the shared node holds nothing of `queue`: no ready or unacknowledged message, no consumer.
func drainedAtBroker(_ queue: String) async throws -> Bool {
    try await eventuallyAtBroker { $0[queue] == BrokerQueueCounts(ready: 0, unacked: 0, consumers: 0) }
}
