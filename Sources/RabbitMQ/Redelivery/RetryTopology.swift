import Foundation

/// The queues that give a work queue delayed retries and a parking lot, with names derived from its name:
///
/// - `orders.coupon`: the work queue, dead-lettering to the parking lot (so `reject(requeue: false)` parks);
/// - `orders.coupon.retry.1s`, `orders.coupon.retry.2s`, ...: one tier per distinct delay of the policy; a
///   message waits there for the tier's TTL, then the broker dead-letters it back to the work queue;
/// - `orders.coupon.dlq`: the parking lot, where messages that failed for good wait for a person.
///
/// Declare ``topology`` (also as part of a larger ``Topology``) and pass the value to a ``QueueWorker``.
public struct RetryTopology: Sendable, Hashable {
    /// Header: attempts made so far (a message on its first delivery has none).
    public static let attemptHeader = "x-retry-attempt"
    /// Header: when the message first failed.
    public static let firstFailureHeader = "x-first-failure-at"
    /// Header: the last error, as text.
    public static let lastErrorHeader = "x-last-error"
    /// Header: why the message was parked.
    public static let parkedReasonHeader = "x-parked-reason"
    /// Header: when the message was parked.
    public static let parkedAtHeader = "x-parked-at"
    /// Header: the exchange the message was first published to, recorded when it first moves to a retry tier or
    /// the parking lot (and never changed later), since from then on it is republished through the default
    /// exchange. Read it as ``Delivery/originalExchange``.
    public static let originalExchangeHeader = "x-original-exchange"
    /// Header: the routing key the message was first published with, recorded with ``originalExchangeHeader``.
    /// Read it as ``Delivery/originalRoutingKey``.
    public static let originalRoutingKeyHeader = "x-original-routing-key"

    /// The work queue, with its dead-letter settings pointing at the parking lot.
    public let workQueue: Queue
    /// The retry policy the tiers are made for.
    public let policy: RetryPolicy

    /// Creates the retry topology of `workQueue`. Tier queues get the work queue's type and durability; quorum
    /// tiers dead-letter at least once (``DeadLetterStrategy/atLeastOnce``), so that no retried message is lost
    /// while the work queue fails over. (Classic tiers can only dead-letter at most once.)
    public init(workQueue: Queue, policy: RetryPolicy) {
        var queue = workQueue
        if queue.arguments.deadLetterExchange == nil {
            queue.arguments.deadLetterExchange = ""
            queue.arguments.deadLetterRoutingKey = "\(workQueue.name).dlq"
        }
        self.workQueue = queue
        self.policy = policy
    }

    /// The work queue's name.
    public var queueName: String { workQueue.name }

    /// The parking lot's name: `<queue>.dlq`.
    public var parkingLotName: String { "\(workQueue.name).dlq" }

    /// The name of the tier that holds messages for `delay`: `<queue>.retry.<delay>` (`250ms`, `4s`, `5m`).
    public func tierName(for delay: Duration) -> String {
        "\(workQueue.name).retry.\(Self.label(delay))"
    }

    /// Every queue: the work queue, the tiers, the parking lot.
    public var topology: Topology {
        var topology = Topology()
        topology.add(workQueue)
        for delay in policy.tierDelays {
            var arguments = QueueArguments()
            arguments.type = workQueue.arguments.type == .stream ? .classic : workQueue.arguments.type
            arguments.messageTTL = delay
            arguments.deadLetterExchange = ""
            arguments.deadLetterRoutingKey = workQueue.name
            if arguments.type == .quorum {
                // The broker dead-letters an expired message back to the work queue itself; at most once (the
                // default) drops it when the work queue is failing over at that moment.
                arguments.deadLetterStrategy = .atLeastOnce
                arguments.overflow = .rejectPublish
            }
            topology.add(Queue(tierName(for: delay), durable: workQueue.durable, arguments: arguments))
        }
        var parkingLot = QueueArguments()
        parkingLot.type = workQueue.arguments.type
        topology.add(Queue(parkingLotName, durable: workQueue.durable, arguments: parkingLot))
        return topology
    }

    /// Attempts already made on `delivery` (0 on its first delivery).
    public static func attempts(of delivery: Delivery) -> Int {
        delivery.properties.headers[attemptHeader]?.int64Value.map { Int($0) } ?? 0
    }

    /// Records `delivery`'s ``Delivery/originalExchange`` and ``Delivery/originalRoutingKey`` in `headers`, unless
    /// they hold them already: the first record stands.
    static func recordOriginalRouting(of delivery: Delivery, in headers: inout FieldTable) {
        guard headers[originalExchangeHeader] == nil || headers[originalRoutingKeyHeader] == nil else { return }
        let exchange = delivery.originalExchange
        let routingKey = delivery.originalRoutingKey
        headers[originalExchangeHeader] = .string(exchange)
        headers[originalRoutingKeyHeader] = .string(routingKey)
    }

    static func label(_ delay: Duration) -> String {
        let milliseconds = delay.wholeMilliseconds
        if milliseconds % 60_000 == 0 { return "\(milliseconds / 60_000)m" }
        if milliseconds % 1000 == 0 { return "\(milliseconds / 1000)s" }
        return "\(milliseconds)ms"
    }
}
