import Foundation
import RabbitMQ
import Testing

/// `.uint64` (type code `L`). RabbitMQ 3.10 does not refuse it: its parser (`rabbit_binary_parser`) reads `L` as a
/// *signed* 64-bit `long`. A message passes through byte for byte while the broker leaves its properties alone, but
/// wherever the broker re-encodes the table (dead-lettering adds `x-death`; declare arguments as stored and shown)
/// the value comes back as `l`, `.int64`, and a value above `Int64.max` wraps: `.uint64(.max)` becomes `.int64(-1)`,
/// and `x-big: .uint64(.max)` is stored as `-1`. `FieldValue.uint64`'s documentation promises `invalidArgument`;
/// this test asserts that promise: refused before sending, nothing sent, the connection unaffected.
@Suite("Field tables: uint64")
struct FieldTableUInt64Tests {
    @Test("a uint64 header is refused client-side with invalidArgument, and the connection stays usable")
    func uint64HeaderRefused() async throws {
        let name = TestBroker.uniqueName("conn-uint64")
        try await TestBroker.withClient(configure: { $0.connectionName = name }) { client in
            let queue = TestBroker.uniqueName("uint64")
            try await client.declare(Queue(queue, durable: false))
            let properties = MessageProperties(headers: ["big": .uint64(UInt64.max)])
            let error = await #expect(throws: RabbitMQError.self) {
                try await TestBroker.withDeadline(.seconds(20)) {
                    try await client.publish(Data("u64".utf8), routingKey: queue, properties: properties)
                }
            }
            #expect(error?.code == .invalidArgument, "\(String(describing: error))")
            #expect(error?.operation == "basic.publish")
            // Nested too.
            let nested = MessageProperties(headers: ["outer": .array([.table(["big": .uint64(1)])])])
            let nestedError = await #expect(throws: RabbitMQError.self) {
                try await TestBroker.withDeadline(.seconds(20)) {
                    try await client.publish(Data("u64".utf8), routingKey: queue, properties: nested)
                }
            }
            #expect(nestedError?.code == .invalidArgument, "\(String(describing: nestedError))")
            // The same in declare arguments.
            let argumentsQueue = TestBroker.uniqueName("uint64-args")
            let argumentError = await #expect(throws: RabbitMQError.self) {
                try await TestBroker.withDeadline(.seconds(20)) {
                    try await client.declare(Queue(argumentsQueue, durable: false,
                                                   arguments: QueueArguments(extra: ["x-big": .uint64(1)])))
                }
            }
            #expect(argumentError?.code == .invalidArgument, "\(String(describing: argumentError))")
            #expect(try await TestBroker.queueStats(argumentsQueue) == nil)
            if argumentError == nil { try await client.deleteQueue(argumentsQueue) }

            // Nothing reached the broker, and the connection carries on.
            #expect(try await ConnectionTests.connectionListed(name))
            try await client.publish(Data("fine".utf8), routingKey: queue)
            #expect(try await client.inspectQueue(queue).messageCount == 1)
            #expect(try await client.deleteQueue(queue) == 1, "the uint64 messages reached the queue")
        }
    }
}
