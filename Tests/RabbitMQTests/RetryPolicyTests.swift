import Testing

@testable import RabbitMQ

/// Runs `body` and returns the ``RabbitMQError`` it threw, or `nil` if it threw nothing.
private func validationError(_ policy: RetryPolicy) -> RabbitMQError? {
    do {
        try policy.validate()
        return nil
    } catch {
        return error
    }
}

private struct PlainError: Error {}

@Suite("Retry policy")
struct RetryPolicyTests {
    @Test func defaultsAreTheDocumentedOnes() {
        let policy = RetryPolicy()
        #expect(policy.maxAttempts == 5)
        #expect(policy.initialDelay == .seconds(1))
        #expect(policy.multiplier == 2)
        #expect(policy.maxDelay == .seconds(300))
        #expect(policy.jitter == 0.1)
        #expect(validationError(policy) == nil)
    }

    @Test func delaysGrowExponentiallyFromTheInitialDelay() {
        let policy = RetryPolicy(maxAttempts: 10, initialDelay: .milliseconds(100), multiplier: 2, jitter: 0)
        #expect(policy.delay(afterAttempt: 1) == .milliseconds(100))
        #expect(policy.delay(afterAttempt: 2) == .milliseconds(200))
        #expect(policy.delay(afterAttempt: 3) == .milliseconds(400))
        #expect(policy.delay(afterAttempt: 4) == .milliseconds(800))
        // Attempt 0 (nothing failed yet) is treated as the first.
        #expect(policy.delay(afterAttempt: 0) == .milliseconds(100))
        let fractional = RetryPolicy(initialDelay: .milliseconds(100), multiplier: 1.5)
        #expect(fractional.delay(afterAttempt: 2) == .milliseconds(150))
        #expect(fractional.delay(afterAttempt: 4) == .milliseconds(338))  // 337.5 rounded
    }

    @Test func delaysAreCappedAtTheMaximum() {
        let policy = RetryPolicy(maxAttempts: 30, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(60))
        #expect(policy.delay(afterAttempt: 6) == .seconds(32))
        #expect(policy.delay(afterAttempt: 7) == .seconds(60))
        #expect(policy.delay(afterAttempt: 29) == .seconds(60))
        // A huge exponent stays capped instead of overflowing.
        #expect(policy.delay(afterAttempt: 5000) == .seconds(60))
    }

    @Test func tierDelaysAreDistinctAndSorted() {
        let policy = RetryPolicy(maxAttempts: 12, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(60))
        #expect(policy.tierDelays == [.seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(16), .seconds(32),
                                      .seconds(60)])
        #expect(Set(policy.tierDelays).count == policy.tierDelays.count)
        #expect(policy.tierDelays == policy.tierDelays.sorted())

        let fourAttempts = RetryPolicy(maxAttempts: 4, initialDelay: .milliseconds(100), multiplier: 2, jitter: 0)
        #expect(fourAttempts.tierDelays == [.milliseconds(100), .milliseconds(200), .milliseconds(400)])
    }

    @Test func tierDelaysOfDegeneratePolicies() {
        #expect(RetryPolicy(maxAttempts: 1).tierDelays.isEmpty)
        // A constant delay needs one tier, however many attempts.
        #expect(RetryPolicy(maxAttempts: 10, initialDelay: .seconds(5), multiplier: 1).tierDelays == [.seconds(5)])
        // Capped from the start: one tier.
        #expect(RetryPolicy(maxAttempts: 6, initialDelay: .seconds(3), multiplier: 3, maxDelay: .seconds(3))
            .tierDelays == [.seconds(3)])
    }

    @Test func everyDelayThePolicyUsesHasATier() {
        let policy = RetryPolicy(maxAttempts: 9, initialDelay: .milliseconds(250), multiplier: 3,
                                 maxDelay: .seconds(90))
        for attempt in 1..<policy.maxAttempts {
            #expect(policy.tierDelays.contains(policy.delay(afterAttempt: attempt)), "attempt \(attempt)")
        }
    }

    @Test func jitterShortensWithinItsShare() {
        let policy = RetryPolicy(jitter: 0.1)
        var seen = Set<Duration>()
        for _ in 0..<1000 {
            let delay = policy.jittered(.seconds(1))
            #expect(delay >= .milliseconds(900) && delay <= .seconds(1), "\(delay)")
            seen.insert(delay)
        }
        // 1000 draws over 101 possible values: a constant result would mean no jitter at all.
        #expect(seen.count > 10)

        let none = RetryPolicy(jitter: 0)
        #expect(none.jittered(.milliseconds(1234)) == .milliseconds(1234))

        let full = RetryPolicy(jitter: 1)
        for _ in 0..<200 {
            let delay = full.jittered(.milliseconds(10))
            // Never zero: a TTL of 0 would expire the message at once.
            #expect(delay >= .milliseconds(1) && delay <= .milliseconds(10), "\(delay)")
        }
    }

    @Test(arguments: [
        RetryPolicy(maxAttempts: 0),
        RetryPolicy(maxAttempts: -3),
        RetryPolicy(initialDelay: .zero),
        RetryPolicy(initialDelay: .microseconds(500)),
        RetryPolicy(initialDelay: .seconds(10), maxDelay: .seconds(5)),
        RetryPolicy(multiplier: 0.5),
        RetryPolicy(jitter: -0.1),
        RetryPolicy(jitter: 1.5),
    ])
    func validateRefusesNonsense(_ policy: RetryPolicy) {
        let error = validationError(policy)
        #expect(error?.code == .invalidArgument, "\(policy)")
    }

    @Test func validateAcceptsBoundaryValues() {
        #expect(validationError(RetryPolicy(maxAttempts: 1)) == nil)
        #expect(validationError(RetryPolicy(initialDelay: .milliseconds(1), maxDelay: .milliseconds(1))) == nil)
        #expect(validationError(RetryPolicy(multiplier: 1)) == nil)
        #expect(validationError(RetryPolicy(jitter: 0)) == nil)
        #expect(validationError(RetryPolicy(jitter: 1)) == nil)
    }
}

@Suite("Retry topology")
struct RetryTopologyTests {
    let retry = RetryTopology(workQueue: Queue("orders.coupon"),
                              policy: RetryPolicy(maxAttempts: 4, initialDelay: .seconds(1), multiplier: 2))

    @Test func namesFollowTheWorkQueue() {
        #expect(retry.queueName == "orders.coupon")
        #expect(retry.parkingLotName == "orders.coupon.dlq")
        #expect(retry.tierName(for: .seconds(4)) == "orders.coupon.retry.4s")
        #expect(retry.tierName(for: .milliseconds(250)) == "orders.coupon.retry.250ms")
        #expect(retry.tierName(for: .seconds(300)) == "orders.coupon.retry.5m")
        #expect(retry.tierName(for: .seconds(60)) == "orders.coupon.retry.1m")
        #expect(retry.tierName(for: .seconds(90)) == "orders.coupon.retry.90s")
        #expect(retry.tierName(for: .milliseconds(1500)) == "orders.coupon.retry.1500ms")
    }

    @Test func distinctDelaysHaveDistinctTierNames() {
        let policy = RetryPolicy(maxAttempts: 20, initialDelay: .milliseconds(7), multiplier: 1.7,
                                 maxDelay: .seconds(600))
        let names = policy.tierDelays.map { retry.tierName(for: $0) }
        #expect(Set(names).count == policy.tierDelays.count)
    }

    @Test func workQueueDeadLettersToTheParkingLot() {
        #expect(retry.workQueue.arguments.deadLetterExchange == "")
        #expect(retry.workQueue.arguments.deadLetterRoutingKey == "orders.coupon.dlq")
        #expect(retry.workQueue.declareArguments["x-dead-letter-exchange"] == .string(""))
        #expect(retry.workQueue.declareArguments["x-dead-letter-routing-key"] == .string("orders.coupon.dlq"))
    }

    @Test func anExistingDeadLetterExchangeIsKept() {
        var arguments = QueueArguments()
        arguments.deadLetterExchange = "orders.dead"
        let custom = RetryTopology(workQueue: Queue("orders.coupon", arguments: arguments), policy: RetryPolicy())
        #expect(custom.workQueue.arguments.deadLetterExchange == "orders.dead")
        #expect(custom.workQueue.arguments.deadLetterRoutingKey == nil)
    }

    @Test func topologyHoldsWorkQueueTiersAndParkingLot() throws {
        let topology = retry.topology
        #expect(topology.queues.map(\.name) == [
            "orders.coupon", "orders.coupon.retry.1s", "orders.coupon.retry.2s", "orders.coupon.retry.4s",
            "orders.coupon.dlq",
        ])
        #expect(topology.exchanges.isEmpty)
        #expect(topology.bindings.isEmpty)
        for (index, delay) in [Duration.seconds(1), .seconds(2), .seconds(4)].enumerated() {
            let tier = topology.queues[index + 1]
            #expect(tier.arguments.messageTTL == delay)
            #expect(tier.arguments.deadLetterExchange == "")
            #expect(tier.arguments.deadLetterRoutingKey == "orders.coupon")
            #expect(tier.durable)
        }
        let parkingLot = try #require(topology.queues.last)
        #expect(parkingLot.arguments.messageTTL == nil)
        #expect(parkingLot.arguments.deadLetterExchange == nil)
        try topology.validate()
    }

    @Test func tiersTakeTheWorkQueuesTypeAndDurability() throws {
        let quorum = RetryTopology(workQueue: Queue("q", arguments: QueueArguments(type: .quorum)),
                                   policy: RetryPolicy(maxAttempts: 2))
        #expect(quorum.topology.queues.allSatisfy { $0.arguments.type == .quorum })
        try quorum.topology.validate()

        let stream = RetryTopology(workQueue: Queue("s", arguments: QueueArguments(type: .stream)),
                                   policy: RetryPolicy(maxAttempts: 2))
        let streamTiers = stream.topology.queues.filter { $0.name.contains(".retry.") }
        #expect(streamTiers.count == 1)
        #expect(streamTiers.allSatisfy { $0.arguments.type == .classic })

        let transient = RetryTopology(workQueue: Queue("t", durable: false), policy: RetryPolicy(maxAttempts: 3))
        #expect(transient.topology.queues.allSatisfy { !$0.durable })
    }

    /// The broker dead-letters an expired retry back to the work queue; a quorum tier does so at least once, so
    /// that a retry is not dropped while the work queue fails over (seen in the chaos soak).
    @Test func quorumTiersDeadLetterAtLeastOnce() throws {
        let quorum = RetryTopology(workQueue: Queue("q", arguments: QueueArguments(type: .quorum)),
                                   policy: RetryPolicy(maxAttempts: 3))
        let tiers = quorum.topology.queues.filter { $0.name.contains(".retry.") }
        #expect(tiers.count == 2)
        for tier in tiers {
            #expect(tier.declareArguments["x-dead-letter-strategy"] == .string("at-least-once"))
            #expect(tier.declareArguments["x-overflow"] == .string("reject-publish"))
        }
        // The work queue and the parking lot are the application's to configure.
        #expect(quorum.workQueue.arguments.deadLetterStrategy == nil)
        #expect(quorum.topology.queues.last?.arguments.deadLetterStrategy == nil)
        // Classic queues dead-letter at most once, whatever they are told.
        #expect(retry.topology.queues.allSatisfy { $0.arguments.deadLetterStrategy == nil && $0.arguments.overflow == nil })
    }

    @Test func noRetriesMeansNoTiers() {
        let once = RetryTopology(workQueue: Queue("once"), policy: RetryPolicy(maxAttempts: 1))
        #expect(once.topology.queues.map(\.name) == ["once", "once.dlq"])
    }
}

@Suite("Failure classification")
struct FailureClassifierTests {
    @Test func errorsClassifyThemselves() {
        let classifier = FailureClassifier()
        #expect(classifier.disposition(of: RetryableError("timeout")) == .retry)
        #expect(classifier.disposition(of: NonRetryableError("bad input")) == .park)
        #expect(classifier.disposition(of: RabbitMQError(.timeout, "slow", isRetryable: true)) == .retry)
        #expect(classifier.disposition(of: RabbitMQError(.invalidArgument, "bad", isRetryable: false)) == .park)
    }

    @Test func unclassifiedErrorsGetTheDefault() {
        #expect(FailureClassifier().defaultDisposition == .retry)
        #expect(FailureClassifier().disposition(of: PlainError()) == .retry)
        #expect(FailureClassifier(defaultDisposition: .park).disposition(of: PlainError()) == .park)
        // The default does not override an error's own classification.
        #expect(FailureClassifier(defaultDisposition: .park).disposition(of: RetryableError("x")) == .retry)
    }

    @Test func theUsersRuleWinsOverTheErrorsOwn() {
        let classifier = FailureClassifier { error in
            if error is RetryableError { return .park }
            if error is NonRetryableError { return .retry }
            return nil
        }
        #expect(classifier.disposition(of: RetryableError("x")) == .park)
        #expect(classifier.disposition(of: NonRetryableError("x")) == .retry)
    }

    @Test func aUserRuleReturningNilDefers() {
        let classifier = FailureClassifier(defaultDisposition: .park) { _ in nil }
        #expect(classifier.disposition(of: RetryableError("x")) == .retry)
        #expect(classifier.disposition(of: NonRetryableError("x")) == .park)
        #expect(classifier.disposition(of: PlainError()) == .park)
    }

    @Test func readyMadeErrorsDescribeThemselves() {
        #expect(String(describing: NonRetryableError("bad input")) == "bad input")
        #expect(String(describing: RetryableError("timeout")) == "timeout")
        #expect(!NonRetryableError("x").isRetryable)
        #expect(RetryableError("x").isRetryable)
    }
}
