internal import CRabbitMQ

/// One frame read from librabbitmq, as ``FrameDecoder`` gives it to the I/O loop: methods copied into Swift values,
/// content kept where librabbitmq decoded it until the loop hands it to ``ConnectionStateMachine`` (which copies
/// what it keeps). Valid until the next frame is read: librabbitmq recycles the frame's memory then.
enum DecodedFrame {
    /// A method frame on `channel` (0: the connection), copied out.
    case method(BrokerMethod, channel: UInt16)
    /// A content header frame: the message's properties, decoded on demand (``ContentHeader/properties``) so that
    /// they move into the message without a copy, and the body size it announces.
    case header(ContentHeader, channel: UInt16)
    /// A body frame's payload, in librabbitmq's frame buffer.
    case body(UnsafeRawBufferPointer, channel: UInt16)
    /// A heartbeat (librabbitmq has already recorded that the broker is alive), or a frame of no other kind.
    case heartbeat
}

/// A content header frame, read in place.
struct ContentHeader {
    /// The body size the header announces.
    let bodySize: Int
    private let decoded: UnsafeRawPointer?

    init(bodySize: Int, decoded: UnsafeRawPointer?) {
        self.bodySize = bodySize
        self.decoded = decoded
    }

    /// The message's properties, copied out of librabbitmq's memory (empty if the frame carried none).
    var properties: MessageProperties {
        guard let decoded else { return MessageProperties() }
        return MessageProperties(decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee)
    }
}

/// Turns librabbitmq's frames into ``DecodedFrame``s: the only code that reads a frame's C structures.
enum FrameDecoder {
    /// Decodes `frame`; see ``DecodedFrame`` for how long what it returns is valid.
    static func decode(_ frame: amqp_frame_t) -> DecodedFrame {
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD:
            return .method(decode(frame.payload.method), channel: frame.channel)
        case AMQP_FRAME_HEADER:
            let header = frame.payload.properties
            return .header(ContentHeader(bodySize: Int(header.body_size), decoded: UnsafeRawPointer(header.decoded)),
                           channel: frame.channel)
        case AMQP_FRAME_BODY:
            let fragment = frame.payload.body_fragment
            return .body(UnsafeRawBufferPointer(start: fragment.bytes, count: fragment.bytes == nil ? 0 : fragment.len),
                         channel: frame.channel)
        default:
            return .heartbeat
        }
    }

    /// Copies a method out of librabbitmq's frame memory.
    static func decode(_ method: amqp_method_t) -> BrokerMethod {
        let decoded = method.decoded
        func body<T>(_ type: T.Type) -> T { decoded!.assumingMemoryBound(to: T.self).pointee }
        switch method.id {
        case AMQP_CONNECTION_CLOSE_METHOD:
            let close = body(amqp_connection_close_t.self)
            return .connectionClose(replyCode: close.reply_code, replyText: close.reply_text.string,
                                    failed: failedMethod(classID: close.class_id, methodID: close.method_id))
        case AMQP_CONNECTION_CLOSE_OK_METHOD:
            return .connectionCloseOk
        case AMQP_CONNECTION_BLOCKED_METHOD:
            return .connectionBlocked(reason: body(amqp_connection_blocked_t.self).reason.string)
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            return .connectionUnblocked
        case AMQP_CHANNEL_CLOSE_METHOD:
            let close = body(amqp_channel_close_t.self)
            return .channelClose(replyCode: close.reply_code, replyText: close.reply_text.string,
                                 failed: failedMethod(classID: close.class_id, methodID: close.method_id))
        case AMQP_CHANNEL_CLOSE_OK_METHOD:
            return .channelCloseOk
        case AMQP_CHANNEL_FLOW_METHOD:
            return .channelFlow(active: body(amqp_channel_flow_t.self).active != 0)
        case AMQP_BASIC_DELIVER_METHOD:
            let deliver = body(amqp_basic_deliver_t.self)
            return .deliver(consumerTag: deliver.consumer_tag.string, deliveryTag: deliver.delivery_tag,
                            isRedelivered: deliver.redelivered != 0, exchange: deliver.exchange.string,
                            routingKey: deliver.routing_key.string)
        case AMQP_BASIC_ACK_METHOD:
            let ack = body(amqp_basic_ack_t.self)
            return .ack(deliveryTag: ack.delivery_tag, multiple: ack.multiple != 0)
        case AMQP_BASIC_NACK_METHOD:
            let nack = body(amqp_basic_nack_t.self)
            return .nack(deliveryTag: nack.delivery_tag, multiple: nack.multiple != 0)
        case AMQP_BASIC_RETURN_METHOD:
            let returned = body(amqp_basic_return_t.self)
            return .returned(replyCode: returned.reply_code, replyText: returned.reply_text.string,
                             exchange: returned.exchange.string, routingKey: returned.routing_key.string)
        case AMQP_BASIC_GET_OK_METHOD:
            let got = body(amqp_basic_get_ok_t.self)
            return .getOk(deliveryTag: got.delivery_tag, isRedelivered: got.redelivered != 0,
                          exchange: got.exchange.string, routingKey: got.routing_key.string)
        case AMQP_BASIC_CANCEL_METHOD:
            let cancel = body(amqp_basic_cancel_t.self)
            return .cancel(consumerTag: cancel.consumer_tag.string, noWait: cancel.nowait != 0)
        case AMQP_BASIC_CANCEL_OK_METHOD:
            return .cancelOk(consumerTag: body(amqp_basic_cancel_ok_t.self).consumer_tag.string)
        case AMQP_QUEUE_DECLARE_OK_METHOD:
            let ok = body(amqp_queue_declare_ok_t.self)
            return .reply(id: method.id, .queueDeclared(name: ok.queue.string, messageCount: ok.message_count,
                                                        consumerCount: ok.consumer_count))
        case AMQP_QUEUE_PURGE_OK_METHOD:
            return .reply(id: method.id, .messageCount(body(amqp_queue_purge_ok_t.self).message_count))
        case AMQP_QUEUE_DELETE_OK_METHOD:
            return .reply(id: method.id, .messageCount(body(amqp_queue_delete_ok_t.self).message_count))
        case AMQP_BASIC_CONSUME_OK_METHOD:
            return .reply(id: method.id, .consumerTag(body(amqp_basic_consume_ok_t.self).consumer_tag.string))
        case AMQP_BASIC_GET_EMPTY_METHOD:
            return .reply(id: method.id, .getEmpty)
        default:
            return .reply(id: method.id, .done)
        }
    }

    /// The method a channel.close or connection.close names as the one that failed, if any.
    static func failedMethod(classID: UInt16, methodID: UInt16) -> BrokerMethod.FailedMethod? {
        guard classID != 0 else { return nil }
        let number = amqp_method_number_t(classID) << 16 | amqp_method_number_t(methodID)
        guard let constant = amqp_method_name(number) else { return .init(number: number, name: nil) }
        // AMQP_CHANNEL_CLOSE_OK_METHOD is channel.close-ok.
        let words = String(cString: constant).lowercased().split(separator: "_").dropFirst().dropLast()
        guard let first = words.first else { return .init(number: number, name: nil) }
        return .init(number: number, name: first + "." + words.dropFirst().joined(separator: "-"))
    }
}
