import ArgumentParser
import Foundation
import RabbitMQ
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `rabbitmq-chaos run`: the soak. Declares the topology, starts the consumer and producer processes, injects the
/// seeded fault schedule while they work, lets the queues drain, then checks the invariants and reports.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the chaos soak against a running 3-node cluster (scripts/chaos.sh starts one).")

    @OptionGroup var options: ClientOptions
    @Option(help: "The cluster's node names (short, without @localhost), in the order of --urls.")
    var nodes = "swiftrmq-x1,swiftrmq-x2,swiftrmq-x3"
    @Option(help: "scripts/broker.sh, which kills and restarts nodes.")
    var brokerScript = "scripts/broker.sh"
    @Option(help: "rabbitmqctl.")
    var rabbitmqctl = "/usr/lib/rabbitmq/bin/rabbitmqctl"
    @Option(help: "The report file; the run's section is appended.")
    var output = "RELIABILITY.md"
    @Option(help: "A label for the run's section in the report, e.g. \"before the fault-containment fixes\".")
    var label = ""
    @Option(help: "Folder for the child processes' logs, progress and results.")
    var workDir = ".chaos"
    @Option(help: "Tasks publishing through client.publish (one more task uses a windowed channel).")
    var producers = 4
    @Option(help: "QueueWorkers consuming.")
    var workers = 2
    @Option(help: "Most seconds to wait, after publishing, for the queues to drain.")
    var drainTimeout = 240
    @Option(help: "Inject only the first N faults of the schedule (a quick check); the invariant then fails.")
    var faultLimit: Int?

    func run() async throws {
        let seed = options.seed ?? UInt64.random(in: 1...999_999)
        say("==> chaos soak: seed \(seed), \(options.messages) messages (rerun with --seed \(seed))")
        let nodeNames = nodes.split(separator: ",").map(String.init)
        let ports = try options.urls.split(separator: ",").map {
            try RabbitMQClient.Configuration(url: String($0)).endpoints[0].port
        }
        guard nodeNames.count == 3, ports.count == 3 else {
            throw ValidationError("--nodes and --urls must name the same three nodes")
        }
        let cluster = Cluster(nodes: nodeNames, ports: ports,
                              brokerScript: URL(fileURLWithPath: brokerScript).standardizedFileURL.path,
                              rabbitmqctl: rabbitmqctl)
        let machine = await MachineInfo.collect()
        let started = ContinuousClock.now
        let tracker = CallTracker()
        try FileManager.default.createDirectory(atPath: workDir, withIntermediateDirectories: true)
        let paths = WorkPaths(folder: URL(fileURLWithPath: workDir).standardizedFileURL.path)
        paths.clear()
        try paths.writeProgress(0.02)

        let admin = RabbitMQClient(configuration: try options.configuration(name: "\(SoakTopology.connectionPrefix)admin"),
                                   logger: soakLogger("chaos.admin"))
        try await tracker.timed("declare topology", limit: options.callTimeout * SoakTopology.topology.queues.count) {
            _ = try await admin.declare(SoakTopology.topology)
        }
        try await cluster.flushMnesia()
        say("==> topology declared (\(SoakTopology.topology.queues.map(\.name).joined(separator: ", "))); "
            + "Mnesia logs flushed on every node")
        await admin.close()

        let children = Locked<[ChildProcess]>([])
        let signals = onTermination {
            for child in children.value { child.killNow() }
            say("==> interrupted: child processes killed")
            Glibc.exit(130)
        }
        let common = ["--urls", options.urls, "--heartbeat", "\(options.heartbeat)", "--timeout", "\(options.timeout)",
                      "--messages", "\(options.messages)", "--seed", "\(seed)"]
        let consumer = try ChildProcess(name: "consumer", arguments: ["consume"] + common + [
            "--workers", "\(workers)", "--ready-file", paths.consumerReady, "--result", paths.consumerResult,
        ], logPath: paths.consumerLog)
        children.withLock { $0.append(consumer) }
        let producer = try ChildProcess(name: "producer", arguments: ["produce"] + common + [
            "--producers", "\(producers)", "--progress-file", paths.progress, "--ready-file", paths.producerReady,
            "--result", paths.producerResult,
        ], logPath: paths.producerLog)
        children.withLock { $0.append(producer) }
        guard await paths.waitForReady([paths.consumerReady, paths.producerReady], timeout: .seconds(90)) else {
            for child in [producer, consumer] { await child.stop(grace: .seconds(5)) }
            throw ClusterError(description: "the producer or consumer did not start; see \(paths.folder)/*.log")
        }
        say("==> producer and consumer running (logs: \(paths.producerLog), \(paths.consumerLog))")

        // Faults, with the publishing paced so that it spans them.
        let fullSchedule = FaultSchedule.make(seed: seed, nodes: cluster.nodes.count)
        let schedule = Array(fullSchedule.prefix(faultLimit ?? fullSchedule.count))
        let injector = FaultInjector(cluster: cluster, heartbeat: .seconds(options.heartbeat))
        let pacer = Pacer(faults: schedule.count)
        let faultsStarted = ContinuousClock.now
        let pacing = Task {
            while !Task.isCancelled, producer.isRunning {
                try? paths.writeProgress(pacer.share())
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
        var records: [FaultRecord] = []
        for (index, fault) in schedule.enumerated() {
            try? await Task.sleep(for: fault.pauseBefore)
            pacer.begin()
            let record = await injector.inject(fault, index: index + 1, phaseStart: faultsStarted)
            pacer.end(after: record.seconds + record.healthSeconds)
            records.append(record)
            say(String(format: "[%4.0fs] fault %2d/%d %@ on %@: %.1f s, cluster whole after %.1f s%@", record.startedAt,
                       index + 1, schedule.count, fault.kind.rawValue, record.target, record.seconds,
                       record.healthSeconds, record.error.map { " ERROR \($0)" } ?? (record.healthy ? "" : " NOT WHOLE")))
            if !record.healthy {
                say("==> the cluster did not come back whole; no more faults")
                break
            }
        }
        let faultPhase = ContinuousClock.now - faultsStarted
        pacing.cancel()
        try paths.writeProgress(1)
        say("==> faults done; waiting for the producer to publish the rest")

        // Publishing ends, then the queues drain, then the consumer stops.
        var notes: [String] = []
        if !(await producer.wait(timeout: .seconds(300))) {
            notes.append("the producer had not finished 300 s after the faults; stopped with SIGTERM")
            if await producer.stop(grace: .seconds(30)) { notes.append("the producer needed SIGKILL") }
        }
        let drained = await waitForDrain(cluster, timeout: .seconds(drainTimeout))
        if !drained { notes.append("the queues had not drained \(drainTimeout) s after publishing") }
        if await consumer.stop(grace: .seconds(60)) { notes.append("the consumer needed SIGKILL") }
        for child in [producer, consumer] where child.exitStatus != 0 {
            notes.append("the \(child.name) exited with status \(child.exitStatus.map { "\($0)" } ?? "?")")
        }

        // What is still at the broker: the parking lot, and anything not processed.
        let sweeper = RabbitMQClient(configuration: try options.configuration(name: "\(SoakTopology.connectionPrefix)sweeper"),
                                     logger: soakLogger("chaos.sweeper"))
        var parked: [Int] = []
        var leftover: [Int] = []
        do {
            parked = try await drainIDs(SoakTopology.retry.parkingLotName, client: sweeper, tracker: tracker)
            for queue in SoakTopology.pendingQueues {
                leftover += try await drainIDs(queue, client: sweeper, tracker: tracker)
            }
        } catch {
            notes.append("reading the queues at the end failed: \(error)")
        }
        await sweeper.close()

        let producerResult = try? readJSON(ProducerResult.self, from: paths.producerResult)
        let consumerResult = try? readJSON(ConsumerResult.self, from: paths.consumerResult)
        if producerResult == nil { notes.append("no producer result (\(paths.producerResult))") }
        if consumerResult == nil { notes.append("no consumer result (\(paths.consumerResult))") }
        let outcome = SoakOutcome(
            seed: seed, messages: options.messages, label: label, machine: machine, heartbeat: options.heartbeat,
            timeout: options.timeout, producers: producers, workers: workers, producer: producerResult,
            consumer: consumerResult, parked: parked, leftover: leftover, faults: records,
            plannedFaults: fullSchedule.count, faultPhase: faultPhase.seconds,
            duration: (ContinuousClock.now - started).seconds, coordinatorOverruns: tracker.overruns(),
            drained: drained, notes: notes)
        let report = outcome.report()
        say("\n" + report)
        try Report.append(report, to: output)
        say("==> appended to \(output)")
        withExtendedLifetime(signals) {}
        if !outcome.passed { throw ExitCode(1) }
    }

    /// Waits until the work queue and the retry tiers hold no message (twice in a row, since a message can be in
    /// flight between a tier and the work queue).
    private func waitForDrain(_ cluster: Cluster, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        var emptyInARow = 0
        while ContinuousClock.now < deadline {
            if let counts = await cluster.messageCounts(SoakTopology.pendingQueues),
               counts.count == SoakTopology.pendingQueues.count, counts.values.allSatisfy({ $0 == 0 }) {
                emptyInARow += 1
                if emptyInARow == 2 { return true }
            } else {
                emptyInARow = 0
            }
            try? await Task.sleep(for: .seconds(2))
        }
        return false
    }

    /// Consumes `queue` until it stays empty for 3 s and returns the soak ids of its messages (acked: removed).
    private func drainIDs(_ queue: String, client: RabbitMQClient, tracker: CallTracker) async throws -> [Int] {
        let consumer = try await tracker.timed("consume \(queue)", limit: options.callTimeout * 3) {
            try await client.consume(queue, prefetch: 500)
        }
        let state = Locked<(ids: [Int], last: ContinuousClock.Instant)>(([], .now))
        let reading = Task {
            for try await delivery in consumer {
                state.withLock { state in
                    if let id = SoakTopology.id(of: delivery.properties.messageID) { state.ids.append(id) }
                    state.last = .now
                }
                try delivery.ack()
            }
        }
        let deadline = ContinuousClock.now + .seconds(300)
        while ContinuousClock.now < deadline, ContinuousClock.now - state.value.last < .seconds(3) {
            try? await Task.sleep(for: .milliseconds(250))
        }
        await consumer.cancel()
        _ = await reading.result
        return state.value.ids
    }
}

/// The share of the messages the producer may have published: 2% before the faults, then in step with the
/// faults done (the current one counted by its expected length, the mean so far), 100% after the last one.
final class Pacer: Sendable {
    private struct State {
        var done = 0
        var spent = 0.0
        var currentStart: ContinuousClock.Instant?
    }

    private let faults: Int
    private let state = Mutex(State())
    private static let initial = 0.02

    init(faults: Int) { self.faults = faults }

    func begin() { state.withLock { $0.currentStart = .now } }

    func end(after seconds: Double) {
        state.withLock { state in
            state.done += 1
            state.spent += seconds
            state.currentStart = nil
        }
    }

    func share() -> Double {
        guard faults > 0 else { return 1 }
        return state.withLock { state in
            let expected = state.done > 0 ? state.spent / Double(state.done) : 15
            let current = state.currentStart.map { min(1, (ContinuousClock.now - $0).seconds / expected) } ?? 0
            return Self.initial + (1 - Self.initial) * (Double(state.done) + current) / Double(faults)
        }
    }
}

/// The coordinator's files.
struct WorkPaths: Sendable {
    let folder: String
    var progress: String { "\(folder)/progress" }
    var producerReady: String { "\(folder)/producer.ready" }
    var consumerReady: String { "\(folder)/consumer.ready" }
    var producerResult: String { "\(folder)/producer.json" }
    var consumerResult: String { "\(folder)/consumer.json" }
    var producerLog: String { "\(folder)/producer.log" }
    var consumerLog: String { "\(folder)/consumer.log" }

    func clear() {
        for path in [progress, producerReady, consumerReady, producerResult, consumerResult] {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    func writeProgress(_ share: Double) throws {
        try Data(String(format: "%.5f\n", share).utf8).write(to: URL(fileURLWithPath: progress), options: .atomic)
    }

    func waitForReady(_ files: [String], timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if files.allSatisfy({ FileManager.default.fileExists(atPath: $0) }) { return true }
            try? await Task.sleep(for: .milliseconds(200))
        }
        return false
    }
}
