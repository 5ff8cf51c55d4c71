import Foundation
import RabbitMQ
import Testing
import RabbitMQTestSupport

@Suite("Round trip")
struct SmokeTests {
    @Test func declarePublishConsumeRoundTrip() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("smoke")
            try await client.declare(Queue(queue))
            for index in 0..<10 {
                try await client.publish(Data("message \(index)".utf8), routingKey: queue)
            }
            #expect(try await TestBroker.messageCount(queue) == 10)
            var received: [String] = []
            for try await delivery in try await client.consume(queue, prefetch: 5) {
                received.append(delivery.bodyString)
                try delivery.ack()
                if received.count == 10 { break }
            }
            #expect(received == (0..<10).map { "message \($0)" })
            #expect(try await eventually {
                try await TestBroker.queueStats(queue).map { $0.ready + $0.unacked + $0.consumers } == 0
            })
            try await client.deleteQueue(queue)
        }
    }
}
