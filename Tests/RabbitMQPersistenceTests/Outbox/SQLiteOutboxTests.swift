import Foundation
import GRDB
import RabbitMQ
import RabbitMQSQLite
import RabbitMQTestSupport
import Testing

/// The SQLite outbox against a real database file and the shared broker: a relay restarted half-way. (Its broker
/// outage test is in ``OutboxOutageTests``.)
@Suite("SQLite outbox")
struct SQLiteOutboxTests {
    /// A fresh database file with the application's table of orders.
    static func database() throws -> (DatabaseQueue, path: String) {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("outbox-\(UUID().uuidString.prefix(8)).sqlite").path
        let database = try DatabaseQueue(path: path)
        try database.write { db in
            try db.execute(sql: "CREATE TABLE orders (id TEXT PRIMARY KEY, key TEXT NOT NULL)")
        }
        return (database, path)
    }

    @Test func aRelayStartedAgainPublishesWhatTheStoppedOneLeftInTheTable() async throws {
        let (database, path) = try Self.database()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outbox = try SQLiteOutbox(writer: database)
        try await Persistence.withBroker { client in
            let queue = Persistence.uniqueName("outbox_restart")
            try await client.declare(Queue(queue))
            let events = (0..<200).map { index in
                OutboxEvent(exchange: "", routingKey: queue, body: Data("\(index)".utf8),
                            aggregateKey: "key-\(index % 4)")
            }
            try await database.write { db in try outbox.enqueue(events, in: db) }
            // The first relay publishes small batches and is stopped after the first.
            let first = OutboxRelay(client: client, store: outbox, wakeup: outbox.wakeup,
                                    configuration: .init(batchSize: 20))
            let firstEvents = first.events()
            let firstRun = Task { try await first.run() }
            for await event in firstEvents {
                if case .published = event { break }
            }
            first.stop()
            try await firstRun.value
            let left = try await outbox.pendingCount()
            #expect(left > 0 && left < 200)

            let second = OutboxRelay(client: client, store: outbox, wakeup: outbox.wakeup)
            let secondRun = Task { try await second.run() }
            #expect(try await eventually(timeout: .seconds(60)) { try await outbox.pendingCount() == 0 })
            second.stop()
            try await secondRun.value
            #expect(first.statistics.published + second.statistics.published == 200)
            #expect(try await eventually(timeout: .seconds(60)) { try await client.inspectQueue(queue).messageCount == 200 })
            var delivered: [String] = []
            while let delivery = try await client.get(from: queue) {
                delivered.append(delivery.properties.messageID ?? "")
                try delivery.ack()
            }
            #expect(delivered.count == 200)
            for key in 0..<4 {
                let expected = events.filter { $0.aggregateKey == "key-\(key)" }.map(\.messageID)
                #expect(delivered.filter { expected.contains($0) } == expected)
            }
            _ = try await client.deleteQueue(queue)
        }
    }
}
