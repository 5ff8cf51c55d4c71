/// What ``ConnectionStateMachine`` asks the I/O thread to do: write to the socket, or hand a result over to a
/// task. The machine appends them to its ``ConnectionStateMachine/actions`` buffer (kept between passes, so
/// that no event allocates); the loop performs them in order.
///
/// The actions of a message's hot path (a settlement, a confirm, a hand-over) are small; those that carry a
/// method, a reply or an error are `indirect`, so that they do not make every action as large as the largest.
enum EngineAction {
    /// Write a method on `channel` (0: the connection). A request without a reply completes once written.
    indirect case send(OutgoingMethod, channel: UInt16, completing: (PendingRequest, ChannelLink)? = nil)
    /// Write an ack, nack or reject.
    case sendSettlement(AckCoalescer.Frame, channel: UInt16)
    /// Write the publishes held back while the broker blocked the connection
    /// (``ConnectionStateMachine/nextHeldPublish()`` gives them one by one).
    case writeHeldPublishes
    indirect case succeed(PendingRequest, MethodReply, link: ChannelLink)
    indirect case fail(PendingRequest, any Error)
    /// Complete a publish successfully (confirmed, or written without confirms).
    case confirmPublish(PublishTicket)
    /// Fail a publish; if this decides its outcome, record the failure on `window`.
    indirect case failPublish(PublishTicket, RabbitMQError, recordFailureOn: PublishWindow? = nil)
    /// Record a failed publish for the next `waitUntilDrained`.
    indirect case recordPublishFailure(PublishWindow, RabbitMQError)
    case releaseSlots(PublishWindow, Int)
    case setBlocked(PublishWindow, Bool)
    indirect case markChannelClosed(ChannelLink, RabbitMQError, inFlight: RabbitMQError? = nil)
    case markKeepsNacking(ChannelLink)
    /// Mark deliveries settled on the task side (the engine settled them: a requeue, or automatic ack).
    indirect case markSettled(ChannelLink, Settlement)
    indirect case dropStaleSettlement(ChannelLink, Settlement)
    /// Make deliveries settleable again on the task side: a tx.rollback undid their settlement.
    indirect case unsettle(ChannelLink, [UInt64])
    /// Hand the consumer its deliveries of this pass.
    case handOverDeliveries(any DeliveryCollector)
    /// End a consumer's stream after what it has (`nil`: cancelled normally).
    indirect case finishConsumer(any DeliveryCollector, RabbitMQError?)
    /// End a stream that never started (the consumer was registered on a closed channel).
    indirect case finishSink(any DeliverySink, RabbitMQError)
    /// The consumer's channel closed: drop its deliveries of that channel; end its stream with the error unless it
    /// is `nil` (kept for recovery).
    indirect case abandonConsumer(any DeliveryCollector, of: ChannelLink, ending: RabbitMQError?)
    indirect case report(EngineEvent)
    /// Refuse further commands and fail those queued.
    indirect case terminateCommands(RabbitMQError)
}

/// What to do with a publish command, decided by ``ConnectionStateMachine/publish(_:)``.
enum PublishDecision: Equatable {
    /// Write it on the channel; with confirms, it will be numbered `sequence`.
    case write(channel: UInt16, sequence: UInt64?)
    /// Held back (the broker blocked the connection), or already failed (its channel is closed).
    case none
}
