extension QueueWorker {
    /// Something that happened to a worker's consumer. See ``QueueWorker/events()``.
    ///
    /// A worker heals itself: when it loses its consumer it reports ``consumerLost(_:)``, waits
    /// (``resubscribing(attempt:delay:)``), declares its topology again and reports ``consuming(channel:)``
    /// once it consumes again.
    public enum Event: Sendable {
        /// The worker consumes on channel `channel`: at the start, and again after each loss.
        case consuming(channel: UInt16)
        /// The consumer ended without being stopped: the broker closed its channel (406 when a delivery stayed
        /// unacknowledged past the broker's `consumer_timeout`), cancelled it (its queue was deleted or failed
        /// over), or connection recovery could not bring it back. The worker subscribes again, unless the error
        /// is one retrying cannot fix.
        case consumerLost(RabbitMQError)
        /// A subscription attempt (declaring the worker's topology, opening a channel, consuming) failed; another
        /// follows, unless the error is one retrying cannot fix.
        case subscribeFailed(RabbitMQError)
        /// The worker subscribes again after `delay`; `attempt` counts from 1 the attempts since it last consumed
        /// for a while (see ``QueueWorker/Configuration/recovery``).
        case resubscribing(attempt: Int, delay: Duration)
        /// A handler ran past ``QueueWorker/Configuration/handlerTimeout``: it was cancelled and its attempt failed
        /// as retryable. `messageID` is the message's id, if it has one.
        case handlerTimedOut(messageID: String?)
        /// ``QueueWorker/run()`` ended: `nil` after ``QueueWorker/stop()``, a graceful shutdown or a cancellation,
        /// else the error it throws. The stream ends after this event.
        case stopped(RabbitMQError?)
    }
}
