import RabbitMQ

/// A stand-in for the service a worker calls (coupon service, mail gateway, recommendation cache): it takes
/// a little time, and times out at a configurable rate.
///
/// A timeout is a transient failure: the worker throws ``RetryableError`` and the message comes back after the
/// retry policy's backoff. So that the demo can prove every valid order gets its side effect, the simulated
/// downstream never times out on the last attempt the policy allows; real downstreams make no such promise,
/// and a message that fails every attempt is parked with "failed N attempts" as its reason.
struct SimulatedDownstream: Sendable {
    /// Its name, for error messages.
    var name: String
    /// How long a call takes.
    var latency: Duration
    /// Chance (0 to 1) that a call times out.
    var timeoutRate: Double
    /// The last attempt the worker's retry policy allows.
    var lastAttempt: Int

    init(kind: WorkerKind, timeoutRate: Double) {
        name = kind.downstreamName
        latency = kind.profile.downstreamLatency
        self.timeoutRate = timeoutRate
        lastAttempt = kind.profile.policy.maxAttempts
    }

    /// Calls the downstream for `order`, attempt `attempt` (1-based).
    /// - Throws: ``RetryableError`` when the call times out.
    func call(for order: OrderPlaced, attempt: Int) async throws {
        try await Task.sleep(for: latency)
        if attempt < lastAttempt, timeoutRate > 0, Double.random(in: 0..<1) < timeoutRate {
            throw RetryableError("\(name) timed out for order \(order.orderID) (attempt \(attempt))")
        }
    }
}
