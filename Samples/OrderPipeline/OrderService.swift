import Foundation
import RabbitMQ
import RabbitMQSQLite
import Synchronization

/// The order service: writes each order and its `OrderPlaced` event in one SQLite transaction (the transactional
/// outbox) and goes on at once, in bursts faster than the workers consume them (the queues absorb the peaks). An
/// ``OutboxRelay`` publishes the events, with confirms: the service never waits for the broker, and an order's
/// event is not lost when the broker is down.
///
/// Some orders are re-sent (the same order id, message id and body, as a client retrying its request writes it
/// twice), some are invalid (a negative amount).
struct OrderService: Sendable {
    /// What to place.
    struct Plan: Sendable {
        /// Orders to place.
        var count: Int
        /// Share of orders (0 to 1) written twice.
        var duplicateRate: Double
        /// Share of orders (0 to 1) with a negative amount.
        var invalidRate: Double
        /// Bursts the orders are placed in.
        var bursts: Int
        /// Time from the start of one burst to the start of the next.
        var burstInterval: Duration
    }

    /// Live counts, read by the progress line.
    final class Progress: Sendable {
        private let counts = Mutex<(published: Int, confirmed: Int, total: Int)>((0, 0, 0))
        /// Events written to the outbox so far, re-sent ones included.
        var published: Int { counts.withLock { $0.published } }
        /// Events the relay has published and the broker confirmed.
        var confirmed: Int { counts.withLock { $0.confirmed } }
        /// Events the order service will write in all, re-sent ones included (0 until it starts).
        var total: Int { counts.withLock { $0.total } }

        func setTotal(_ total: Int) {
            counts.withLock { $0.total = total }
        }

        func add(published: Int = 0) {
            counts.withLock { $0.published += published }
        }

        func setConfirmed(_ confirmed: Int) {
            counts.withLock { $0.confirmed = confirmed }
        }
    }

    /// What was placed.
    struct Result: Sendable {
        /// Distinct orders.
        var orders: Int
        /// Of them, invalid.
        var invalid: Int
        /// Of them, re-sent once more.
        var resent: Int
        /// Events written to the outbox (orders plus re-sent copies).
        var published: Int
        /// Events the relay published and the broker confirmed.
        var confirmed: Int
    }

    let topology: PipelineTopology
    let store: SideEffectStore

    /// A relay for the service's outbox, publishing through `client`.
    func relay(client: RabbitMQClient) -> OutboxRelay {
        OutboxRelay(client: client, store: store.outbox, wakeup: store.outbox.wakeup,
                    configuration: .init(batchSize: 500, retry: .init(initialDelay: .milliseconds(200),
                                                                      maxDelay: .seconds(2))))
    }

    /// Writes the plan's orders, each with its event in one transaction; returns once all are written (not yet
    /// published: that is the relay's work).
    /// - Throws: a database error.
    func place(_ plan: Plan, progress: Progress = Progress()) async throws -> Result {
        let count = max(0, plan.count)
        let invalid = Self.pick(Int((Double(count) * plan.invalidRate).rounded()), of: count)
        let resent = Self.pick(Int((Double(count) * plan.duplicateRate).rounded()), of: count)
        progress.setTotal(count + resent.count)
        let run = UUID().uuidString.prefix(4).lowercased()
        let encoder = OrderPlaced.makeEncoder()

        let bursts = max(1, min(plan.bursts, max(count, 1)))
        let clock = ContinuousClock()
        let start = clock.now
        var next = 0
        for burst in 0..<bursts {
            if burst > 0 { try await clock.sleep(until: start + plan.burstInterval * burst) }
            let end = count * (burst + 1) / bursts
            var copies: [(SideEffectStore.PublishedOrder, OutboxEvent)] = []
            for index in next..<end {
                let order = Self.makeOrder(run: run, index: index, invalid: invalid.contains(index))
                let properties = MessageProperties(contentType: "application/json", messageID: order.orderID,
                                                   timestamp: order.placedAt, type: OrderPlaced.routingKey,
                                                   appID: "order-service")
                // The customer's orders keep their order; different customers' events are published concurrently.
                let event = OutboxEvent(exchange: topology.exchange, routingKey: OrderPlaced.routingKey,
                                        body: try encoder.encode(order), properties: properties,
                                        aggregateKey: order.customerID)
                let entry = SideEffectStore.PublishedOrder(order: order, isValid: order.validationError == nil,
                                                           resent: resent.contains(index))
                try await store.placeOrder(entry, event: event)
                progress.add(published: 1)
                if entry.resent { copies.append((entry, event)) }
            }
            // The re-sent copies are written at the end of the burst, as a client's retried request would be.
            for (entry, event) in copies {
                try await store.placeOrder(entry, event: event)
                progress.add(published: 1)
            }
            next = end
        }
        return Result(orders: count, invalid: invalid.count, resent: resent.count, published: progress.published,
                      confirmed: progress.confirmed)
    }

    /// Waits until the relay has published every event in the outbox, updating `progress`, at most until
    /// `deadline`.
    /// - Throws: ``PipelineError`` when events are still waiting at the deadline.
    func waitUntilPublished(by relay: OutboxRelay, progress: Progress, deadline: ContinuousClock.Instant)
        async throws
    {
        while true {
            progress.setConfirmed(relay.statistics.published)
            let backlog = try await store.outbox.pendingCount()
            if backlog == 0 { return }
            guard ContinuousClock.now < deadline else {
                throw PipelineError("the relay did not publish the outbox in time: \(backlog) events left")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
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
