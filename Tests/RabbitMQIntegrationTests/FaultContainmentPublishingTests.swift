import Foundation
import RabbitMQ
import RabbitMQTestSupport
import Testing

/// One fault stays with the operation that caused it (issue 14): timeouts are hard bounds during an outage, the
/// call after a connection-level error waits for recovery, one task's bad publish does not fail the others', and a
/// confirm channel that keeps nacking is replaced. Against a real broker; outcomes are checked at the broker.
@Suite("Fault containment: publishing and timeouts", .serialized)
struct FaultContainmentPublishingTests {
    /// How long a call may take past its own timeout before the test calls it hung: a generous guard for a loaded
    /// 2-core machine, far below the outage, so that a call waiting for recovery shows up as hung.
    static let hangGuard: Duration = .seconds(12)

    // MARK: Scenario 3: timeouts are hard bounds

    @Test("Publishes and requests made while the broker is down fail at their deadline, not when recovery ends")
    func timeoutsHoldDuringAnOutage() async throws {
        try await DedicatedBroker.with(name: "t-h2-outage", port: 5821) { broker in
            var configuration = try broker.configuration
            configuration.connectionName = "h2 outage"
            configuration.confirmTimeout = .seconds(3)
            configuration.connectTimeout = .seconds(2)
            configuration.handshakeTimeout = .seconds(2)
            configuration.requestTimeout = .seconds(3)
            configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
            try await TestBroker.withClient(configuration: configuration) { client in
                let queue = TestBroker.uniqueName("h2.outage")
                try await client.declare(Queue(queue))
                let confirmed = Locked<Set<String>>([])
                for index in 0..<10 {
                    let id = "before-\(index)"
                    try await client.publish(Data(id.utf8), routingKey: queue,
                                             properties: RecoveryHarness.properties(id: id))
                    confirmed.withLock { _ = $0.insert(id) }
                }

                try await broker.rabbitmqctl("stop_app")
                let outageStarted = ContinuousClock.now
                // Each call's own timeout: 3 s for a publish (confirmTimeout), 7 s for a request (connect + handshake
                // + request timeouts, waiting for the connection). The broker stays down for 25 s.
                let outcomes = await withTaskGroup(of: (String, Bounded<Void>, Duration).self) { group in
                    for index in 0..<20 {
                        group.addTask {
                            let id = "outage-\(index)"
                            let started = ContinuousClock.now
                            let outcome = await Bounded.run(.seconds(3) + Self.hangGuard) {
                                try await client.publish(Data(id.utf8), routingKey: queue,
                                                         properties: RecoveryHarness.properties(id: id))
                            }
                            return ("publish \(id)", outcome, ContinuousClock.now - started)
                        }
                    }
                    for index in 0..<5 {
                        group.addTask {
                            let started = ContinuousClock.now
                            let outcome = await Bounded.run(.seconds(7) + Self.hangGuard) {
                                _ = try await client.inspectQueue(queue)
                            }
                            return ("queueInfo \(index)", outcome, ContinuousClock.now - started)
                        }
                    }
                    var outcomes: [(String, Bounded<Void>, Duration)] = []
                    for await outcome in group { outcomes.append(outcome) }
                    return outcomes
                }
                let downFor = ContinuousClock.now - outageStarted
                try await Task.sleep(until: outageStarted + .seconds(25), clock: .continuous)
                try await broker.rabbitmqctl("start_app")

                // Every call returned, with a retryable error (a timeout), while the broker was still down.
                var hung: [String] = []
                var wrong: [String] = []
                for (name, outcome, _) in outcomes {
                    switch outcome {
                    case .timedOut: hung.append(name)
                    case .error(let error as RabbitMQError) where error.code == .timeout && error.isRetryable: break
                    default: wrong.append("\(name): \(outcome)")
                    }
                }
                #expect(hung.isEmpty, "\(hung.count) calls did not return within their timeout + \(Self.hangGuard)")
                #expect(wrong.isEmpty, "calls that did not time out: \(wrong.prefix(3))")
                let durations = outcomes.map { $0.2 }
                print("[fault containment] outage: \(outcomes.count) calls returned after "
                      + "\(durations.min().map { "\($0)" } ?? "-") to \(durations.max().map { "\($0)" } ?? "-") "
                      + "(all of them \(downFor) after the outage began); \(hung.count) hung")

                // Publishing works again after recovery; the queue holds every confirmed message and nothing
                // from the outage (those publishes were never sent).
                for index in 0..<10 {
                    let id = "after-\(index)"
                    let sent = try await eventually(timeout: .seconds(60)) {
                        try await client.publish(Data(id.utf8), routingKey: queue,
                                                 properties: RecoveryHarness.properties(id: id))
                        return true
                    }
                    if sent { confirmed.withLock { _ = $0.insert(id) } }
                }
                let expected = confirmed.withLock { $0 }
                #expect(expected.count == 20, "publishing did not resume after the outage")
                let stats = try #require(try await broker.queueStats(queue))
                let received = try await RecoveryHarness.drain(queue, count: stats.ready + stats.unacked,
                                                               client: client)
                #expect(expected.isSubset(of: received.ids), "lost: \(expected.subtracting(received.ids).sorted())")
                #expect(!received.ids.contains { $0.hasPrefix("outage-") }, "an outage publish reached the queue")
                try await client.deleteQueue(queue)
            }
        }
    }

    // MARK: Scenario 5: the call after a connection-level error

    @Test("After a call makes the broker close the connection, the next calls wait for recovery")
    func callsAfterAConnectionErrorWaitForRecovery() async throws {
        try await TestBroker.withClient(configure: { configuration in
            configuration.recovery = .init(initialDelay: .milliseconds(50), maxDelay: .seconds(1))
        }) { client in
            let queue = TestBroker.uniqueName("h2.after503")
            try await client.declare(Queue(queue))
            // Publishes in flight all along, on the shared confirm channel: collateral damage of each 503.
            let ledger = PublishLedger()
            let publishers = PublisherGroup.start(ledger: ledger) { group, limits in
                for task in 0..<2 {
                    group.addTask {
                        await RecoveryHarness.publishOneByOne(client, routingKey: queue, prefix: "bg\(task)",
                                                              ledger: ledger, limits: limits)
                    }
                }
            }
            var culpritErrors: [String] = []
            var nextCallErrors: [String] = []
            let rounds = 10
            for round in 0..<rounds {
                do {
                    try await client.declare(Exchange(TestBroker.uniqueName("h2.badtype"), type: "x-no-such-type"))
                    culpritErrors.append("round \(round): the declaration succeeded")
                } catch let error as RabbitMQError {
                    if error.code != .connectionClosed || error.replyCode != 503 || error.isRetryable
                        || error.isCollateral {
                        culpritErrors.append("round \(round): \(error.debugDescription)")
                    }
                }
                // The very next calls, made at once.
                do {
                    try await client.declare(Queue(queue))
                } catch {
                    nextCallErrors.append("round \(round) declare: \(error)")
                }
                let id = "next-\(round)"
                do {
                    try await client.publish(Data(id.utf8), routingKey: queue, properties: RecoveryHarness.properties(id: id))
                    ledger.record(id, .confirmed)
                } catch {
                    nextCallErrors.append("round \(round) publish: \(error)")
                }
            }
            await publishers.stop()

            #expect(culpritErrors.isEmpty, "the failing declarations: \(culpritErrors.prefix(3))")
            #expect(nextCallErrors.isEmpty,
                    "\(nextCallErrors.count) of \(2 * rounds) next calls failed: \(nextCallErrors.prefix(3))")
            // In-flight publishes failed, if at all, as retryable collateral damage, never with the 503.
            let charged = ledger.failures.filter { !$0.isRetryable || $0.replyCode == 503 }
            #expect(charged.isEmpty, "publishes charged with another call's error: \(charged.prefix(3))")
            #expect(ledger.problems.isEmpty, "publishes that hung: \(ledger.problems.prefix(3))")
            let confirmed = ledger.confirmedIDs
            let received = try await RecoveryHarness.drain(queue, count: confirmed.count, client: client)
            #expect(confirmed.isSubset(of: received.ids), "lost: \(confirmed.subtracting(received.ids).prefix(5))")
            print("[fault containment] after 503: \(rounds) rounds, \(nextCallErrors.count) next calls failed; "
                  + "background publishes: \(ledger.summary)")
            try await client.deleteQueue(queue)
        }
    }

    // MARK: Scenario 4: one task's bad publish

    /// A direct exchange bound to a new queue with routing key `k`, declared by another client so that `client`
    /// has not seen it.
    static func declareElsewhere(exchange: String, queue: String) async throws {
        _ = try await TestBroker.withClient(name: "h2 topology") { other in
            try await other.declare(Topology {
                Exchange(exchange, type: .direct, durable: false)
                Queue(queue)
                Binding.queue(queue, to: exchange, routingKey: "k")
            })
        }
    }

    /// Publishes `count` numbered messages to `exchange` from as many tasks, and one to `badExchange` from another
    /// task started in the middle; returns the outcomes of the good ones by id, and the bad one's.
    static func publishWithOneBad(_ client: RabbitMQClient, count: Int, exchange: String, badExchange: String)
        async -> (good: [String: Result<Void, RabbitMQError>], bad: Result<Void, RabbitMQError>?)
    {
        await withTaskGroup(of: (String?, Result<Void, RabbitMQError>).self) { group in
            for index in 0..<count {
                group.addTask {
                    let id = "good-\(index)"
                    do {
                        try await client.publish(Data(id.utf8), to: exchange, routingKey: "k",
                                                 properties: RecoveryHarness.properties(id: id))
                        return (id, .success(()))
                    } catch let error as RabbitMQError {
                        return (id, .failure(error))
                    } catch {
                        return (id, .failure(RabbitMQError(.invalidArgument, "not a RabbitMQError: \(error)")))
                    }
                }
                if index == count / 2 {
                    group.addTask {
                        do {
                            try await client.publish(Data("bad".utf8), to: badExchange, routingKey: "k")
                            return (nil, .success(()))
                        } catch let error as RabbitMQError {
                            return (nil, .failure(error))
                        } catch {
                            return (nil, .failure(RabbitMQError(.invalidArgument, "not a RabbitMQError: \(error)")))
                        }
                    }
                }
            }
            var good: [String: Result<Void, RabbitMQError>] = [:]
            var bad: Result<Void, RabbitMQError>?
            for await (id, outcome) in group {
                if let id { good[id] = outcome } else { bad = outcome }
            }
            return (good, bad)
        }
    }

    @Test("A publish to a missing exchange fails alone with its 404; 200 concurrent publishes are confirmed")
    func aPublishToAMissingExchangeFailsAlone() async throws {
        try await TestBroker.withClient { client in
            let exchange = TestBroker.uniqueName("h2.x")
            let queue = TestBroker.uniqueName("h2.q")
            try await Self.declareElsewhere(exchange: exchange, queue: queue)
            let missing = TestBroker.uniqueName("h2.missing")
            let (good, bad) = await Self.publishWithOneBad(client, count: 200, exchange: exchange, badExchange: missing)

            let badError = try #require(bad.flatMap { if case .failure(let error) = $0 { error } else { nil } },
                                        "the publish to a missing exchange did not fail: \(String(describing: bad))")
            #expect(badError.code == .channelClosed && badError.replyCode == 404 && !badError.isRetryable
                        && !badError.isCollateral, "\(badError.debugDescription)")
            let failed = good.compactMap { id, outcome in if case .failure(let error) = outcome { "\(id): \(error)" } else { nil } }
            #expect(failed.isEmpty, "\(failed.count) of 200 good publishes failed, e.g. \(failed.prefix(2))")
            let received = try await RecoveryHarness.drain(queue, count: 200, client: client)
            #expect(received.ids == Set(good.keys), "the queue holds \(received.ids.count) of 200")
            print("[fault containment] missing exchange: \(200 - failed.count) of 200 confirmed, "
                  + "\(received.ids.count) in the queue; the bad one: \(badError)")
            try await client.deleteQueue(queue)
            try await client.deleteExchange(exchange)
        }
    }

    @Test("When the broker still closes the shared channel, the other publishes are confirmed or fail as collateral")
    func aDeletedExchangeOnlyCostsOthersARetry() async throws {
        try await TestBroker.withClient { client in
            let exchange = TestBroker.uniqueName("h2.x")
            let queue = TestBroker.uniqueName("h2.q")
            let doomed = TestBroker.uniqueName("h2.doomed")
            try await Self.declareElsewhere(exchange: exchange, queue: queue)
            try await client.declare(Exchange(doomed, type: .direct, durable: false))
            try await client.inspectExchange(exchange)  // both now known to the client: no check before publishing
            try await TestBroker.withClient(name: "h2 deleter") { other in try await other.deleteExchange(doomed) }

            let (good, bad) = await Self.publishWithOneBad(client, count: 200, exchange: exchange, badExchange: doomed)

            let badError = try #require(bad.flatMap { if case .failure(let error) = $0 { error } else { nil } },
                                        "the publish to a deleted exchange did not fail: \(String(describing: bad))")
            #expect(badError.replyCode == 404 && !badError.isRetryable && !badError.isCollateral,
                    "\(badError.debugDescription)")
            var collateral = 0
            var charged: [String] = []
            for (id, outcome) in good {
                guard case .failure(let error) = outcome else { continue }
                if error.isCollateral, error.isRetryable, error.replyCode == nil, error.cause?.replyCode == 404 {
                    collateral += 1
                } else {
                    charged.append("\(id): \(error.debugDescription)")
                }
            }
            #expect(charged.isEmpty, "\(charged.count) good publishes failed otherwise, e.g. \(charged.prefix(2))")
            let confirmed = Set(good.compactMap { id, outcome in if case .success = outcome { id } else { nil } })
            let stats = try #require(try await TestBroker.queueStats(queue))
            let received = try await RecoveryHarness.drain(queue, count: stats.ready, client: client)
            #expect(confirmed.isSubset(of: received.ids), "lost: \(confirmed.subtracting(received.ids).prefix(5))")

            // The client now knows the exchange is missing: the next publish to it fails alone again, before
            // reaching the shared channel, and the others go on.
            await #expect(throws: RabbitMQError.self) {
                try await client.publish(Data("bad again".utf8), to: doomed, routingKey: "k")
            }
            try await client.publish(Data("after".utf8), to: exchange, routingKey: "k")
            print("[fault containment] deleted exchange: \(confirmed.count) of 200 confirmed, \(collateral) failed "
                  + "as retryable collateral, \(charged.count) otherwise; \(received.ids.count) in the queue")
            try await client.deleteQueue(queue)
            try await client.deleteExchange(exchange)
        }
    }

    // MARK: Scenario 7: a confirm channel that keeps nacking

    /// The numbers of `connection`'s channels in confirm mode, as the broker lists them.
    static func confirmChannels(of connectionName: String) async throws -> Set<Int> {
        let pids = Set(try await TestBroker.connectionPIDs(named: connectionName))
        let output = try await TestBroker.rabbitmqctl("list_channels", "connection", "number", "confirm",
                                                      "--no-table-headers")
        var numbers: Set<Int> = []
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 3, pids.contains(String(fields[0])), fields[2] == "true",
                  let number = Int(fields[1]) else { continue }
            numbers.insert(number)
        }
        return numbers
    }

    @Test("After a run of nacks the shared confirm channel is replaced; nacked publishes fail as retryable")
    func aChannelThatKeepsNackingIsReplaced() async throws {
        let connectionName = "test h2 nacks \(UUID().uuidString.prefix(6))"
        try await TestBroker.withClient(configure: { $0.connectionName = connectionName }) { client in
            // A full queue that refuses publishes stands in for the recovered channel of the failover report:
            // the broker nacks every publish, and the test sees what the client does about a run of nacks.
            let queue = TestBroker.uniqueName("h2.full")
            try await client.declare(Queue(queue, arguments: QueueArguments(maxLength: 1, overflow: .rejectPublish)))
            try await client.publish(Data("first".utf8), routingKey: queue)
            let before = try await Self.confirmChannels(of: connectionName)
            try #require(before.count == 1, "confirm channels before: \(before)")

            var nacks: [RabbitMQError] = []
            var others: [String] = []
            for index in 0..<25 {
                do {
                    try await client.publish(Data("refused-\(index)".utf8), routingKey: queue)
                    others.append("\(index): confirmed")
                } catch let error as RabbitMQError where error.code == .publishNacked {
                    nacks.append(error)
                } catch {
                    others.append("\(index): \(error)")
                }
            }
            #expect(others.isEmpty, "publishes not nacked: \(others.prefix(3))")
            let notRetryable = nacks.filter { !$0.isRetryable }
            #expect(notRetryable.isEmpty, "nacks must be retryable")
            var after: Set<Int> = []
            let replaced = try await eventually {
                after = try await Self.confirmChannels(of: connectionName)
                return after.count == 1 && after.isDisjoint(with: before)
            }
            #expect(replaced, "confirm channel \(before) was not replaced after \(nacks.count) nacks: now \(after)")

            // With room again, publishing goes on.
            try await client.purgeQueue(queue)
            try await client.publish(Data("after".utf8), routingKey: queue)
            #expect(try await TestBroker.messageCount(queue) == 1)
            print("[fault containment] nacks: \(nacks.count) nacked, confirm channel \(before) -> \(after)")
            try await client.deleteQueue(queue)
        }
    }
}
