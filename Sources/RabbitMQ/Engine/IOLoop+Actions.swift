/// What the I/O loop does with the commands tasks queue and with the actions ``ConnectionStateMachine`` asks for:
/// feed the first to the machine, perform the second (writes, and results handed to tasks).
extension IOLoop {
    // MARK: Commands

    func handle(_ command: EngineCommand) {
        switch command {
        case .openChannel(let window, let continuation):
            machine.openChannel(window: window, continuation, now: .now) { number, window in
                makeLink(number, window, commands)
            }
        case .request(let request):
            machine.request(request)
        case .abandonRequest(let id, let error):
            machine.abandonRequest(id, error)
        case .publish(let publish):
            if case .write(let channel, let sequence) = machine.publish(publish) {
                write(publish, channel: channel, sequence: sequence)
            }
        case .settle(let link, let settlement):
            machine.settle(settlement, on: link)
        case .registerConsumer(let link, let tag, let buffer, let noAck):
            machine.registerConsumer(link, consumerTag: tag, buffer, noAck: noAck)
        case .closeConnection(let waiter):
            machine.closeConnection(waiter, now: .now)
        }
    }

    /// What commands get once the connection has ended: the error it ended with, or the collateral error of
    /// operations that did not cause the broker to close it.
    var rejection: RabbitMQError {
        commands.terminalError ?? finalError ?? RabbitMQError(.clientClosed, "the connection was closed")
    }

    // MARK: Performing the machine's actions

    /// Performs what the machine asked for, in order, including what performing it makes the machine ask for
    /// (a failed write fails the connection).
    func performActions() {
        // Performing an action can make the machine ask for more: the outer call performs those next.
        guard !isPerforming else { return }
        isPerforming = true
        defer { isPerforming = false }
        while !machine.actions.isEmpty {
            machine.takeActions(into: &performing)
            for action in performing { perform(action) }
            performing.removeAll(keepingCapacity: true)
        }
    }

    private func perform(_ action: EngineAction) {
        switch action {
        case .send(let method, let channel, let completing):
            let sent = sendMethod(method, on: channel)
            if let (request, link) = completing {
                if sent { request.succeed(.done, link: link) } else { request.fail(finalError ?? rejection) }
            }
        case .sendSettlement(let frame, let channel):
            sendSettlementFrame(frame, on: channel)
        case .writeHeldPublishes:
            while let (publish, decision) = machine.nextHeldPublish() {
                if case .write(let channel, let sequence) = decision {
                    write(publish, channel: channel, sequence: sequence)
                }
            }
        case .succeed(let request, let reply, let link):
            request.succeed(reply, link: link)
        case .fail(let request, let error):
            request.fail(error)
        case .confirmPublish(let ticket):
            ticket.complete(.success(()))
        case .failPublish(let ticket, let error, let window):
            if ticket.complete(.failure(error)) { window?.recordFailure(error) }
        case .recordPublishFailure(let window, let error):
            window.recordFailure(error)
        case .releaseSlots(let window, let count):
            window.release(count)
        case .setBlocked(let window, let blocked):
            window.setBlocked(blocked)
        case .markChannelClosed(let link, let error, let inFlight):
            link.markClosed(error, inFlight: inFlight)
        case .markKeepsNacking(let link):
            link.keepsNacking = true
        case .markSettled(let link, let settlement):
            _ = link.markSettled(settlement)
        case .dropStaleSettlement(let link, let settlement):
            link.dropStaleSettlement(settlement)
        case .unsettle(let link, let tags):
            link.unmarkSettled(tags)
        case .handOverDeliveries(let collector):
            collector.handOver()
        case .finishConsumer(let collector, let error):
            collector.finish(error)
        case .finishSink(let sink, let error):
            sink.finish(error)
        case .abandonConsumer(let collector, let link, let error):
            collector.abandon(deliveriesOf: link, ending: error)
        case .report(let event):
            onEvent(event)
        case .terminateCommands(let error):
            for command in commands.terminate(with: error) { command.reject(error) }
        }
    }
}
