import CRabbitMQ
import Foundation
import Testing

@testable import RabbitMQ

/// Over TLS the frame writer writes through librabbitmq's socket object (`swift_amqp_socket_send_all` in the C
/// shim calls the object's own send, SSL_write for a TLS session). Here that object is librabbitmq's plain TCP
/// socket on a socket pair: the same call through the same virtual table, so the bytes can be compared.
extension FrameWriterTests {
    @Test("Through librabbitmq's socket object, a publish is encoded as librabbitmq encodes it",
          arguments: [0, 128, 16 * 1024 + 1, 65529, 3 * 65528 + 5, 1 << 20])
    func publishThroughLibrarySocketMatchesLibrabbitmq(bodySize: Int) throws {
        let body = (0..<bodySize).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try expectSameBytes(properties: MessageProperties(deliveryMode: .persistent), body: body, exchange: "orders",
                            routingKey: "order.placed", mandatory: false, throughLibrary: true)
    }

    @Test("Through librabbitmq's socket object, publishes and acks in one buffer arrive in order")
    func mixedFramesThroughLibrarySocket() throws {
        let arena = CArena()
        let body = [UInt8](repeating: 0x62, count: 300)
        let viaSendmsg = try writerBytes { writer in try Self.appendMixed(writer, arena: arena, body: body) }
        let viaLibrary = try writerBytes(throughLibrary: true) { writer in
            try Self.appendMixed(writer, arena: arena, body: body)
        }
        #expect(viaSendmsg.count > 200 * 300)
        #expect(viaLibrary == viaSendmsg)
    }

    @Test("Through librabbitmq's socket object, a write to a peer that reads nothing fails after the timeout")
    func stalledPeerThroughLibrarySocketTimesOut() throws {
        let pair = try SocketPair()
        let state = try #require(amqp_new_connection())
        defer { amqp_destroy_connection(state) }
        let socket = amqp_tcp_socket_new(state)
        amqp_tcp_socket_set_sockfd(socket, pair.writeEnd)
        pair.writeEndIsClosed = true  // amqp_destroy_connection closes it
        let writer = FrameWriter(socket: pair.writeEnd, frameMax: Self.frameMax, librarySocket: socket)
        let arena = CArena()
        var properties = arena.basicProperties(MessageProperties())
        let body = [UInt8](repeating: 0x61, count: 60_000)
        #expect {
            for _ in 0..<400 {  // 24 MB, far more than a socket pair's buffers hold
                _ = try body.withUnsafeBytes { body throws(RabbitMQError) in
                    try writer.publish(channel: 1, exchange: "", routingKey: "q", mandatory: false,
                                       properties: &properties, body: body, timeout: .milliseconds(200))
                }
                if writer.shouldFlush { try writer.flush(timeout: .milliseconds(200)) }
            }
        } throws: { error in
            (error as? RabbitMQError)?.code == .connectionLost
        }
    }

    private static func appendMixed(_ writer: FrameWriter, arena: CArena, body: [UInt8]) throws {
        var properties = arena.basicProperties(MessageProperties(deliveryMode: .persistent))
        for index in 0..<200 {
            let published = try body.withUnsafeBytes { body throws(RabbitMQError) in
                try writer.publish(channel: 2, exchange: "", routingKey: "q\(index)", mandatory: false,
                                   properties: &properties, body: body, timeout: .seconds(5))
            }
            #expect(published)
            writer.appendSettlement(.ack(deliveryTag: UInt64(index + 1), multiple: index % 3 == 0), channel: 3)
            if writer.shouldFlush { try writer.flush(timeout: .seconds(5)) }
        }
    }
}
