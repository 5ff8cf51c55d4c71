/// A channel the application opened through the client, which recovery re-opens on every new connection with what
/// the application set up on it: prefetch, confirm mode, then consumers. Held weakly: a channel the application
/// dropped is not recovered.
struct RecoverableChannel {
    /// One step of re-attaching a channel, in order.
    enum Step {
        /// Send this method and wait for its reply.
        case request(OutgoingMethod)
        /// Register the consumer's delivery sink for `tag` (`noAck`: settled by the broker), then send its
        /// basic.consume.
        case consume(tag: String, sink: any DeliverySink, noAck: Bool, OutgoingMethod)
    }

    weak var channel: Channel?

    /// What re-attaching a channel with `setup` sends, in order: basic.qos, confirm.select, then each consumer's
    /// basic.consume (by tag), with its current arguments and its queue's current name (`renamed`: a server-named
    /// queue has a new name after recovery). A per-channel setting added to ``ChannelSetup`` (a transaction's
    /// tx.select) gets its step here; per-consumer arguments come from ``ConsumerRegistration/currentArguments``
    /// (a ``ConsumerResumption`` changes them).
    static func steps(for setup: ChannelSetup, renamed: (String) -> String) -> [Step] {
        var steps: [Step] = []
        if let prefetch = setup.prefetch {
            steps.append(.request(.basicQos(prefetchCount: prefetch.count, global: prefetch.global)))
        }
        if setup.confirms { steps.append(.request(.confirmSelect)) }
        if setup.transactions { steps.append(.request(.txSelect)) }
        for (tag, consumer) in setup.consumers.sorted(by: { $0.key < $1.key }) {
            steps.append(.consume(tag: tag, sink: consumer.sink, noAck: consumer.noAck, .basicConsume(
                queue: renamed(consumer.queue), consumerTag: tag, noAck: consumer.noAck, exclusive: consumer.exclusive,
                arguments: consumer.currentArguments)))
        }
        return steps
    }

    /// Re-opens the channel on a recovered connection and applies its ``steps(for:renamed:)``.
    /// - Returns: `false` if there was nothing to recover (the channel is gone, or the application closed it, also
    ///   while this ran).
    func reattach(to engine: ConnectionEngine, renamed: (String) -> String) async throws -> Bool {
        guard let channel, let setup = channel.setupToRecover else { return false }
        let link = try await engine.openChannel(window: setup.windowCapacity)
        link.isRecoverable = true
        for step in Self.steps(for: setup, renamed: renamed) {
            switch step {
            case .request(let method):
                _ = try await engine.request(method, on: link)
            case .consume(let tag, let sink, let noAck, let method):
                try link.submit(.registerConsumer(link, consumerTag: tag, sink, noAck: noAck))
                _ = try await engine.request(method, on: link)
            }
        }
        guard channel.adopt(link, on: engine) else {
            _ = try? await engine.request(.channelClose(replyCode: 200, replyText: "closed by the application"),
                                          on: link)
            return false
        }
        return true
    }
}
