import Foundation
import RabbitMQ
import Testing

@Suite("Publishing")
struct PublishingTests {
    // MARK: Confirms and broker counts

    @Test func everyConfirmedChannelPublishIsCountedAtTheBroker() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.channel")
            try await client.declare(Queue(queue))
            let channel = try await client.openChannel()
            try await channel.enableConfirms(window: 500)
            var confirmations: [PublishConfirmation] = []
            var largestInFlight = 0
            for index in 0..<5_000 {
                confirmations.append(try await channel.publishWithDeferredConfirm(Data("message \(index)".utf8),
                                                                                  routingKey: queue))
                largestInFlight = max(largestInFlight, channel.unconfirmedCount)
            }
            try await channel.waitForConfirms()
            #expect(channel.unconfirmedCount == 0)
            #expect(largestInFlight <= 500, "the window of 500 was exceeded")
            for confirmation in confirmations {
                #expect(confirmation.isSettled)
                try await confirmation.wait()
            }
            #expect(try await TestBroker.messageCount(queue) == 5_000)
            try await channel.close()
            try await client.deleteQueue(queue)
        }
    }

    @Test func everyClientPublishIsCountedAtTheBroker() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.client")
            try await client.declare(Queue(queue))
            for index in 0..<200 {
                try await client.publish(Data("message \(index)".utf8), routingKey: queue)
            }
            #expect(try await TestBroker.messageCount(queue) == 200)
            try await client.deleteQueue(queue)
        }
    }

    @Test func jsonPublishArrivesAsJSON() async throws {
        struct Order: Codable, Equatable {
            var id: Int
            var item: String
        }
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.json")
            try await client.declare(Queue(queue))
            let order = Order(id: 42, item: "crème brûlée")
            try await client.publish(json: order, routingKey: queue)
            let delivery = try #require(try await client.get(from: queue, acknowledgement: .automatic))
            #expect(delivery.properties.contentType == "application/json")
            #expect(try JSONDecoder().decode(Order.self, from: delivery.body) == order)
            try await client.deleteQueue(queue)
        }
    }

    // MARK: Nacks

    @Test func aFullRejectPublishQueueNacksTheExcess() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.nack")
            try await client.declare(Queue(queue, arguments: QueueArguments(maxLength: 10, overflow: .rejectPublish)))
            let channel = try await client.openChannel()
            try await channel.enableConfirms(window: 100)
            var confirmations: [PublishConfirmation] = []
            for index in 0..<20 {
                confirmations.append(try await channel.publishWithDeferredConfirm(Data("message \(index)".utf8),
                                                                                  routingKey: queue))
            }
            var confirmed: [Int] = []
            var nacked: [Int] = []
            for (index, confirmation) in confirmations.enumerated() {
                do {
                    try await confirmation.wait()
                    confirmed.append(index)
                } catch let error as RabbitMQError where error.code == .publishNacked {
                    nacked.append(index)
                }
            }
            // The queue takes messages in publish order until it is full.
            #expect(confirmed == Array(0..<10))
            #expect(nacked == Array(10..<20))
            // waitForConfirms reports the failures since the last call once, then nothing.
            let error = await #expect(throws: RabbitMQError.self) { try await channel.waitForConfirms() }
            #expect(error?.code == .publishNacked)
            try await channel.waitForConfirms()
            #expect(channel.isOpen)
            #expect(try await TestBroker.messageCount(queue) == 10)

            // The client's own publisher reports a nack too, and keeps working.
            let clientError = await #expect(throws: RabbitMQError.self) {
                try await client.publish(Data("one more".utf8), routingKey: queue)
            }
            #expect(clientError?.code == .publishNacked)
            try await client.purgeQueue(queue)
            try await client.publish(Data("after purge".utf8), routingKey: queue)
            #expect(try await TestBroker.messageCount(queue) == 1)
            try await channel.close()
            try await client.deleteQueue(queue)
        }
    }

    // MARK: Returns

    @Test func mandatoryUnroutablePublishIsReturnedWithNoRoute() async throws {
        try await TestBroker.withClient { client in
            let exchange = TestBroker.uniqueName("pub.unbound")
            try await client.declare(Exchange(exchange, durable: false))
            let error = await #expect(throws: RabbitMQError.self) {
                try await client.publish(Data("lost".utf8), to: exchange, routingKey: "nowhere", mandatory: true)
            }
            #expect(error?.code == .unroutable)
            #expect(error?.replyCode == 312)
            #expect(error?.replyText == "NO_ROUTE")
            // Without mandatory the broker drops it silently and confirms it.
            try await client.publish(Data("dropped".utf8), to: exchange, routingKey: "nowhere")
            try await client.publish(Data("dropped".utf8), to: exchange, routingKey: "nowhere", mandatory: false)
            // A return does not close anything: the same publisher goes on.
            let queue = TestBroker.uniqueName("pub.after-return")
            try await client.declare(Queue(queue))
            try await client.publish(Data("routed".utf8), routingKey: queue, mandatory: true)
            #expect(try await TestBroker.messageCount(queue) == 1)
            try await client.deleteQueue(queue)
            try await client.deleteExchange(exchange)
        }
    }

    @Test func interleavedRoutableAndUnroutableMandatoryPublishesGetTheirOwnOutcome() async throws {
        try await TestBroker.withClient { client in
            let exchange = TestBroker.uniqueName("pub.mixed")
            let queue = TestBroker.uniqueName("pub.mixed")
            try await client.declare(Exchange(exchange, durable: false))
            try await client.declare(Queue(queue))
            try await client.bind(.queue(queue, to: exchange, routingKey: "routed"))
            let channel = try await client.openChannel()
            try await channel.enableConfirms(window: 100)
            // A pattern of runs, so that acks of routed messages and returns of unroutable ones interleave.
            let routable = (0..<90).map { $0 % 3 == 0 || $0 % 7 == 0 }
            var confirmations: [PublishConfirmation] = []
            for (index, isRoutable) in routable.enumerated() {
                confirmations.append(try await channel.publishWithDeferredConfirm(
                    Data("message \(index)".utf8), to: exchange, routingKey: isRoutable ? "routed" : "unbound",
                    mandatory: true))
            }
            for (index, confirmation) in confirmations.enumerated() {
                let outcome = await Self.outcome(of: confirmation)
                if routable[index] {
                    #expect(outcome == nil, "message \(index) was routed but failed: \(String(describing: outcome))")
                } else {
                    #expect(outcome?.code == .unroutable, "message \(index) was not routed")
                    #expect(outcome?.replyCode == 312)
                }
            }
            #expect(try await TestBroker.messageCount(queue) == routable.filter { $0 }.count)
            try await channel.close()
            try await client.deleteQueue(queue)
            try await client.deleteExchange(exchange)
        }
    }

    // MARK: Concurrency

    @Test func concurrentPublishersShareTheClientPublisher() async throws {
        try await TestBroker.withClient(configure: { $0.confirmTimeout = .seconds(120) }) { client in
            let queue = TestBroker.uniqueName("pub.concurrent")
            try await client.declare(Queue(queue))
            let failures = try await withThrowingTaskGroup(of: Int.self) { group in
                for task in 0..<50 {
                    group.addTask {
                        var failures = 0
                        for index in 0..<1_000 {
                            do {
                                try await client.publish(Data("task \(task) message \(index)".utf8),
                                                         routingKey: queue)
                            } catch {
                                failures += 1
                            }
                        }
                        return failures
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(failures == 0)
            #expect(try await TestBroker.messageCount(queue) == 50_000)
            try await client.deleteQueue(queue)
        }
    }

    // MARK: Properties

    @Test func everyPropertyAndHeaderTypeRoundTrips() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.properties")
            try await client.declare(Queue(queue))
            let headers: FieldTable = [
                "string": "héllo",
                "bool": .bool(true),
                "int8": .int8(-8),
                "uint8": .uint8(200),
                "int16": .int16(-1_600),
                "uint16": .uint16(60_000),
                "int32": .int32(-320_000),
                "uint32": .uint32(4_000_000_000),
                "int64": .int64(-64_000_000_000),
                "float": .float(1.5),
                "double": .double(-2.25),
                "decimal": .decimal(FieldDecimal(scale: 2, value: 12_345)),
                "bytes": .bytes([0, 1, 2, 255]),
                "array": [1, "two", .bool(false)],
                "table": ["nested": "value", "deeper": ["n": 1]],
                "timestamp": .timestamp(Date(timeIntervalSince1970: 1_700_000_000)),
                "void": .void,
            ]
            let properties = MessageProperties(
                contentType: "text/plain", contentEncoding: "identity", headers: headers, deliveryMode: .transient,
                priority: 7, correlationID: "correlation-1", replyTo: "replies", expiration: .seconds(3_600),
                messageID: "message-1", timestamp: Date(timeIntervalSince1970: 1_700_000_123), type: "order.placed",
                userID: "guest", appID: "publishing-tests")
            try await client.publish(Data("with properties".utf8), routingKey: queue, properties: properties)
            let delivery = try #require(try await client.get(from: queue, acknowledgement: .automatic))
            let received = delivery.properties
            #expect(delivery.bodyString == "with properties")
            #expect(received.contentType == properties.contentType)
            #expect(received.contentEncoding == properties.contentEncoding)
            #expect(received.deliveryMode == .transient)
            #expect(received.priority == 7)
            #expect(received.correlationID == properties.correlationID)
            #expect(received.replyTo == properties.replyTo)
            #expect(received.expiration == .seconds(3_600))
            #expect(received.messageID == properties.messageID)
            #expect(received.timestamp == properties.timestamp)
            #expect(received.type == properties.type)
            #expect(received.userID == "guest")
            #expect(received.appID == properties.appID)
            for entry in headers.entries {
                #expect(received.headers[entry.key] == entry.value, "header \(entry.key)")
            }
            #expect(received.headers.count == headers.count)
            #expect(received == properties)

            // Unset properties stay unset, except the delivery mode, which defaults to persistent.
            try await client.publish(Data("plain".utf8), routingKey: queue)
            let plain = try #require(try await client.get(from: queue, acknowledgement: .automatic))
            #expect(plain.properties == MessageProperties(deliveryMode: .persistent))
            try await client.deleteQueue(queue)
        }
    }

    @Test func aUserIDOtherThanTheConnectionsIsRefused() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.user-id")
            try await client.declare(Queue(queue))
            let error = await #expect(throws: RabbitMQError.self) {
                try await client.publish(Data("spoofed".utf8), routingKey: queue,
                                         properties: MessageProperties(userID: "somebody-else"))
            }
            #expect(error?.code == .channelClosed)
            #expect(error?.replyCode == 406)
            try await client.publish(Data("honest".utf8), routingKey: queue)
            #expect(try await TestBroker.messageCount(queue) == 1)
            try await client.deleteQueue(queue)
        }
    }

    // MARK: Body sizes

    /// frame_max is 131072 and a body frame carries at most frame_max − 8 bytes: test around both.
    @Test(arguments: [0, 1, 131_063, 131_064, 131_065, 131_071, 131_072, 131_073, 262_128, 1 << 20, 16 << 20])
    func bodyArrivesByteIdentical(size: Int) async throws {
        try await TestBroker.withClient(name: "bodyArrivesByteIdentical(\(size))") { client in
            let queue = TestBroker.uniqueName("pub.body")
            try await client.declare(Queue(queue))
            let body = Self.pattern(size: size)
            try await client.publish(body, routingKey: queue)
            let delivery = try #require(try await client.get(from: queue, acknowledgement: .automatic))
            #expect(delivery.body.count == size)
            #expect(delivery.body == body, "the body of \(size) bytes arrived altered")
            try await client.deleteQueue(queue)
        }
    }

    @Test func aBodyOverTheBrokersLimitIsRefusedAndTheClientGoesOn() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.too-large")
            try await client.declare(Queue(queue))
            // The test brokers accept at most 20 MiB (max_message_size).
            let error = await #expect(throws: RabbitMQError.self) {
                try await client.publish(Self.pattern(size: 21 << 20), routingKey: queue)
            }
            #expect(error?.code == .messageTooLarge, "got \(String(describing: error))")
            #expect(error?.replyCode == 406)
            #expect(try await TestBroker.messageCount(queue) == 0)
            let body = Self.pattern(size: 1_000)
            try await client.publish(body, routingKey: queue)
            let delivery = try #require(try await client.get(from: queue, acknowledgement: .automatic))
            #expect(delivery.body == body)
            try await client.deleteQueue(queue)
        }
    }

    @Test func aBodyOverTheProtocolLimitIsRefusedWithoutSendingIt() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.over-limit")
            try await client.declare(Queue(queue))
            // Zeroed lazily by the kernel: the pages are never touched, so this costs no memory.
            let huge = Data(count: Channel.maximumBodySize + 1)
            let error = await #expect(throws: RabbitMQError.self) {
                try await client.publish(huge, routingKey: queue)
            }
            #expect(error?.code == .messageTooLarge)
            #expect(error?.replyCode == nil, "refused by the client, not the broker")
            let channel = try await client.openChannel()
            let channelError = await #expect(throws: RabbitMQError.self) {
                _ = try await channel.publishWithDeferredConfirm(huge, routingKey: queue)
            }
            #expect(channelError?.code == .messageTooLarge)
            #expect(channel.isOpen)
            try await client.publish(Data("small".utf8), routingKey: queue)
            #expect(try await TestBroker.messageCount(queue) == 1)
            try await channel.close()
            try await client.deleteQueue(queue)
        }
    }

    @Test func headersLargerThanAFrameFailThatPublishOnly() async throws {
        try await TestBroker.withClient { client in
            try await Self.expectOversizedHeadersRefused(client)
        }
    }

    /// Publishes a message whose headers exceed frame_max: that publish fails with messageTooLarge, and the
    /// next publish on the same client arrives.
    static func expectOversizedHeadersRefused(_ client: RabbitMQClient) async throws {
        let queue = TestBroker.uniqueName("pub.big-headers")
        try await client.declare(Queue(queue, durable: false))
        let properties = MessageProperties(headers: ["big": .string(String(repeating: "h", count: 200_000))])
        let error = await #expect(throws: RabbitMQError.self) {
            try await client.publish(Data("x".utf8), routingKey: queue, properties: properties)
        }
        #expect(error?.code == .messageTooLarge, "\(String(describing: error))")
        #expect(error?.replyCode == nil, "refused by the client, not the broker")
        try await client.publish(Data("after".utf8), routingKey: queue)
        let delivery = try #require(try await client.get(from: queue, acknowledgement: .automatic))
        #expect(delivery.body == Data("after".utf8))
        try await client.deleteQueue(queue)
    }

    // MARK: Channel errors

    @Test func publishingToAMissingExchangeFailsWith404AndThePublisherRecovers() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.recover")
            try await client.declare(Queue(queue))
            let missing = TestBroker.uniqueName("pub.missing")
            let error = await #expect(throws: RabbitMQError.self) {
                try await client.publish(Data("nowhere".utf8), to: missing, routingKey: queue)
            }
            #expect(error?.code == .channelClosed)
            #expect(error?.replyCode == 404)
            #expect(error?.replyText?.contains(missing) == true)
            // The shared publisher channel died with the 404; the next publish gets a new one.
            try await client.publish(Data("somewhere".utf8), routingKey: queue)
            try await client.publish(Data("somewhere".utf8), to: "amq.direct", routingKey: queue)
            try await client.bind(.queue(queue, to: "amq.direct", routingKey: queue))
            try await client.publish(Data("somewhere".utf8), to: "amq.direct", routingKey: queue)
            #expect(try await TestBroker.messageCount(queue) == 2)
            try await client.deleteQueue(queue)
        }
    }

    @Test func aChannelPublishToAMissingExchangeClosesOnlyThatChannel() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("pub.channel-404")
            try await client.declare(Queue(queue))
            let channel = try await client.openChannel()
            try await channel.enableConfirms()
            let confirmation = try await channel.publishWithDeferredConfirm(
                Data("x".utf8), to: TestBroker.uniqueName("pub.missing"), routingKey: queue)
            let error = await #expect(throws: RabbitMQError.self) { try await confirmation.wait() }
            #expect(error?.code == .channelClosed)
            #expect(error?.replyCode == 404)
            #expect(!channel.isOpen)
            #expect(channel.closeReason?.replyCode == 404)
            let later = await #expect(throws: RabbitMQError.self) {
                _ = try await channel.publishWithDeferredConfirm(Data("y".utf8), routingKey: queue)
            }
            #expect(later?.replyCode == 404)
            try await client.publish(Data("z".utf8), routingKey: queue)
            #expect(try await TestBroker.messageCount(queue) == 1)
            try await client.deleteQueue(queue)
        }
    }

    // MARK: Helpers

    /// The failure a confirmation reports, or `nil` when the message was confirmed.
    static func outcome(of confirmation: PublishConfirmation) async -> RabbitMQError? {
        do {
            try await confirmation.wait()
            return nil
        } catch let error as RabbitMQError {
            return error
        } catch {
            return RabbitMQError(.protocolError, "unexpected error \(error)")
        }
    }

    /// `size` bytes of a pseudo-random pattern (xorshift), so that a shifted, dropped or repeated chunk shows.
    static func pattern(size: Int) -> Data {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(size)
        return Data([UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            for index in 0..<size {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                buffer[index] = UInt8(truncatingIfNeeded: state >> 24)
            }
            count = size
        })
    }
}
