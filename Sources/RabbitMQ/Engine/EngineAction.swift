/// What ``ConnectionStateMachine`` asks the I/O thread to do: write to the socket, or hand a result over to a
/// task. The machine appends them to its ``ConnectionStateMachine/actions`` buffer (kept between passes, so
/// that no event allocates); the loop performs them in order.
enum EngineAction {
    /// Write a method on `channel` (0: the connection). A request without a reply completes once written.
    case send(OutgoingMethod, channel: UInt16, completing: (PendingRequest, ChannelLink)? = nil)
    /// Write an ack, nack or reject.
    case sendSettlement(AckCoalescer.Frame, channel: UInt16)
    /// Write the publishes held back while the broker blocked the connection
    /// (``ConnectionStateMachine/nextHeldPublish()`` gives them one by one).
    case writeHeldPublishes
    case succeed(PendingRequest, MethodReply, link: ChannelLink)
    case fail(PendingRequest, any Error)
    /// Complete a publish; if this decides its outcome and it is a failure, record it on `window`.
    case completePublish(PublishTicket, Result<Void, RabbitMQError>, recordFailureOn: PublishWindow? = nil)
    /// Record a failed publish for the next `waitUntilDrained`.
    case recordPublishFailure(PublishWindow, RabbitMQError)
    case releaseSlots(PublishWindow, Int)
    case setBlocked(PublishWindow, Bool)
    case markChannelClosed(ChannelLink, RabbitMQError, inFlight: RabbitMQError? = nil)
    case markKeepsNacking(ChannelLink)
    /// Mark deliveries settled on the task side (the engine settled them: a requeue, or automatic ack).
    case markSettled(ChannelLink, Settlement)
    case dropStaleSettlement(ChannelLink, Settlement)
    /// Hand the consumer its deliveries of this pass.
    case handOverDeliveries(any DeliveryCollector)
    /// End a consumer's stream after what it has (`nil`: cancelled normally).
    case finishConsumer(any DeliveryCollector, RabbitMQError?)
    /// End a stream that never started (the consumer was registered on a closed channel).
    case finishSink(any DeliverySink, RabbitMQError)
    /// The consumer's channel closed: drop its deliveries of that channel; end its stream with the error unless it
    /// is `nil` (kept for recovery).
    case abandonConsumer(any DeliveryCollector, of: ChannelLink, ending: RabbitMQError?)
    case report(EngineEvent)
    /// Refuse further commands and fail those queued.
    case terminateCommands(RabbitMQError)
}

/// What to do with a publish command, decided by ``ConnectionStateMachine/publish(_:)``.
enum PublishDecision: Equatable {
    /// Write it on the channel; with confirms, it will be numbered `sequence`.
    case write(channel: UInt16, sequence: UInt64?)
    /// Held back (the broker blocked the connection), or already failed (its channel is closed).
    case none
}
