import Foundation
import DequeModule
import Logging

/// Publisher confirms and returns: basic.ack and basic.nack settle the unconfirmed publishes, and a basic.return
/// fails the mandatory publish it names.
extension ConnectionStateMachine {
    /// A basic.return carries no sequence number: the library's header names the publish. Without it (a message
    /// published before confirm mode), RabbitMQ's confirm of the returned publish comes right after the return, so
    /// keep the return until then.
    mutating func matchReturn(_ message: IncomingMessage, body: Data, code: UInt16, text: String,
                                      on number: UInt16) {
        guard channels[number]!.confirmMode else {
            logger.warning("a mandatory message was returned as unroutable; publish with confirms to be told which",
                           metadata: ["exchange": "\(message.exchange)", "routing_key": "\(message.routingKey)"])
            return
        }
        let error = RabbitMQError(.unroutable, "no queue is bound to exchange '\(message.exchange)' with routing key "
                                      + "'\(message.routingKey)'", operation: "basic.publish", replyCode: code,
                                  replyText: text)
        if let sequence = message.properties.headers[OutgoingMessage.publishSequenceHeader]?.int64Value,
           let index = channels[number]!.unconfirmed.binarySearch(sequence: UInt64(sequence)) {
            channels[number]!.unconfirmed[index].mandatory?.returned = error
            return
        }
        channels[number]!.pendingReturns.append(ReturnedMessage(
            exchange: message.exchange, routingKey: message.routingKey, body: body, error: error))
    }

    /// Gives the pending returns to the publishes that the confirm for `tag` settles: the publish named by a single
    /// confirm, or for a multiple one the newest settled publish with the same exchange, routing key and body.
    private mutating func attachReturns(to tag: UInt64, multiple: Bool, on number: UInt16) {
        guard !channels[number]!.pendingReturns.isEmpty else { return }
        defer { channels[number]!.pendingReturns.removeAll() }
        let unconfirmed = channels[number]!.unconfirmed
        var candidates: [Int] = []
        if multiple {
            for index in unconfirmed.indices.reversed() where unconfirmed[index].sequence <= tag {
                let publish = unconfirmed[index]
                if !publish.isResolved, let mandatory = publish.mandatory, mandatory.returned == nil {
                    candidates.append(index)
                }
            }
        } else if let index = unconfirmed.binarySearch(sequence: tag) {
            candidates = [index]
        }
        for returned in channels[number]!.pendingReturns {
            guard let position = candidates.firstIndex(where: { returned.matches(unconfirmed[$0].mandatory?.message) })
            else {
                logger.warning("a returned message matches no publish settled by the next confirm",
                               metadata: ["exchange": "\(returned.exchange)", "routing_key": "\(returned.routingKey)"])
                continue
            }
            // MandatoryPublish is a class: the deque is not changed.
            unconfirmed[candidates[position]].mandatory?.returned = returned.error
            candidates.remove(at: position)
        }
    }

    /// basic.ack / basic.nack for publishes up to (or exactly) `tag`.
    mutating func confirm(_ tag: UInt64, multiple: Bool, nacked: Bool, on number: UInt16) {
        attachReturns(to: tag, multiple: multiple, on: number)
        let link = channels[number]!.link
        if !nacked {
            channels[number]!.nacksInARow = 0
        } else {
            channels[number]!.nacksInARow += 1
            if channels[number]!.nacksInARow == Self.nackRunBeforeRecycling {
                logger.warning("the broker nacked \(Self.nackRunBeforeRecycling) publishes in a row on a channel",
                               metadata: ["channel": "\(number)"])
                actions.append(.markKeepsNacking(link))
            }
        }
        if multiple {
            while let head = channels[number]!.unconfirmed.first, head.sequence <= tag {
                channels[number]!.unconfirmed.removeFirst()
                if !head.isResolved { resolve(head, nacked: nacked, on: number, window: link.window) }
            }
        } else if let index = channels[number]!.unconfirmed.binarySearch(sequence: tag),
                  !channels[number]!.unconfirmed[index].isResolved {
            resolve(channels[number]!.unconfirmed[index], nacked: nacked, on: number, window: link.window)
            channels[number]!.unconfirmed[index].isResolved = true
        }
        while channels[number]!.unconfirmed.first?.isResolved == true { channels[number]!.unconfirmed.removeFirst() }
    }

    private mutating func resolve(_ publish: UnconfirmedPublish, nacked: Bool, on number: UInt16,
                                  window: PublishWindow) {
        if nacked {
            actions.append(.failPublish(publish.ticket, RabbitMQError(
                .publishNacked, "the broker refused the message (basic.nack)", operation: "basic.publish"),
                recordFailureOn: window))
        } else if let returned = publish.mandatory?.returned {
            actions.append(.failPublish(publish.ticket, returned, recordFailureOn: window))
        } else {
            actions.append(.confirmPublish(publish.ticket))
        }
        releaseSlot(on: number)
    }
}
