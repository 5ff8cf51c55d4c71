import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// Over TLS the engine writes publishes and acks itself, through the TLS session (issue 18): many in flight at
/// once, bodies from empty to several frames, and acks in batches must all arrive intact and in order.
@Suite("TLS pipeline", .enabled(if: TLSBroker.isAvailable, "RABBITMQ_TLS_URL and RABBITMQ_TLS_DIR are not set"))
struct TLSPipelineTests {
    @Test("windowed publishes of every size over TLS are confirmed, then consumed and acked, byte for byte")
    func pipelinedOverTLS() async throws {
        let name = TestBroker.uniqueName("tls-pipeline")
        let client = RabbitMQClient(configuration: try TLSBroker.configuration(name: name), logger: TestBroker.logger)
        let queue = TestBroker.uniqueName("tls-pipeline")
        // Sizes around a TLS record (16 KiB) and a frame (128 KiB), and one of several frames.
        let sizes = [0, 1, 128, 16_383, 16_385, 131_064, 131_073, 400_000]
        let bodies = (0..<3000).map { index in
            let size = index % 10 == 0 ? sizes[(index / 10) % sizes.count] : 100 + index % 50
            return Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &+ index) })
        }
        do {
            try await client.connect()
            _ = try await client.declare(Queue(queue))
            let channel = try await client.openChannel()
            try await channel.enableConfirms(window: 500)
            for body in bodies { _ = try await channel.publishWithDeferredConfirm(body, routingKey: queue) }
            try await channel.waitForConfirms()
            #expect(try await TLSBroker.queueStats(queue)?.ready == bodies.count)

            try await channel.setPrefetch(300)
            var received: [Data] = []
            for try await delivery in try await channel.consume(queue) {
                received.append(delivery.body)
                try delivery.ack()
                if received.count == bodies.count { break }
            }
            #expect(received.count == bodies.count)
            #expect(received == bodies)
            // The acks went out through the session too: the broker holds nothing.
            #expect(try await eventually {
                try await TLSBroker.queueStats(queue).map { $0.ready + $0.unacked } == 0
            })
            try await channel.close()
            _ = try await client.deleteQueue(queue)
        } catch {
            _ = try? await client.deleteQueue(queue)
            await client.close()
            throw error
        }
        await client.close()
    }
}
