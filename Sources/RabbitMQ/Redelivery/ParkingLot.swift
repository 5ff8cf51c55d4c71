import Foundation
import Logging

/// A message in a parking lot, with why it is there.
public struct ParkedMessage: Sendable {
    /// The message as delivered from the parking lot.
    public let delivery: Delivery
    /// Why it was parked (`x-parked-reason`), or the broker's dead-letter reason for a rejected message.
    public var reason: String? {
        delivery.properties.headers[RetryTopology.parkedReasonHeader]?.stringValue
            ?? delivery.deaths.first.map { "dead-lettered by the broker: \($0.reason.rawValue) from \($0.queue)" }
    }
    /// Attempts made before it was parked.
    public var attempts: Int { RetryTopology.attempts(of: delivery) }
    /// When it was parked.
    public var parkedAt: Date? {
        if case .timestamp(let date) = delivery.properties.headers[RetryTopology.parkedAtHeader] { return date }
        return nil
    }
    /// The last error, as text.
    public var lastError: String? { delivery.properties.headers[RetryTopology.lastErrorHeader]?.stringValue }
}

extension RabbitMQClient {
    /// Lists up to `limit` messages of the parking lot of `retry` without removing them.
    ///
    /// Messages are fetched unacknowledged and returned to the parking lot when the listing ends, so they come
    /// back marked redelivered and possibly in another order.
    public func parkedMessages(in retry: RetryTopology, limit: Int = 100) async throws -> [ParkedMessage] {
        let channel = try await openChannel()
        var parked: [ParkedMessage] = []
        do {
            let available = Int(try await channel.inspectQueue(retry.parkingLotName).messageCount)
            while parked.count < min(limit, available),
                  let delivery = try await channel.get(from: retry.parkingLotName) {
                parked.append(ParkedMessage(delivery: delivery))
            }
        } catch {
            try? await channel.close()
            throw error
        }
        try await channel.close()
        return parked
    }

    /// Moves parked messages back with a fresh attempt count, through the route `route` chooses; returns how many
    /// moved.
    ///
    /// Each message is republished (mandatory, with confirms) and only then removed from the parking lot. Messages
    /// that `predicate` declines stay parked, and so do messages the route reaches no queue with (an unbound
    /// routing key, a deleted work queue). The retry headers, `x-death` and `x-first-death-*` are removed; the
    /// message's original routing is recorded in ``RetryTopology/originalExchangeHeader`` and
    /// ``RetryTopology/originalRoutingKeyHeader`` if it was not already.
    /// - Parameters:
    ///   - retry: the retry topology whose parking lot to replay.
    ///   - limit: most messages to replay.
    ///   - route: where replayed messages go. Default ``ReplayRoute/originalRouting``: the exchange and routing key
    ///     they were first published with, so the handler sees them as on their first delivery.
    ///   - predicate: which messages to replay; all by default.
    /// - Throws: ``RabbitMQError`` if the parking lot cannot be read or a publish fails for another reason than
    ///   reaching no queue (its exchange no longer exists, say); messages not yet replayed stay parked.
    @discardableResult
    public func replayParked(in retry: RetryTopology, limit: Int = .max, route: ReplayRoute = .originalRouting,
                             where predicate: @Sendable (ParkedMessage) -> Bool = { _ in true }) async throws -> Int {
        let channel = try await openChannel()
        var replayed = 0
        do {
            // Only the messages parked when the replay starts: each is looked at once. One that stays parked is
            // left unacknowledged until the channel closes, so that the next get does not return it again.
            var remaining = Int(try await channel.inspectQueue(retry.parkingLotName).messageCount)
            while remaining > 0, replayed < limit, let delivery = try await channel.get(from: retry.parkingLotName) {
                remaining -= 1
                let message = ParkedMessage(delivery: delivery)
                guard predicate(message) else { continue }
                var properties = delivery.properties
                RetryTopology.recordOriginalRouting(of: delivery, in: &properties.headers)
                for header in [RetryTopology.attemptHeader, RetryTopology.firstFailureHeader,
                               RetryTopology.lastErrorHeader, RetryTopology.parkedReasonHeader,
                               RetryTopology.parkedAtHeader, "x-death", "x-first-death-exchange",
                               "x-first-death-queue", "x-first-death-reason"] {
                    properties.headers[header] = nil
                }
                let (exchange, routingKey) = switch route {
                case .originalRouting: (delivery.originalExchange, delivery.originalRoutingKey)
                case .workQueue: ("", retry.queueName)
                }
                do {
                    try await publish(delivery.body, to: exchange, routingKey: routingKey, properties: properties,
                                      mandatory: true)
                } catch let error as RabbitMQError where error.code == .unroutable {
                    logger.warning("a parked message reaches no queue through its replay route; it stays parked",
                                   metadata: [LogMetadataKey.exchange: "\(exchange)",
                                              LogMetadataKey.routingKey: "\(routingKey)"])
                    continue
                }
                try delivery.ack()
                replayed += 1
            }
        } catch {
            try? await channel.close()
            throw error
        }
        try await channel.close()
        return replayed
    }
}

/// Where ``RabbitMQClient/replayParked(in:limit:route:where:)`` sends parked messages.
public enum ReplayRoute: Sendable, Hashable {
    /// The exchange and routing key each message was first published with (``Delivery/originalExchange``,
    /// ``Delivery/originalRoutingKey``): it reaches the work queue as it did the first time, and so does every
    /// other queue bound to that exchange and key, which gets the message again too. Use ``workQueue`` when
    /// those consumers do not deduplicate.
    case originalRouting
    /// Straight to the work queue through the default exchange: no other queue sees the message again. The
    /// handler sees exchange `""` and the work queue's name as routing key; ``Delivery/originalExchange`` and
    /// ``Delivery/originalRoutingKey`` still tell how it was first routed.
    case workQueue
}
