import CRabbitMQ
import Foundation
import Testing

@testable import RabbitMQ

/// ``FrameDecoder``: librabbitmq's frames, built here as librabbitmq would decode them, turned into Swift values.
@Suite("Frame decoder")
struct FrameDecoderTests {
    /// A method frame on `channel` whose decoded body is `body`.
    private func methodFrame<Body>(_ id: amqp_method_number_t, _ body: inout Body, channel: UInt16 = 1,
                                   _ check: (DecodedFrame) -> Void) {
        withUnsafeMutablePointer(to: &body) { pointer in
            var frame = amqp_frame_t()
            frame.frame_type = UInt8(AMQP_FRAME_METHOD)
            frame.channel = channel
            frame.payload.method.id = id
            frame.payload.method.decoded = UnsafeMutableRawPointer(pointer)
            check(FrameDecoder.decode(frame))
        }
    }

    @Test("a basic.deliver is copied into a deliver method with its channel")
    func deliver() {
        let arena = CArena()
        var deliver = amqp_basic_deliver_t()
        deliver.consumer_tag = arena.bytes("worker-1")
        deliver.delivery_tag = 42
        deliver.redelivered = 1
        deliver.exchange = arena.bytes("orders")
        deliver.routing_key = arena.bytes("order.placed")
        methodFrame(AMQP_BASIC_DELIVER_METHOD, &deliver, channel: 3) { frame in
            guard case .method(.deliver(let tag, let deliveryTag, let redelivered, let exchange, let key), 3) = frame
            else { Issue.record("not a deliver on channel 3: \(frame)"); return }
            #expect(tag == "worker-1" && deliveryTag == 42 && redelivered)
            #expect(exchange == "orders" && key == "order.placed")
        }
    }

    @Test("basic.ack and basic.nack keep their tag and multiple flag")
    func confirms() {
        var ack = amqp_basic_ack_t(delivery_tag: 7, multiple: 1)
        methodFrame(AMQP_BASIC_ACK_METHOD, &ack) { frame in
            guard case .method(.ack(7, true), 1) = frame else { Issue.record("\(frame)"); return }
        }
        var nack = amqp_basic_nack_t(delivery_tag: 8, multiple: 0, requeue: 1)
        methodFrame(AMQP_BASIC_NACK_METHOD, &nack) { frame in
            guard case .method(.nack(8, false), 1) = frame else { Issue.record("\(frame)"); return }
        }
    }

    @Test("a channel.close names the method that failed")
    func channelClose() {
        let arena = CArena()
        var close = amqp_channel_close_t()
        close.reply_code = 404
        close.reply_text = arena.bytes("NOT_FOUND - no queue 'missing'")
        close.class_id = 50
        close.method_id = 10
        methodFrame(AMQP_CHANNEL_CLOSE_METHOD, &close) { frame in
            guard case .method(.channelClose(404, let text, let failed), 1) = frame else {
                Issue.record("\(frame)")
                return
            }
            #expect(text == "NOT_FOUND - no queue 'missing'")
            #expect(failed?.name == "queue.declare")
            #expect(failed?.number == OutgoingMethod.queueDeclare(
                name: "q", passive: false, durable: false, exclusive: false, autoDelete: false, arguments: [:]).number)
        }
    }

    @Test("a reply to a request carries what the request waits for")
    func replies() {
        let arena = CArena()
        var declared = amqp_queue_declare_ok_t()
        declared.queue = arena.bytes("amq.gen-1")
        declared.message_count = 5
        declared.consumer_count = 2
        methodFrame(AMQP_QUEUE_DECLARE_OK_METHOD, &declared) { frame in
            guard case .method(.reply(let id, .queueDeclared("amq.gen-1", 5, 2)), 1) = frame else {
                Issue.record("\(frame)")
                return
            }
            #expect(id == AMQP_QUEUE_DECLARE_OK_METHOD)
        }
        var empty = amqp_basic_get_empty_t()
        methodFrame(AMQP_BASIC_GET_EMPTY_METHOD, &empty) { frame in
            guard case .method(.reply(_, .getEmpty), 1) = frame else { Issue.record("\(frame)"); return }
        }
    }

    @Test("a content header gives its body size and, on demand, the properties")
    func header() {
        let arena = CArena()
        var properties = MessageProperties()
        properties.contentType = "application/json"
        properties.messageID = "m-1"
        properties.headers = ["x-attempt": .int32(2)]
        var encoded = arena.basicProperties(properties)
        withUnsafeMutablePointer(to: &encoded) { pointer in
            var frame = amqp_frame_t()
            frame.frame_type = UInt8(AMQP_FRAME_HEADER)
            frame.channel = 2
            frame.payload.properties.body_size = 1234
            frame.payload.properties.decoded = UnsafeMutableRawPointer(pointer)
            guard case .header(let header, 2) = FrameDecoder.decode(frame) else {
                Issue.record("not a header on channel 2")
                return
            }
            #expect(header.bodySize == 1234)
            #expect(header.properties == properties)
        }
        #expect(ContentHeader(bodySize: 0, decoded: nil).properties == MessageProperties())
    }

    @Test("a body frame is read in place; a heartbeat decodes to nothing to do")
    func bodyAndHeartbeat() {
        var bytes: [UInt8] = [1, 2, 3, 4]
        bytes.withUnsafeMutableBytes { buffer in
            var frame = amqp_frame_t()
            frame.frame_type = UInt8(AMQP_FRAME_BODY)
            frame.channel = 4
            frame.payload.body_fragment = amqp_bytes_t(len: buffer.count, bytes: buffer.baseAddress)
            guard case .body(let payload, 4) = FrameDecoder.decode(frame) else {
                Issue.record("not a body on channel 4")
                return
            }
            #expect(Array(payload) == [1, 2, 3, 4])
            #expect(payload.baseAddress == UnsafeRawPointer(buffer.baseAddress), "not copied")
        }
        var empty = amqp_frame_t()
        empty.frame_type = UInt8(AMQP_FRAME_BODY)
        guard case .body(let nothing, 0) = FrameDecoder.decode(empty) else {
            Issue.record("an empty body frame")
            return
        }
        #expect(nothing.isEmpty)
        var heartbeat = amqp_frame_t()
        heartbeat.frame_type = UInt8(AMQP_FRAME_HEARTBEAT)
        guard case .heartbeat = FrameDecoder.decode(heartbeat) else {
            Issue.record("a heartbeat")
            return
        }
    }
}
