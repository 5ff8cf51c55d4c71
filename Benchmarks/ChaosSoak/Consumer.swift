import ArgumentParser
import Foundation
import RabbitMQ
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the consumer process reports to the coordinator.
struct ConsumerResult: Codable, Sendable {
    /// How many times the handler processed each id successfully (saturating at 255).
    var processed: [UInt8]
    /// Ids whose handler failed at least once (simulated), to tell losses in the retry tiers apart.
    var failedOnce: [Int]
    var handlerFailures: Int
    var outcomes: [String: Int]
    /// Workers whose `run()` returned or threw before the coordinator stopped them, and how.
    var workersEndedEarly: [String]
    /// How each worker's `run()` ended after the stop.
    var workerEndings: [String]
    var overruns: [CallTracker.Overrun]
    var calls: Int
    var memory: MemoryFigures
    var recovery: RecoveryFigures
}

/// `rabbitmq-chaos consume`: `QueueWorker`s on the work queue with its retry tiers and parking lot, whose handler
/// fails a seeded 5% of the attempts with a `RetryableError`. Runs until SIGTERM, then stops the workers (they
/// drain) and reports.
struct Consume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The soak's consumer process (started by run).")

    @OptionGroup var options: ClientOptions
    @Option(help: "QueueWorkers on the work queue.")
    var workers = 2
    @Option(help: "Handlers running at once in each worker.")
    var concurrency = 8
    @Option(help: "Prefetch of each worker.")
    var prefetch: UInt16 = 50
    @Option(help: "Share of handler attempts that fail with a retryable error, in percent.")
    var failurePercent: UInt64 = 5
    @Option(help: "Created once the workers consume.")
    var readyFile: String
    @Option(help: "Where the result goes (JSON).")
    var result: String

    func run() async throws {
        let client = RabbitMQClient(configuration: try options.configuration(name: "\(SoakTopology.connectionPrefix)consumer"),
                                    logger: soakLogger("chaos.consumer"))
        let recovery = RecoveryLog.watching(client)
        let tracker = CallTracker()
        let ledger = ConsumerLedger(messages: options.messages)
        try await tracker.timed("connect", limit: .seconds(15)) { try await client.connect() }
        let seed = options.seed ?? 0
        let failurePercent = failurePercent
        let handler: QueueWorker.Handler = { delivery in
            guard let id = SoakTopology.id(of: delivery.properties.messageID), id < ledger.messages else {
                throw NonRetryableError("no soak message id: \(delivery.properties.messageID ?? "none")")
            }
            // Decided by the id and how many times it was handed over, so that a seed fails the same deliveries,
            // and a message requeued with the same attempt header is not failed again for sure.
            let handling = UInt64(ledger.handOver(id))
            if SeededGenerator.mix(seed ^ (UInt64(id) << 16) ^ handling) % 100 < failurePercent {
                ledger.failed(id)
                throw RetryableError("simulated downstream timeout for \(SoakTopology.messageID(id))")
            }
            ledger.processed(id)
        }
        let queueWorkers = (0..<workers).map { _ in
            QueueWorker(client: client, configuration: .init(
                queue: SoakTopology.retry.queueName, prefetch: prefetch, concurrency: concurrency,
                drainTimeout: .seconds(10), retry: SoakTopology.retry), handler: handler)
        }
        let stopping = Locked<ContinuousClock.Instant?>(nil)
        let signals = onTermination {
            stopping.withLock { $0 = $0 ?? .now }
            for worker in queueWorkers { worker.stop() }
        }
        let memory = Locked(MemoryFigures())
        memory.withLock { $0.sample(\.start) }
        let endings = Locked<(early: [String], after: [String])>(([], []))
        let running = Locked(Set(queueWorkers.indices))
        for (index, worker) in queueWorkers.enumerated() {
            Task {
                var ending = "returned"
                do { try await worker.run() } catch { ending = "threw \(error)" }
                let early = stopping.value == nil
                endings.withLock { early ? $0.early.append("worker \(index) \(ending)")
                                         : $0.after.append("worker \(index) \(ending)") }
                if early { say("worker \(index) ended before the stop: \(ending)") }
                running.withLock { _ = $0.remove(index) }
            }
        }
        try? await Task.sleep(for: .seconds(1))
        _ = FileManager.default.createFile(atPath: readyFile, contents: nil)
        say("consumer ready: \(queueWorkers.count) workers, concurrency \(concurrency), prefetch \(prefetch)")
        // Until every worker has returned; after a stop, at most the drain timeout and 20 s more (a worker that
        // is still running then is reported, and the ledger written all the same).
        while !running.value.isEmpty {
            if let stoppedAt = stopping.value, ContinuousClock.now - stoppedAt > .seconds(30) {
                let stuck = running.value.sorted()
                say("workers \(stuck) had not returned 30 s after stop()")
                endings.withLock { $0.after += stuck.map { "worker \($0) had not returned from run() 30 s after stop()" } }
                break
            }
            if stopping.value == nil {
                let warmedUp = ledger.processedCount >= ledger.messages / 10
                memory.withLock { memory in
                    if memory.warm == 0, warmedUp { memory.sample(\.warm) }
                    memory.peak = max(memory.peak, residentSetSize())
                }
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        memory.withLock { $0.sample(\.end) }
        var outcomes: [String: Int] = [:]
        for worker in queueWorkers {
            for (outcome, count) in worker.outcomes { outcomes[outcome.rawValue, default: 0] += count }
        }
        let snapshot = ledger.snapshot
        let result = ConsumerResult(processed: snapshot.processed, failedOnce: snapshot.failedOnce,
                                    handlerFailures: snapshot.failures, outcomes: outcomes,
                                    workersEndedEarly: endings.withLock { $0.early },
                                    workerEndings: endings.withLock { $0.after }, overruns: tracker.overruns(),
                                    calls: tracker.count, memory: memory.value, recovery: recovery.figures)
        try writeJSON(result, to: self.result)
        say("consumer done: outcomes \(outcomes)")
        withExtendedLifetime(signals) {}
        // The result is written; a close that hangs must not keep the process (the coordinator would kill it).
        Task {
            try? await Task.sleep(for: .seconds(15))
            say("client.close() had not returned after 15 s")
            Glibc.exit(3)
        }
        await client.close()
    }
}

/// What the handlers did, by id.
final class ConsumerLedger: Sendable {
    let messages: Int
    private let state: Mutex<(processed: [UInt8], failedOnce: Set<Int>, failures: Int, count: Int)>
    private let handedOver: Mutex<[UInt16]>

    init(messages: Int) {
        self.messages = messages
        state = Mutex(([UInt8](repeating: 0, count: messages), [], 0, 0))
        handedOver = Mutex([UInt16](repeating: 0, count: messages))
    }

    /// Counts one more handing of `id` to the handler; returns how many came before.
    func handOver(_ id: Int) -> UInt16 {
        handedOver.withLock { counts in
            defer { counts[id] &+= 1 }
            return counts[id]
        }
    }

    func processed(_ id: Int) {
        state.withLock { state in
            if state.processed[id] < .max { state.processed[id] += 1 }
            state.count += 1
        }
    }

    func failed(_ id: Int) {
        state.withLock { state in
            state.failedOnce.insert(id)
            state.failures += 1
        }
    }

    var processedCount: Int { state.withLock { $0.count } }

    var snapshot: (processed: [UInt8], failedOnce: [Int], failures: Int) {
        state.withLock { ($0.processed, $0.failedOnce.sorted(), $0.failures) }
    }
}
