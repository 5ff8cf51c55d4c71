/// The state of one ``Channel`` that outlives its incarnations: the open incarnation (its link and connection),
/// whether the application closed it, and what the application set up on it (``ChannelSetup``), which recovery
/// applies again on a new connection.
struct ChannelSession {
    /// The current incarnation of the channel on the connection.
    var link: ChannelLink
    /// The connection the channel is on now.
    var engine: ConnectionEngine
    /// Set by ``Channel/close()``: recovery leaves the channel closed.
    var isClosedByApplication = false
    var setup: ChannelSetup
    /// The incarnation on which the current transaction began: on another one, it was lost with its connection.
    var transactionLink: ChannelLink?
}

/// What the application set up on a channel, in the order recovery applies it again after a reconnect (see
/// `RecoverableChannel.steps(for:renamed:)`). A new per-channel setting that must survive recovery (a transaction
/// mode, say) is recorded here and re-applied there.
struct ChannelSetup {
    /// The publish window's capacity: the channel is re-opened with it.
    var windowCapacity: Int
    /// basic.qos, if set.
    var prefetch: (count: UInt16, global: Bool)?
    /// confirm.select was sent.
    var confirms = false
    /// tx.select was sent.
    var transactions = false
    /// The channel's consumers by tag.
    var consumers: [String: ConsumerRegistration] = [:]
}

/// A consumer as recovery starts it again: where its deliveries go, and the basic.consume it was started with.
struct ConsumerRegistration: Sendable {
    let queue: String
    let exclusive: Bool
    /// Consumed with AMQP `no-ack`: the broker settles its deliveries as it sends them.
    let noAck: Bool
    /// The basic.consume arguments it was started with (`x-priority` from the options already in).
    let arguments: FieldTable
    /// The consumer's delivery buffer, kept across recoveries.
    let sink: any DeliverySink
    /// What changes the arguments when recovery starts the consumer again (a stream consumer resumes after its last
    /// delivery); `nil`: the recorded ones.
    var resumption: (any ConsumerResumption)?

    /// The arguments to consume with now: the recorded ones, as ``resumption`` changes them.
    var currentArguments: FieldTable {
        resumption?.arguments(resuming: arguments) ?? arguments
    }
}

/// Per-consumer recovery arguments: how a consumer's basic.consume arguments change when recovery (or a worker
/// subscribing again) starts it again. Implemented above the channel (a stream consumer's cursor, which sets
/// `x-stream-offset` after the last delivery handed out).
protocol ConsumerResumption: Sendable {
    /// The arguments to start the consumer with now, given those it was first started with.
    func arguments(resuming recorded: FieldTable) -> FieldTable
}
