import DequeModule
import Foundation
import Synchronization

/// The deliveries of one consumer, as an `AsyncSequence`.
///
/// ```swift
/// for try await delivery in try await client.consume("orders.coupon", prefetch: 50) {
///     try await handle(delivery)
///     try delivery.ack()
/// }
/// ```
/// Deliveries cross from the connection's I/O thread in batches, and at most the prefetch count of them is
/// ever buffered. A delivery is handed out only while its channel is open, so that it can be settled: once the
/// channel closes or the connection is lost, what it buffered is dropped (the broker requeues it), and after
/// recovery the sequence goes on with the recovered channel's deliveries. Leaving the loop, cancelling its task or
/// calling ``cancel()`` cancels the consumer at the broker; unacknowledged deliveries go back to the queue when
/// its channel closes. The sequence ends with
/// ``RabbitMQError/Code/consumerCancelled`` if the broker cancels the consumer (its queue was deleted), and
/// with the channel's or connection's error if either fails.
public struct Consumer: AsyncSequence, Sendable {
    public typealias Element = Delivery
    let core: ConsumerCore

    /// The consumer tag the broker knows this consumer by.
    public var consumerTag: String { core.tag }

    /// The stream offset of the last delivery the sequence handed out, for a consumer started with
    /// ``ConsumeOptions/streamOffset``; `nil` before the first, and for other consumers.
    public var lastStreamOffset: Int64? { core.streamCursor?.lastOffset }

    /// Stops the consumer at the broker; the sequence ends after the deliveries already received.
    /// For a consumer opened by ``RabbitMQClient/consume(_:prefetch:options:)`` this also closes its channel,
    /// which returns unacknowledged deliveries to the queue; the deliveries it buffered are then dropped.
    public func cancel() async {
        await core.cancel()
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(core: core)
    }

    /// Iterates the deliveries; not meant to be shared between tasks.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let core: ConsumerCore
        private var batch: Deque<Delivery> = []

        init(core: ConsumerCore) {
            self.core = core
        }

        /// The next delivery that can still be settled. Deliveries whose channel has closed since they were
        /// received (the connection was lost, the channel or the client closed) are dropped, not handed out: the
        /// broker requeues them, and after recovery the sequence goes on with the new channel's deliveries.
        nonisolated(nonsending) public mutating func next() async throws -> Delivery? {
            try await next(isolation: #isolation)
        }

        /// ``next()`` on the caller's actor: what `for try await` calls. Implemented here, not left to the
        /// protocol's default (which calls ``next()`` through a witness that leaves the actor), so that a loop on
        /// an actor stays on it and suspends only when no delivery is buffered.
        public mutating func next(isolation actor: isolated (any Actor)?) async throws -> Delivery? {
            while true {
                if batch.isEmpty {
                    batch = try await core.buffer.next()
                    if batch.isEmpty { return nil }  // the sequence ended
                }
                guard var delivery = batch.popFirstSettleable() else { continue }
                if let cursor = core.streamCursor, let offset = delivery.streamOffset { cursor.advance(to: offset) }
                if core.acknowledgesAutomatically {
                    do {
                        guard try delivery.settle(.ack(deliveryTag: delivery.deliveryTag, multiple: false),
                                                  "basic.ack") else { continue }  // its channel just closed
                        core.instruments?.recordAcked()
                    } catch {
                        // Covered by an earlier multiple settlement of the channel: nothing left to acknowledge.
                    }
                }
                if let instruments = core.instruments {
                    delivery.instruments = instruments
                    instruments.recordDelivered()
                }
                return delivery
            }
        }
    }
}

/// The consumer's registration; cancels it at the broker when the last sequence or iterator lets go.
final class ConsumerCore: Sendable {
    let tag: String
    let channel: Channel
    let buffer: DeliveryBuffer
    let ownsChannel: Bool
    let acknowledgesAutomatically: Bool
    /// The queue's metric handles; `nil` without metrics, so the iterator then does nothing extra.
    let instruments: QueueInstruments?
    /// Where a stream consumer is; `nil` for other consumers.
    let streamCursor: StreamCursor?
    private let cancelled = Atomic<Bool>(false)

    init(tag: String, channel: Channel, buffer: DeliveryBuffer, ownsChannel: Bool, acknowledgesAutomatically: Bool,
         instruments: QueueInstruments?, streamCursor: StreamCursor? = nil) {
        self.tag = tag
        self.channel = channel
        self.buffer = buffer
        self.ownsChannel = ownsChannel
        self.acknowledgesAutomatically = acknowledgesAutomatically
        self.instruments = instruments
        self.streamCursor = streamCursor
    }

    deinit {
        guard !cancelled.load(ordering: .acquiring) else { return }
        let (channel, tag, ownsChannel) = (channel, tag, ownsChannel)
        channel.forgetConsumer(tag: tag)
        Task { await Self.stop(channel: channel, tag: tag, ownsChannel: ownsChannel) }
    }

    /// Stops deliveries at once, without waiting for the broker: what is buffered is dropped (it returns to the
    /// queue when the channel closes) and the sequence ends; the broker is told to cancel in the background.
    func stopDeliveries() {
        buffer.close()
        guard !cancelled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        channel.forgetConsumer(tag: tag)
        let (channel, tag) = (channel, tag)
        Task { _ = try? await channel.request(.basicCancel(consumerTag: tag)) }
    }

    func cancel() async {
        guard !cancelled.exchange(true, ordering: .acquiringAndReleasing) else { return }
        channel.forgetConsumer(tag: tag)
        // End the sequence first: closing an owned channel would otherwise end it with the channel's error.
        buffer.finish(nil)
        await Self.stop(channel: channel, tag: tag, ownsChannel: ownsChannel)
    }

    private static func stop(channel: Channel, tag: String, ownsChannel: Bool) async {
        if ownsChannel {
            // Closing the channel cancels the consumer and requeues its unacknowledged deliveries at once;
            // it also keeps recovery from re-opening it.
            try? await channel.close()
        } else if channel.isOpen {
            _ = try? await channel.request(.basicCancel(consumerTag: tag))
        }
    }

    private static let tagPrefix = "swift-rabbitmq-\(UInt32.random(in: 0...UInt32.max))"
    private static let tagCounter = Atomic<UInt64>(0)

    /// A consumer tag unique within the process.
    static func makeTag() -> String {
        "\(tagPrefix)-\(tagCounter.add(1, ordering: .relaxed).newValue)"
    }
}
