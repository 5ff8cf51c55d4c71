import ArgumentParser
import RabbitMQ

/// The three workers of the pipeline. Each has its own queue bound to the `orders` exchange, its own prefetch,
/// concurrency limit, retry policy and parking lot, and records its side effect in a table of its own.
enum WorkerKind: String, CaseIterable, Sendable, Hashable, ExpressibleByArgument {
    case coupon
    case notification
    case recommendations

    /// How the worker consumes, and how slow its simulated downstream is.
    var profile: WorkerProfile {
        switch self {
        case .coupon:
            // A coupon service: 8 calls at once, 10 ms each (about 800 orders/s at best).
            WorkerProfile(prefetch: 40, concurrency: 8, downstreamLatency: .milliseconds(10),
                          policy: RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(200), multiplier: 2,
                                              maxDelay: .milliseconds(800)))
        case .notification:
            // A mail gateway: 4 calls at once, 8 ms each (about 500 orders/s at best).
            WorkerProfile(prefetch: 20, concurrency: 4, downstreamLatency: .milliseconds(8),
                          policy: RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(200), multiplier: 2,
                                              maxDelay: .milliseconds(800)))
        case .recommendations:
            // A cache: 16 writes at once, 12 ms each (about 1,300 orders/s at best); fewer attempts, since a stale
            // recommendation is no drama.
            WorkerProfile(prefetch: 100, concurrency: 16, downstreamLatency: .milliseconds(12),
                          policy: RetryPolicy(maxAttempts: 4, initialDelay: .milliseconds(250), multiplier: 2,
                                              maxDelay: .seconds(1)))
        }
    }

    /// The name of the downstream the worker calls, for messages.
    var downstreamName: String {
        switch self {
        case .coupon: "coupon service"
        case .notification: "mail gateway"
        case .recommendations: "recommendation cache"
        }
    }
}

/// The consumer settings and simulated downstream of one worker.
struct WorkerProfile: Sendable {
    /// Deliveries buffered ahead of the handlers.
    var prefetch: UInt16
    /// Handlers running at once.
    var concurrency: Int
    /// How long one call to the downstream takes.
    var downstreamLatency: Duration
    /// Retries with backoff, then the parking lot.
    var policy: RetryPolicy
}

/// Names and declarations of everything the pipeline uses on the broker, derived from one prefix (`orders` by
/// default; tests use a unique prefix so that they run next to each other and next to the demo).
struct PipelineTopology: Sendable {
    /// The topic exchange the order service publishes to; also the prefix of every queue name.
    var exchange: String

    init(prefix: String = "orders") {
        exchange = prefix
    }

    /// The work queue of a worker: `orders.coupon`, `orders.notification`, `orders.recommendations`.
    func queueName(_ kind: WorkerKind) -> String { "\(exchange).\(kind.rawValue)" }

    /// The work queue with its retry tiers and parking lot (`<queue>.retry.200ms`..., `<queue>.dlq`).
    func retry(_ kind: WorkerKind) -> RetryTopology {
        RetryTopology(workQueue: Queue(queueName(kind)), policy: kind.profile.policy)
    }

    /// The exchange, the three queues with their retry tiers and parking lots, and the bindings.
    var topology: Topology {
        Topology {
            Exchange(exchange, type: .topic)
            for kind in WorkerKind.allCases {
                retry(kind).topology
                Binding.queue(queueName(kind), to: exchange, routingKey: OrderPlaced.routingKey)
            }
        }
    }

    /// Every queue name: work queues, retry tiers and parking lots.
    var allQueueNames: [String] { topology.queues.map(\.name) }

    /// Work queues and retry tiers: what must be empty when the pipeline has nothing left to do.
    var pendingQueueNames: [String] {
        WorkerKind.allCases.flatMap { kind in
            let retry = retry(kind)
            return [retry.queueName] + retry.policy.tierDelays.map { retry.tierName(for: $0) }
        }
    }

    /// Declares everything (idempotent).
    func declare(on client: RabbitMQClient) async throws {
        try topology.validate()
        try await client.declare(topology)
    }

    /// Deletes every queue and the exchange, then declares them again: a fresh start.
    func reset(on client: RabbitMQClient) async throws {
        try await delete(on: client)
        try await declare(on: client)
    }

    /// Deletes every queue and the exchange (those that do not exist are skipped).
    func delete(on client: RabbitMQClient) async throws {
        for queue in allQueueNames {
            try await client.deleteQueue(queue)
        }
        try await client.deleteExchange(exchange)
    }
}
