import Foundation
import Logging
import Synchronization

/// One AMQP connection: the dedicated I/O thread that owns it and the queue that reaches that thread.
///
/// Tasks never touch librabbitmq: they queue ``EngineCommand``s and are resumed through continuations.
/// Dropping the engine without ``close()`` still closes the connection and ends the thread.
final class ConnectionEngine: Sendable {
    let commands: EngineCommandQueue
    let negotiated: NegotiatedParameters
    let requestTimeout: Duration
    let logger: Logger
    private let requestIDs = Atomic<UInt64>(0)

    private init(commands: EngineCommandQueue, negotiated: NegotiatedParameters, requestTimeout: Duration,
                 logger: Logger) {
        self.commands = commands
        self.negotiated = negotiated
        self.requestTimeout = requestTimeout
        self.logger = logger
    }

    deinit {
        try? commands.submit(.closeConnection(nil))
    }

    /// Starts the I/O thread, which connects and logs in to `parameters.endpoint`, then serves commands.
    static func connect(_ parameters: ConnectionParameters,
                        logger: Logger,
                        makeLink: @escaping ChannelLinkFactory,
                        onEvent: @escaping EngineEventHandler) async throws -> ConnectionEngine {
        let commands = try EngineCommandQueue()
        let endpoint = parameters.endpoint
        let negotiated = try await withCheckedThrowingContinuation {
            (continuation: CheckedContinuation<NegotiatedParameters, any Error>) in
            let thread = Thread {
                runConnection(parameters, commands: commands, logger: logger, makeLink: makeLink,
                              onEvent: onEvent) { result in
                    continuation.resume(with: result)
                }
            }
            thread.name = "rabbitmq-io \(endpoint)"
            thread.stackSize = 1 << 20
            thread.start()
        }
        logger.info("connected", metadata: [
            "endpoint": "\(endpoint)", "heartbeat": "\(negotiated.heartbeatSeconds)s",
            "frame_max": "\(negotiated.frameMax)", "channel_max": "\(negotiated.channelMax)",
        ])
        return ConnectionEngine(commands: commands, negotiated: negotiated, requestTimeout: parameters.requestTimeout,
                                logger: logger)
    }

    /// The body of the I/O thread: connect, report, then serve until the connection ends.
    private static func runConnection(_ parameters: ConnectionParameters, commands: EngineCommandQueue, logger: Logger,
                                      makeLink: @escaping ChannelLinkFactory, onEvent: @escaping EngineEventHandler,
                                      connected: (Result<NegotiatedParameters, RabbitMQError>) -> Void) {
        let arena = CArena()
        let loop: IOLoop
        do {
            let (connection, negotiated) = try openConnection(parameters, arena: arena)
            loop = IOLoop(connection: connection, negotiated: negotiated, commands: commands,
                          requestTimeout: parameters.requestTimeout, arena: arena, logger: logger,
                          makeLink: makeLink,
                          onEvent: { event in onEvent(event, ObjectIdentifier(commands)) })
        } catch {
            _ = commands.terminate(with: error)
            connected(.failure(error))
            return
        }
        connected(.success(loop.negotiated))
        let error = loop.run()
        onEvent(.terminated(error), ObjectIdentifier(commands))
    }

    /// Whether the connection has ended.
    var isClosed: Bool { commands.terminalError != nil }

    /// The error the connection ended with, once it has (the other operation's, when the broker closed it
    /// because of one).
    var closedError: RabbitMQError? { commands.terminalError.map { $0.cause ?? $0 } }

    /// Opens a channel whose publish window allows `window` messages in flight.
    func openChannel(window: Int) async throws -> ChannelLink {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ChannelLink, any Error>) in
            do {
                try commands.submit(.openChannel(window: window, continuation))
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Sends `method` on the channel and waits for the broker's reply until `deadline` (default: in
    /// ``requestTimeout``). Cancelling the task withdraws the request and closes the channel.
    func request(_ method: OutgoingMethod, on link: ChannelLink, until deadline: ContinuousClock.Instant? = nil)
        async throws -> MethodReply
    {
        try link.checkOpen(method.name)
        try Task.checkCancellation()
        let id = requestIDs.add(1, ordering: .relaxed).newValue
        let deadline = deadline ?? ContinuousClock.now + requestTimeout
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<MethodReply, any Error>) in
                do throws(RabbitMQError) {
                    try link.submit(.request(Request(id: id, link: link, method: method, deadline: deadline,
                                                     continuation: continuation)))
                } catch {
                    var error = error
                    error.operation = error.operation ?? method.name
                    continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            try? link.submit(.abandonRequest(id, CancellationError()))
        }
    }

    /// Closes the connection with the AMQP handshake; returns once the I/O thread has finished.
    /// Operations still waiting fail with ``RabbitMQError/Code/clientClosed``.
    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            do {
                try commands.submit(.closeConnection(continuation))
            } catch {
                continuation.resume()
            }
        }
    }
}
