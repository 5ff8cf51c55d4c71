import Foundation

/// One entry of the `x-death` header RabbitMQ adds when it dead-letters a message (rejected, expired, or
/// dropped for queue length), decoded.
public struct DeathRecord: Sendable, Hashable {
    /// Why the broker dead-lettered the message.
    public struct Reason: RawRepresentable, Sendable, Hashable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        /// Rejected or nacked with `requeue: false`.
        public static let rejected = Reason(rawValue: "rejected")
        /// Its TTL passed.
        public static let expired = Reason(rawValue: "expired")
        /// The queue exceeded its length limit.
        public static let maxLength = Reason(rawValue: "maxlen")
        /// A quorum queue's delivery limit was reached.
        public static let deliveryLimit = Reason(rawValue: "delivery_limit")
    }

    /// The queue it was dead-lettered from.
    public var queue: String
    /// Why.
    public var reason: Reason
    /// How many times it was dead-lettered from this queue for this reason.
    public var count: Int
    /// The exchange it had been published to.
    public var exchange: String
    /// Its routing keys.
    public var routingKeys: [String]
    /// When it was first dead-lettered from this queue for this reason.
    public var time: Date?

    /// Decodes one table of the `x-death` array; `nil` if it is not one.
    public init?(_ table: FieldTable) {
        guard let queue = table["queue"]?.stringValue, let reason = table["reason"]?.stringValue else { return nil }
        self.queue = queue
        self.reason = Reason(rawValue: reason)
        count = table["count"]?.int64Value.map { Int($0) } ?? 0
        exchange = table["exchange"]?.stringValue ?? ""
        routingKeys = table["routing-keys"]?.arrayValue?.compactMap(\.stringValue) ?? []
        if case .timestamp(let date) = table["time"] { time = date }
    }
}

extension Delivery {
    /// The decoded `x-death` header, most recent first (empty if the broker never dead-lettered the message).
    public var deaths: [DeathRecord] {
        properties.headers["x-death"]?.arrayValue?.compactMap { $0.tableValue.flatMap(DeathRecord.init) } ?? []
    }
}
