internal import CRabbitMQ
import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The owner of one librabbitmq connection: runs on the connection's dedicated thread and is the only code
/// that touches its C state.
///
/// It keeps the thread, the poll and the writes; the protocol bookkeeping is ``ConnectionStateMachine``'s, which
/// it feeds with commands, decoded frames and ticks, and whose ``EngineAction``s it performs. It is not `Sendable`
/// and is created on that thread, so the compiler keeps it there. Each pass reads every frame available without
/// blocking, hands results over in batches (one push per consumer, one release per publish window), runs the
/// commands that tasks queued, writes the publishes and acks they produced with one system call
/// (``FrameWriter``), and sleeps in `poll()` on the socket and the wake-up pipe only when there is nothing left
/// to do.
final class IOLoop {
    let connection: amqp_connection_state_t
    let commands: EngineCommandQueue
    let logger: Logger
    let arena: CArena
    let negotiated: NegotiatedParameters
    let onEvent: @Sendable (EngineEvent) -> Void
    /// Creates the link of each channel the loop opens.
    let makeLink: ChannelLinkFactory
    private let socket: Int32
    /// Encodes publishes and settlements and writes them once per pass (over TLS, through the session).
    let writer: FrameWriter
    /// How long a write may wait for the broker to take bytes before the connection is presumed dead.
    let writeTimeout: Duration
    /// Memory for large incoming bodies, reused as the application releases them.
    let bodies = BodyPool()

    var machine: ConnectionStateMachine
    /// The actions being performed (swapped with the machine's buffer, so neither allocates).
    var performing: [EngineAction] = []
    var isPerforming = false
    private var batch: [EngineCommand] = []
    private var lastDeadlineCheck = ContinuousClock.now

    /// Maximum frames read in one pass before commands get their turn.
    private static let framesPerPass = 4096
    /// How long an ack may wait for the thread's next wake (see ``sleep()``).
    private static let ackDelayMilliseconds: Int32 = 1

    init(connection: amqp_connection_state_t, negotiated: NegotiatedParameters, commands: EngineCommandQueue,
         requestTimeout: Duration, arena: CArena, logger: Logger, makeLink: @escaping ChannelLinkFactory,
         onEvent: @escaping @Sendable (EngineEvent) -> Void) {
        self.onEvent = onEvent
        self.makeLink = makeLink
        self.connection = connection
        self.negotiated = negotiated
        self.commands = commands
        self.arena = arena
        self.logger = logger
        socket = amqp_get_sockfd(connection)
        writer = FrameWriter(socket: socket, frameMax: negotiated.frameMax,
                             librarySocket: negotiated.usesTLS ? amqp_get_socket(connection) : nil)
        writeTimeout = negotiated.heartbeatSeconds > 0 ? .seconds(2 * negotiated.heartbeatSeconds) : requestTimeout
        machine = ConnectionStateMachine(channelMax: negotiated.channelMax, requestTimeout: requestTimeout,
                                         logger: logger)
    }

    deinit {
        amqp_destroy_connection(connection)
    }

    var finalError: RabbitMQError? { machine.finalError }

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
                performActions()
                handled += 1
            }
            // Only the commands the connection's end left unhandled: a handled one already has its outcome.
            for command in batch[handled...] { command.reject(rejection) }
            batch.removeAll(keepingCapacity: true)
            machine.flushAcks()
            performActions()
            flushWrites()
            flushBatches()
            checkDeadlines(force: false)
            if !hadCommands, drainedAll, finalError == nil { sleep() }
        }
        let error = finalError ?? RabbitMQError(.clientClosed, "the connection was closed")
        for command in commands.terminate(with: error) { command.reject(rejection) }
        for waiter in machine.takeCloseWaiters() { waiter.resume() }
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
                fail(RabbitMQError(status: status, while: "reading from the broker"))
                return true
            }
            dispatch(FrameDecoder.decode(frame))
            performActions()
            amqp_maybe_release_buffers_on_channel(connection, frame.channel)
            if finalError != nil { return true }
        }
        return false
    }

    /// Hands one frame to the state machine (a header's properties move in without a copy).
    private func dispatch(_ frame: DecodedFrame) {
        switch frame {
        case .method(let method, let channel):
            machine.receive(method, on: channel)
        case .header(let header, let channel):
            guard machine.expectsHeader(on: channel) else { return }
            machine.receiveHeader(on: channel, properties: header.properties,
                                  body: IncomingBody(size: header.bodySize, pool: bodies))
        case .body(let bytes, let channel):
            machine.receiveBody(on: channel, bytes)
        case .heartbeat:
            break
        }
    }

    /// Sleeps in `poll()` until the socket is readable, a task queues a command, or a deadline is due.
    ///
    /// Right after deliveries went to consumers, their acks do not wake the thread: it polls for at most
    /// `ackDelayMilliseconds` and sends them when it wakes. While the broker may send more on every channel,
    /// the next deliveries usually wake it first and that one wake serves both: a steady consumer's process
    /// switches threads 40% less often. When a prefetch is half used, acks wake the thread at once: the broker
    /// waits for them.
    private func sleep() {
        let acksMayWait = machine.acksMayWait
        guard commands.prepareToSleep(acksMayWait: acksMayWait) else { return }
        machine.didSleep()
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
        if let next = machine.nextDeadline() {
            timeout = min(timeout, max(.zero, next - .now) + .milliseconds(1))
        }
        return Int32(timeout.wholeMilliseconds)
    }

    private func checkDeadlines(force: Bool) {
        let now = ContinuousClock.now
        guard force || now - lastDeadlineCheck >= .milliseconds(5) else { return }
        lastDeadlineCheck = now
        bodies.trim(now: now)
        machine.tick(now: now)
        performActions()
    }

    /// Hands each consumer its deliveries of this pass and each publish window its freed slots, once.
    private func flushBatches() {
        machine.flushBatches()
        performActions()
    }

    // MARK: Writing

    /// Writes a method (after the frames buffered before it); on a socket failure fails the connection and
    /// returns `false`.
    @discardableResult
    func sendMethod(_ method: OutgoingMethod, on channel: UInt16) -> Bool {
        guard flushWrites() else { return false }
        let status = method.send(on: connection, channel: channel, arena: arena)
        guard status == AMQP_STATUS_OK.rawValue else {
            fail(RabbitMQError(status: status, while: "sending \(method.name)"))
            return false
        }
        return true
    }

    func sendSettlementFrame(_ frame: AckCoalescer.Frame, on channel: UInt16) {
        guard finalError == nil else { return }
        writer.appendSettlement(frame, channel: channel)
        if writer.shouldFlush { flushWrites() }
    }

    /// The connection failed (socket error, missed heartbeats, protocol error).
    func fail(_ error: RabbitMQError) {
        machine.fail(error, endpoint: "\(negotiated.endpoint)")
    }
}
