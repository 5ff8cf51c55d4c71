import Foundation
import RabbitMQ
import Testing

/// Returns of mandatory messages reach the publish they belong to, even among messages that differ only in headers.
@Suite("Publishing: returns")
struct PublishingReturnTests {
    /// A headers exchange routes on headers alone: messages with the same exchange, routing key and body can
    /// differ in routability, so a return must still be matched to the right publish.
    @Test func returnsAreMatchedToTheirPublishWhenOnlyHeadersDiffer() async throws {
        try await TestBroker.withClient { client in
            let exchange = TestBroker.uniqueName("pub.headers")
            let queue = TestBroker.uniqueName("pub.headers")
            try await client.declare(Exchange(exchange, type: .headers, durable: false))
            try await client.declare(Queue(queue))
            try await client.bind(.queue(queue, to: exchange, arguments: ["x-match": "all", "route": "yes"]))
            let channel = try await client.openChannel()
            try await channel.enableConfirms(window: 100)
            let routable = (0..<40).map { $0 % 2 == 0 }
            var confirmations: [PublishConfirmation] = []
            for isRoutable in routable {
                let properties = MessageProperties(headers: ["route": isRoutable ? "yes" : "no"])
                confirmations.append(try await channel.publishWithDeferredConfirm(
                    Data("same body".utf8), to: exchange, routingKey: "", properties: properties, mandatory: true))
            }
            var wrong: [Int] = []
            for (index, confirmation) in confirmations.enumerated() {
                let outcome = await PublishingTests.outcome(of: confirmation)
                let correct = routable[index] ? outcome == nil : outcome?.code == .unroutable
                if !correct { wrong.append(index) }
            }
            #expect(wrong.isEmpty, "publishes given the wrong outcome: \(wrong)")
            #expect(try await TestBroker.messageCount(queue) == routable.filter { $0 }.count)
            try await channel.close()
            try await client.deleteQueue(queue)
            try await client.deleteExchange(exchange)
        }
    }
}
