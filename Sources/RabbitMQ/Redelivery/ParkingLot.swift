import Foundation

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

    /// Moves parked messages back to their work queue with a fresh attempt count; returns how many moved.
    ///
    /// Each message is republished with confirms and only then removed from the parking lot. Messages that
    /// `predicate` declines stay parked.
    /// - Parameters:
    ///   - retry: the retry topology whose parking lot to replay.
    ///   - limit: most messages to replay.
    ///   - predicate: which messages to replay; all by default.
    @discardableResult
    public func replayParked(in retry: RetryTopology, limit: Int = .max,
                             where predicate: @Sendable (ParkedMessage) -> Bool = { _ in true }) async throws -> Int {
        let channel = try await openChannel()
        var replayed = 0
        do {
            // Only the messages parked when the replay starts: each is looked at once.
            var remaining = Int(try await channel.inspectQueue(retry.parkingLotName).messageCount)
            while remaining > 0, replayed < limit, let delivery = try await channel.get(from: retry.parkingLotName) {
                remaining -= 1
                let message = ParkedMessage(delivery: delivery)
                guard predicate(message) else { continue }
                var properties = delivery.properties
                for header in [RetryTopology.attemptHeader, RetryTopology.firstFailureHeader,
                               RetryTopology.lastErrorHeader, RetryTopology.parkedReasonHeader,
                               RetryTopology.parkedAtHeader, "x-death"] {
                    properties.headers[header] = nil
                }
                try await publish(delivery.body, to: "", routingKey: retry.queueName, properties: properties)
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
