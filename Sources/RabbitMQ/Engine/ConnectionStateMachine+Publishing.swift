import DequeModule
import Logging

/// Publishes: written, held back while the broker blocks the connection, or failed; and the broker's flow control.
extension ConnectionStateMachine {
    // MARK: Publishing

    /// Decides what to do with a publish: write it, hold it back while the connection is blocked, or fail it
    /// (its channel is closed).
    mutating func publish(_ publish: OutgoingPublish) -> PublishDecision {
        guard let number = openChannel(of: publish.link) else {
            actions.append(.failPublish(publish.ticket, publish.link.inFlightError))
            return .none
        }
        if isBlocked || !held.isEmpty {
            held.append(publish)
            return .none
        }
        return .write(channel: number, sequence: sequence(on: number))
    }

    private func sequence(on number: UInt16) -> UInt64? {
        channels[number]!.confirmMode ? channels[number]!.nextPublishSequence : nil
    }

    /// The next held publish to write now that the connection is unblocked, with its channel and sequence number;
    /// `nil` when none is left (or the connection is blocked again).
    mutating func nextHeldPublish() -> (OutgoingPublish, PublishDecision)? {
        while !isBlocked, finalError == nil, let next = held.popFirst() {
            guard let number = openChannel(of: next.link) else {
                actions.append(.failPublish(next.ticket, next.link.inFlightError))
                continue
            }
            // Timed out while held back: the publisher was told it failed, so it must not go out now.
            guard !next.ticket.isCompleted else {
                releaseSlot(on: number)
                continue
            }
            return (next, .write(channel: number, sequence: sequence(on: number)))
        }
        return nil
    }

    /// A publish was written (or buffered for this pass's write): record it as unconfirmed, or to complete once
    /// the pass's writes are done.
    mutating func published(_ publish: OutgoingPublish, on number: UInt16) {
        if channels[number]!.confirmMode {
            let sequence = channels[number]!.nextPublishSequence
            channels[number]!.unconfirmed.append(UnconfirmedPublish(
                sequence: sequence, ticket: publish.ticket,
                mandatory: publish.message.mandatory ? MandatoryPublish(publish.message) : nil))
            channels[number]!.nextPublishSequence = sequence + 1
        } else {
            awaitingWrite.append((number, publish.link, publish.ticket))
        }
    }

    /// A publish could not be written and nothing was sent (its properties do not fit in a frame).
    mutating func publishRefused(_ publish: OutgoingPublish, on number: UInt16, _ error: RabbitMQError) {
        actions.append(.failPublish(publish.ticket, error))
        releaseSlot(on: number)
    }

    /// The pass's writes are done: publishes without confirms are complete.
    mutating func writesFlushed() {
        guard !awaitingWrite.isEmpty else { return }
        for (number, link, ticket) in awaitingWrite {
            actions.append(.confirmPublish(ticket))
            if channels[number]?.link === link { releaseSlot(on: number) }
        }
        awaitingWrite.removeAll(keepingCapacity: true)
    }

    // MARK: Flow control

    /// The broker blocked or unblocked publishing: hold publishes back, or send those held, in order.
    mutating func setBlocked(_ blocked: Bool, reason: String) {
        guard blocked != isBlocked else { return }
        isBlocked = blocked
        if blocked {
            logger.warning("broker blocked the connection; publishes wait", metadata: ["reason": "\(reason)"])
        } else {
            logger.info("broker unblocked the connection")
        }
        for number in channels.numbers { actions.append(.setBlocked(channels[number]!.link.window, blocked)) }
        actions.append(.report(blocked ? .blocked(reason) : .unblocked))
        if !blocked, !held.isEmpty { actions.append(.writeHeldPublishes) }
    }
}
