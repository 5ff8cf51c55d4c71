internal import CRabbitMQ
import DequeModule
import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The owner of one librabbitmq connection: runs on the connection's dedicated thread and is the only code
/// that touches its C state.
///
/// It is not `Sendable` and is created on that thread, so the compiler keeps it there. Each pass reads every
/// frame available without blocking, hands results over in batches (one push per consumer, one release per
/// publish window), runs the commands that tasks queued, writes the publishes and acks they produced with one
/// system call (``FrameWriter``), and sleeps in `poll()` on the socket and the wake-up pipe only when there is
/// nothing left to do.
final class IOLoop {
    let connection: amqp_connection_state_t
    let commands: CommandQueue
    let logger: Logger
    let arena: CArena
    let negotiated: NegotiatedParameters
    let requestTimeout: Duration
    let onEvent: @Sendable (EngineEvent) -> Void
    /// The client's metrics and logs, which every channel's stale settlements go to.
    let observability: Observability
    private let socket: Int32
    /// Encodes publishes and settlements and writes them once per pass; `nil` over TLS (librabbitmq writes them).
    let writer: FrameWriter?
    /// How long a write may wait for the broker to take bytes before the connection is presumed dead.
    let writeTimeout: Duration
    /// Memory for large incoming bodies, reused as the application releases them.
    let bodies = BodyPool()

    var channels: ChannelTable
    private var nextChannelHint = 1
    var isBlocked = false
    /// Publishes held back while the broker blocks the connection, in order.
    var held: Deque<OutgoingPublish> = []
    /// Publishes on channels without confirms, completed once the writer's buffer is written.
    var awaitingWrite: [(channel: ChannelState, ticket: PublishTicket)] = []
    var touchedConsumers: [ConsumerState] = []
    var touchedChannels: [ChannelState] = []
    var channelsWithAcks: [ChannelState] = []
    private var batch: [EngineCommand] = []
    private var closeWaiters: [CheckedContinuation<Void, Never>] = []
    private var closeDeadline: ContinuousClock.Instant?
    /// Set when the connection has ended; the loop then exits.
    private(set) var finalError: RabbitMQError?
    private var lastDeadlineCheck = ContinuousClock.now
    /// Deliveries went to consumers since the last sleep: their acks are on the way.
    private var handedOverDeliveries = false

    /// Maximum frames read in one pass before commands get their turn.
    private static let framesPerPass = 4096
    /// How long an ack may wait for the thread's next wake (see ``sleep()``).
    private static let ackDelayMilliseconds: Int32 = 1

    init(connection: amqp_connection_state_t, negotiated: NegotiatedParameters, commands: CommandQueue,
         requestTimeout: Duration, arena: CArena, logger: Logger, observability: Observability,
         onEvent: @escaping @Sendable (EngineEvent) -> Void) {
        self.onEvent = onEvent
        self.observability = observability
        self.connection = connection
        self.negotiated = negotiated
        self.commands = commands
        self.requestTimeout = requestTimeout
        self.arena = arena
        self.logger = logger
        socket = amqp_get_sockfd(connection)
        writer = negotiated.usesTLS ? nil : FrameWriter(socket: socket, frameMax: negotiated.frameMax)
        writeTimeout = negotiated.heartbeatSeconds > 0 ? .seconds(2 * negotiated.heartbeatSeconds) : requestTimeout
        channels = ChannelTable(channelMax: negotiated.channelMax)
    }

    deinit {
        amqp_destroy_connection(connection)
    }

    /// Runs until the connection closes or fails; returns why it ended.
    func run() -> RabbitMQError {
        while finalError == nil {
            let drainedAll = readFrames()
            flushBatches()
            if finalError != nil { break }
            commands.takeAll(into: &batch)
            let hadCommands = !batch.isEmpty
            var handled = 0
            while handled < batch.count, finalError == nil {
                handle(batch[handled])
                handled += 1
            }
            // Only the commands the connection's end left unhandled: a handled one already has its outcome.
            for command in batch[handled...] { reject(command, rejection) }
            batch.removeAll(keepingCapacity: true)
            flushAcks()
            flushWrites()
            flushBatches()
            checkDeadlines(force: false)
            if !hadCommands, drainedAll, finalError == nil { sleep() }
        }
        let error = finalError ?? RabbitMQError(.clientClosed, "the connection was closed")
        for command in commands.terminate(with: error) { reject(command, rejection) }
        for waiter in closeWaiters { waiter.resume() }
        closeWaiters.removeAll()
        return error
    }

    // MARK: Reading

    /// Reads and dispatches frames until none is buffered or the pass's limit is reached.
    /// Returns whether everything buffered was read (only then may the loop poll).
    private func readFrames() -> Bool {
        var frame = amqp_frame_t()
        var noWait = timeval(tv_sec: 0, tv_usec: 0)
        for _ in 0..<Self.framesPerPass {
            let status = amqp_simple_wait_frame_noblock(connection, &frame, &noWait)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return true }
            guard status == AMQP_STATUS_OK.rawValue else {
                fail(connectionError(status, while: "reading from the broker"))
                return true
            }
            dispatch(frame)
            amqp_maybe_release_buffers_on_channel(connection, frame.channel)
            if finalError != nil { return true }
        }
        return false
    }

    /// Sleeps in `poll()` until the socket is readable, a task queues a command, or a deadline is due.
    ///
    /// Right after deliveries went to consumers, their acks do not wake the thread: it polls for at most
    /// `ackDelayMilliseconds` and sends them when it wakes. While the broker may send more on every channel,
    /// the next deliveries usually wake it first and that one wake serves both: a steady consumer's process
    /// switches threads 40% less often. When a prefetch is half used, acks wake the thread at once: the broker
    /// waits for them.
    private func sleep() {
        let acksMayWait = handedOverDeliveries && channels.all.contains { $0.acks.unsettledCount > 0 }
            && channels.all.allSatisfy(\.brokerMaySendMore)
        guard commands.prepareToSleep(acksMayWait: acksMayWait) else { return }
        handedOverDeliveries = false
        var descriptors = [
            pollfd(fd: socket, events: Int16(POLLIN), revents: 0),
            pollfd(fd: commands.wakeup.readDescriptor, events: Int16(POLLIN), revents: 0),
        ]
        var timeout = pollTimeoutMilliseconds()
        if acksMayWait { timeout = min(timeout, Self.ackDelayMilliseconds) }
        let result = poll(&descriptors, 2, timeout)
        commands.didWake()
        if result == 0 { checkDeadlines(force: true) }
    }

    private func pollTimeoutMilliseconds() -> Int32 {
        // librabbitmq sends heartbeats only from inside its wait functions: wake at least twice per interval.
        var timeout: Duration = .seconds(5)
        if negotiated.heartbeatSeconds > 0 { timeout = min(timeout, .seconds(negotiated.heartbeatSeconds) / 2) }
        if let next = nextDeadline() {
            timeout = min(timeout, max(.zero, next - .now) + .milliseconds(1))
        }
        return Int32(timeout.wholeMilliseconds)
    }

    // MARK: Handing results over

    /// Hands each consumer its deliveries of this pass and each publish window its freed slots, once.
    func flushBatches() {
        if !touchedConsumers.isEmpty { handedOverDeliveries = true }
        for consumer in touchedConsumers {
            consumer.isTouched = false
            consumer.buffer.push(&consumer.batch)
        }
        touchedConsumers.removeAll(keepingCapacity: true)
        for channel in touchedChannels where channel.slotsToRelease > 0 {
            channel.link.window.release(channel.slotsToRelease)
            channel.slotsToRelease = 0
        }
        touchedChannels.removeAll(keepingCapacity: true)
    }

    func touch(_ consumer: ConsumerState) {
        guard !consumer.isTouched else { return }
        consumer.isTouched = true
        touchedConsumers.append(consumer)
    }

    func releaseSlot(_ channel: ChannelState) {
        if channel.slotsToRelease == 0 { touchedChannels.append(channel) }
        channel.slotsToRelease += 1
    }

    // MARK: Commands

    private func handle(_ command: EngineCommand) {
        switch command {
        case .openChannel(let window, let continuation):
            openChannel(window: window, continuation)
        case .request(let request):
            // The broker ignores a channel's frames after its channel.close: acks queued before must go first.
            if case .channelClose = request.method { flushAcks() }
            send(request)
        case .abandonRequest(let id, let error):
            abandon(id, error)
        case .publish(let publish):
            self.publish(publish)
        case .settle(let link, let settlement):
            settle(settlement, on: link)
        case .registerConsumer(let link, let tag, let buffer):
            guard let channel = openState(of: link) else {
                buffer.finish(link.inFlightError)
                return
            }
            channel.consumers[tag] = ConsumerState(buffer: buffer)
        case .closeConnection(let waiter):
            flushAcks()
            beginClose(waiter)
        }
    }

    /// Fails a command that will never run.
    private func reject(_ command: EngineCommand, _ error: RabbitMQError) {
        switch command {
        case .openChannel(_, let continuation): continuation.resume(throwing: error)
        case .request(let request): PendingRequest(request).fail(error)
        case .publish(let publish): publish.ticket.complete(.failure(error))
        case .registerConsumer(_, _, let buffer): buffer.finish(error)
        case .closeConnection(let waiter): waiter?.resume()
        case .settle, .abandonRequest: break
        }
    }

    /// The channel's state if it is open and still the incarnation `link` refers to.
    func openState(of link: ChannelLink) -> ChannelState? {
        guard let channel = channels[Int(link.number)], channel.link === link, !channel.isClosing,
              !channel.isCloseRequested else { return nil }
        return channel
    }

    private func openChannel(window: Int, _ continuation: CheckedContinuation<ChannelLink, any Error>) {
        guard let number = freeChannelNumber() else {
            continuation.resume(throwing: RabbitMQError(
                .invalidArgument, "all \(channels.highestNumber) channels of the connection are in use",
                operation: "channel.open"))
            return
        }
        let link = ChannelLink(number: UInt16(number), commands: commands, windowCapacity: window,
                               observability: observability)
        if isBlocked { link.window.setBlocked(true) }
        let channel = ChannelState(link: link)
        channels.insert(channel)
        let pending = PendingRequest(id: 0, method: .channelOpen, deadline: .now + requestTimeout,
                                     completion: .channelOpened(continuation))
        guard sendMethod(.channelOpen, on: channel) else {
            pending.fail(finalError!)
            return
        }
        channel.pending.append(pending)
    }

    private func freeChannelNumber() -> Int? {
        let limit = channels.highestNumber
        guard limit >= 1 else { return nil }
        for offset in 0..<limit {
            let number = (nextChannelHint - 1 + offset) % limit + 1
            if channels[number] == nil {
                nextChannelHint = number % limit + 1
                return number
            }
        }
        return nil
    }

    private func send(_ request: Request) {
        let pending = PendingRequest(request)
        guard let channel = openState(of: request.link) else {
            pending.fail(request.link.inFlightError)
            return
        }
        guard sendMethod(request.method, on: channel) else {
            pending.fail(finalError!)
            return
        }
        switch request.method {
        case .confirmSelect: channel.confirmMode = true
        case .channelClose: channel.isCloseRequested = true
        case .basicQos(let count, _) where count > 0:
            channel.prefetchLimit = channel.prefetchLimit == 0 ? count : min(channel.prefetchLimit, count)
        default: break
        }
        if request.method.replies.isEmpty {
            pending.succeed(.done, link: channel.link)
        } else {
            channel.pending.append(pending)
        }
    }

    /// Writes a method (after the frames buffered before it); on a socket failure fails the connection and
    /// returns `false`.
    @discardableResult
    func sendMethod(_ method: OutgoingMethod, on channel: ChannelState?) -> Bool {
        guard flushWrites() else { return false }
        let status = method.send(on: connection, channel: channel?.number ?? 0, arena: arena)
        guard status == AMQP_STATUS_OK.rawValue else {
            fail(connectionError(status, while: "sending \(method.name)"))
            return false
        }
        return true
    }

    private func abandon(_ id: RequestID, _ error: any Error) {
        for channel in channels.all where !channel.isClosing {
            guard let index = channel.pending.firstIndex(where: { $0.id == id }) else { continue }
            let request = channel.pending.remove(at: index)
            request.fail(error)
            // Its reply may still come and would be taken for the next request's: start the channel afresh.
            closeAfterFailure(channel, RabbitMQError(
                .clientClosed, "the channel was closed because a \(request.method.name) request was abandoned"))
            return
        }
    }

    // MARK: Flow control

    /// The broker blocked or unblocked publishing: hold publishes back, or send those held, in order.
    func setBlocked(_ blocked: Bool, reason: String) {
        guard blocked != isBlocked else { return }
        isBlocked = blocked
        if blocked {
            logger.warning("broker blocked the connection; publishes wait", metadata: ["reason": "\(reason)"])
        } else {
            logger.info("broker unblocked the connection")
        }
        for channel in channels.all { channel.link.window.setBlocked(blocked) }
        onEvent(blocked ? .blocked(reason) : .unblocked)
        guard !blocked else { return }
        while !isBlocked, finalError == nil, let next = held.popFirst() {
            guard let channel = openState(of: next.link) else {
                next.ticket.complete(.failure(next.link.inFlightError))
                continue
            }
            // Timed out while held back: the publisher was told it failed, so it must not go out now.
            guard !next.ticket.isCompleted else {
                releaseSlot(channel)
                continue
            }
            write(next, on: channel)
        }
    }

    // MARK: Settling deliveries

    private func settle(_ settlement: Settlement, on link: ChannelLink) {
        guard let channel = openState(of: link) else {
            // The channel closed after the task queued this: the broker has requeued the delivery.
            link.dropStaleSettlement(settlement)
            return
        }
        let accepted = channel.acks.settle(settlement) { frame in sendSettlementFrame(frame, on: channel) }
        if !accepted {
            logger.warning("ignored a settlement for a delivery that is unknown or already settled",
                           metadata: ["channel": "\(channel.number)", "settlement": "\(settlement)"])
        }
        if case .ack = settlement, !channel.hasPendingAcks {
            channel.hasPendingAcks = true
            channelsWithAcks.append(channel)
        }
    }

    private func flushAcks() {
        for channel in channelsWithAcks {
            channel.hasPendingAcks = false
            if openState(of: channel.link) != nil {
                channel.acks.flush { frame in sendSettlementFrame(frame, on: channel) }
            }
        }
        channelsWithAcks.removeAll(keepingCapacity: true)
    }

    // MARK: Deadlines

    private func checkDeadlines(force: Bool) {
        let now = ContinuousClock.now
        guard force || now - lastDeadlineCheck >= .milliseconds(5) else { return }
        lastDeadlineCheck = now
        bodies.trim(now: now)
        if let closeDeadline, now >= closeDeadline {
            finish(RabbitMQError(.clientClosed, "the client closed the connection (the broker did not confirm in time)"))
            return
        }
        for channel in channels.all {
            if !channel.isClosing, let head = channel.pending.first, head.deadline <= now {
                let error = RabbitMQError(.timeout, "the broker did not answer \(head.method.name) within "
                                              + "\(requestTimeout)", operation: head.method.name)
                channel.pending.removeFirst().fail(error)
                closeAfterFailure(channel, error)
            }
            while let head = channel.unconfirmed.first, head.ticket.deadline <= now {
                channel.unconfirmed.removeFirst()
                let error = RabbitMQError(.timeout, "the broker did not confirm the publish in time",
                                          operation: "publish confirm")
                if head.ticket.complete(.failure(error)) { channel.link.window.recordFailure(error) }
                releaseSlot(channel)
            }
        }
        while let head = held.first, head.ticket.deadline <= now {
            held.removeFirst()
            let error = RabbitMQError(.timeout, "the broker blocked the connection and the publish timed out waiting",
                                      operation: "publish")
            head.ticket.complete(.failure(error))
            if let channel = openState(of: head.link) {
                channel.link.window.recordFailure(error)
                releaseSlot(channel)
            }
        }
        flushBatches()
    }

    private func nextDeadline() -> ContinuousClock.Instant? {
        var next = closeDeadline
        func consider(_ deadline: ContinuousClock.Instant?) {
            guard let deadline else { return }
            next = next.map { min($0, deadline) } ?? deadline
        }
        for channel in channels.all {
            consider(channel.pending.first?.deadline)
            consider(channel.unconfirmed.first?.ticket.deadline)
        }
        consider(held.first?.ticket.deadline)
        return next
    }

    // MARK: Closing and failing

    private func beginClose(_ waiter: CheckedContinuation<Void, Never>?) {
        if let waiter { closeWaiters.append(waiter) }
        guard closeDeadline == nil else { return }
        closeDeadline = .now + min(requestTimeout, .seconds(5))
        let error = RabbitMQError(.clientClosed, "the client closed the connection")
        for entry in held { entry.ticket.complete(.failure(error)) }
        held.removeAll()
        sendMethod(.connectionClose(replyCode: 200, replyText: "client closed the connection"), on: nil)
    }

    /// What commands get once the connection has ended: the error it ended with, or the collateral error of
    /// operations that did not cause the broker to close it.
    private var rejection: RabbitMQError {
        commands.terminalError ?? finalError ?? RabbitMQError(.clientClosed, "the connection was closed")
    }

    /// The broker acknowledged our connection.close, or closed the connection itself, because of `method` when it
    /// names one.
    ///
    /// The error is charged to the request that sent `method` (the oldest one on its channel; with several
    /// channels sending the same method at that moment, each of them); every other operation fails with a
    /// collateral error. The command queue refuses new commands before any waiter is resumed, so that a caller
    /// told of the failure is never handed this connection again.
    func finish(_ error: RabbitMQError, causedBy method: amqp_method_number_t? = nil) {
        guard finalError == nil else { return }
        finalError = error
        var culprits: [PendingRequest] = []
        if let method, !error.isRetryable {
            for channel in channels.all where !channel.isClosing && channel.pending.first?.method.number == method {
                culprits.append(channel.pending.removeFirst())
            }
        }
        let others = culprits.isEmpty ? error : RabbitMQError.collateral(
            error.code, "the broker closed the connection because another operation (\(culprits[0].method.name)) "
                + "failed", cause: error)
        for command in commands.terminate(with: others) { reject(command, others) }
        // A recoverable channel's consumers outlive a lost connection: recovery re-registers their buffers.
        let connectionLost = error.code != .clientClosed
        for channel in channels.all {
            tearDown(channel, others, keepConsumers: connectionLost && channel.link.isRecoverable)
        }
        for request in culprits { request.fail(error) }
        for entry in held { entry.ticket.complete(.failure(others)) }
        held.removeAll()
        for entry in awaitingWrite { entry.ticket.complete(.failure(others)) }
        awaitingWrite.removeAll()
        flushBatches()
    }

    /// The connection failed (socket error, missed heartbeats, protocol error).
    func fail(_ error: RabbitMQError) {
        guard finalError == nil else { return }
        logger.error("connection to \(negotiated.endpoint) failed", metadata: ["error": "\(error)"])
        finish(error)
    }

    /// Fails everything waiting on the channel and frees its number (or keeps it while `channel.close` is out).
    func tearDown(_ channel: ChannelState, _ error: RabbitMQError, keepNumberUntilCloseOk: Bool = false,
                  keepConsumers: Bool = false) {
        channel.link.markClosed(error)
        while let request = channel.pending.popFirst() { request.fail(error) }
        while let publish = channel.unconfirmed.popFirst() {
            publish.ticket.complete(.failure(error))
        }
        for consumer in channel.consumers.values {
            // Deliveries not handed out yet can no longer be settled: drop them (the broker requeues them). A
            // consumer kept for recovery then gets only the recovered channel's deliveries.
            consumer.batch.removeAll()
            consumer.buffer.drop(deliveriesOf: channel.link)
            if !keepConsumers { consumer.buffer.finish(error) }
        }
        channel.consumers.removeAll()
        channel.incoming = nil
        channel.slotsToRelease = 0
        if keepNumberUntilCloseOk {
            channel.isClosing = true
        } else {
            channels.remove(channel)
        }
    }

    /// Closes a channel whose state can no longer be trusted (a timed-out or abandoned request).
    func closeAfterFailure(_ channel: ChannelState, _ error: RabbitMQError) {
        tearDown(channel, error, keepNumberUntilCloseOk: true)
        guard !channel.isCloseRequested else { return }  // its channel.close is already out
        sendMethod(.channelClose(replyCode: 200, replyText: "request abandoned by the client"), on: channel)
    }

    func connectionError(_ status: Int32, while activity: String) -> RabbitMQError {
        let detail = String(cString: amqp_error_string2(status))
        switch status {
        case AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue:
            return RabbitMQError(.connectionLost, "the broker missed two heartbeats: connection presumed dead",
                                 operation: activity)
        case AMQP_STATUS_BAD_AMQP_DATA.rawValue, AMQP_STATUS_UNKNOWN_CLASS.rawValue,
             AMQP_STATUS_UNKNOWN_METHOD.rawValue, AMQP_STATUS_UNEXPECTED_STATE.rawValue:
            return RabbitMQError(.protocolError, "protocol error while \(activity): \(detail)", operation: activity,
                                 isRetryable: true)
        default:
            return RabbitMQError(.connectionLost, "connection lost while \(activity): \(detail)", operation: activity)
        }
    }
}

extension PendingRequest {
    init(_ request: Request) {
        self.init(id: request.id, method: request.method, deadline: request.deadline,
                  completion: .reply(request.continuation))
    }
}
