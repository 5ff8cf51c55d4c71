import Foundation
import RabbitMQ
import Testing
import RabbitMQTestSupport

/// Message headers holding every ``FieldValue`` case travel through a real broker and come back unchanged.
@Suite("Field tables through the broker")
struct FieldTableRoundTripTests {
    /// One value of every case RabbitMQ keeps, at the edges of each range. `.uint64` (`L`) is not here: RabbitMQ 3.10
    /// reads it as a signed 64-bit integer and re-encodes it as `l` (`.int64`), so `.uint64(.max)` comes back as
    /// `.int64(-1)` from a dead-letter queue.
    static let everyAcceptedValue: [(String, FieldValue)] = [
        ("bool", .bool(true)),
        ("bool-false", .bool(false)),
        ("int8", .int8(-128)),
        ("uint8", .uint8(255)),
        ("int16", .int16(-32768)),
        ("uint16", .uint16(65535)),
        ("int32", .int32(.min)),
        ("uint32", .uint32(.max)),
        ("int64", .int64(.min)),
        ("float", .float(1.5)),
        ("double", .double(-2.75e300)),
        ("decimal", .decimal(FieldDecimal(scale: 3, value: 123_456))),
        ("string", .string("héllo, wörld ✓")),
        ("string-empty", .string("")),
        ("bytes", .bytes([0, 1, 127, 128, 255])),
        ("bytes-empty", .bytes([])),
        ("array", .array([.int32(7), .string("seven"), .bool(false), .void, .array([.int8(-1)])])),
        ("array-empty", .array([])),
        ("table", .table(["inner": .int16(-2), "deeper": .table(["leaf": .string("x")])])),
        ("table-empty", .table([:])),
        ("timestamp", .timestamp(Date(timeIntervalSince1970: 1_700_000_000))),
        ("void", .void),
    ]

    static var headers: FieldTable {
        var headers = FieldTable(everyAcceptedValue.map { FieldTable.Entry(key: $0.0, value: $0.1) })
        // Every case again, nested in a table and in an array.
        headers["nested"] = .table(FieldTable(everyAcceptedValue.map { FieldTable.Entry(key: $0.0, value: $0.1) }))
        headers["in-array"] = .array(everyAcceptedValue.map(\.1))
        return headers
    }

    @Test("every accepted FieldValue case round-trips unchanged through a consumer")
    func roundTripThroughConsumer() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("fields")
            try await client.declare(Queue(queue, durable: false))
            let sent = Self.headers
            try await client.publish(Data("fields".utf8), routingKey: queue,
                                     properties: MessageProperties(headers: sent))
            #expect(try await TestBroker.messageCount(queue) == 1)

            var received: Delivery?
            for try await delivery in try await client.consume(queue, prefetch: 1) {
                received = delivery
                try delivery.ack()
                break
            }
            let delivery = try #require(received)
            #expect(delivery.bodyString == "fields")
            Self.expectEqual(delivery.properties.headers, sent)
            #expect(try await eventually {
                try await TestBroker.queueStats(queue).map { $0.ready + $0.unacked } == 0
            })
            try await client.deleteQueue(queue)
        }
    }

    @Test("every accepted FieldValue case round-trips unchanged through basic.get, and as queue arguments")
    func roundTripThroughGetAndArguments() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("fields-get")
            // Unknown x- arguments are kept as given; the broker echoes nothing back, so this checks that every
            // type is accepted in a declaration, and that an identical redeclaration matches.
            let arguments = QueueArguments(extra: ["x-test-every-type": .table(Self.headers)])
            try await client.declare(Queue(queue, durable: false, arguments: arguments))
            try await client.declare(Queue(queue, durable: false, arguments: arguments))
            let sent = Self.headers
            try await client.publish(Data("get".utf8), routingKey: queue,
                                     properties: MessageProperties(headers: sent))
            let delivery = try #require(try await client.get(from: queue, acknowledgement: .automatic))
            #expect(delivery.bodyString == "get")
            Self.expectEqual(delivery.properties.headers, sent)
            #expect(try await client.deleteQueue(queue) == 0)
        }
    }

    @Test("every accepted FieldValue case survives the broker re-encoding the headers (dead-lettering)")
    func roundTripThroughDeadLettering() async throws {
        try await TestBroker.withClient { client in
            let queue = TestBroker.uniqueName("fields-dl")
            let deadLetters = "\(queue).dead"
            try await client.declare(Queue(deadLetters, durable: false))
            try await client.declare(Queue(queue, durable: false, arguments: QueueArguments(
                deadLetterExchange: "", deadLetterRoutingKey: deadLetters)))
            let sent = Self.headers
            try await client.publish(Data("dead".utf8), routingKey: queue,
                                     properties: MessageProperties(headers: sent))
            let original = try #require(try await client.get(from: queue))
            try original.reject(requeue: false)
            #expect(try await eventually { try await TestBroker.messageCount(deadLetters) == 1 })

            let dead = try #require(try await client.get(from: deadLetters, acknowledgement: .automatic))
            #expect(dead.bodyString == "dead")
            // The broker adds its x-death headers (which makes it encode the table afresh) after ours.
            let added = dead.properties.headers.entries.filter { sent[$0.key] == nil }.map(\.key)
            #expect(Set(added) == ["x-death", "x-first-death-exchange", "x-first-death-queue",
                                   "x-first-death-reason"])
            let death = dead.properties.headers["x-death"]?.arrayValue?.first?.tableValue
            #expect(death?["queue"] == .string(queue))
            #expect(death?["reason"] == .string("rejected"))
            // Re-encoding sorts the top-level keys (nested tables keep their order): compare key by key.
            let ours = FieldTable(dead.properties.headers.entries.filter { sent[$0.key] != nil })
            Self.expectEqual(ours, sent, ordered: false)
            #expect(try await client.deleteQueue(queue) == 0)
            #expect(try await client.deleteQueue(deadLetters) == 0)
        }
    }

    /// Compares entry by entry first, so that a difference names its key; with `ordered`, the keys' order too.
    static func expectEqual(_ received: FieldTable, _ sent: FieldTable, ordered: Bool = true,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        if ordered {
            #expect(received.entries.map(\.key) == sent.entries.map(\.key), sourceLocation: sourceLocation)
        } else {
            #expect(received.entries.map(\.key).sorted() == sent.entries.map(\.key).sorted(),
                    sourceLocation: sourceLocation)
        }
        for entry in sent.entries {
            #expect(received[entry.key] == entry.value, "header \(entry.key)", sourceLocation: sourceLocation)
        }
        if ordered { #expect(received == sent, sourceLocation: sourceLocation) }
    }
}
