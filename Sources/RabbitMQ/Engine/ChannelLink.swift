import Synchronization

/// What tasks share with the I/O thread about one open channel: its number, whether it is still open,
/// its publish window, which of its deliveries are settled, and the queue to send commands through.
///
/// A channel number is reused after a channel closes; a link is not, so a stale delivery's settlement can be
/// recognised and dropped rather than sent on the channel that reuses the number.
final class ChannelLink: Sendable {
    let number: UInt16
    let commands: EngineCommandQueue
    let window: PublishWindow
    /// Where a settlement that comes too late is counted and logged.
    let staleSettlements: any StaleSettlementReporter
    private let closure = StateLock<(error: RabbitMQError, inFlight: RabbitMQError)?>(nil)
    private let open = Atomic<Bool>(true)
    private let recoverable = Atomic<Bool>(false)
    private let nacking = Atomic<Bool>(false)
    private let settled = StateLock(SettledTags())

    init(number: UInt16, commands: EngineCommandQueue, windowCapacity: Int,
         staleSettlements: any StaleSettlementReporter) {
        self.number = number
        self.commands = commands
        self.window = PublishWindow(capacity: windowCapacity)
        self.staleSettlements = staleSettlements
    }

    /// Whether the channel is open, cheaply.
    var isOpen: Bool { open.load(ordering: .acquiring) }

    /// Whether a ``Channel`` will re-open this channel after a lost connection: then the I/O thread keeps its
    /// consumers' delivery buffers open when the connection fails, for the recovered channel to refill.
    var isRecoverable: Bool {
        get { recoverable.load(ordering: .acquiring) }
        set { recoverable.store(newValue, ordering: .releasing) }
    }

    /// Whether the broker nacked a run of publishes on the channel with no ack between them
    /// (``ConnectionStateMachine/nackRunBeforeRecycling``). A channel opened while a quorum queue's leader failed
    /// over can nack every publish for as long as it lives, while a new channel works: the client replaces its
    /// shared confirm channel once this is set. Set by the I/O thread.
    var keepsNacking: Bool {
        get { nacking.load(ordering: .acquiring) }
        set { nacking.store(newValue, ordering: .releasing) }
    }

    /// The error the channel closed with, or `nil` while it is open.
    var closedError: RabbitMQError? { closure.withLock { $0?.error } }

    /// What operations get that were under way or queued when the channel closed and did not cause it: the
    /// closing error, or a collateral error naming it when the broker closed the channel because of another
    /// operation.
    var inFlightError: RabbitMQError {
        closure.withLock { $0?.inFlight } ?? RabbitMQError(.clientClosed, "the channel is closed")
    }

    /// Records that the channel closed (first error wins) and fails publishers waiting for room with `inFlight`
    /// (default: `error`); see ``inFlightError``.
    func markClosed(_ error: RabbitMQError, inFlight: RabbitMQError? = nil) {
        let inFlight = inFlight ?? error
        let first = closure.withLock { stored -> Bool in
            guard stored == nil else { return false }
            stored = (error, inFlight)
            return true
        }
        guard first else { return }
        open.store(false, ordering: .releasing)
        window.close(inFlight)
    }

    /// Throws the closing error if the channel is closed.
    func checkOpen(_ operation: String) throws(RabbitMQError) {
        guard !isOpen else { return }
        var error = closedError ?? RabbitMQError(.clientClosed, "the channel is closed")
        error.operation = operation
        throw error
    }

    /// Marks the deliveries `settlement` covers settled, once: the first settlement of a delivery wins.
    /// - Returns: `false`, changing nothing, if its delivery was settled already.
    func markSettled(_ settlement: Settlement) -> Bool {
        settled.withLock { $0.insert(settlement.deliveryTag, multiple: settlement.isMultiple) }
    }

    /// Makes deliveries settleable again: a tx.rollback undid their settlement at the broker.
    func unmarkSettled(_ tags: [UInt64]) {
        settled.withLock { settled in
            for tag in tags { settled.remove(tag) }
        }
    }

    /// Drops a settlement that came after the channel closed, counting and logging it: the broker has already
    /// requeued the delivery, and the channel number may belong to another channel by now.
    func dropStaleSettlement(_ settlement: Settlement) {
        staleSettlements.recordStaleSettlement(settlement, channel: number, closedWith: closedError)
    }

    /// Hands a command to the I/O thread.
    func submit(_ command: EngineCommand) throws(RabbitMQError) {
        try commands.submit(command)
    }
}

/// Counts and logs settlements that came after their channel closed: implemented above the engine (by the client's
/// observability), which the engine does not name.
protocol StaleSettlementReporter: Sendable {
    /// Records that `settlement` was dropped because channel `channel` had closed (`reason` says why).
    func recordStaleSettlement(_ settlement: Settlement, channel: UInt16, closedWith reason: RabbitMQError?)
}
