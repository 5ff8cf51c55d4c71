import Foundation
import RabbitMQ
import Synchronization
import RabbitMQTestSupport
import Testing

/// Automatic recovery across a restart of the broker node: `rabbitmqctl stop_app`/`start_app`, and a hard kill
/// (SIGKILL of the node's VM) followed by a restart on the same data. Each test starts a node of its own.
@Suite("Recovery across broker restarts", .serialized)
struct RecoveryTests {
    /// How the node is taken down and brought back.
    enum Restart: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// `rabbitmqctl stop_app`, then `start_app`: the broker closes connections with 320 CONNECTION_FORCED.
        case stopApp
        /// `broker.sh kill` (SIGKILL), then `broker.sh restart`: sockets die without a word.
        case hardKill

        var testDescription: String { rawValue }

        /// Restarts `broker`'s node this way.
        func perform(on broker: DedicatedBroker) async throws {
            switch self {
            case .stopApp:
                try await broker.rabbitmqctl("stop_app")
                try await broker.rabbitmqctl("start_app")
            case .hardKill:
                // RabbitMQ 3.10 keeps queue definitions in Mnesia, whose transaction log can still sit in the
                // broker's memory seconds after a declare: a kill -9 then loses the durable queue itself ("Recovering
                // 0 queues" after the restart), and with it every confirmed message. The test is about the client's
                // confirms, not that window of the broker's, so the definitions go to disk before the kill.
                try await broker.rabbitmqctl("eval", "mnesia:dump_log().")
                try await RecoveryHarness.brokerScript("kill", broker.name)
                try await RecoveryHarness.brokerScript("restart", broker.name)
            }
        }
    }

    /// The client configuration of these tests: the node's endpoint, quick reconnection attempts, and a confirm
    /// timeout longer than a restart, so that publishes made during the outage can wait for the new connection.
    static func configuration(_ broker: DedicatedBroker, name: String) throws -> RabbitMQClient.Configuration {
        var configuration = try broker.configuration
        configuration.connectionName = name
        configuration.confirmTimeout = .seconds(30)
        configuration.recovery = RecoveryConfiguration(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
        return configuration
    }

    @Test("Every publish is confirmed or fails, and every confirmed message survives the restart",
          arguments: Restart.allCases)
    func publishingAcrossARestart(_ restart: Restart) async throws {
        let (name, port) = restart == .stopApp ? ("t-recov-pub-stop", 5761) : ("t-recov-pub-kill", 5762)
        try await DedicatedBroker.with(name: name, port: port) { broker in
            let configuration = try Self.configuration(broker, name: "recovery publishing \(restart)")
            try await RecoveryHarness.withClient(configuration) { client in
                let queue = TestBroker.uniqueName("recovery.pub")
                try await client.declare(Queue(queue, arguments: QueueArguments(type: .classic)))
                let events = EventLog.watching(client)
                let ledger = PublishLedger()
                let windowed = try await client.openChannel()
                try await windowed.enableConfirms(window: 64)
                let publishers = PublisherGroup.start(ledger: ledger) { group, limits in
                    // Three tasks through the client's shared confirm channel, one through a windowed channel.
                    for task in 0..<3 {
                        group.addTask {
                            await RecoveryHarness.publishOneByOne(client, routingKey: queue, prefix: "c\(task)",
                                                                  ledger: ledger, limits: limits)
                        }
                    }
                    group.addTask {
                        await RecoveryHarness.publishWindowed(windowed, routingKey: queue, prefix: "w",
                                                              ledger: ledger, limits: limits)
                    }
                }
                let warmedUp = await RecoveryHarness.eventually(timeout: .seconds(30)) { ledger.confirmedCount >= 200 }
                let confirmedBefore = ledger.confirmedCount
                let restartStarted = ContinuousClock.now
                var restartError: (any Error)?
                if warmedUp {
                    do { try await restart.perform(on: broker) } catch { restartError = error }
                }
                let restartEnded = ContinuousClock.now
                // Keep publishing for a bit on the recovered connection.
                let confirmedAtRestart = ledger.confirmedCount
                let resumed = await RecoveryHarness.eventually(timeout: .seconds(60)) {
                    ledger.confirmedCount >= confirmedAtRestart + 300
                }
                await publishers.stop()
                try #require(warmedUp, "publishing did not start: \(ledger.summary)")
                #expect(restartError == nil, "restarting the node failed: \(String(describing: restartError))")
                #expect(resumed, "publishing did not resume after the restart: \(ledger.summary)")

                // Every publish was confirmed or failed with a RabbitMQError; none hung.
                #expect(ledger.problems.isEmpty, "publishes that hung or failed oddly: \(ledger.problems.prefix(5))")
                let nonRetryable = ledger.failures.filter { !$0.isRetryable }
                #expect(nonRetryable.isEmpty, "non-retryable failures: \(nonRetryable.prefix(3))")
                let unexpectedCodes = ledger.failures.filter {
                    ![.connectionLost, .connectionClosed, .timeout].contains($0.code)
                }
                #expect(unexpectedCodes.isEmpty, "failures with unexpected codes: \(unexpectedCodes.prefix(3))")

                // Every confirmed message is in the queue.
                let confirmed = ledger.confirmedIDs
                let stats = try #require(try await broker.queueStats(queue), "the durable queue is gone")
                #expect(stats.ready >= confirmed.count,
                        "the broker holds \(stats.ready) of \(confirmed.count) confirmed messages")
                let received = try await RecoveryHarness.drain(queue, count: stats.ready + stats.unacked,
                                                               client: client)
                let lost = confirmed.subtracting(received.ids)
                #expect(lost.isEmpty, "\(lost.count) confirmed messages lost, e.g. \(lost.sorted().prefix(5))")
                #expect(received.duplicates == 0, "\(received.duplicates) messages are in the queue twice")
                let unknown = received.ids.subtracting(ledger.attemptedIDs)
                #expect(unknown.isEmpty, "messages never published: \(unknown.prefix(5))")

                // The connection was lost, then recovered.
                #expect(events.sawLostThenRecovered(), "events: \(events.summary)")
                #expect(events.recoveredCount == 1, "events: \(events.summary)")

                print("""
                    [recovery] \(restart): confirmed \(confirmedBefore) before the restart, \(confirmed.count) in \
                    all; \(ledger.failures.count) failed (\(ledger.failureCodes)); restart took \
                    \(restartEnded - restartStarted); recovered \(events.recoveryDelay(after: restartStarted)
                    .map { "\($0)" } ?? "never") after it began; \(received.ids.count) in the queue, \
                    \(received.ids.count - confirmed.count) of them unconfirmed
                    """)
                try await client.deleteQueue(queue)
            }
        }
    }

    @Test("Consumers resume with one consumer each, and a server-named queue's binding follows its new name",
          arguments: Restart.allCases)
    func consumersResumeAfterARestart(_ restart: Restart) async throws {
        let (name, port) = restart == .stopApp ? ("t-recov-con-stop", 5763) : ("t-recov-con-kill", 5764)
        try await DedicatedBroker.with(name: name, port: port) { broker in
            let configuration = try Self.configuration(broker, name: "recovery consuming \(restart)")
            try await RecoveryHarness.withClient(configuration) { client in
                let streamQueue = TestBroker.uniqueName("recovery.stream")
                let workerQueue = TestBroker.uniqueName("recovery.worker")
                // A transient exchange: the restart loses it, so recovery must declare it again.
                let exchange = TestBroker.uniqueName("recovery.x")
                try await client.declare(Queue(streamQueue))
                try await client.declare(Queue(workerQueue))
                try await client.declare(Exchange(exchange, type: .direct, durable: false))
                let temporary = try await client.declare(Queue.temporary())
                #expect(temporary.name.hasPrefix("amq.gen-"))
                try await client.bind(.queue(temporary.name, to: exchange, routingKey: "events"))
                let events = EventLog.watching(client)

                let streamLog = DeliveryLog()
                let streamConsumer = try await client.consume(streamQueue, prefetch: 20)
                let streamTask = Task { await RecoveryHarness.consume(streamConsumer, into: streamLog) }
                let temporaryLog = DeliveryLog()
                let temporaryConsumer = try await client.consume(temporary.name, prefetch: 20)
                let temporaryTask = Task { await RecoveryHarness.consume(temporaryConsumer, into: temporaryLog) }
                let workerLog = DeliveryLog()
                let worker = QueueWorker(client: client, configuration: .init(queue: workerQueue, prefetch: 20,
                                                                                 concurrency: 2)) { delivery in
                    workerLog.record(delivery)
                }
                let workerTask = Task { try await worker.run() }

                func publishRound(_ label: String) async -> [String] {
                    var failures: [String] = []
                    for index in 0..<10 {
                        let sends: [(String, String, String)] = [
                            ("", streamQueue, "stream-\(label)-\(index)"),
                            ("", workerQueue, "worker-\(label)-\(index)"),
                            (exchange, "events", "temporary-\(label)-\(index)"),
                        ]
                        for (target, routingKey, id) in sends {
                            let properties = RecoveryHarness.properties(id: id)
                            let outcome = await RecoveryHarness.bounded(.seconds(45)) {
                                try await client.publish(Data(id.utf8), to: target, routingKey: routingKey,
                                                         properties: properties)
                            }
                            if case .value = outcome { continue }
                            failures.append("\(id): \(outcome)")
                        }
                    }
                    return failures
                }
                func allReceived(_ label: String) async -> Bool {
                    await RecoveryHarness.eventually(timeout: .seconds(30)) {
                        (0..<10).allSatisfy { index in
                            streamLog.contains("stream-\(label)-\(index)")
                                && workerLog.contains("worker-\(label)-\(index)")
                                && temporaryLog.contains("temporary-\(label)-\(index)")
                        }
                    }
                }

                let failuresBefore = await publishRound("before")
                #expect(failuresBefore.isEmpty, "publishing before the restart failed: \(failuresBefore)")
                let receivedBefore = await allReceived("before")

                var restartError: (any Error)?
                if receivedBefore {
                    do { try await restart.perform(on: broker) } catch { restartError = error }
                }
                let recovered = await RecoveryHarness.eventually(timeout: .seconds(60)) { events.recoveredCount >= 1 }
                let failuresAfter = await publishRound("after")
                let receivedAfter = await allReceived("after")

                // What the broker shows: one consumer on each queue; the server-named queue under a new name.
                let consumerQueues = try await broker.rabbitmqctl("list_consumers", "queue_name",
                                                                  "--no-table-headers")
                    .split(separator: "\n").map(String.init)
                let queueLines = try await broker.rabbitmqctl("list_queues", "name", "consumers", "--no-table-headers")
                    .split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
                let serverNamed = queueLines.filter { $0.first?.hasPrefix("amq.gen-") == true }
                let bindings = try await broker.rabbitmqctl("list_bindings", "source_name", "destination_name",
                                                            "routing_key", "--no-table-headers")

                let streamEnded = streamLog.endedWith
                let temporaryEnded = temporaryLog.endedWith
                await streamConsumer.cancel()
                await temporaryConsumer.cancel()
                worker.stop()
                _ = await streamTask.value
                _ = await temporaryTask.value
                let workerResult = await RecoveryHarness.bounded(.seconds(40)) { try await workerTask.value }

                try #require(receivedBefore, "consumers did not work before the restart")
                #expect(restartError == nil, "restarting the node failed: \(String(describing: restartError))")
                #expect(recovered, "no recovered event: \(events.summary)")
                #expect(events.sawLostThenRecovered(), "events: \(events.summary)")
                #expect(failuresAfter.isEmpty, "publishing after the restart failed: \(failuresAfter.prefix(3))")
                #expect(receivedAfter, """
                    not every message published after the restart arrived: stream \(streamLog.ids.count), \
                    worker \(workerLog.ids.count), server-named \(temporaryLog.ids.count); events \(events.summary)
                    """)
                #expect(streamEnded == nil, "the consumer's sequence ended: \(String(describing: streamEnded))")
                #expect(temporaryEnded == nil,
                        "the server-named queue's consumer ended: \(String(describing: temporaryEnded))")
                if case .error(let error) = workerResult {
                    Issue.record("the worker ended with \(error)")
                } else if case .timedOut = workerResult {
                    Issue.record("the worker did not stop")
                }
                #expect(consumerQueues.filter { $0 == streamQueue }.count == 1, "consumers: \(consumerQueues)")
                #expect(consumerQueues.filter { $0 == workerQueue }.count == 1, "consumers: \(consumerQueues)")
                #expect(serverNamed.count == 1, "server-named queues: \(serverNamed)")
                if let newQueue = serverNamed.first, newQueue.count == 2 {
                    #expect(newQueue[0] != temporary.name, "the server-named queue kept its name")
                    #expect(newQueue[1] == "1", "consumers on the server-named queue: \(newQueue[1])")
                    #expect(consumerQueues.filter { $0 == newQueue[0] }.count == 1, "consumers: \(consumerQueues)")
                    #expect(bindings.contains("\(exchange)\t\(newQueue[0])\tevents"),
                            "no binding \(exchange) -> \(newQueue[0]): \(bindings)")
                }
                #expect(!queueLines.contains { $0.first == temporary.name }, "the old server-named queue exists")
                print("""
                    [recovery] consumers \(restart): stream \(streamLog.summary), worker \(workerLog.summary), \
                    server-named \(temporaryLog.summary) (\(temporary.name) -> \(serverNamed.first?.first ?? "?")); \
                    worker outcomes \(worker.outcomes); events \(events.summary)
                    """)
                try await client.deleteQueue(streamQueue)
                try await client.deleteQueue(workerQueue)
                try await client.deleteExchange(exchange)
            }
        }
    }
}

// MARK: - Harness shared with ClusterFailoverTests

/// What became of one publish.
enum PublishOutcome: Sendable {
    /// The broker confirmed it.
    case confirmed
    /// It failed with a library error.
    case failed(RabbitMQError)
    /// It failed with an error that is not a ``RabbitMQError``.
    case unexpected(String)
    /// It neither succeeded nor failed within the test's bound.
    case hung
}

/// Every publish of a test and its outcome, shared by the publisher tasks.
final class PublishLedger: Sendable {
    private struct State {
        var outcomes: [String: PublishOutcome] = [:]
        var confirmedCount = 0
        var confirmations: [ContinuousClock.Instant] = []
    }

    private let state = Locked(State())

    func record(_ id: String, _ outcome: PublishOutcome) {
        state.withLock { state in
            state.outcomes[id] = outcome
            if case .confirmed = outcome {
                state.confirmedCount += 1
                state.confirmations.append(.now)
            }
        }
    }

    var confirmedCount: Int { state.withLock { $0.confirmedCount } }

    var attemptedIDs: Set<String> { state.withLock { Set($0.outcomes.keys) } }

    var confirmedIDs: Set<String> {
        state.withLock { state in
            Set(state.outcomes.compactMap { id, outcome in if case .confirmed = outcome { id } else { nil } })
        }
    }

    var failures: [RabbitMQError] {
        state.withLock { state in
            state.outcomes.values.compactMap { if case .failed(let error) = $0 { error } else { nil } }
        }
    }

    /// Publishes that hung or failed with something other than a ``RabbitMQError``.
    var problems: [String] {
        state.withLock { state in
            state.outcomes.compactMap { id, outcome in
                switch outcome {
                case .hung: "\(id): hung"
                case .unexpected(let description): "\(id): \(description)"
                case .confirmed, .failed: nil
                }
            }
        }
    }

    /// Failure codes with their counts, such as `connectionLost: 12`.
    var failureCodes: String {
        Dictionary(grouping: failures, by: { "\($0.code)" }).map { "\($0.key): \($0.value.count)" }
            .sorted().joined(separator: ", ")
    }

    /// When the first confirmation after `instant` arrived.
    func firstConfirmation(after instant: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        state.withLock { $0.confirmations.first { $0 > instant } }
    }

    var summary: String {
        "\(state.withLock { $0.outcomes.count }) attempted, \(confirmedCount) confirmed, \(failures.count) failed "
            + "(\(failureCodes)), \(problems.count) problems"
    }
}

/// Limits every publisher loop shares, and the signal that stops them.
final class PublishLimits: Sendable {
    /// Publishes per task at most.
    let maxCount: Int
    /// When the loops stop at the latest.
    let deadline: ContinuousClock.Instant
    /// How long one publish (or one confirmation) may take before it counts as hung.
    let perPublish: Duration
    private let stopped = Atomic<Bool>(false)

    init(maxCount: Int = 20_000, duration: Duration = .seconds(150), perPublish: Duration = .seconds(45)) {
        self.maxCount = maxCount
        self.deadline = .now + duration
        self.perPublish = perPublish
    }

    /// Tells the loops to stop.
    func stop() { stopped.store(true, ordering: .releasing) }

    var shouldContinue: Bool { !stopped.load(ordering: .acquiring) && ContinuousClock.now < deadline }
}

/// Publisher tasks running in the background until ``stop()``.
final class PublisherGroup: Sendable {
    private let limits: PublishLimits
    private let task: Task<Void, Never>

    private init(limits: PublishLimits, task: Task<Void, Never>) {
        self.limits = limits
        self.task = task
    }

    /// Starts the tasks `add` adds to the group, with shared limits.
    static func start(ledger: PublishLedger, limits: PublishLimits = PublishLimits(),
                      _ add: @escaping @Sendable (inout TaskGroup<Void>, PublishLimits) -> Void) -> PublisherGroup {
        let limits = limits
        let task = Task {
            await withTaskGroup(of: Void.self) { group in add(&group, limits) }
        }
        return PublisherGroup(limits: limits, task: task)
    }

    /// Tells the loops to stop and waits for them (each settles what it has in flight, bounded).
    func stop() async {
        limits.stop()
        await task.value
    }
}

/// The deliveries a consumer received, by message id.
final class DeliveryLog: Sendable {
    private struct State {
        var counts: [String: Int] = [:]
        var total = 0
        var ackFailures = 0
        var ended: String?
        var firstDelivery: [String: ContinuousClock.Instant] = [:]
    }

    private let state = Locked(State())

    func record(_ delivery: Delivery) {
        let id = delivery.properties.messageID ?? delivery.bodyString
        state.withLock { state in
            state.counts[id, default: 0] += 1
            state.total += 1
            if state.firstDelivery[id] == nil { state.firstDelivery[id] = .now }
        }
    }

    func recordAckFailure() { state.withLock { $0.ackFailures += 1 } }

    func recordEnd(_ reason: String) { state.withLock { $0.ended = reason } }

    func contains(_ id: String) -> Bool { state.withLock { $0.counts[id] != nil } }

    var ids: Set<String> { state.withLock { Set($0.counts.keys) } }

    var total: Int { state.withLock { $0.total } }

    /// Deliveries beyond the first of each message.
    var duplicates: Int { state.withLock { $0.total - $0.counts.count } }

    var ackFailures: Int { state.withLock { $0.ackFailures } }

    /// Why the consumer's sequence ended, if it has.
    var endedWith: String? { state.withLock { $0.ended } }

    var summary: String {
        "\(ids.count) distinct, \(duplicates) duplicates, \(ackFailures) acks refused"
            + (endedWith.map { ", ended: \($0)" } ?? "")
    }
}

/// The connection events of one client, with when they arrived.
final class EventLog: Sendable {
    private let events = Locked<[(at: ContinuousClock.Instant, event: ConnectionEvent)]>([])

    /// Starts recording `client`'s events (the stream is subscribed before this returns).
    static func watching(_ client: RabbitMQClient) -> EventLog {
        let log = EventLog()
        let stream = client.connectionEvents()
        Task {
            for await event in stream { log.events.withLock { $0.append((.now, event)) } }
        }
        return log
    }

    var all: [ConnectionEvent] { events.withLock { $0.map(\.event) } }

    var recoveredCount: Int {
        all.filter { if case .recovered = $0 { true } else { false } }.count
    }

    var lostCount: Int {
        all.filter { if case .connectionLost = $0 { true } else { false } }.count
    }

    /// The endpoints of the `recovered` events.
    var recoveredEndpoints: [String] {
        all.compactMap { if case .recovered(let endpoint) = $0 { endpoint } else { nil } }
    }

    /// Whether a `connectionLost` came and a `recovered` after it.
    func sawLostThenRecovered() -> Bool {
        let events = all
        guard let lost = events.firstIndex(where: { if case .connectionLost = $0 { true } else { false } })
        else { return false }
        return events[lost...].contains { if case .recovered = $0 { true } else { false } }
    }

    /// How long after `instant` the first `recovered` event came.
    func recoveryDelay(after instant: ContinuousClock.Instant) -> Duration? {
        events.withLock { events in
            events.first { entry in
                if case .recovered = entry.event { entry.at > instant } else { false }
            }.map { $0.at - instant }
        }
    }

    /// When the first `connectionLost` after `instant` came.
    func firstLoss(after instant: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        events.withLock { events in
            events.first { entry in
                if case .connectionLost = entry.event { entry.at > instant } else { false }
            }?.at
        }
    }

    var summary: String {
        all.map { event -> String in
            switch event {
            case .connected(let endpoint): "connected(\(endpoint))"
            case .connectionLost(let error): "lost(\(error.code))"
            case .reconnecting(let attempt, _): "reconnecting#\(attempt)"
            case .recovered(let endpoint): "recovered(\(endpoint))"
            case .recoveryFailed(let error): "recoveryFailed(\(error.code))"
            case .blocked: "blocked"
            case .unblocked: "unblocked"
            case .closed: "closed"
            @unknown default: "\(event)"
            }
        }.joined(separator: " ")
    }
}

/// The result of an operation run with a time bound.
enum Bounded<T: Sendable>: Sendable {
    case value(T)
    case error(any Error)
    case timedOut
}

/// Resumes a bounded operation's waiter once: with the result, or with `.timedOut`.
private final class BoundedGate<T: Sendable>: Sendable {
    let continuation = Locked<CheckedContinuation<Bounded<T>, Never>?>(nil)
    let timer = Locked<Task<Void, Never>?>(nil)

    func resume(_ result: Bounded<T>) -> Bool {
        guard let continuation = continuation.withLock({ $0.take() }) else { return false }
        continuation.resume(returning: result)
        return true
    }
}

enum RecoveryHarness {
    /// Message properties carrying `id` as the message id.
    static func properties(id: String) -> MessageProperties {
        var properties = MessageProperties()
        properties.messageID = id
        return properties
    }

    /// Runs `scripts/broker.sh ARGS…` and throws if it fails.
    static func brokerScript(_ arguments: String...) async throws {
        let result = try await DedicatedBroker.run(DedicatedBroker.script, arguments,
                                                   environment: ProcessInfo.processInfo.environment)
        guard result.status == 0 else {
            throw DedicatedBrokerError(message: "broker.sh \(arguments.joined(separator: " ")) exited with "
                                           + "\(result.status):\n\(result.output)")
        }
    }

    /// Runs `body` with a client of `configuration`, connected, and closes it afterwards, also on failure.
    static func withClient<T>(_ configuration: RabbitMQClient.Configuration,
                              _ body: (RabbitMQClient) async throws -> T) async throws -> T {
        let client = RabbitMQClient(configuration: configuration, logger: TestBroker.logger)
        do {
            try await client.connect()
            let result = try await body(client)
            await client.close()
            return result
        } catch {
            await client.close()
            throw error
        }
    }

    /// Runs `body`, returning `.timedOut` if it takes longer than `limit` (it is then cancelled, and this
    /// returns without waiting for it, so a hung operation cannot hang the test).
    static func bounded<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async
        -> Bounded<T>
    {
        let gate = BoundedGate<T>()
        return await withCheckedContinuation { continuation in
            gate.continuation.withLock { $0 = continuation }
            let work = Task {
                let result: Bounded<T>
                do { result = .value(try await body()) } catch { result = .error(error) }
                _ = gate.resume(result)
                gate.timer.withLock { $0 }?.cancel()
            }
            let timer = Task {
                do { try await Task.sleep(for: limit) } catch { return }
                if gate.resume(.timedOut) { work.cancel() }
            }
            gate.timer.withLock { $0 = timer }
        }
    }

    /// The outcome of a bounded publish or confirmation wait.
    static func outcome(_ result: Bounded<Void>) -> PublishOutcome {
        switch result {
        case .value: .confirmed
        case .error(let error as RabbitMQError): .failed(error)
        case .error(let error): .unexpected("\(type(of: error)): \(error)")
        case .timedOut: .hung
        }
    }

    /// Waits until `condition` holds, checking every 50 ms, at most `timeout`.
    static func eventually(timeout: Duration, _ condition: () async throws -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return (try? await condition()) == true
    }

    /// Publishes through ``RabbitMQClient/publish(_:to:routingKey:properties:mandatory:)``, one at a time, each
    /// waiting for its confirmation, until told to stop; records every outcome.
    static func publishOneByOne(_ client: RabbitMQClient, routingKey: String, prefix: String,
                                ledger: PublishLedger, limits: PublishLimits) async {
        var index = 0
        while index < limits.maxCount, limits.shouldContinue {
            let id = "\(prefix)-\(index)"
            index += 1
            let properties = properties(id: id)
            let outcome = outcome(await bounded(limits.perPublish) {
                try await client.publish(Data(id.utf8), routingKey: routingKey, properties: properties)
            })
            ledger.record(id, outcome)
            if case .confirmed = outcome { continue }
            // Failures come in bursts when a connection dies; do not spin through the ids.
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Publishes on a confirm-mode `channel` without waiting for each confirmation (the channel's window bounds
    /// what is in flight), settling confirmations as they come; records every outcome.
    static func publishWindowed(_ channel: Channel, routingKey: String, prefix: String, ledger: PublishLedger,
                                limits: PublishLimits) async {
        var pending: [(id: String, confirmation: PublishConfirmation)] = []
        func settle(_ entry: (id: String, confirmation: PublishConfirmation)) async {
            ledger.record(entry.id, outcome(await bounded(limits.perPublish) { try await entry.confirmation.wait() }))
        }
        var index = 0
        while index < limits.maxCount, limits.shouldContinue {
            let id = "\(prefix)-\(index)"
            index += 1
            let properties = properties(id: id)
            let published = await bounded(limits.perPublish) {
                try await channel.publish(Data(id.utf8), routingKey: routingKey, properties: properties)
            }
            switch published {
            case .value(let confirmation):
                pending.append((id, confirmation))
            case .error(let error as RabbitMQError):
                ledger.record(id, .failed(error))
                try? await Task.sleep(for: .milliseconds(20))
            case .error(let error):
                ledger.record(id, .unexpected("\(type(of: error)): \(error)"))
            case .timedOut:
                ledger.record(id, .hung)
            }
            while let first = pending.first, first.confirmation.isSettled || pending.count > 256 {
                pending.removeFirst()
                await settle(first)
            }
        }
        for entry in pending { await settle(entry) }
    }

    /// Hands `consumer`'s deliveries to `log` and acks them, until the sequence ends; records how it ended.
    static func consume(_ consumer: Consumer, into log: DeliveryLog) async {
        do {
            for try await delivery in consumer {
                log.record(delivery)
                do { try await delivery.ack() } catch { log.recordAckFailure() }
            }
        } catch {
            log.recordEnd("\(error)")
        }
    }

    /// Consumes `queue` until `count` deliveries arrived (at most 60 s) and returns what arrived.
    static func drain(_ queue: String, count: Int, client: RabbitMQClient) async throws -> DeliveryLog {
        let log = DeliveryLog()
        let consumer = try await client.consume(queue, prefetch: 500)
        let task = Task { await consume(consumer, into: log) }
        _ = await eventually(timeout: .seconds(60)) { log.total >= count }
        await consumer.cancel()
        await task.value
        return log
    }
}
