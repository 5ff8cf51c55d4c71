import Foundation
import DequeModule
import Logging

/// What the broker sends: method frames, decoded into ``BrokerMethod``s, and the header and body frames of
/// deliveries, gets and returns.
extension ConnectionStateMachine {
    /// A method frame on `channel` (0: the connection).
    mutating func receive(_ method: BrokerMethod, on number: UInt16) {
        if number == 0 {
            connectionMethod(method)
        } else if channels.contains(number) {
            channelMethod(method, on: number)
        }
    }

    /// Whether a content header frame on `channel` is expected now (a delivery, get-ok or return came first).
    func expectsHeader(on number: UInt16) -> Bool {
        channels.contains(number) && channels[number]!.incoming != nil && channels[number]!.incoming!.body == nil
    }

    /// A content header frame: the message's properties and an empty body of the announced size. Ignored unless
    /// ``expectsHeader(on:)``.
    mutating func receiveHeader(on number: UInt16, properties: consuming MessageProperties,
                                body: consuming IncomingBody) {
        guard expectsHeader(on: number) else { return }
        // The message is changed in place and moved out with take(): copying it costs a retain per field.
        channels[number]!.incoming!.properties = properties
        if body.isComplete {
            complete(channels[number]!.incoming.take()!, body: body.data, on: number)
        } else {
            channels[number]!.incoming!.body = body
        }
    }

    /// A body frame's payload, copied at once (it lives in librabbitmq's frame buffer).
    mutating func receiveBody(on number: UInt16, _ bytes: UnsafeRawBufferPointer) {
        guard channels.contains(number), channels[number]!.incoming?.body != nil, bytes.count > 0 else { return }
        // The body's one copy: out of librabbitmq's frame buffer.
        channels[number]!.incoming!.body!.append(bytes)
        if channels[number]!.incoming!.body!.isComplete {
            let message = channels[number]!.incoming.take()!
            complete(message, body: message.body!.data, on: number)
        }
    }

    private mutating func connectionMethod(_ method: BrokerMethod) {
        switch method {
        case .connectionClose(let code, let text, let failed):
            actions.append(.send(.connectionCloseOk, channel: 0))
            logger.warning("broker closed the connection", metadata: ["code": "\(code)", "text": "\(text)"])
            finish(RabbitMQError(.connectionClosed, "the broker closed the connection", operation: failed?.name,
                                 replyCode: code, replyText: text), causedBy: failed?.number)
        case .connectionCloseOk:
            finish(RabbitMQError(.clientClosed, "the client closed the connection"))
        case .connectionBlocked(let reason):
            setBlocked(true, reason: reason)
        case .connectionUnblocked:
            setBlocked(false, reason: "")
        default:
            logger.debug("ignored a connection method", metadata: ["method": "\(method)"])
        }
    }

    private mutating func channelMethod(_ method: BrokerMethod, on number: UInt16) {
        switch method {
        case .channelClose(let code, let text, let failed):
            brokerClosed(number, code: code, text: text, method: failed?.number)
            return
        case .channelCloseOk where channels[number]!.isClosing:
            channels.remove(number, link: channels[number]!.link)
            return
        default:
            break
        }
        guard !channels[number]!.isClosing else { return }
        switch method {
        case .deliver(let consumerTag, let deliveryTag, let isRedelivered, let exchange, let routingKey):
            channels[number]!.incoming = IncomingMessage(
                kind: .deliver(consumerTag: consumerTag), deliveryTag: deliveryTag, isRedelivered: isRedelivered,
                exchange: exchange, routingKey: routingKey)
        case .ack(let tag, let multiple):
            confirm(tag, multiple: multiple, nacked: false, on: number)
        case .nack(let tag, let multiple):
            confirm(tag, multiple: multiple, nacked: true, on: number)
        case .returned(let code, let text, let exchange, let routingKey):
            channels[number]!.incoming = IncomingMessage(
                kind: .returned(replyCode: code, replyText: text), deliveryTag: 0, isRedelivered: false,
                exchange: exchange, routingKey: routingKey)
        case .getOk(let deliveryTag, let isRedelivered, let exchange, let routingKey):
            channels[number]!.incoming = IncomingMessage(
                kind: .got, deliveryTag: deliveryTag, isRedelivered: isRedelivered, exchange: exchange,
                routingKey: routingKey)
        case .cancel(let tag, let noWait):
            if !noWait { actions.append(.send(.basicCancelOk(consumerTag: tag), channel: number)) }
            endConsumer(tag, on: number, error: RabbitMQError(
                .consumerCancelled, "the broker cancelled consumer '\(tag)' (its queue was deleted or failed over)"))
        case .channelFlow(let active):
            actions.append(.send(.channelFlowOk(active: active), channel: number))
        case .channelCloseOk:
            channelCloseOk(on: number)
        case .cancelOk(let tag):
            guard isOldestRequest(answeredBy: OutgoingMethod.basicCancelOkNumber, on: number) else { return }
            endConsumer(tag, on: number, error: nil)
            let request = channels[number]!.pending.removeFirst()
            actions.append(.succeed(request, .done, link: channels[number]!.link))
        case .reply(let id, let reply):
            guard isOldestRequest(answeredBy: id, on: number) else { return }
            let request = channels[number]!.pending.removeFirst()
            switch request.method {
            case .txSelect, .txCommit:
                _ = channels[number]!.transactionEnded(rolledBack: false)
            case .txRollback:
                let undone = channels[number]!.transactionEnded(rolledBack: true)
                if !undone.isEmpty { actions.append(.unsettle(channels[number]!.link, undone)) }
            default:
                break
            }
            actions.append(.succeed(request, reply, link: channels[number]!.link))
        case .connectionClose, .connectionCloseOk, .connectionBlocked, .connectionUnblocked, .channelClose:
            logger.warning("ignored a connection method on a channel", metadata: ["channel": "\(number)"])
        }
    }

    /// Whether the oldest request on the channel is answered by `id`; an unexpected reply is logged and ignored.
    private func isOldestRequest(answeredBy id: UInt32, on number: UInt16) -> Bool {
        guard let request = channels[number]!.pending.first, request.method.replies.contains(id) else {
            logger.warning("ignored an unexpected method from the broker",
                           metadata: ["channel": "\(number)", "method": "\(id)"])
            return false
        }
        return true
    }

    /// Our channel.close is acknowledged. RabbitMQ may answer it before replies to earlier requests, and then
    /// never sends those (a basic.cancel's cancel-ok comes from the queue process and is dropped once the channel
    /// closes): settle everything queued up to the close.
    private mutating func channelCloseOk(on number: UInt16) {
        guard let closeIndex = channels[number]!.pending.firstIndex(where: {
            if case .channelClose = $0.method { true } else { false }
        }) else {
            logger.warning("ignored a channel.close-ok with no channel.close pending",
                           metadata: ["channel": "\(number)"])
            return
        }
        let link = channels[number]!.link
        let closed = RabbitMQError(.clientClosed, "the channel was closed by the application")
        for _ in 0..<closeIndex {
            let request = channels[number]!.pending.removeFirst()
            if case .basicCancel = request.method {
                actions.append(.succeed(request, .done, link: link))  // closing the channel cancelled the consumer
            } else {
                actions.append(.fail(request, closed))
            }
        }
        let close = channels[number]!.pending.removeFirst()
        tearDown(number, closed)
        actions.append(.succeed(close, .done, link: link))
    }

    /// A message is complete: hand it to its consumer, its get request, or its publisher (returns).
    private mutating func complete(_ message: consuming IncomingMessage, body: Data, on number: UInt16) {
        switch message.kind {
        case .deliver(let consumerTag):
            if !channels[number]!.noAckConsumers.isEmpty, channels[number]!.noAckConsumers.contains(consumerTag) {
                completeNoAck(message, body: body, consumerTag: consumerTag, on: number)
                return
            }
            channels[number]!.delivered(message.deliveryTag)
            if let consumer = channels[number]!.consumers[consumerTag] {
                consumer.collector.collect(
                    body: body, properties: message.properties, exchange: message.exchange,
                    routingKey: message.routingKey, isRedelivered: message.isRedelivered,
                    deliveryTag: message.deliveryTag, consumerTag: consumerTag, link: channels[number]!.link)
                touch(consumer)
            } else {
                // Its consumer is gone (cancelled while this was in flight): give the message back.
                let settlement = Settlement.reject(deliveryTag: message.deliveryTag, requeue: true)
                actions.append(.markSettled(channels[number]!.link, settlement))
                var out: [EngineAction] = []
                swap(&out, &actions)
                _ = channels[number]!.acks.settle(settlement) { out.append(.sendSettlement($0, channel: number)) }
                swap(&out, &actions)
            }
        case .got:
            guard let request = channels[number]!.pending.first, case .basicGet(_, let noAck) = request.method else {
                return
            }
            channels[number]!.pending.removeFirst()
            let link = channels[number]!.link
            if noAck {
                // Settled by the broker already: settling it again is the application's mistake.
                actions.append(.markSettled(link, .ack(deliveryTag: message.deliveryTag, multiple: false)))
            } else {
                channels[number]!.delivered(message.deliveryTag)
            }
            actions.append(.succeed(request, .message(InboundMessage(
                body: body, properties: message.properties, exchange: message.exchange,
                routingKey: message.routingKey, isRedelivered: message.isRedelivered,
                deliveryTag: message.deliveryTag, consumerTag: nil, link: link)), link: link))
        case .returned(let code, let text):
            matchReturn(message, body: body, code: code, text: text, on: number)
        }
    }

    /// A delivery to a `no-ack` consumer: the broker settled it as it sent it, so settling it again is the
    /// application's mistake, and one whose consumer is gone is dropped (it cannot be given back).
    private mutating func completeNoAck(_ message: consuming IncomingMessage, body: Data, consumerTag: String,
                                        on number: UInt16) {
        let link = channels[number]!.link
        actions.append(.markSettled(link, .ack(deliveryTag: message.deliveryTag, multiple: false)))
        guard let consumer = channels[number]!.consumers[consumerTag] else { return }
        consumer.collector.collect(
            body: body, properties: message.properties, exchange: message.exchange,
            routingKey: message.routingKey, isRedelivered: message.isRedelivered,
            deliveryTag: message.deliveryTag, consumerTag: consumerTag, link: link)
        touch(consumer)
    }

    /// The broker closed the channel because of `method`. The error is charged to what sent it: the oldest request
    /// if it sent that method, or for a publish to a missing exchange, the unconfirmed publishes to that exchange.
    /// Every other operation under way on the channel gets a collateral error; when nothing can be charged (an
    /// oversized message: which one is unknown), every operation gets the error.
    private mutating func brokerClosed(_ number: UInt16, code: UInt16, text: String, method: UInt32?) {
        actions.append(.send(.channelCloseOk, channel: number))
        let link = channels[number]!.link
        guard !channels[number]!.isClosing else {
            channels.remove(number, link: link)
            return
        }
        let tooLarge = code == 406 && text.contains("message size")
        let isPublish = method == OutgoingMethod.basicPublishNumber
        let error = RabbitMQError(
            tooLarge ? .messageTooLarge : .channelClosed,
            tooLarge ? "the message is larger than the broker's maximum message size"
                : "the broker closed channel \(number)",
            operation: isPublish ? "basic.publish" : channels[number]!.pending.first?.method.name, replyCode: code,
            replyText: text)
        logger.debug("broker closed a channel", metadata: ["channel": "\(number)", "error": "\(error)"])
        var culprit: PendingRequest?
        if let method, channels[number]!.pending.first?.method.number == method {
            culprit = channels[number]!.pending.removeFirst()
        }
        var chargedPublishes: [PublishTicket] = []
        if isPublish, let exchange = Self.missingExchange(named: text) {
            chargedPublishes = channels[number]!.unconfirmed.filter { !$0.isResolved && $0.ticket.exchange == exchange }
                .map(\.ticket)
        }
        let charged = culprit != nil || !chargedPublishes.isEmpty
        let others = charged ? RabbitMQError.collateral(
            .channelClosed, "the broker closed channel \(number) because another operation "
                + "(\(error.operation ?? "unknown")) failed", cause: error) : error
        // Closed first: a caller told of its failure must not find the channel open.
        actions.append(.markChannelClosed(link, error, inFlight: others))
        for ticket in chargedPublishes { actions.append(.failPublish(ticket, error)) }
        if let culprit { actions.append(.fail(culprit, error)) }
        tearDown(number, others)
    }

    /// The exchange a 404 names: RabbitMQ says `NOT_FOUND - no exchange 'orders' in vhost '/'`.
    static func missingExchange(named text: String) -> String? {
        guard let start = text.range(of: "no exchange '"),
              let end = text.range(of: "' in vhost", range: start.upperBound..<text.endIndex) else { return nil }
        return String(text[start.upperBound..<end.lowerBound])
    }

    private mutating func endConsumer(_ tag: String, on number: UInt16, error: RabbitMQError?) {
        guard let consumer = channels[number]!.consumers.removeValue(forKey: tag) else { return }
        actions.append(.finishConsumer(consumer.collector, error))
    }
}
