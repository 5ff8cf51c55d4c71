import Foundation
import RabbitMQ
import Synchronization
import RabbitMQTestSupport

// The harness of the recovery and cluster failover tests: publishers that record every outcome, consumers that
// record every delivery, and the client's connection events.

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

/// Limits every publisher loop shares, and the signals that hold, resume and stop them.
final class PublishLimits: Sendable {
    /// Publishes per task before ``resume()``, and as many again after it.
    let maxCount: Int
    /// When the loops stop at the latest: a hang guard, since tests stop them; long enough for a restart whose
    /// `rabbitmqctl stop_app` and `start_app` took 205 s and 106 s on a loaded two-core machine.
    let deadline: ContinuousClock.Instant
    /// How long one publish (or one confirmation) may take before it counts as hung.
    let perPublish: Duration
    private let stopped = Atomic<Bool>(false)
    private let resumed = Atomic<Bool>(false)

    init(maxCount: Int = 20_000, duration: Duration = .seconds(900), perPublish: Duration = .seconds(45)) {
        self.maxCount = maxCount
        self.deadline = .now + duration
        self.perPublish = perPublish
    }

    /// Tells the loops to stop.
    func stop() { stopped.store(true, ordering: .releasing) }

    /// Lets loops that reached ``maxCount`` go on, up to twice as many: a test that disturbs the broker calls it
    /// once the broker is back, so that publishing goes on after a disturbance that took longer than the loops
    /// needed for their first ``maxCount`` (`rabbitmqctl stop_app` can take minutes on a loaded machine).
    func resume() { resumed.store(true, ordering: .releasing) }

    var shouldContinue: Bool { !stopped.load(ordering: .acquiring) && ContinuousClock.now < deadline }

    /// Whether a loop may publish its message number `index` (from 0): waits at ``maxCount`` until ``resume()``;
    /// `false` once stopped, past the deadline, or at twice ``maxCount``.
    func mayPublish(_ index: Int) async -> Bool {
        while shouldContinue {
            if index < maxCount { return true }
            if resumed.load(ordering: .acquiring) { return index < 2 * maxCount }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }
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

    /// Lets loops that reached their first ``PublishLimits/maxCount`` publish as many again.
    func resume() {
        limits.resume()
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

enum RecoveryHarness {
    /// Message properties carrying `id` as the message id.
    static func properties(id: String) -> MessageProperties {
        var properties = MessageProperties()
        properties.messageID = id
        return properties
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

    /// Publishes through ``RabbitMQClient/publish(_:to:routingKey:properties:mandatory:)``, one at a time, each
    /// waiting for its confirmation, until told to stop; records every outcome.
    static func publishOneByOne(_ client: RabbitMQClient, routingKey: String, prefix: String,
                                ledger: PublishLedger, limits: PublishLimits) async {
        var index = 0
        while await limits.mayPublish(index) {
            let id = "\(prefix)-\(index)"
            index += 1
            let properties = properties(id: id)
            let outcome = outcome(await Bounded.run(limits.perPublish) {
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
            ledger.record(entry.id, outcome(await Bounded.run(limits.perPublish) { try await entry.confirmation.wait() }))
        }
        var index = 0
        while await limits.mayPublish(index) {
            let id = "\(prefix)-\(index)"
            index += 1
            let properties = properties(id: id)
            let published = await Bounded.run(limits.perPublish) {
                try await channel.publishWithDeferredConfirm(Data(id.utf8), routingKey: routingKey,
                                                             properties: properties)
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
                do { try delivery.ack() } catch { log.recordAckFailure() }
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
        _ = try await eventually(timeout: .seconds(60)) { log.total >= count }
        await consumer.cancel()
        await task.value
        return log
    }
}
