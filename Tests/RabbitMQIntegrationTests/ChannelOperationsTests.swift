import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// The operations written once in `ChannelOperations` do the same on a `Channel` and on the client.
@Suite("Channel operations")
struct ChannelOperationsTests {
    /// Declares, publishes (awaiting each confirm), inspects, purges and deletes through `operations`, checking each
    /// step at the broker.
    private static func exercise(_ operations: some ChannelOperations, prefix: String) async throws {
        let exchange = TestBroker.uniqueName("\(prefix).exchange")
        let queue = TestBroker.uniqueName("\(prefix).queue")
        try await operations.declare(Topology {
            Exchange(exchange, type: .direct, durable: false)
            Queue(queue)
            Binding.queue(queue, to: exchange, routingKey: "key")
        })
        try await operations.inspectExchange(exchange)
        for index in 0..<3 {
            // Returns once confirmed: a classic queue holds a message before the broker confirms it.
            try await operations.publish(Data("message \(index)".utf8), to: exchange, routingKey: "key",
                                         properties: MessageProperties(), mandatory: true)
            #expect(try await operations.inspectQueue(queue).messageCount == UInt32(index + 1))
        }
        try await operations.publish(json: ["id": 7], to: exchange, routingKey: "key")
        #expect(try await eventually { try await TestBroker.messageCount(queue) == 4 })
        let fetched = try #require(try await operations.get(from: queue, acknowledgement: .manual))
        #expect(fetched.bodyString == "message 0")
        try fetched.ack()
        #expect(try await eventually {
            let stats = try await TestBroker.queueStats(queue)
            return stats?.ready == 3 && stats?.unacked == 0
        })
        try await operations.unbind(.queue(queue, to: exchange, routingKey: "key"))
        let unroutable = await #expect(throws: RabbitMQError.self) {
            try await operations.publish(Data("lost".utf8), to: exchange, routingKey: "key",
                                         properties: MessageProperties(), mandatory: true)
        }
        #expect(unroutable?.code == .unroutable)
        #expect(try await operations.purgeQueue(queue) == 3)
        #expect(try await operations.deleteQueue(queue) == 0)
        try await operations.deleteExchange(exchange)
        let missing = await #expect(throws: RabbitMQError.self) { try await operations.inspectQueue(queue) }
        #expect(missing?.replyCode == 404)
        #expect(try await TestBroker.messageCount(queue) == nil)
    }

    @Test func onTheClient() async throws {
        try await TestBroker.withClient { client in
            try await Self.exercise(client, prefix: "ops.client")
        }
    }

    @Test func onAConfirmChannel() async throws {
        try await TestBroker.withClient { client in
            let channel = try await client.openChannel()
            try await channel.enableConfirms()
            try await Self.exercise(channel, prefix: "ops.channel")
            // The 404 of the passive declare closed the channel: that is the channel's, not the client's, failure.
            #expect(!channel.isOpen)
            try await client.inspectExchange("amq.direct")
        }
    }

    @Test func badInputFailsBeforeConnecting() async throws {
        // Nothing listens on port 1: any call that got as far as connecting would fail with connectionRefused.
        let client = RabbitMQClient(configuration: try .init(url: "amqp://guest:guest@127.0.0.1:1/"))
        let tooLong = String(repeating: "q", count: 256)
        let calls: [(String, @Sendable () async throws -> Void)] = [
            ("inspectQueue", { _ = try await client.inspectQueue(tooLong) }),
            ("inspectExchange", { try await client.inspectExchange(tooLong) }),
            ("purgeQueue", { _ = try await client.purgeQueue(tooLong) }),
            ("deleteExchange", { try await client.deleteExchange(tooLong) }),
            ("get", { _ = try await client.get(from: tooLong) }),
            ("publish", { try await client.publish(Data(), to: tooLong, routingKey: "") }),
        ]
        for (name, call) in calls {
            let error = await #expect(throws: RabbitMQError.self, "\(name)") { try await call() }
            #expect(error?.code == .invalidArgument, "\(name): \(String(describing: error))")
        }
        await client.close()
    }
}
