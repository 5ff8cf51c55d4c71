import ArgumentParser
import Foundation
import Logging
import RabbitMQ
import ServiceLifecycle
import UnixSignals

/// `order-pipeline`: the sample order-event pipeline. `run` does everything in one process (the demo); the
/// other subcommands run the parts as separate processes.
@main
struct OrderPipelineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-pipeline",
        abstract: "A sample order-event pipeline on RabbitMQ: an order service and three workers.",
        discussion: """
            'run' does everything in one process and checks the result (the demo, 'make demo'). To run the parts \
            as separate processes, start 'worker coupon', 'worker notification' and 'worker recommendations' \
            with the same --database, then 'publish', then 'verify'; 'parked' lists and replays parked messages.
            """,
        subcommands: [Run.self, Publish.self, Worker.self, Parked.self, Verify.self])
}

/// Options every subcommand takes.
struct CommonOptions: ParsableArguments {
    @Option(help: "The broker's AMQP URL. (default: $AMQP_URL, else amqp://guest:guest@127.0.0.1:5673/)")
    var url: String?

    @Option(help: "The exchange name, also the prefix of every queue name.")
    var prefix = "orders"

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .warning

    var resolvedURL: String {
        url ?? ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5673/"
    }

    var topology: PipelineTopology { PipelineTopology(prefix: prefix) }

    /// Sets up logging to standard error and returns a logger.
    func makeLogger() -> Logger {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: "order-pipeline")
    }

    /// A client for `role` (shown as the connection name at the broker).
    func makeClient(role: String, logger: Logger) throws -> RabbitMQClient {
        var configuration = try RabbitMQClient.Configuration(url: resolvedURL)
        configuration.connectionName = "order-pipeline \(role)"
        return RabbitMQClient(configuration: configuration, logger: logger)
    }
}

/// Options of the order service.
struct PublishOptions: ParsableArguments {
    @Option(help: "Orders to place.")
    var count = 10_000

    @Option(help: "Share of orders re-sent once (same order id and message id), 0 to 1.")
    var duplicateRate = 0.02

    @Option(help: "Share of invalid orders (negative amount), parked at once, 0 to 1.")
    var invalidRate = 0.01

    @Option(help: "Bursts the orders are published in.")
    var bursts = 10

    @Option(help: "Seconds between the starts of two bursts.")
    var burstInterval = 1.0

    func validate() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard (0...1).contains(duplicateRate), (0...1).contains(invalidRate) else {
            throw ValidationError("rates are between 0 and 1")
        }
        guard bursts >= 1, burstInterval >= 0 else {
            throw ValidationError("--bursts must be at least 1 and --burst-interval at least 0")
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

extension Duration {
    /// A duration from a number of seconds given on the command line.
    static func fromSeconds(_ seconds: Double) -> Duration { .milliseconds(Int64((seconds * 1000).rounded())) }
}

/// Writes a line to standard output at once (unbuffered), so progress shows live when piped, as under `make`.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

// MARK: - run

extension OrderPipelineCommand {
    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the whole pipeline in one process, show its progress, summarise and check it.",
            discussion: """
                Deletes and declares the queues afresh, starts the three workers and the outbox relay, writes the \
                orders with their events in bursts (faster than the workers consume), optionally stops the broker \
                for a while (--broker-outage), stops one worker midway and restarts it, waits until every message \
                is settled, prints a summary and checks the invariants. Exits with 1 when one fails.
                """)

        @OptionGroup var common: CommonOptions
        @OptionGroup var publishing: PublishOptions

        @Option(help: "Chance that a downstream call times out (retried with backoff), 0 to 1.")
        var failureRate = 0.05

        @Option(help: "The worker stopped midway and restarted, or 'none'.")
        var pauseWorker = "notification"

        @Option(help: "Seconds the worker stays stopped.")
        var pauseSeconds = 5.0

        @Option(help: "The SQLite database for the side effects. (default: a new file in the temporary folder)")
        var database: String?

        @Option(help: "Longest wait, in seconds, for the workers to settle every message.")
        var timeout = 300.0

        @Option(help: "Seconds the broker is stopped while the order service writes (0: none; needs the commands).")
        var brokerOutage = 0.0

        @Option(help: "Shell command that stops the broker, for --broker-outage.")
        var brokerStopCommand: String?

        @Option(help: "Shell command that starts the broker again on the same data, for --broker-outage.")
        var brokerStartCommand: String?

        func validate() throws {
            guard brokerOutage == 0 || (brokerStopCommand != nil && brokerStartCommand != nil) else {
                throw ValidationError("--broker-outage needs --broker-stop-command and --broker-start-command")
            }
            guard (0...1).contains(failureRate) else { throw ValidationError("--failure-rate is between 0 and 1") }
            guard pauseWorker == "none" || WorkerKind(rawValue: pauseWorker) != nil else {
                throw ValidationError("--pause-worker is coupon, notification, recommendations or none")
            }
        }

        func run() async throws {
            let logger = common.makeLogger()
            let client = try common.makeClient(role: "run", logger: logger)
            var options = PipelineOptions()
            options.count = publishing.count
            options.duplicateRate = publishing.duplicateRate
            options.invalidRate = publishing.invalidRate
            options.failureRate = failureRate
            options.bursts = publishing.bursts
            options.burstInterval = .fromSeconds(publishing.burstInterval)
            options.pausedWorker = WorkerKind(rawValue: pauseWorker)
            options.pauseDuration = .fromSeconds(pauseSeconds)
            options.timeout = .fromSeconds(timeout)
            options.prefix = common.prefix
            if let database { options.databasePath = database }
            if brokerOutage > 0, let stop = brokerStopCommand, let start = brokerStartCommand {
                options.brokerOutage = .fromSeconds(brokerOutage)
                options.brokerControl = BrokerControl(stop: stop, start: start)
            }

            say("order-pipeline: \(options.count.grouped) orders to \(client.configuration.endpoints[0]), "
                  + "exchange '\(options.prefix)'; \(Int(options.duplicateRate * 100))% re-sent, "
                  + "\(Int(options.invalidRate * 100))% invalid, downstream timeouts \(Int(failureRate * 100))%")
            for kind in WorkerKind.allCases {
                let profile = kind.profile
                let delays = profile.policy.tierDelays.map { "\(Int(($0.seconds * 1000).rounded())) ms" }
                say("  \(Summary.pad(kind.rawValue, 16, left: false)) prefetch \(profile.prefetch), "
                    + "concurrency \(profile.concurrency), \(profile.policy.maxAttempts) attempts, "
                    + "backoff \(delays.joined(separator: " / ")), "
                    + "parking lot \(options.prefix).\(kind.rawValue).dlq")
            }
            say(Summary.progressHeader)
            let report: PipelineReport
            do {
                try await client.connect()
                report = try await PipelineRun(client: client, options: options, logger: logger) { say($0) }.run()
            } catch {
                await client.close()
                throw error
            }
            await client.close()
            say(Summary.report(report))
            if !report.passed { throw ExitCode(1) }
        }
    }
}

// MARK: - publish

extension OrderPipelineCommand {
    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the order service: write orders and their events (the outbox) in bursts, publish them.")

        @OptionGroup var common: CommonOptions
        @OptionGroup var publishing: PublishOptions

        @Option(help: "The SQLite database where the published orders are recorded (for 'verify').")
        var database: String?

        @Flag(help: "Delete and declare the queues afresh first (stop the workers before).")
        var reset = false

        func run() async throws {
            let logger = common.makeLogger()
            let client = try common.makeClient(role: "order service", logger: logger)
            let store = try SideEffectStore(path: database ?? SideEffectStore.temporaryPath())
            let topology = common.topology
            let plan = OrderService.Plan(count: publishing.count, duplicateRate: publishing.duplicateRate,
                                         invalidRate: publishing.invalidRate, bursts: publishing.bursts,
                                         burstInterval: .fromSeconds(publishing.burstInterval))
            do {
                if reset {
                    try await topology.reset(on: client)
                    try await store.reset()
                } else {
                    try await topology.declare(on: client)
                }
                // The orders and their events are written to the database; the relay publishes the events.
                let service = OrderService(topology: topology, store: store)
                let relay = service.relay(client: client)
                let relaying = Task { try await relay.run() }
                let progress = OrderService.Progress()
                var result = try await service.place(plan, progress: progress)
                try await service.waitUntilPublished(by: relay, progress: progress,
                                                     deadline: ContinuousClock.now + .seconds(300))
                relay.stop()
                try await relaying.value
                result.confirmed = relay.statistics.published
                say("wrote \(result.published.grouped) events (\(result.orders.grouped) orders, "
                      + "\(result.invalid.grouped) invalid, \(result.resent.grouped) re-sent) with their orders in "
                      + "\(store.path); the relay published \(result.confirmed.grouped)")
            } catch {
                await client.close()
                throw error
            }
            await client.close()
        }
    }
}

// MARK: - worker

extension OrderPipelineCommand {
    struct Worker: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run one worker until SIGTERM or SIGINT, then drain and stop.")

        @OptionGroup var common: CommonOptions

        @Argument(help: "coupon, notification or recommendations")
        var kind: WorkerKind

        @Option(help: "Chance that a downstream call times out (retried with backoff), 0 to 1.")
        var failureRate = 0.05

        @Option(help: "The SQLite database for the side effects; share it between the workers and 'publish'.")
        var database: String?

        func run() async throws {
            var logger = common.makeLogger()
            logger.logLevel = max(.info, common.logLevel) == common.logLevel ? common.logLevel : .info
            let client = try common.makeClient(role: "\(kind.rawValue) worker", logger: logger)
            let store = try SideEffectStore(path: database ?? SideEffectStore.temporaryPath())
            let topology = common.topology
            let worker = PipelineWorker(kind: kind, topology: topology, client: client, store: store,
                                        timeoutRate: failureRate, logger: logger)
            do {
                try await topology.declare(on: client)
                let queueWorker = worker.makeQueueWorker()
                say("\(kind.rawValue) worker consuming \(topology.queueName(kind)); side effects in \(store.path); "
                      + "SIGTERM or Ctrl-C stops it")
                let group = ServiceGroup(configuration: .init(
                    services: [queueWorker], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
                try await group.run()
                let outcomes = queueWorker.outcomes.sorted { $0.key.rawValue < $1.key.rawValue }
                say("\(kind.rawValue) worker stopped: "
                      + outcomes.map { "\($0.key.rawValue) \($0.value.grouped)" }.joined(separator: ", "))
            } catch {
                await client.close()
                throw error
            }
            await client.close()
        }
    }
}

// MARK: - parked

extension OrderPipelineCommand {
    struct Parked: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List or replay the messages a worker parked.",
            subcommands: [List.self, Replay.self])

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List a worker's parked messages.")

            @OptionGroup var common: CommonOptions

            @Option(help: "coupon, notification or recommendations")
            var worker: WorkerKind

            @Option(help: "Most messages to list.")
            var limit = 20

            func run() async throws {
                let logger = common.makeLogger()
                let client = try common.makeClient(role: "parked list", logger: logger)
                let retry = common.topology.retry(worker)
                do {
                    let total = try await client.inspectQueue(retry.parkingLotName).messageCount
                    let parked = try await client.parkedMessages(in: retry, limit: limit)
                    say("\(retry.parkingLotName): \(Int(total).grouped) parked message(s)")
                    for message in parked {
                        let order = try? OrderPlaced.decode(message.delivery.body)
                        let when = message.parkedAt.map { $0.formatted(.iso8601) } ?? "?"
                        say("  \(order?.orderID ?? message.delivery.properties.messageID ?? "?")  parked \(when)  "
                              + "after \(message.attempts) attempt(s): \(message.reason ?? "no reason")")
                    }
                } catch {
                    await client.close()
                    throw error
                }
                await client.close()
            }
        }

        struct Replay: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Move a worker's parked messages back to its queue, with a fresh attempt count.")

            @OptionGroup var common: CommonOptions

            @Option(help: "coupon, notification or recommendations")
            var worker: WorkerKind

            @Option(help: "Replay only the messages whose reason contains this text.")
            var reasonContains: String?

            @Option(help: "Most messages to replay.")
            var limit = Int.max

            func run() async throws {
                let logger = common.makeLogger()
                let client = try common.makeClient(role: "parked replay", logger: logger)
                let retry = common.topology.retry(worker)
                let filter = reasonContains
                do {
                    let replayed = try await client.replayParked(in: retry, limit: limit) { message in
                        filter.map { message.reason?.contains($0) == true } ?? true
                    }
                    say("replayed \(replayed.grouped) message(s) from \(retry.parkingLotName) to \(retry.queueName)")
                } catch {
                    await client.close()
                    throw error
                }
                await client.close()
            }
        }
    }
}

// MARK: - verify

extension OrderPipelineCommand {
    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the invariants after running the parts separately (exits with 1 when one fails).")

        @OptionGroup var common: CommonOptions

        @Option(help: "The SQLite database the order service and the workers shared.")
        var database: String

        func run() async throws {
            let logger = common.makeLogger()
            let client = try common.makeClient(role: "verify", logger: logger)
            let checks: [InvariantCheck]
            do {
                checks = try await InvariantCheck.all(client: client, topology: common.topology,
                                                      store: try SideEffectStore(path: database), published: nil)
            } catch {
                await client.close()
                throw error
            }
            await client.close()
            say(Summary.invariants(checks))
            if !checks.allSatisfy(\.passed) { throw ExitCode(1) }
        }
    }
}
