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
                try await ChildProcess.brokerScript(["kill", broker.name])
                try await ChildProcess.brokerScript(["restart", broker.name])
            }
        }
    }

    /// The client configuration of these tests: the node's endpoint, quick reconnection attempts, and a confirm
    /// timeout longer than a restart, so that publishes made during the outage can wait for the new connection.
    static func configuration(_ broker: DedicatedBroker, name: String) throws -> RabbitMQClient.Configuration {
        var configuration = try broker.configuration
        configuration.connectionName = name
        configuration.confirmTimeout = .seconds(30)
        configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
        return configuration
    }

    @Test("Every publish is confirmed or fails, and every confirmed message survives the restart",
          arguments: Restart.allCases)
    func publishingAcrossARestart(_ restart: Restart) async throws {
        let (name, port) = restart == .stopApp ? ("t-recov-pub-stop", 5761) : ("t-recov-pub-kill", 5762)
        try await DedicatedBroker.with(name: name, port: port) { broker in
            let configuration = try Self.configuration(broker, name: "recovery publishing \(restart)")
            try await TestBroker.withClient(configuration: configuration) { client in
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
                let warmedUp = try await eventually(timeout: .seconds(30)) { ledger.confirmedCount >= 200 }
                let confirmedBefore = ledger.confirmedCount
                let restartStarted = ContinuousClock.now
                var restartError: (any Error)?
                if warmedUp {
                    do { try await restart.perform(on: broker) } catch { restartError = error }
                }
                let restartEnded = ContinuousClock.now
                // Keep publishing for a bit on the recovered connection (also if the loops reached their first
                // maxCount while a slow rabbitmqctl was still restarting the node).
                publishers.resume()
                let confirmedAtRestart = ledger.confirmedCount
                let resumed = try await eventually(timeout: .seconds(60)) {
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
            try await TestBroker.withClient(configuration: configuration) { client in
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
                            let outcome = await Bounded.run(.seconds(45)) {
                                try await client.publish(Data(id.utf8), to: target, routingKey: routingKey,
                                                         properties: properties)
                            }
                            if case .value = outcome { continue }
                            failures.append("\(id): \(outcome)")
                        }
                    }
                    return failures
                }
                func allReceived(_ label: String) async throws -> Bool {
                    try await eventually(timeout: .seconds(30)) {
                        (0..<10).allSatisfy { index in
                            streamLog.contains("stream-\(label)-\(index)")
                                && workerLog.contains("worker-\(label)-\(index)")
                                && temporaryLog.contains("temporary-\(label)-\(index)")
                        }
                    }
                }

                let failuresBefore = await publishRound("before")
                #expect(failuresBefore.isEmpty, "publishing before the restart failed: \(failuresBefore)")
                let receivedBefore = try await allReceived("before")

                var restartError: (any Error)?
                if receivedBefore {
                    do { try await restart.perform(on: broker) } catch { restartError = error }
                }
                let recovered = try await eventually(timeout: .seconds(60)) { events.recoveredCount >= 1 }
                let failuresAfter = await publishRound("after")
                let receivedAfter = try await allReceived("after")

                // What the broker shows: one consumer on each queue; the server-named queue under a new name.
                let consumerQueues = try await broker.rabbitmqctl("list_consumers", "queue_name",
                                                                  "--no-table-headers")
                    .split(separator: "\n").map(String.init)
                let queueLines = try await broker.node.list("list_queues", ["name", "consumers"])
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
                let workerResult = await Bounded.run(.seconds(40)) { try await workerTask.value }

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
