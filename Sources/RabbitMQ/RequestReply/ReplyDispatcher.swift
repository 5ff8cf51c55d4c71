import Foundation
import Synchronization

/// The client's side of request/reply over direct reply-to: one channel that publishes the requests and consumes
/// their replies from `amq.rabbitmq.reply-to` (the broker sends a reply to the channel that published its request,
/// so both must be the same), and the calls waiting for a reply, by correlation id.
///
/// The channel is opened on the first call and shared by every call; it is recovered with the connection, its
/// no-ack consumer with it. A reply nobody waits for (its call timed out or was cancelled) is dropped and counted.
final class ReplyDispatcher: Sendable {
    /// The reply channel and the task reading its replies.
    struct ReplyChannel: Sendable {
        let channel: Channel
        let reader: Task<Void, Never>
    }

    /// The pseudo-queue of direct reply-to.
    static let replyQueue = "amq.rabbitmq.reply-to"
    /// The header in which a ``Responder`` reports that its handler failed.
    static let errorHeader = "x-responder-error"

    private let current = SingleFlight<ReplyChannel>()
    private let pending = StateLock<[String: SharedResult<Delivery>]>([:])
    private let dropped = Atomic<Int>(0)

    /// Replies that arrived for no waiting call (late, after their call's timeout, or unknown).
    var droppedReplyCount: Int { dropped.load(ordering: .relaxed) }

    /// The shared reply channel, opening it (or a new one after the broker closed it) until `deadline`.
    func channel(of client: RabbitMQClient, until deadline: ContinuousClock.Instant) async throws -> Channel {
        try await current.get(
            until: deadline, operation: "call",
            isValid: { $0.channel.isOpen || client.manager.willRecover(from: $0.channel.closeReason) },
            retire: { old in Task { try? await old.channel.close() } },
            create: { [self] in
                let channel = try await client.openChannel()
                do {
                    try await channel.enableConfirms()
                    let consumer = try await channel.consume(Self.replyQueue,
                                                             options: ConsumeOptions(acknowledgement: .noAck))
                    return ReplyChannel(channel: channel, reader: Task { await self.read(consumer) })
                } catch {
                    try? await channel.close()
                    throw error
                }
            }).channel
    }

    /// Registers a call waiting for the reply with `correlationID`.
    func expect(_ correlationID: String) -> SharedResult<Delivery> {
        let result = SharedResult<Delivery>()
        pending.withLock { $0[correlationID] = result }
        return result
    }

    /// Forgets a call (answered, timed out, failed or cancelled): a reply for it from now on is dropped.
    func forget(_ correlationID: String) {
        _ = pending.withLock { $0.removeValue(forKey: correlationID) }
    }

    /// Fails the waiting calls and closes the reply channel (the client is closing).
    func close() async {
        let waiting = pending.withLock { pending in
            defer { pending.removeAll() }
            return Array(pending.values)
        }
        for call in waiting {
            call.complete(.failure(RabbitMQError(.clientClosed, "the client was closed", operation: "call")))
        }
        if let replies = current.close() {
            replies.reader.cancel()
            try? await replies.channel.close()
        }
    }

    private func read(_ consumer: Consumer) async {
        do {
            for try await reply in consumer {
                guard let id = reply.properties.correlationID,
                      let call = pending.withLock({ $0.removeValue(forKey: id) }) else {
                    dropped.add(1, ordering: .relaxed)
                    continue
                }
                call.complete(.success(reply))
            }
        } catch {
            // The consumer ended with its channel; calls waiting on it time out, the next call opens a new one.
        }
    }
}
