import Synchronization

/// One consumer of a ``QueueWorker``, on a channel of its own, from its start until its last handler has ended.
///
/// When the consumer ends (stopped, or lost) while some of its handlers still run, the channel stays open for
/// them, so that a consumer the broker cancelled (its queue deleted or failed over) can still settle the
/// deliveries it handed out; it is closed once the last of them has ended.
final class WorkerSubscription: Sendable {
    private struct State {
        var handlers = 0
        var consumerEnded = false
        var isClosed = false
    }

    /// The channel the consumer is on.
    let channel: Channel
    /// The consumer.
    let consumer: Consumer
    /// When it started consuming.
    let started = ContinuousClock.now
    private let state = StateLock(State())

    init(channel: Channel, consumer: Consumer) {
        self.channel = channel
        self.consumer = consumer
    }

    /// Counts a handler started for one of its deliveries.
    func handlerStarted() {
        state.withLock { $0.handlers += 1 }
    }

    /// Counts a handler ended; closes the channel if the consumer has ended and that was its last handler.
    func handlerEnded() async {
        let close = state.withLock { state in
            state.handlers -= 1
            return state.consumerEnded && state.handlers == 0
        }
        if close { await self.close() }
    }

    /// Notes that the consumer ended; closes the channel unless handlers of its own still run.
    func consumerEnded() async {
        let close = state.withLock { state in
            state.consumerEnded = true
            return state.handlers == 0
        }
        if close { await self.close() }
    }

    /// Closes the channel once: its unacknowledged deliveries go back to the queue, and connection recovery will
    /// not re-open it (also when the broker had already closed it).
    func close() async {
        let first = state.withLock { state in
            defer { state.isClosed = true }
            return !state.isClosed
        }
        guard first else { return }
        // In a task of its own: the caller may be a cancelled task, whose requests fail at once.
        let channel = channel
        await Task { try? await channel.close() }.value
    }
}
