import Foundation
import Logging
import RabbitMQ
import Synchronization
import RabbitMQTestSupport
import Testing

/// What both outbox tests check, against a node of their own (``OutboxBroker``) that is stopped while the
/// application keeps writing: events written before, during and after a broker outage, each in the application's own
/// transaction with its row, are all delivered, each key's events in the order they were written; copies published
/// twice carry the same message id; an event written in a transaction that rolled back is never published.
enum OutboxOutageScenario {
    static let keys = (0..<8).map { "order-\($0)" }
    /// Events written in each phase: before the outage, during it, after it.
    static let perPhase = 40

    /// Writes one event in a transaction of the application's, with its row; the transaction rolls back after the
    /// write when `rollBack` is set.
    typealias Write = @Sendable (OutboxEvent, _ rollBack: Bool) async throws -> Void

    static func run(store: any OutboxStore, wakeup: OutboxWakeup, write: Write) async throws {
        let broker = OutboxBroker.shared
        try await broker.with {
            var configuration = try RabbitMQClient.Configuration(url: broker.url)
            configuration.connectionName = "outbox outage"
            configuration.confirmTimeout = .seconds(5)
            configuration.connectTimeout = .seconds(2)
            configuration.handshakeTimeout = .seconds(5)
            configuration.requestTimeout = .seconds(30)
            configuration.recovery = .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))
            let client = RabbitMQClient(configuration: configuration, logger: Persistence.logger)
            try await client.connect()
            defer { Task { await client.close() } }
            let queue = Persistence.uniqueName("outbox")
            try await client.declare(Queue(queue))

            let relay = OutboxRelay(client: client, store: store, wakeup: wakeup, configuration: .init(
                pollInterval: .milliseconds(200),
                retry: .init(initialDelay: .milliseconds(100), maxDelay: .seconds(1))))
            let events = relay.events()
            let seen = Task {
                var seen: [String] = []
                for await event in events {
                    switch event {
                    case .publishFailed: seen.append("publishFailed")
                    case .recovered: seen.append("recovered")
                    default: break
                    }
                }
                return seen
            }
            let running = Task { try await relay.run() }

            var written: [OutboxEvent] = []
            func writePhase(_ phase: Int) async throws {
                for index in 0..<perPhase {
                    let key = keys[index % keys.count]
                    let event = OutboxEvent(exchange: "", routingKey: queue,
                                            body: Data("\(key) \(phase).\(index)".utf8), aggregateKey: key)
                    try await write(event, false)
                    written.append(event)
                }
            }
            try await writePhase(1)
            #expect(try await eventually(timeout: .seconds(60)) { try await store.pendingCount() == 0 })

            try await broker.stop()
            let outageWrites = ContinuousClock.now
            try await writePhase(2)
            // The application does not wait for the broker: its writes commit while the broker is down.
            #expect(ContinuousClock.now - outageWrites < .seconds(20))
            #expect(try await store.pendingCount() == perPhase)
            // An event whose transaction rolls back is never published.
            let rolledBack = OutboxEvent(exchange: "", routingKey: queue, body: Data("rolled back".utf8),
                                         aggregateKey: keys[0])
            await #expect(throws: HandlerFailure.self) { try await write(rolledBack, true) }
            #expect(try await eventually(timeout: .seconds(60)) { relay.statistics.failedRounds > 0 })
            try await broker.restart()
            try await writePhase(3)
            #expect(try await eventually(timeout: .seconds(120)) { try await store.pendingCount() == 0 })
            relay.stop()
            try await running.value
            #expect(await seen.value.contains("recovered"))

            // Everything is in the queue now (persistent messages in a durable queue survived the restart).
            var delivered: [(id: String, body: String)] = []
            while let delivery = try await client.get(from: queue) {
                delivered.append((delivery.properties.messageID ?? "", String(decoding: delivery.body, as: UTF8.self)))
                try delivery.ack()
            }
            let writtenIDs = written.map(\.messageID)
            let deliveredIDs = delivered.map(\.id)
            #expect(Set(deliveredIDs) == Set(writtenIDs), "every event written is delivered, and nothing else")
            #expect(!deliveredIDs.contains(rolledBack.messageID))
            for key in keys {
                let expected = written.filter { $0.aggregateKey == key }.map(\.messageID)
                var firstSeen: [String] = []
                var seenIDs = Set<String>()
                for id in deliveredIDs where expected.contains(id) && seenIDs.insert(id).inserted {
                    firstSeen.append(id)
                }
                #expect(firstSeen == expected, "\(key)'s events arrive in the order they were written")
            }
            // Copies share their original's id and body.
            let bodies = Dictionary(grouping: delivered, by: \.id).mapValues { Set($0.map(\.body)) }
            #expect(bodies.values.allSatisfy { $0.count == 1 })
            print("outbox outage: \(written.count) events written, \(delivered.count) delivered "
                  + "(\(delivered.count - Set(deliveredIDs).count) duplicates), relay \(relay.statistics)")
            await client.close()
        }
    }
}
