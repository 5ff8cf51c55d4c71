import DequeModule
import Logging

/// Deadlines, and the ends of channels and of the connection.
extension ConnectionStateMachine {
    // MARK: Deadlines

    /// Fails what is overdue at `now`: the oldest request of a channel (whose channel then closes, since a
    /// late reply could no longer be matched), unconfirmed and held publishes, and the closing handshake.
    mutating func tick(now: ContinuousClock.Instant) {
        if let closeDeadline, now >= closeDeadline {
            finish(RabbitMQError(.clientClosed,
                                 "the client closed the connection (the broker did not confirm in time)"))
            return
        }
        for number in channels.numbers {
            guard channels.contains(number) else { continue }
            if !channels[number]!.isClosing, let head = channels[number]!.pending.first, head.deadline <= now {
                let error = RabbitMQError(.timeout, "the broker did not answer \(head.method.name) within "
                                              + "\(requestTimeout)", operation: head.method.name)
                actions.append(.fail(channels[number]!.pending.removeFirst(), error))
                closeAfterFailure(number, error)
            }
            while let head = channels[number]!.unconfirmed.first, head.ticket.deadline <= now {
                channels[number]!.unconfirmed.removeFirst()
                let error = RabbitMQError(.timeout, "the broker did not confirm the publish in time",
                                          operation: "publish confirm")
                actions.append(.failPublish(head.ticket, error,
                                                recordFailureOn: channels[number]!.link.window))
                releaseSlot(on: number)
            }
        }
        while let head = held.first, head.ticket.deadline <= now {
            held.removeFirst()
            let error = RabbitMQError(.timeout, "the broker blocked the connection and the publish timed out waiting",
                                      operation: "publish")
            actions.append(.failPublish(head.ticket, error))
            if let number = openChannel(of: head.link) {
                actions.append(.recordPublishFailure(head.link.window, error))
                releaseSlot(on: number)
            }
        }
        flushBatches()
    }

    /// The earliest deadline, for the poll timeout.
    func nextDeadline() -> ContinuousClock.Instant? {
        var next = closeDeadline
        func consider(_ deadline: ContinuousClock.Instant?) {
            guard let deadline else { return }
            next = next.map { min($0, deadline) } ?? deadline
        }
        for number in channels.numbers {
            consider(channels[number]?.pending.first?.deadline)
            consider(channels[number]?.unconfirmed.first?.ticket.deadline)
        }
        consider(held.first?.ticket.deadline)
        return next
    }

    // MARK: Closing and failing

    /// The connection ended: the broker acknowledged our connection.close, closed it itself (because of `method`
    /// when it names one), or it failed.
    ///
    /// The error is charged to the request that sent `method` (the oldest one on its channel; with several
    /// channels sending the same method at that moment, each of them); every other operation fails with a
    /// collateral error. The command queue refuses new commands before any waiter is resumed, so that a caller
    /// told of the failure is never handed this connection again.
    mutating func finish(_ error: RabbitMQError, causedBy method: UInt32? = nil) {
        guard finalError == nil else { return }
        finalError = error
        var culprits: [PendingRequest] = []
        if let method, !error.isRetryable {
            for number in channels.numbers
            where !channels[number]!.isClosing && channels[number]!.pending.first?.method.number == method {
                culprits.append(channels[number]!.pending.removeFirst())
            }
        }
        let others = culprits.isEmpty ? error : RabbitMQError.collateral(
            error.code, "the broker closed the connection because another operation (\(culprits[0].method.name)) "
                + "failed", cause: error)
        actions.append(.terminateCommands(others))
        // A recoverable channel's consumers outlive a lost connection: recovery re-registers their buffers.
        let connectionLost = error.code != .clientClosed
        for number in channels.numbers {
            tearDown(number, others, keepConsumers: connectionLost && channels[number]!.link.isRecoverable)
        }
        for request in culprits { actions.append(.fail(request, error)) }
        for publish in held { actions.append(.failPublish(publish.ticket, others)) }
        held.removeAll()
        for (_, _, ticket) in awaitingWrite { actions.append(.failPublish(ticket, others)) }
        awaitingWrite.removeAll()
        flushBatches()
    }

    /// The connection failed (socket error, missed heartbeats, protocol error).
    mutating func fail(_ error: RabbitMQError, endpoint: String) {
        guard finalError == nil else { return }
        logger.error("connection to \(endpoint) failed", metadata: ["error": "\(error)"])
        finish(error)
    }

    /// Fails everything waiting on the channel and frees its number (or keeps it while `channel.close` is out).
    mutating func tearDown(_ number: UInt16, _ error: RabbitMQError, keepNumberUntilCloseOk: Bool = false,
                           keepConsumers: Bool = false) {
        let link = channels[number]!.link
        actions.append(.markChannelClosed(link, error))
        while let request = channels[number]!.pending.popFirst() { actions.append(.fail(request, error)) }
        while let publish = channels[number]!.unconfirmed.popFirst() {
            actions.append(.failPublish(publish.ticket, error))
        }
        for consumer in channels[number]!.consumers.values {
            // Deliveries not handed out yet can no longer be settled: drop them (the broker requeues them). A
            // consumer kept for recovery then gets only the recovered channel's deliveries.
            actions.append(.abandonConsumer(consumer.collector, of: link, ending: keepConsumers ? nil : error))
        }
        channels[number]!.consumers.removeAll()
        channels[number]!.incoming = nil
        channels[number]!.slotsToRelease = 0
        if keepNumberUntilCloseOk {
            channels[number]!.isClosing = true
        } else {
            channels.remove(number, link: link)
        }
    }

    /// Closes a channel whose state can no longer be trusted (a timed-out or abandoned request).
    mutating func closeAfterFailure(_ number: UInt16, _ error: RabbitMQError) {
        tearDown(number, error, keepNumberUntilCloseOk: true)
        guard !channels[number]!.isCloseRequested else { return }  // its channel.close is already out
        actions.append(.send(.channelClose(replyCode: 200, replyText: "request abandoned by the client"),
                             channel: number))
    }
}
