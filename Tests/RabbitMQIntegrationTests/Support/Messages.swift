import Foundation
import RabbitMQ

/// Publishes `count` messages `<prefix><index>` to `queue` through the default exchange, each confirmed.
func publishNumbered(_ client: RabbitMQClient, count: Int, to queue: String, prefix: String = "m") async throws {
    for index in 0..<count {
        try await client.publish(Data("\(prefix)\(index)".utf8), routingKey: queue)
    }
}

/// Ready messages in `queue`, by a passive declare: far cheaper than a `rabbitmqctl` run while polling.
func readyCount(_ client: RabbitMQClient, _ queue: String) async throws -> Int {
    Int(try await client.inspectQueue(queue).messageCount)
}
