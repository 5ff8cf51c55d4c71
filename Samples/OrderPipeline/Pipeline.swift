import Foundation
import Histogram
import Logging
import RabbitMQ
import RabbitMQSQLite
import Synchronization

/// Settings of a whole-pipeline run (the `run` subcommand and the integration test). Every default is stated
/// on its property.
struct PipelineOptions: Sendable {
    /// Orders to place. Default 10,000.
    var count = 10_000
    /// Share of orders re-sent once (duplicates). Default 0.02.
    var duplicateRate = 0.02
    /// Share of orders with a negative amount (parked at once). Default 0.01.
    var invalidRate = 0.01
    /// Chance that a downstream call times out (retried with backoff). Default 0.05.
    var failureRate = 0.05
    /// Bursts the orders are published in. Default 10.
    var bursts = 10
    /// Time between the starts of two bursts. Default 1 s.
    var burstInterval: Duration = .seconds(1)
    /// The worker stopped midway and restarted; `nil` for none. Default notification.
    var pausedWorker: WorkerKind? = .notification
    /// Share of the events published (confirmed) before that worker stops. Default 0.4.
    var pauseAfter = 0.4
    /// How long it stays stopped. Default 5 s.
    var pauseDuration: Duration = .seconds(5)
    /// How long the broker is stopped while the order service writes; `nil` for no outage. Needs
    /// ``brokerControl``. Default `nil`.
    var brokerOutage: Duration?
    /// Share of the events written before the broker is stopped. Default 0.2.
    var outageAfter = 0.2
    /// Shell commands that stop the broker and start it again on the same data. Default `nil`.
    var brokerControl: BrokerControl?
    /// Longest wait for the workers to finish after publishing. Default 5 min.
    var timeout: Duration = .seconds(300)
    /// Time between two progress samples (and lines). Default 1 s.
    var sampleInterval: Duration = .seconds(1)
    /// Exchange name and queue-name prefix. Default `orders`.
    var prefix = "orders"
    /// The SQLite database. Default: a new file in the temporary folder.
    var databasePath = SideEffectStore.temporaryPath()
}

/// Queue depths and counts at one moment of a run.
struct ProgressSample: Sendable {
    /// Time since the run started.
    var elapsed: Duration
    /// Events the order service has written.
    var published: Int
    /// Events it will write in all.
    var total: Int
    /// Events in the outbox, waiting for the relay.
    var backlog: Int
    /// Whether the broker was stopped at that moment.
    var brokerDown: Bool
    /// Ready messages in each work queue.
    var depths: [WorkerKind: Int]
    /// Each worker's counts.
    var counts: [WorkerKind: PipelineWorker.Counts]
    /// Workers stopped at that moment.
    var stopped: Set<WorkerKind>
}

/// End-to-end latency of one worker's side effects, from `placedAt` to the database row, in milliseconds.
struct LatencySummary: Sendable {
    var count: Int
    var p50: UInt64
    var p99: UInt64
    var max: UInt64

    init(milliseconds values: [Double]) {
        var histogram = Histogram<UInt64>(highestTrackableValue: 3_600_000, numberOfSignificantValueDigits: .three)
        for value in values { _ = histogram.record(UInt64(Swift.max(0, value).rounded())) }
        count = values.count
        p50 = values.isEmpty ? 0 : histogram.valueAtPercentile(50)
        p99 = values.isEmpty ? 0 : histogram.valueAtPercentile(99)
        max = values.isEmpty ? 0 : histogram.max
    }
}

/// The outcome of a run: what was published, what each worker did, and whether the invariants hold.
struct PipelineReport: Sendable {
    var options: PipelineOptions
    var published: OrderService.Result
    var counts: [WorkerKind: PipelineWorker.Counts]
    var latencies: [WorkerKind: LatencySummary]
    var samples: [ProgressSample]
    var invariants: [InvariantCheck]
    var elapsed: Duration
    var databasePath: String

    /// Whether every invariant holds.
    var passed: Bool { !invariants.isEmpty && invariants.allSatisfy(\.passed) }
}

/// Runs the whole pipeline in one process: resets the topology and the database, starts the three workers,
/// publishes the orders in bursts while sampling queue depths, stops one worker for a while midway, waits
/// until every message is settled, stops the workers and checks the invariants.
struct PipelineRun: Sendable {
    let client: RabbitMQClient
    let options: PipelineOptions
    let logger: Logger
    /// Receives the live progress lines (once per sample).
    let output: @Sendable (String) -> Void

    func run() async throws -> PipelineReport {
        let clock = ContinuousClock()
        let start = clock.now
        let topology = PipelineTopology(prefix: options.prefix)
        try await topology.reset(on: client)
        let store = try SideEffectStore(path: options.databasePath)
        try await store.reset()
        let workers = WorkerKind.allCases.map { kind in
            PipelineWorker(kind: kind, topology: topology, client: client, store: store,
                           timeoutRate: options.failureRate, logger: logger)
        }
        for worker in workers { worker.start() }
        let service = OrderService(topology: topology, store: store)
        let relay = service.relay(client: client)
        let relaying = Task { try await relay.run() }

        let progress = OrderService.Progress()
        let brokerDown = BrokerDownFlag()
        let samples = Mutex<[ProgressSample]>([])
        // The monitor is stopped with a flag, not by cancelling its task: cancelling a task in the middle of a
        // request makes the library close the request's channel (see the report).
        let monitoring = Atomic<Bool>(true)
        let monitor = Task {
            await monitorProgress(while: { monitoring.load(ordering: .relaxed) }, record: { sample in
                samples.withLock { $0.append(sample) }
            }) {
                progress.setConfirmed(relay.statistics.published)
                return try await sample(topology: topology, workers: workers, store: store, progress: progress,
                                        start: start, brokerDown: brokerDown.isDown,
                                        lastDepths: samples.withLock { $0.last?.depths ?? [:] })
            }
        }
        let pause = Task { try await pauseOneWorker(workers, progress: progress) }
        let outage = Task {
            try await stopTheBroker(progress: progress) { brokerDown.isDown = $0 }
        }

        let plan = OrderService.Plan(count: options.count, duplicateRate: options.duplicateRate,
                                     invalidRate: options.invalidRate, bursts: options.bursts,
                                     burstInterval: options.burstInterval)
        var published: OrderService.Result
        do {
            published = try await service.place(plan, progress: progress)
            try await outage.value
            try await service.waitUntilPublished(by: relay, progress: progress,
                                                 deadline: ContinuousClock.now + options.timeout)
            published.confirmed = progress.confirmed
            try await pause.value
            try await waitUntilSettled(workers, total: published.published, topology: topology)
        } catch {
            pause.cancel()
            outage.cancel()
            monitoring.store(false, ordering: .relaxed)
            await monitor.value
            relay.stop()
            _ = try? await relaying.value
            for worker in workers { try? await worker.stop() }
            throw error
        }
        relay.stop()
        try await relaying.value
        monitoring.store(false, ordering: .relaxed)
        await monitor.value
        // One last sample, now that everything is settled.
        let final = try await sample(topology: topology, workers: workers, store: store, progress: progress,
                                     start: start, brokerDown: false, lastDepths: [:])
        samples.withLock { $0.append(final) }
        output(Summary.progressLine(final, total: progress.total))
        for worker in workers { try await worker.stop() }

        var counts: [WorkerKind: PipelineWorker.Counts] = [:]
        var latencies: [WorkerKind: LatencySummary] = [:]
        for worker in workers {
            counts[worker.kind] = worker.counts
            latencies[worker.kind] = LatencySummary(milliseconds: try await store.latenciesMilliseconds(worker.kind))
        }
        let invariants = try await InvariantCheck.all(client: client, topology: topology, store: store,
                                                      published: published)
        return PipelineReport(options: options, published: published, counts: counts, latencies: latencies,
                              samples: samples.withLock { $0 }, invariants: invariants, elapsed: clock.now - start,
                              databasePath: store.path)
    }

    /// Records and prints a sample (`take`) every ``PipelineOptions/sampleInterval`` while `isRunning` says so.
    private func monitorProgress(while isRunning: () -> Bool, record: (ProgressSample) -> Void,
                                 take: () async throws -> ProgressSample) async {
        let clock = ContinuousClock()
        var next = clock.now + options.sampleInterval
        while isRunning() {
            // Short sleeps, so that stopping takes at most 50 ms.
            while isRunning(), clock.now < next {
                try? await clock.sleep(until: min(next, clock.now + .milliseconds(50)))
            }
            guard isRunning() else { return }
            next += options.sampleInterval
            do {
                let sample = try await take()
                record(sample)
                output(Summary.progressLine(sample, total: sample.total))
                // A sample that waited for the broker to come back is not followed by a burst of catch-up samples.
                next = max(next, clock.now + options.sampleInterval / 2)
            } catch {
                logger.warning("cannot sample the queues", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Queue depths (the last ones known while the broker is down), counts and the outbox's backlog.
    private func sample(topology: PipelineTopology, workers: [PipelineWorker], store: SideEffectStore,
                        progress: OrderService.Progress, start: ContinuousClock.Instant, brokerDown: Bool,
                        lastDepths: [WorkerKind: Int]) async throws -> ProgressSample {
        var depths = lastDepths
        var counts: [WorkerKind: PipelineWorker.Counts] = [:]
        var stopped: Set<WorkerKind> = []
        for worker in workers {
            if !brokerDown {
                depths[worker.kind] = Int(try await client.inspectQueue(topology.queueName(worker.kind)).messageCount)
            }
            counts[worker.kind] = worker.counts
            if !worker.isRunning { stopped.insert(worker.kind) }
        }
        return ProgressSample(elapsed: ContinuousClock.now - start, published: progress.published,
                              total: progress.total, backlog: try await store.outbox.pendingCount(),
                              brokerDown: brokerDown, depths: depths, counts: counts, stopped: stopped)
    }

    /// Stops ``PipelineOptions/pausedWorker`` once ``PipelineOptions/pauseAfter`` of the events are published
    /// (confirmed), and starts it again after ``PipelineOptions/pauseDuration``.
    private func pauseOneWorker(_ workers: [PipelineWorker], progress: OrderService.Progress) async throws {
        guard let kind = options.pausedWorker, options.pauseDuration > .zero,
              let worker = workers.first(where: { $0.kind == kind }) else { return }
        let deadline = ContinuousClock.now + options.timeout
        while progress.total == 0 || Double(progress.confirmed) < Double(progress.total) * options.pauseAfter {
            guard ContinuousClock.now < deadline else { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        output("--- stopping the \(kind.rawValue) worker for \(options.pauseDuration.formattedSeconds); "
               + "the others carry on ---")
        try await worker.stop()
        try await Task.sleep(for: options.pauseDuration)
        worker.start()
        output("--- \(kind.rawValue) worker restarted: it drains its backlog ---")
    }

    /// Waits until every worker has settled every published message (processed, parked or suppressed as a
    /// duplicate) and the work queues and retry tiers are empty.
    private func waitUntilSettled(_ workers: [PipelineWorker], total: Int, topology: PipelineTopology) async throws {
        let deadline = ContinuousClock.now + options.timeout
        while true {
            if let failed = workers.first(where: { $0.failure != nil }), let failure = failed.failure {
                throw PipelineError("the \(failed.kind.rawValue) worker failed: \(failure)")
            }
            if workers.allSatisfy({ $0.counts.settled >= total }) {
                var empty = true
                for queue in topology.pendingQueueNames where try await client.inspectQueue(queue).messageCount > 0 {
                    empty = false
                    break
                }
                if empty { return }
            }
            guard ContinuousClock.now < deadline else {
                let settled = workers.map { "\($0.kind.rawValue) \($0.counts.settled)/\(total)" }
                throw PipelineError("the workers did not settle every message within "
                                    + "\(options.timeout.formattedSeconds): \(settled.joined(separator: ", "))")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}

/// A failure of the sample itself (not of the library).
struct PipelineError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension Duration {
    /// Whole or fractional seconds, such as `5 s` or `0.2 s`.
    var formattedSeconds: String {
        return seconds == seconds.rounded() ? "\(Int(seconds)) s" : String(format: "%.1f s", seconds)
    }
}
