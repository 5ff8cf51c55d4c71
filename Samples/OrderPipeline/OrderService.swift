import Foundation
import RabbitMQ
import Synchronization

/// The order service: publishes `OrderPlaced` events to the `orders` exchange in bursts, with publisher
/// confirms, faster than the workers consume them (the queues absorb the peaks).
///
/// Some orders are re-sent (the same order id, message id and body, as a service does when it missed a
/// confirm), some are invalid (a negative amount). It records every order in the database so that the run
/// can be checked afterwards.
struct OrderService: Sendable {
    /// What to publish.
    struct Plan: Sendable {
        /// Orders to place.
        var count: Int
        /// Share of orders (0 to 1) published twice.
        var duplicateRate: Double
        /// Share of orders (0 to 1) with a negative amount.
        var invalidRate: Double
        /// Bursts the orders are published in.
        var bursts: Int
        /// Time from the start of one burst to the start of the next.
        var burstInterval: Duration
    }

    /// Live counts, read by the progress line.
    final class Progress: Sendable {
        private let counts = Mutex<(published: Int, confirmed: Int, total: Int)>((0, 0, 0))
        /// Messages handed to the channel so far, re-sent ones included.
        var published: Int { counts.withLock { $0.published } }
        /// Messages the broker has confirmed.
        var confirmed: Int { counts.withLock { $0.confirmed } }
        /// Messages the order service will publish in all, re-sent ones included (0 until it starts).
        var total: Int { counts.withLock { $0.total } }

        func setTotal(_ total: Int) {
            counts.withLock { $0.total = total }
        }

        func add(published: Int = 0, confirmed: Int = 0) {
            counts.withLock {
                $0.published += published
                $0.confirmed += confirmed
            }
        }
    }

    /// What was published.
    struct Result: Sendable {
        /// Distinct orders.
        var orders: Int
        /// Of them, invalid.
        var invalid: Int
        /// Of them, re-sent once more.
        var resent: Int
        /// Messages published (orders plus re-sent copies).
        var published: Int
        /// Messages confirmed by the broker.
        var confirmed: Int
    }

    let client: RabbitMQClient
    let topology: PipelineTopology
    let store: SideEffectStore

    /// Publishes the plan's orders; returns once every message is confirmed.
    /// - Throws: a ``RabbitMQError`` when a publish is refused (nack) or not confirmed in time.
    func publish(_ plan: Plan, progress: Progress = Progress()) async throws -> Result {
        let count = max(0, plan.count)
        let invalid = Self.pick(Int((Double(count) * plan.invalidRate).rounded()), of: count)
        let resent = Self.pick(Int((Double(count) * plan.duplicateRate).rounded()), of: count)
        progress.setTotal(count + resent.count)
        let run = UUID().uuidString.prefix(4).lowercased()
        let encoder = OrderPlaced.makeEncoder()

        let channel = try await client.openChannel()
        do {
            try await channel.enableConfirms(window: 500)
            let bursts = max(1, min(plan.bursts, max(count, 1)))
            let clock = ContinuousClock()
            let start = clock.now
            var next = 0
            for burst in 0..<bursts {
                if burst > 0 { try await clock.sleep(until: start + plan.burstInterval * burst) }
                let end = count * (burst + 1) / bursts
                var published: [SideEffectStore.PublishedOrder] = []
                var copies: [(body: Data, properties: MessageProperties)] = []
                for index in next..<end {
                    let order = Self.makeOrder(run: run, index: index, invalid: invalid.contains(index))
                    let body = try encoder.encode(order)
                    let properties = MessageProperties(contentType: "application/json", messageID: order.orderID,
                                                       timestamp: order.placedAt, type: OrderPlaced.routingKey,
                                                       appID: "order-service")
                    _ = try await channel.publishWithDeferredConfirm(body, to: topology.exchange,
                                                                     routingKey: OrderPlaced.routingKey,
                                                                     properties: properties)
                    progress.add(published: 1)
                    published.append(.init(order: order, isValid: order.validationError == nil,
                                           resent: resent.contains(index)))
                    if resent.contains(index) { copies.append((body, properties)) }
                }
                // The re-sent copies go out at the end of the burst, as after a missed confirm.
                for copy in copies {
                    _ = try await channel.publishWithDeferredConfirm(copy.body, to: topology.exchange,
                                                                     routingKey: OrderPlaced.routingKey,
                                                                     properties: copy.properties)
                    progress.add(published: 1)
                }
                try await store.recordPublished(published)
                try await channel.waitForConfirms()
                progress.add(confirmed: published.count + copies.count)
                next = end
            }
        } catch {
            try? await channel.close()
            throw error
        }
        try await channel.close()
        return Result(orders: count, invalid: invalid.count, resent: resent.count, published: progress.published,
                      confirmed: progress.confirmed)
    }

    /// `k` distinct indices in `0..<n`, chosen at random: exact shares, random positions.
    static func pick(_ k: Int, of n: Int) -> Set<Int> {
        Set((0..<n).shuffled().prefix(max(0, min(k, n))))
    }

    static func makeOrder(run: some StringProtocol, index: Int, invalid: Bool) -> OrderPlaced {
        let skus = ["BOOK-042", "MUG-007", "TEA-101", "PEN-300", "LAMP-12", "SOCK-55"]
        let items = (0..<Int.random(in: 1...3)).map { _ in
            OrderPlaced.Item(sku: skus.randomElement()!, quantity: Int.random(in: 1...4))
        }
        let amount = (Double(Int.random(in: 500...25_000)) / 100) * (invalid ? -1 : 1)
        return OrderPlaced(orderID: "ord-\(run)-\(String(format: "%06d", index))",
                           customerID: "cust-\(Int.random(in: 1...2000))", amount: amount, items: items,
                           placedAt: Date())
    }
}
