import Foundation

/// Identifies a request so that a cancelled task can withdraw it.
typealias RequestID = UInt64

/// The queue through which tasks reach a connection's I/O thread.
typealias EngineCommandQueue = CommandQueue<EngineCommand>

/// Work handed from a task to a connection's I/O thread.
enum EngineCommand: HandoffCommand {
    /// Open a channel whose publish window allows `window` messages in flight.
    case openChannel(window: Int, CheckedContinuation<ChannelLink, any Error>)
    /// Send a method and resume with the broker's reply.
    case request(Request)
    /// Withdraw a request whose task was cancelled or timed out; its channel is closed, since a late reply
    /// could no longer be matched.
    case abandonRequest(RequestID, any Error)
    /// Publish a message; its ticket completes on confirm (or once written, without confirms).
    case publish(OutgoingPublish)
    /// Ack, nack or reject deliveries.
    case settle(ChannelLink, Settlement)
    /// Route deliveries for `consumerTag` to `sink` (sent before the basic.consume request). With `noAck` the
    /// consumer is consumed with AMQP `no-ack`: its deliveries are settled by the broker as it sends them.
    case registerConsumer(ChannelLink, consumerTag: String, any DeliverySink, noAck: Bool = false)
    /// Close the connection with the AMQP handshake, then stop the thread.
    case closeConnection(CheckedContinuation<Void, Never>?)

    /// Settlements may wait for the I/O thread's next wake (see ``HandoffCommand``): nobody awaits them.
    var mayWaitForTheNextWake: Bool {
        if case .settle = self { true } else { false }
    }

    /// Fails a command that will never run with `error`.
    func reject(_ error: RabbitMQError) {
        switch self {
        case .openChannel(_, let continuation): continuation.resume(throwing: error)
        case .request(let request): PendingRequest(request).fail(error)
        case .publish(let publish): publish.ticket.complete(.failure(error))
        case .registerConsumer(_, _, let sink, _): sink.finish(error)
        case .closeConnection(let waiter): waiter?.resume()
        case .settle, .abandonRequest: break
        }
    }
}

/// A method waiting for the broker's reply.
struct Request: Sendable {
    let id: RequestID
    let link: ChannelLink
    let method: OutgoingMethod
    let deadline: ContinuousClock.Instant
    let continuation: CheckedContinuation<MethodReply, any Error>
}

/// The broker's reply to a request, copied out of librabbitmq's memory.
enum MethodReply: Sendable {
    case done
    case queueDeclared(name: String, messageCount: UInt32, consumerCount: UInt32)
    case messageCount(UInt32)
    case consumerTag(String)
    case getEmpty
    /// Boxed: a message is large, and replies travel inside ``EngineAction``s.
    indirect case message(InboundMessage)
}

/// A publish handed to the I/O thread. A class, so that queueing and handing it over retains one object rather
/// than every string and buffer of the message (those retains were a tenth of a small publish's cost).
final class OutgoingPublish: Sendable {
    let link: ChannelLink
    let message: OutgoingMessage
    let ticket: PublishTicket

    init(link: ChannelLink, message: OutgoingMessage, ticket: PublishTicket) {
        self.link = link
        self.message = message
        self.ticket = ticket
    }
}

/// A message to publish, as handed to the I/O thread (the body is published from this buffer, not copied).
struct OutgoingMessage: Sendable {
    var exchange: String
    var routingKey: String
    var mandatory: Bool
    var properties: MessageProperties
    var body: Data

    /// The header in which a mandatory publish on a channel with confirms carries its sequence number, so that a
    /// basic.return (which names no publish) can be matched to it.
    static let publishSequenceHeader = "x-publish-sequence"
}

/// How the application settles a delivery.
enum Settlement: Sendable, Equatable {
    case ack(deliveryTag: UInt64, multiple: Bool)
    case nack(deliveryTag: UInt64, multiple: Bool, requeue: Bool)
    case reject(deliveryTag: UInt64, requeue: Bool)

    /// The delivery settled (the newest one, for a multiple settlement).
    var deliveryTag: UInt64 {
        switch self {
        case .ack(let tag, _), .nack(let tag, _, _), .reject(let tag, _): tag
        }
    }

    /// Whether it also settles every earlier unsettled delivery of the channel.
    var isMultiple: Bool {
        switch self {
        case .ack(_, let multiple), .nack(_, let multiple, _): multiple
        case .reject: false
        }
    }
}

/// What a connection's I/O thread reports on its own, to whoever manages the connection.
enum EngineEvent: Sendable {
    /// The broker blocked publishing (connection.blocked).
    case blocked(String)
    /// The broker unblocked publishing.
    case unblocked
    /// The connection ended: closed by the client, by the broker, or failed. Sent once, last.
    case terminated(RabbitMQError)
}

/// Creates the link of a channel the I/O thread opens, numbered `number`, whose publish window allows `window`
/// messages in flight and whose commands go to `commands` (supplied by the layer above: links also carry its
/// metrics).
typealias ChannelLinkFactory = @Sendable (_ number: UInt16, _ window: Int, _ commands: EngineCommandQueue)
    -> ChannelLink

/// Receives ``EngineEvent``s on the I/O thread with the identity of the connection's command queue; it must
/// return quickly.
typealias EngineEventHandler = @Sendable (EngineEvent, ObjectIdentifier) -> Void
