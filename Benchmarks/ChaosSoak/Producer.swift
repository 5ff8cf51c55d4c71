import ArgumentParser
import Foundation
import RabbitMQ
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the producer process reports to the coordinator.
struct ProducerResult: Codable, Sendable {
    /// 1 for each message id the broker confirmed (at least once), else 0.
    var confirmed: [UInt8]
    /// Ids given up on: a non-retryable failure, or 10 retryable ones in a row.
    var gaveUp: [Int]
    var failures: [FailureCount]
    var calls: Int
    var overruns: [CallTracker.Overrun]
    var memory: MemoryFigures
    var recovery: RecoveryFigures
    /// Whether it was stopped (SIGTERM) before publishing everything.
    var interrupted: Bool
}

/// `rabbitmq-chaos produce`: publishes ids 0..<messages, paced by the coordinator's progress file, from several
/// tasks through `client.publish` and from one task through a channel with a confirm window. A publish that
/// fails retryably is tried again (the same id), as an application would; each failure is counted.
struct Produce: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The soak's producer process (started by run).")

    @OptionGroup var options: ClientOptions
    @Option(help: "Tasks publishing one message at a time through client.publish.")
    var producers = 4
    @Option(help: "Unconfirmed messages of the windowed channel.")
    var window = 100
    @Option(help: "A file holding the share (0 to 1) of the messages that may be published by now.")
    var progressFile: String
    @Option(help: "Created once connected.")
    var readyFile: String
    @Option(help: "Where the result goes (JSON).")
    var result: String

    func run() async throws {
        let client = RabbitMQClient(configuration: try options.configuration(name: "\(SoakTopology.connectionPrefix)producer"),
                                    logger: soakLogger("chaos.producer"))
        let recovery = RecoveryLog.watching(client)
        let state = PublisherState(messages: options.messages, timeout: options.callTimeout)
        let signals = onTermination { state.stop() }
        try await state.tracker.timed("connect", limit: .seconds(15)) { try await client.connect() }
        let windowed = try await state.tracker.timed("openChannel", limit: options.callTimeout) {
            try await client.openChannel()
        }
        try await state.tracker.timed("confirm.select", limit: options.callTimeout) {
            try await windowed.enableConfirms(window: window)
        }
        var memory = MemoryFigures()
        memory.sample(\.start)
        _ = FileManager.default.createFile(atPath: readyFile, contents: nil)
        say("producer ready: \(producers) client.publish tasks and one channel with a window of \(window)")

        await withTaskGroup(of: Void.self) { group in
            group.addTask { await state.followProgress(file: progressFile) }
            for _ in 0..<producers {
                group.addTask { await state.publishOneByOne(client) }
            }
            group.addTask { await state.publishWindowed(windowed) }
            // The progress follower ends once every publishing task has.
            for _ in 0..<(producers + 1) { await group.next() }
            state.finish()
        }
        memory.warm = state.warmRSS
        memory.peak = max(memory.peak, state.peakRSS)
        memory.sample(\.end)
        let result = ProducerResult(confirmed: state.confirmedFlags, gaveUp: state.gaveUpIDs,
                                    failures: state.failures.all, calls: state.tracker.count,
                                    overruns: state.tracker.overruns(), memory: memory, recovery: recovery.figures,
                                    interrupted: state.wasStopped)
        try writeJSON(result, to: self.result)
        say("producer done: \(result.confirmed.reduce(0) { $0 + Int($1) }) confirmed, \(result.gaveUp.count) given up")
        withExtendedLifetime(signals) {}
        // The result is written; a close that hangs must not keep the process (the coordinator would kill it).
        Task {
            try? await Task.sleep(for: .seconds(15))
            say("closing had not finished after 15 s")
            Glibc.exit(3)
        }
        try? await windowed.close()
        await client.close()
    }
}

/// The producer's shared state: the next id, the pace, the ledger.
final class PublisherState: Sendable {
    let messages: Int
    let timeout: Duration
    let tracker = CallTracker()
    let failures = FailureLog()
    private let next = Atomic<Int>(0)
    private let allowance = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)
    private let ledger: Mutex<(confirmed: [UInt8], gaveUp: [Int])>
    private let memory = Mutex<(warm: Int, peak: Int)>((0, 0))

    /// Most attempts of one id before it is given up.
    static let maxAttempts = 10

    init(messages: Int, timeout: Duration) {
        self.messages = messages
        self.timeout = timeout
        ledger = Mutex((confirmed: [UInt8](repeating: 0, count: messages), gaveUp: []))
    }

    enum Claim { case id(Int), wait, done }

    /// The next id to publish, `.wait` when the pace allows none yet, `.done` when all are taken.
    func claim() -> Claim {
        while true {
            if stopped.load(ordering: .relaxed) { return .done }
            let current = next.load(ordering: .relaxed)
            if current >= messages { return .done }
            if current >= allowance.load(ordering: .relaxed) { return .wait }
            if next.compareExchange(expected: current, desired: current + 1, ordering: .relaxed).exchanged {
                return .id(current)
            }
        }
    }

    var claimedCount: Int { next.load(ordering: .relaxed) }
    var isFinished: Bool { finished.load(ordering: .relaxed) }
    var wasStopped: Bool { stopped.load(ordering: .relaxed) }
    var warmRSS: Int { memory.withLock { $0.warm } }
    var peakRSS: Int { memory.withLock { $0.peak } }
    var confirmedFlags: [UInt8] { ledger.withLock { $0.confirmed } }
    var gaveUpIDs: [Int] { ledger.withLock { $0.gaveUp } }

    func stop() { stopped.store(true, ordering: .relaxed) }
    func finish() { finished.store(true, ordering: .relaxed) }

    /// Reads the coordinator's progress file every 200 ms into the allowance, and samples the RSS (warm once 10%
    /// of the ids are taken), until publishing is finished.
    func followProgress(file: String) async {
        while !isFinished {
            if let text = try? String(contentsOfFile: file, encoding: .utf8),
               let share = Double(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                allowance.store(Int((min(max(share, 0), 1) * Double(messages)).rounded(.up)), ordering: .relaxed)
            }
            let rss = residentSetSize()
            let claimed = claimedCount
            memory.withLock { memory in
                memory.peak = max(memory.peak, rss)
                if memory.warm == 0, claimed >= messages / 10 { memory.warm = rss }
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }

    func confirm(_ id: Int) { ledger.withLock { $0.confirmed[id] = 1 } }
    func giveUp(_ id: Int) { ledger.withLock { $0.gaveUp.append(id) } }

    static func message(_ id: Int) -> (body: Data, properties: MessageProperties) {
        let messageID = SoakTopology.messageID(id)
        return (Data("chaos soak message \(messageID)".utf8), MessageProperties(messageID: messageID))
    }

    /// Whether a failed publish is worth trying again, after a pause that grows with the attempts.
    private func shouldRetry(_ error: any Error, attempt: Int) async -> Bool {
        failures.record(error)
        guard (error as? RabbitMQError)?.isRetryable == true, attempt < Self.maxAttempts, !wasStopped else {
            return false
        }
        try? await Task.sleep(for: .milliseconds(100 * min(attempt, 10)))
        return true
    }

    /// One task publishing through the client's shared confirm channel, one message at a time.
    func publishOneByOne(_ client: RabbitMQClient) async {
        while true {
            switch claim() {
            case .done:
                return
            case .wait:
                try? await Task.sleep(for: .milliseconds(50))
            case .id(let id):
                let message = Self.message(id)
                var attempt = 1
                while true {
                    do {
                        try await tracker.timed("client.publish", limit: timeout) {
                            try await client.publish(message.body, to: SoakTopology.exchange,
                                                     routingKey: SoakTopology.routingKey,
                                                     properties: message.properties)
                        }
                        confirm(id)
                        break
                    } catch {
                        guard await shouldRetry(error, attempt: attempt) else { giveUp(id); break }
                        attempt += 1
                    }
                }
            }
        }
    }

    /// One task publishing through `channel` with its confirm window, awaiting confirmations in batches.
    func publishWindowed(_ channel: Channel) async {
        var pending: [(id: Int, attempt: Int, started: ContinuousClock.Instant, confirmation: PublishConfirmation)] = []
        var retries: [(id: Int, attempt: Int)] = []

        func settle() async {
            for publish in pending {
                // Its deadline is its publish's start plus the confirm timeout. One settled before this wait starts
                // cannot overrun, however late the batch is awaited.
                let settledAlready = publish.confirmation.isSettled
                do {
                    try await publish.confirmation.wait()
                    if !settledAlready { tracker.record("confirmation.wait", started: publish.started, limit: timeout) }
                    confirm(publish.id)
                } catch {
                    if !settledAlready { tracker.record("confirmation.wait", started: publish.started, limit: timeout) }
                    if await shouldRetry(error, attempt: publish.attempt) {
                        retries.append((publish.id, publish.attempt + 1))
                    } else {
                        giveUp(publish.id)
                    }
                }
            }
            pending.removeAll()
        }

        while true {
            let next: (id: Int, attempt: Int)
            if !retries.isEmpty {
                next = retries.removeFirst()
            } else {
                switch claim() {
                case .done:
                    await settle()
                    if retries.isEmpty { return }
                    continue
                case .wait:
                    if pending.isEmpty { try? await Task.sleep(for: .milliseconds(50)) } else { await settle() }
                    continue
                case .id(let id):
                    next = (id, 1)
                }
            }
            let message = Self.message(next.id)
            let started = ContinuousClock.now
            do {
                let confirmation = try await tracker.timed("channel.publish", limit: timeout) {
                    try await channel.publishWithDeferredConfirm(message.body, to: SoakTopology.exchange,
                                                                 routingKey: SoakTopology.routingKey,
                                                                 properties: message.properties)
                }
                pending.append((next.id, next.attempt, started, confirmation))
                if pending.count >= 500 { await settle() }
            } catch {
                await settle()
                if await shouldRetry(error, attempt: next.attempt) {
                    retries.append((next.id, next.attempt + 1))
                } else {
                    giveUp(next.id)
                }
            }
        }
    }
}
