import Foundation
import DequeModule

/// The protocol bookkeeping of one open channel: a value inside ``ConnectionStateMachine``, which mutates it in
/// place (never copy it out to change it: its queues would be copied).
struct ChannelState {
    let link: ChannelLink
    var number: UInt16 { link.number }
    /// Requests sent and waiting for their reply, in order (the broker answers in order).
    var pending: Deque<PendingRequest> = []
    /// Set once confirm.select is sent: publishes from then on are numbered and confirmed.
    var confirmMode = false
    var nextPublishSequence: UInt64 = 1
    var unconfirmed: Deque<UnconfirmedPublish> = []
    /// Publishes nacked since the last ack (see ``ChannelLink/keepsNacking``).
    var nacksInARow = 0
    /// basic.return messages waiting for the confirm that follows them and names their publish.
    var pendingReturns: [ReturnedMessage] = []
    /// Window slots freed in this pass, released in one call at its end.
    var slotsToRelease = 0
    /// Whether the channel is in the machine's list of channels with slots to release.
    var isReleaseListed = false
    var consumers: [String: ConsumerState] = [:]
    /// Tags of the consumers registered with AMQP `no-ack` on the channel, kept for its life: the broker settled
    /// their deliveries as it sent them, so those are neither tracked for acks nor given back, also when one
    /// arrives after its consumer was cancelled. Usually empty.
    var noAckConsumers: Set<String> = []
    var acks = AckCoalescer()
    /// In transaction mode (tx.select): the settlement state as the current transaction began, and the
    /// deliveries since, so that a tx.rollback can make the settlements it undid possible again.
    var transaction: (start: AckCoalescer, delivered: [UInt64])?
    var hasPendingAcks = false
    /// The smallest non-zero prefetch set on the channel, 0 while none is: the broker stops delivering on the
    /// channel (or to one of its consumers) once that many deliveries are unsettled.
    var prefetchLimit: UInt16 = 0
    /// The message being assembled from a method, a header and body frames.
    var incoming: IncomingMessage?
    /// channel.close sent after a failure; the number stays taken until close-ok.
    var isClosing = false
    /// The application's channel.close is sent: nothing more may go out on the channel (the broker would close
    /// the connection for a frame on a channel it has closed).
    var isCloseRequested = false

    init(link: ChannelLink) {
        self.link = link
    }

    /// Records a delivery that needs settling.
    mutating func delivered(_ tag: UInt64) {
        acks.delivered(tag)
        if transaction != nil { transaction!.delivered.append(tag) }
    }

    /// A transaction began (tx.select-ok, tx.commit-ok), or one was rolled back (tx.rollback-ok): then its
    /// settlements are undone and the tags it settled are returned, to be made settleable again.
    mutating func transactionEnded(rolledBack: Bool) -> [UInt64] {
        var undone: [UInt64] = []
        if rolledBack, let transaction {
            var restored = transaction.start
            for tag in transaction.delivered { restored.delivered(tag) }
            undone = restored.unsettledTags.filter { !acks.isUnsettled($0) }
            acks = restored
        }
        transaction = (acks.withoutPendingAcks, [])
        return undone
    }

    /// Whether the channel is open and still the incarnation `link` refers to.
    func isOpen(as link: ChannelLink) -> Bool {
        self.link === link && !isClosing && !isCloseRequested
    }

    /// Whether the broker may still send deliveries without waiting for acks: no prefetch is set, or at most
    /// half of it is unsettled.
    var brokerMaySendMore: Bool {
        prefetchLimit == 0 || acks.unsettledCount * 2 <= Int(prefetchLimit)
    }
}

/// A request waiting for its reply.
struct PendingRequest {
    enum Completion {
        case reply(CheckedContinuation<MethodReply, any Error>)
        case channelOpened(CheckedContinuation<ChannelLink, any Error>)
    }

    let id: RequestID
    let method: OutgoingMethod
    let deadline: ContinuousClock.Instant
    let completion: Completion

    func succeed(_ reply: MethodReply, link: ChannelLink) {
        switch completion {
        case .reply(let continuation): continuation.resume(returning: reply)
        case .channelOpened(let continuation): continuation.resume(returning: link)
        }
    }

    func fail(_ error: any Error) {
        var error = error
        if var rabbitError = error as? RabbitMQError, rabbitError.operation == nil {
            rabbitError.operation = method.name
            error = rabbitError
        }
        switch completion {
        case .reply(let continuation): continuation.resume(throwing: error)
        case .channelOpened(let continuation): continuation.resume(throwing: error)
        }
    }
}

extension PendingRequest {
    init(_ request: Request) {
        self.init(id: request.id, method: request.method, deadline: request.deadline,
                  completion: .reply(request.continuation))
    }
}

/// A publish sent in confirm mode, waiting for basic.ack or basic.nack.
struct UnconfirmedPublish {
    let sequence: UInt64
    let ticket: PublishTicket
    /// Mandatory publishes only: what a basic.return is matched against, and the return once matched.
    /// Boxed so that the queue of unconfirmed publishes stays small for the common, non-mandatory case.
    let mandatory: MandatoryPublish?
    var isResolved = false
}

/// A mandatory publish waiting for its confirm. Confined to the I/O thread.
final class MandatoryPublish {
    let message: OutgoingMessage
    var returned: RabbitMQError?

    init(_ message: OutgoingMessage) {
        self.message = message
    }
}

/// A consumer of the channel: where its deliveries go. Confined to the I/O thread.
final class ConsumerState {
    let collector: any DeliveryCollector
    /// Whether it received deliveries in the current pass (it is then in the machine's hand-over list).
    var isTouched = false

    init(collector: any DeliveryCollector) {
        self.collector = collector
    }
}

/// A message arriving in pieces: its method, then a header frame, then body frames.
struct IncomingMessage {
    enum Kind {
        case deliver(consumerTag: String)
        case returned(replyCode: UInt16, replyText: String)
        case got
    }

    let kind: Kind
    let deliveryTag: UInt64
    let isRedelivered: Bool
    let exchange: String
    let routingKey: String
    var properties = MessageProperties()
    /// Set by the header frame.
    var body: IncomingBody?
}

/// A message the broker returned as unroutable, until the confirm that follows it names its publish.
struct ReturnedMessage {
    let exchange: String
    let routingKey: String
    let body: Data
    let error: RabbitMQError

    func matches(_ message: OutgoingMessage?) -> Bool {
        guard let message else { return false }
        return message.exchange == exchange && message.routingKey == routingKey && message.body == body
    }
}

extension Deque where Element == UnconfirmedPublish {
    /// The index of the publish numbered `sequence` (the deque is in sequence order).
    func binarySearch(sequence: UInt64) -> Int? {
        var low = 0
        var high = count - 1
        while low <= high {
            let middle = (low + high) / 2
            if self[middle].sequence == sequence { return middle }
            if self[middle].sequence < sequence { low = middle + 1 } else { high = middle - 1 }
        }
        return nil
    }
}
