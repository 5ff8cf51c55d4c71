import Foundation
internal import CRabbitMQ
import Logging
import DequeModule

extension IOLoop {
    /// Handles one frame. Everything it needs is copied out: librabbitmq recycles the frame's memory next.
    func dispatch(_ frame: amqp_frame_t) {
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD:
            if frame.channel == 0 {
                connectionMethod(frame.payload.method)
            } else if let channel = channels[Int(frame.channel)] {
                channelMethod(frame.payload.method, on: channel)
            }
        case AMQP_FRAME_HEADER:
            // The message is changed in place and moved out with take(): copying it costs a retain per field.
            guard let channel = channels[Int(frame.channel)], channel.incoming != nil, channel.incoming!.body == nil else {
                return
            }
            let header = frame.payload.properties
            channel.incoming!.properties = MessageProperties(
                header.decoded!.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee)
            let body = IncomingBody(size: Int(header.body_size), pool: bodies)
            if body.isComplete {
                complete(channel.incoming.take()!, body: body.data, on: channel)
            } else {
                channel.incoming!.body = body
            }
        case AMQP_FRAME_BODY:
            guard let channel = channels[Int(frame.channel)], channel.incoming?.body != nil else { return }
            let fragment = frame.payload.body_fragment
            guard fragment.len > 0, let bytes = fragment.bytes else { return }
            // The body's one copy: out of librabbitmq's frame buffer.
            channel.incoming!.body!.append(UnsafeRawBufferPointer(start: bytes, count: fragment.len))
            if channel.incoming!.body!.isComplete {
                let message = channel.incoming.take()!
                complete(message, body: message.body!.data, on: channel)
            }
        default:
            break  // heartbeats: librabbitmq already recorded that the broker is alive
        }
    }

    private func connectionMethod(_ method: amqp_method_t) {
        switch method.id {
        case AMQP_CONNECTION_CLOSE_METHOD:
            let close = method.decoded!.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let code = close.reply_code
            let text = close.reply_text.string
            sendMethod(.connectionCloseOk, on: nil)
            logger.warning("broker closed the connection", metadata: ["code": "\(code)", "text": "\(text)"])
            let failed = Self.methodNumber(classID: close.class_id, methodID: close.method_id)
            finish(RabbitMQError(.connectionClosed, "the broker closed the connection", operation: failed.name,
                                 replyCode: code, replyText: text), causedBy: failed.number)
        case AMQP_CONNECTION_CLOSE_OK_METHOD:
            finish(RabbitMQError(.clientClosed, "the client closed the connection"))
        case AMQP_CONNECTION_BLOCKED_METHOD:
            let blocked = method.decoded!.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            setBlocked(true, reason: blocked.reason.string)
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            setBlocked(false, reason: "")
        default:
            logger.debug("ignored a connection method", metadata: ["method": "\(method.id)"])
        }
    }

    private func channelMethod(_ method: amqp_method_t, on channel: ChannelState) {
        let decoded = method.decoded
        switch method.id {
        case AMQP_CHANNEL_CLOSE_METHOD:
            let close = decoded!.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            brokerClosed(channel, code: close.reply_code, text: close.reply_text.string,
                         method: Self.methodNumber(classID: close.class_id, methodID: close.method_id).number)
            return
        case AMQP_CHANNEL_CLOSE_OK_METHOD where channel.isClosing:
            channels.remove(channel)
            return
        default:
            break
        }
        guard !channel.isClosing else { return }
        switch method.id {
        case AMQP_BASIC_DELIVER_METHOD:
            let deliver = decoded!.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            channel.incoming = IncomingMessage(
                kind: .deliver(consumerTag: deliver.consumer_tag.string), deliveryTag: deliver.delivery_tag,
                isRedelivered: deliver.redelivered != 0, exchange: deliver.exchange.string,
                routingKey: deliver.routing_key.string)
        case AMQP_BASIC_ACK_METHOD:
            let ack = decoded!.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            confirm(ack.delivery_tag, multiple: ack.multiple != 0, nacked: false, on: channel)
        case AMQP_BASIC_NACK_METHOD:
            let nack = decoded!.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            confirm(nack.delivery_tag, multiple: nack.multiple != 0, nacked: true, on: channel)
        case AMQP_BASIC_RETURN_METHOD:
            let returned = decoded!.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            channel.incoming = IncomingMessage(
                kind: .returned(replyCode: returned.reply_code, replyText: returned.reply_text.string),
                deliveryTag: 0, isRedelivered: false, exchange: returned.exchange.string,
                routingKey: returned.routing_key.string)
        case AMQP_BASIC_GET_OK_METHOD:
            let got = decoded!.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee
            channel.incoming = IncomingMessage(
                kind: .got, deliveryTag: got.delivery_tag, isRedelivered: got.redelivered != 0,
                exchange: got.exchange.string, routingKey: got.routing_key.string)
        case AMQP_BASIC_CANCEL_METHOD:
            let cancel = decoded!.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            let tag = cancel.consumer_tag.string
            if cancel.nowait == 0 { sendMethod(.basicCancelOk(consumerTag: tag), on: channel) }
            endConsumer(tag, on: channel, error: RabbitMQError(
                .consumerCancelled, "the broker cancelled consumer '\(tag)' (its queue was deleted or failed over)"))
        case AMQP_CHANNEL_FLOW_METHOD:
            let flow = decoded!.assumingMemoryBound(to: amqp_channel_flow_t.self).pointee
            sendMethod(.channelFlowOk(active: flow.active != 0), on: channel)
        default:
            reply(method, on: channel)
        }
    }

    /// Matches a reply to the oldest request on the channel.
    private func reply(_ method: amqp_method_t, on channel: ChannelState) {
        if method.id == AMQP_CHANNEL_CLOSE_OK_METHOD {
            channelCloseOk(on: channel)
            return
        }
        guard let request = channel.pending.first, request.method.replies.contains(method.id) else {
            logger.warning("ignored an unexpected method from the broker",
                           metadata: ["channel": "\(channel.number)", "method": "\(method.id)"])
            return
        }
        channel.pending.removeFirst()
        let decoded = method.decoded
        let reply: MethodReply
        switch method.id {
        case AMQP_QUEUE_DECLARE_OK_METHOD:
            let ok = decoded!.assumingMemoryBound(to: amqp_queue_declare_ok_t.self).pointee
            reply = .queueDeclared(name: ok.queue.string, messageCount: ok.message_count,
                                   consumerCount: ok.consumer_count)
        case AMQP_QUEUE_PURGE_OK_METHOD:
            reply = .messageCount(decoded!.assumingMemoryBound(to: amqp_queue_purge_ok_t.self).pointee.message_count)
        case AMQP_QUEUE_DELETE_OK_METHOD:
            reply = .messageCount(decoded!.assumingMemoryBound(to: amqp_queue_delete_ok_t.self).pointee.message_count)
        case AMQP_BASIC_CONSUME_OK_METHOD:
            reply = .consumerTag(decoded!.assumingMemoryBound(to: amqp_basic_consume_ok_t.self).pointee.consumer_tag.string)
        case AMQP_BASIC_CANCEL_OK_METHOD:
            let tag = decoded!.assumingMemoryBound(to: amqp_basic_cancel_ok_t.self).pointee.consumer_tag.string
            endConsumer(tag, on: channel, error: nil)
            reply = .done
        case AMQP_BASIC_GET_EMPTY_METHOD:
            reply = .getEmpty
        default:
            reply = .done
        }
        request.succeed(reply, link: channel.link)
    }

    /// Our channel.close is acknowledged. RabbitMQ may answer it before replies to earlier requests, and then
    /// never sends those (a basic.cancel's cancel-ok comes from the queue process and is dropped once the channel
    /// closes): settle everything queued up to the close.
    private func channelCloseOk(on channel: ChannelState) {
        guard let closeIndex = channel.pending.firstIndex(where: {
            if case .channelClose = $0.method { true } else { false }
        }) else {
            logger.warning("ignored a channel.close-ok with no channel.close pending", metadata: ["channel": "\(channel.number)"])
            return
        }
        let closed = RabbitMQError(.clientClosed, "the channel was closed by the application")
        for _ in 0..<closeIndex {
            let request = channel.pending.removeFirst()
            if case .basicCancel = request.method {
                request.succeed(.done, link: channel.link)  // closing the channel cancelled the consumer
            } else {
                request.fail(closed)
            }
        }
        let close = channel.pending.removeFirst()
        tearDown(channel, closed)
        close.succeed(.done, link: channel.link)
    }

    /// A message is complete: hand it to its consumer, its get request, or its publisher (returns).
    private func complete(_ message: IncomingMessage, body: Data, on channel: ChannelState) {
        switch message.kind {
        case .deliver(let consumerTag):
            channel.acks.delivered(message.deliveryTag)
            let delivery = Delivery(
                body: body, properties: message.properties, exchange: message.exchange,
                routingKey: message.routingKey, isRedelivered: message.isRedelivered,
                deliveryTag: message.deliveryTag, consumerTag: consumerTag, link: channel.link)
            if let consumer = channel.consumers[consumerTag] {
                consumer.batch.append(delivery)
                touch(consumer)
            } else {
                // Its consumer is gone (cancelled while this was in flight): give the message back.
                let settlement = Settlement.reject(deliveryTag: message.deliveryTag, requeue: true)
                _ = channel.link.markSettled(settlement)
                _ = channel.acks.settle(settlement) { frame in sendSettlementFrame(frame, on: channel) }
            }
        case .got:
            guard let request = channel.pending.first, case .basicGet(_, let noAck) = request.method else { return }
            channel.pending.removeFirst()
            if noAck {
                // Settled by the broker already: settling it again is the application's mistake.
                _ = channel.link.markSettled(.ack(deliveryTag: message.deliveryTag, multiple: false))
            } else {
                channel.acks.delivered(message.deliveryTag)
            }
            request.succeed(.message(Delivery(
                body: body, properties: message.properties, exchange: message.exchange,
                routingKey: message.routingKey, isRedelivered: message.isRedelivered,
                deliveryTag: message.deliveryTag, consumerTag: nil, link: channel.link)), link: channel.link)
        case .returned(let code, let text):
            matchReturn(message, body: body, code: code, text: text, on: channel)
        }
    }

    /// A basic.return carries no sequence number: the library's header names the publish. Without it (a message
    /// published before confirm mode), RabbitMQ's confirm of the returned publish comes right after the return, so
    /// keep the return until then.
    private func matchReturn(_ message: IncomingMessage, body: Data, code: UInt16, text: String, on channel: ChannelState) {
        guard channel.confirmMode else {
            logger.warning("a mandatory message was returned as unroutable; publish with confirms to be told which",
                           metadata: ["exchange": "\(message.exchange)", "routing_key": "\(message.routingKey)"])
            return
        }
        let error = RabbitMQError(.unroutable, "no queue is bound to exchange '\(message.exchange)' with routing key "
                                      + "'\(message.routingKey)'", operation: "basic.publish", replyCode: code,
                                  replyText: text)
        if let sequence = message.properties.headers[Channel.publishSequenceHeader]?.int64Value,
           let index = channel.unconfirmed.binarySearch(sequence: UInt64(sequence)) {
            channel.unconfirmed[index].mandatory?.returned = error
            return
        }
        channel.pendingReturns.append(ReturnedMessage(
            exchange: message.exchange, routingKey: message.routingKey, body: body, error: error))
    }

    /// Gives the pending returns to the publishes that the confirm for `tag` settles: the publish named by a single
    /// confirm, or for a multiple one the newest settled publish with the same exchange, routing key and body.
    private func attachReturns(to tag: UInt64, multiple: Bool, on channel: ChannelState) {
        guard !channel.pendingReturns.isEmpty else { return }
        defer { channel.pendingReturns.removeAll() }
        var candidates: [Int] = []
        if multiple {
            for index in channel.unconfirmed.indices.reversed() where channel.unconfirmed[index].sequence <= tag {
                let publish = channel.unconfirmed[index]
                if !publish.isResolved, let mandatory = publish.mandatory, mandatory.returned == nil {
                    candidates.append(index)
                }
            }
        } else if let index = channel.unconfirmed.binarySearch(sequence: tag) {
            candidates = [index]
        }
        for returned in channel.pendingReturns {
            guard let position = candidates.firstIndex(where: {
                returned.matches(channel.unconfirmed[$0].mandatory?.message)
            })
            else {
                logger.warning("a returned message matches no publish settled by the next confirm",
                               metadata: ["exchange": "\(returned.exchange)", "routing_key": "\(returned.routingKey)"])
                continue
            }
            channel.unconfirmed[candidates[position]].mandatory?.returned = returned.error
            candidates.remove(at: position)
        }
    }

    /// basic.ack / basic.nack for publishes up to (or exactly) `tag`.
    private func confirm(_ tag: UInt64, multiple: Bool, nacked: Bool, on channel: ChannelState) {
        attachReturns(to: tag, multiple: multiple, on: channel)
        if !nacked {
            channel.nacksInARow = 0
        } else {
            channel.nacksInARow += 1
            if channel.nacksInARow == Self.nackRunBeforeRecycling {
                logger.warning("the broker nacked \(Self.nackRunBeforeRecycling) publishes in a row on a channel",
                               metadata: ["channel": "\(channel.number)"])
                channel.link.keepsNacking = true
            }
        }
        func resolve(_ publish: UnconfirmedPublish) {
            let outcome: Result<Void, RabbitMQError>
            if nacked {
                outcome = .failure(RabbitMQError(.publishNacked, "the broker refused the message (basic.nack)",
                                                 operation: "basic.publish"))
            } else if let returned = publish.mandatory?.returned {
                outcome = .failure(returned)
            } else {
                outcome = .success(())
            }
            if case .failure(let error) = outcome, publish.ticket.complete(outcome) {
                channel.link.window.recordFailure(error)
            } else {
                publish.ticket.complete(outcome)
            }
            releaseSlot(channel)
        }
        if multiple {
            while let head = channel.unconfirmed.first, head.sequence <= tag {
                channel.unconfirmed.removeFirst()
                if !head.isResolved { resolve(head) }
            }
        } else if let index = channel.unconfirmed.binarySearch(sequence: tag), !channel.unconfirmed[index].isResolved {
            resolve(channel.unconfirmed[index])
            channel.unconfirmed[index].isResolved = true
        }
        while channel.unconfirmed.first?.isResolved == true { channel.unconfirmed.removeFirst() }
    }

    /// The broker closed the channel because of `method`. The error is charged to what sent it: the oldest request
    /// if it sent that method, or for a publish to a missing exchange, the unconfirmed publishes to that exchange.
    /// Every other operation under way on the channel gets a collateral error; when nothing can be charged (an
    /// oversized message: which one is unknown), every operation gets the error.
    /// Nacks in a row (confirms, a multiple one counting once) after which a channel ``ChannelLink/keepsNacking``.
    static let nackRunBeforeRecycling = 10

    private func brokerClosed(_ channel: ChannelState, code: UInt16, text: String, method: amqp_method_number_t?) {
        sendMethod(.channelCloseOk, on: channel)
        guard !channel.isClosing else {
            channels.remove(channel)
            return
        }
        let tooLarge = code == 406 && text.contains("message size")
        let isPublish = method == AMQP_BASIC_PUBLISH_METHOD
        let error = RabbitMQError(
            tooLarge ? .messageTooLarge : .channelClosed,
            tooLarge ? "the message is larger than the broker's maximum message size"
                : "the broker closed channel \(channel.number)",
            operation: isPublish ? "basic.publish" : channel.pending.first?.method.name, replyCode: code,
            replyText: text)
        logger.debug("broker closed a channel", metadata: ["channel": "\(channel.number)", "error": "\(error)"])
        var culprit: PendingRequest?
        if let method, channel.pending.first?.method.number == method { culprit = channel.pending.removeFirst() }
        var chargedPublishes: [PublishTicket] = []
        if isPublish, let exchange = Self.missingExchange(named: text) {
            chargedPublishes = channel.unconfirmed.filter { !$0.isResolved && $0.ticket.exchange == exchange }
                .map(\.ticket)
        }
        let charged = culprit != nil || !chargedPublishes.isEmpty
        let others = charged ? RabbitMQError.collateral(
            .channelClosed, "the broker closed channel \(channel.number) because another operation "
                + "(\(error.operation ?? "unknown")) failed", cause: error) : error
        // Closed first: a caller told of its failure must not find the channel open.
        channel.link.markClosed(error, inFlight: others)
        for ticket in chargedPublishes { ticket.complete(.failure(error)) }
        culprit?.fail(error)
        tearDown(channel, others)
    }

    /// The exchange a 404 names: RabbitMQ says `NOT_FOUND - no exchange 'orders' in vhost '/'`.
    static func missingExchange(named text: String) -> String? {
        guard let start = text.range(of: "no exchange '"),
              let end = text.range(of: "' in vhost", range: start.upperBound..<text.endIndex) else { return nil }
        return String(text[start.upperBound..<end.lowerBound])
    }

    /// The method a channel.close or connection.close names as the one that failed, if any.
    static func methodNumber(classID: UInt16, methodID: UInt16) -> (number: amqp_method_number_t?, name: String?) {
        guard classID != 0 else { return (nil, nil) }
        let number = amqp_method_number_t(classID) << 16 | amqp_method_number_t(methodID)
        guard let constant = amqp_method_name(number) else { return (number, nil) }
        // AMQP_CHANNEL_CLOSE_OK_METHOD is channel.close-ok.
        let words = String(cString: constant).lowercased().split(separator: "_").dropFirst().dropLast()
        guard let first = words.first else { return (number, nil) }
        return (number, first + "." + words.dropFirst().joined(separator: "-"))
    }

    private func endConsumer(_ tag: String, on channel: ChannelState, error: RabbitMQError?) {
        guard let consumer = channel.consumers.removeValue(forKey: tag) else { return }
        if !consumer.batch.isEmpty { consumer.buffer.push(&consumer.batch) }
        consumer.buffer.finish(error)
    }

    func sendSettlementFrame(_ frame: AckCoalescer.Frame, on channel: ChannelState) {
        if let writer {
            writer.appendSettlement(frame, channel: channel.number)
            if writer.shouldFlush { flushWrites() }
            return
        }
        let status: Int32
        switch frame {
        case .ack(let tag, let multiple):
            status = amqp_basic_ack(connection, channel.number, tag, multiple ? 1 : 0)
        case .nack(let tag, let multiple, let requeue):
            status = amqp_basic_nack(connection, channel.number, tag, multiple ? 1 : 0, requeue ? 1 : 0)
        case .reject(let tag, let requeue):
            status = amqp_basic_reject(connection, channel.number, tag, requeue ? 1 : 0)
        }
        if status != AMQP_STATUS_OK.rawValue { fail(connectionError(status, while: "settling a delivery")) }
    }
}

extension Deque where Element == UnconfirmedPublish {
    /// The index of the publish numbered `sequence` (the deque is in sequence order).
    func binarySearch(sequence: UInt64) -> Int? {
        var low = 0
        var high = count - 1
        while low <= high {
            let middle = (low + high) / 2
            if self[middle].sequence == sequence { return middle }
            if self[middle].sequence < sequence { low = middle + 1 } else { high = middle - 1 }
        }
        return nil
    }
}
