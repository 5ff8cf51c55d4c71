import DequeModule
import Logging

/// The protocol bookkeeping of one connection, as a value: channel numbers, requests waiting for replies and
/// their deadlines, publishes waiting for confirms and returns, consumers, flow control and the closing
/// handshakes.
///
/// It takes events (a command from a task, a method or content frame from the broker, a tick of the clock) and
/// answers with ``EngineAction``s, appended to ``actions``, which ``IOLoop`` performs: the machine neither
/// touches the socket nor calls librabbitmq, so it is tested as a value. Publishes and settlements are the hot
/// paths: a publish's decision is a small enum (``PublishDecision``), and the buffer of actions keeps its
/// capacity between passes.
struct ConnectionStateMachine {
    /// Publishes numbered and unconfirmed on a channel, nacked in a row, after which the channel
    /// ``ChannelLink/keepsNacking`` (a confirm nacking several publishes counts once).
    static let nackRunBeforeRecycling = 10

    let requestTimeout: Duration
    let logger: Logger
    /// What to do, in order; the loop takes them with ``takeActions(into:)``.
    var actions: [EngineAction] = []
    var channels: ChannelTable
    private var nextChannelHint = 1
    var isBlocked = false
    /// Publishes held back while the broker blocks the connection, in order.
    var held: Deque<OutgoingPublish> = []
    /// Publishes on channels without confirms, completed once the writes of the pass are done.
    var awaitingWrite: [(channel: UInt16, link: ChannelLink, ticket: PublishTicket)] = []
    private var touchedConsumers: [ConsumerState] = []
    /// Channels with window slots to release at the end of the pass.
    private var releaseList: [UInt16] = []
    private var channelsWithAcks: [(number: UInt16, link: ChannelLink)] = []
    private var closeWaiters: [CheckedContinuation<Void, Never>] = []
    /// Set by the client's connection.close: the connection is torn down if no close-ok comes by then.
    private(set) var closeDeadline: ContinuousClock.Instant?
    /// Set when the connection has ended; the loop then exits.
    var finalError: RabbitMQError?
    /// Deliveries went to consumers since ``didSleep()``: their acks are on the way.
    private(set) var handedOverDeliveries = false

    init(channelMax: Int, requestTimeout: Duration, logger: Logger) {
        self.requestTimeout = requestTimeout
        self.logger = logger
        channels = ChannelTable(channelMax: channelMax)
    }

    /// Moves the pending actions into `buffer` (which the caller keeps empty between calls), keeping both
    /// buffers' capacity.
    mutating func takeActions(into buffer: inout [EngineAction]) {
        swap(&actions, &buffer)
    }

    /// The channel's number if it is open and still the incarnation `link` refers to.
    func openChannel(of link: ChannelLink) -> UInt16? {
        channels[link.number]?.isOpen(as: link) == true ? link.number : nil
    }

    // MARK: Commands

    /// Opens a channel: allocates the lowest free number after the last one given (numbers are reused
    /// round-robin, so that a late frame for a closed channel is unlikely to hit its successor).
    mutating func openChannel(window: Int, _ continuation: CheckedContinuation<ChannelLink, any Error>,
                              now: ContinuousClock.Instant, makeLink: (UInt16, Int) -> ChannelLink) {
        guard let number = freeChannelNumber() else {
            continuation.resume(throwing: RabbitMQError(
                .invalidArgument, "all \(channels.highestNumber) channels of the connection are in use",
                operation: "channel.open"))
            return
        }
        let link = makeLink(number, window)
        if isBlocked { actions.append(.setBlocked(link.window, true)) }
        var channel = ChannelState(link: link)
        channel.pending.append(PendingRequest(id: 0, method: .channelOpen, deadline: now + requestTimeout,
                                              completion: .channelOpened(continuation)))
        channels.insert(channel)
        actions.append(.send(.channelOpen, channel: number))
    }

    private mutating func freeChannelNumber() -> UInt16? {
        let limit = channels.highestNumber
        guard limit >= 1 else { return nil }
        for offset in 0..<limit {
            let number = (nextChannelHint - 1 + offset) % limit + 1
            if !channels.contains(UInt16(number)) {
                nextChannelHint = number % limit + 1
                return UInt16(number)
            }
        }
        return nil
    }

    /// Sends a request and waits for its reply (or completes it once written, when it has none).
    mutating func request(_ request: Request) {
        // The broker ignores a channel's frames after its channel.close, and a transaction holds the acks sent
        // before its tx.commit or tx.rollback: acks queued before must go first.
        switch request.method {
        case .channelClose, .txCommit, .txRollback: flushAcks()
        default: break
        }
        let pending = PendingRequest(request)
        guard let number = openChannel(of: request.link) else {
            actions.append(.fail(pending, request.link.inFlightError))
            return
        }
        switch request.method {
        case .confirmSelect: channels[number]!.confirmMode = true
        case .channelClose: channels[number]!.isCloseRequested = true
        case .basicQos(let count, _) where count > 0:
            let limit = channels[number]!.prefetchLimit
            channels[number]!.prefetchLimit = limit == 0 ? count : min(limit, count)
        default: break
        }
        if request.method.replies.isEmpty {
            actions.append(.send(request.method, channel: number, completing: (pending, request.link)))
        } else {
            channels[number]!.pending.append(pending)
            actions.append(.send(request.method, channel: number))
        }
    }

    /// Withdraws a request whose task gave up; its channel is closed, since the late reply could be taken for
    /// the next request's.
    mutating func abandonRequest(_ id: RequestID, _ error: any Error) {
        for number in channels.numbers where !channels[number]!.isClosing {
            guard let index = channels[number]!.pending.firstIndex(where: { $0.id == id }) else { continue }
            let request = channels[number]!.pending.remove(at: index)
            actions.append(.fail(request, error))
            closeAfterFailure(number, RabbitMQError(
                .clientClosed, "the channel was closed because a \(request.method.name) request was abandoned"))
            return
        }
    }

    /// Routes deliveries for `consumerTag` to `sink` (registered before the basic.consume request); `noAck` for a
    /// consumer whose deliveries the broker settles as it sends them.
    mutating func registerConsumer(_ link: ChannelLink, consumerTag: String, _ sink: any DeliverySink,
                                   noAck: Bool = false) {
        guard let number = openChannel(of: link) else {
            actions.append(.finishSink(sink, link.inFlightError))
            return
        }
        channels[number]!.consumers[consumerTag] = ConsumerState(collector: sink.makeCollector())
        if noAck { channels[number]!.noAckConsumers.insert(consumerTag) }
    }

    /// The application settled a delivery: acks wait for ``flushAcks()`` to be merged, nacks and rejects go out.
    mutating func settle(_ settlement: Settlement, on link: ChannelLink) {
        guard let number = openChannel(of: link) else {
            // The channel closed after the task queued this: the broker has requeued the delivery.
            actions.append(.dropStaleSettlement(link, settlement))
            return
        }
        var out: [EngineAction] = []
        swap(&out, &actions)
        let accepted = channels[number]!.acks.settle(settlement) { out.append(.sendSettlement($0, channel: number)) }
        swap(&out, &actions)
        if !accepted {
            logger.warning("ignored a settlement for a delivery that is unknown or already settled",
                           metadata: ["channel": "\(number)", "settlement": "\(settlement)"])
        }
        if case .ack = settlement, !channels[number]!.hasPendingAcks {
            channels[number]!.hasPendingAcks = true
            channelsWithAcks.append((number, link))
        }
    }

    /// Sends the acks collected since the last flush, merged.
    mutating func flushAcks() {
        guard !channelsWithAcks.isEmpty else { return }
        var out: [EngineAction] = []
        swap(&out, &actions)
        for (number, link) in channelsWithAcks where channels[number]?.link === link {
            channels[number]!.hasPendingAcks = false
            if channels[number]!.isOpen(as: link) {
                channels[number]!.acks.flush { out.append(.sendSettlement($0, channel: number)) }
            }
        }
        swap(&out, &actions)
        channelsWithAcks.removeAll(keepingCapacity: true)
    }

    /// Starts the client's closing handshake (connection.close); `waiter` resumes once the connection ended.
    mutating func closeConnection(_ waiter: CheckedContinuation<Void, Never>?, now: ContinuousClock.Instant) {
        flushAcks()
        if let waiter { closeWaiters.append(waiter) }
        guard closeDeadline == nil else { return }
        closeDeadline = now + min(requestTimeout, .seconds(5))
        let error = RabbitMQError(.clientClosed, "the client closed the connection")
        for publish in held { actions.append(.failPublish(publish.ticket, error)) }
        held.removeAll()
        actions.append(.send(.connectionClose(replyCode: 200, replyText: "client closed the connection"), channel: 0))
    }

    /// The waiters of ``closeConnection(_:now:)``, to resume once the loop has ended.
    mutating func takeCloseWaiters() -> [CheckedContinuation<Void, Never>] {
        defer { closeWaiters.removeAll() }
        return closeWaiters
    }

    // MARK: Handing results over

    /// Hands each consumer its deliveries of the pass and each publish window its freed slots, once.
    mutating func flushBatches() {
        if !touchedConsumers.isEmpty { handedOverDeliveries = true }
        for consumer in touchedConsumers {
            consumer.isTouched = false
            actions.append(.handOverDeliveries(consumer.collector))
        }
        touchedConsumers.removeAll(keepingCapacity: true)
        for number in releaseList where channels.contains(number) {
            channels[number]!.isReleaseListed = false
            let count = channels[number]!.slotsToRelease
            guard count > 0 else { continue }
            actions.append(.releaseSlots(channels[number]!.link.window, count))
            channels[number]!.slotsToRelease = 0
        }
        releaseList.removeAll(keepingCapacity: true)
    }

    mutating func touch(_ consumer: ConsumerState) {
        guard !consumer.isTouched else { return }
        consumer.isTouched = true
        touchedConsumers.append(consumer)
    }

    mutating func releaseSlot(on number: UInt16) {
        channels[number]!.slotsToRelease += 1
        guard !channels[number]!.isReleaseListed else { return }
        channels[number]!.isReleaseListed = true
        releaseList.append(number)
    }

    /// Whether acks may wait for the thread's next wake-up rather than wake it: deliveries were just handed over
    /// (their acks are coming) and every channel's prefetch is at most half used.
    var acksMayWait: Bool {
        guard handedOverDeliveries else { return false }
        var anyUnsettled = false
        for number in channels.numbers {
            if channels[number]?.brokerMaySendMore == false { return false }
            if (channels[number]?.acks.unsettledCount ?? 0) > 0 { anyUnsettled = true }
        }
        return anyUnsettled
    }

    /// The thread is about to sleep.
    mutating func didSleep() {
        handedOverDeliveries = false
    }
}
