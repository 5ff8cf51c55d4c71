import Foundation

/// When and how often a failed message is tried again before it is parked.
///
/// Attempt 1 is the first delivery. After failed attempt *n* (for *n* < ``maxAttempts``) the message waits
/// `initialDelay × multiplier^(n−1)`, capped at ``maxDelay`` and shortened by up to ``jitter`` of itself,
/// in the retry tier for that delay, then returns to the work queue. Each distinct delay is one tier queue,
/// so a message due in 1 s never waits behind one due in 60 s.
public struct RetryPolicy: Sendable, Hashable {
    /// Attempts in all, the first delivery included. Default 5.
    public var maxAttempts: Int
    /// Delay after the first failure. Default 1 s.
    public var initialDelay: Duration
    /// Factor between consecutive delays. Default 2.
    public var multiplier: Double
    /// Longest delay. Default 5 min.
    public var maxDelay: Duration
    /// Largest share (0 to 1) by which a delay is randomly shortened, so that messages that failed together
    /// do not all return at once. Default 0.1. Within one tier a message may wait behind others for at most
    /// this share of the tier's delay.
    public var jitter: Double

    /// Creates a policy; every argument has its documented default.
    public init(maxAttempts: Int = 5, initialDelay: Duration = .seconds(1), multiplier: Double = 2,
                maxDelay: Duration = .seconds(300), jitter: Double = 0.1) {
        self.maxAttempts = maxAttempts
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
        self.jitter = jitter
    }

    /// The delay, before jitter, after failed attempt `attempt` (1-based).
    public func delay(afterAttempt attempt: Int) -> Duration {
        let exponent = Double(max(attempt - 1, 0))
        let milliseconds = Double(initialDelay.wholeMilliseconds) * pow(multiplier, exponent)
        let capped = min(milliseconds, Double(maxDelay.wholeMilliseconds))
        return .milliseconds(Int64(capped.rounded()))
    }

    /// The distinct delays the policy can use, shortest first: one retry tier each.
    public var tierDelays: [Duration] {
        guard maxAttempts > 1 else { return [] }
        var delays: [Duration] = []
        for attempt in 1..<maxAttempts {
            let delay = delay(afterAttempt: attempt)
            if delays.last != delay { delays.append(delay) }
        }
        return delays
    }

    /// Checks the values.
    public func validate() throws(RabbitMQError) {
        guard maxAttempts >= 1 else { throw RabbitMQError(.invalidArgument, "maxAttempts must be at least 1") }
        guard initialDelay >= .milliseconds(1), maxDelay >= initialDelay else {
            throw RabbitMQError(.invalidArgument, "delays must be at least 1 ms and maxDelay at least initialDelay")
        }
        guard multiplier >= 1 else { throw RabbitMQError(.invalidArgument, "multiplier must be at least 1") }
        guard (0...1).contains(jitter) else { throw RabbitMQError(.invalidArgument, "jitter must be between 0 and 1") }
    }

    /// The expiration to give a message entering the tier of `delay`: the delay shortened by up to the jitter.
    func jittered(_ delay: Duration) -> Duration {
        guard jitter > 0 else { return delay }
        let milliseconds = Double(delay.wholeMilliseconds) * (1 - Double.random(in: 0...jitter))
        return .milliseconds(max(1, Int64(milliseconds.rounded())))
    }
}
