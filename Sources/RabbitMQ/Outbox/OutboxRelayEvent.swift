extension OutboxRelay {
    /// Something the relay did. See ``OutboxRelay/events()``.
    public enum Event: Sendable {
        /// `count` events were published, confirmed and marked sent (one round).
        case published(count: Int)
        /// Publishing failed for some events of a round: `error` is the first failure, `unsent` the events left
        /// pending (the failed ones and those of their keys waiting behind them). A pause follows.
        case publishFailed(RabbitMQError, unsent: Int)
        /// Reading or updating the outbox failed (`description` says how); a pause follows. Events confirmed but not
        /// marked sent are published again later, with their message ids.
        case storeFailed(description: String)
        /// The relay tries again after `delay`; `attempt` counts the rounds since it last succeeded.
        case retrying(attempt: Int, delay: Duration)
        /// A round succeeded after `failedRounds` failed ones: the outage is over.
        case recovered(failedRounds: Int)
        /// ``OutboxRelay/run()`` ended; the error for invalid settings. The stream ends after this event.
        case stopped(RabbitMQError?)
    }
}
