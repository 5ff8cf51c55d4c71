extension RabbitMQClient.Configuration {
    /// How the client reconnects after losing its connection.
    ///
    /// On a lost connection (socket error, missed heartbeats, a broker shutting down) the client reconnects with
    /// exponential backoff and jitter, trying ``RabbitMQClient/Configuration/endpoints`` in a fresh random order, then re-declares
    /// the topology declared through it, re-opens its channels with their prefetch and confirm mode, and
    /// re-registers their consumers, so that consuming sequences and workers carry on. Publishes unconfirmed
    /// when the connection died fail with ``RabbitMQError/Code/connectionLost`` (retryable); publishes and
    /// requests made during the outage wait for the new connection, at most their own timeout.
    public struct Recovery: Sendable, Hashable {
        /// Whether to recover at all. Default `true`.
        public var isEnabled: Bool
        /// Wait before the first reconnection attempt. Default 100 ms.
        public var initialDelay: Duration
        /// Longest wait between attempts. Default 10 s.
        public var maxDelay: Duration
        /// Factor between consecutive waits. Default 2.
        public var multiplier: Double
        /// Largest share (0 to 1) by which a wait is randomly lengthened. Default 0.2.
        public var jitter: Double
        /// Attempts before giving up (each tries every endpoint); `nil` never gives up. Default `nil`.
        public var maxAttempts: Int?

        /// Creates settings; every argument has its documented default.
        public init(isEnabled: Bool = true, initialDelay: Duration = .milliseconds(100),
                    maxDelay: Duration = .seconds(10), multiplier: Double = 2, jitter: Double = 0.2,
                    maxAttempts: Int? = nil) {
            self.isEnabled = isEnabled
            self.initialDelay = initialDelay
            self.maxDelay = maxDelay
            self.multiplier = multiplier
            self.jitter = jitter
            self.maxAttempts = maxAttempts
        }

        /// The wait before reconnection attempt `attempt` (1-based), with jitter.
        func delay(beforeAttempt attempt: Int) -> Duration {
            var milliseconds = Double(initialDelay.wholeMilliseconds)
            let ceiling = Double(maxDelay.wholeMilliseconds)
            for _ in 1..<max(attempt, 1) { milliseconds = min(milliseconds * multiplier, ceiling) }
            milliseconds *= 1 + Double.random(in: 0...max(jitter, 0))
            return .milliseconds(Int64(milliseconds.rounded()))
        }
    }
}
