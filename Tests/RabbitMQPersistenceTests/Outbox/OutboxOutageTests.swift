import Foundation
import GRDB
import PostgresNIO
import RabbitMQ
import RabbitMQPostgres
import RabbitMQSQLite
import Testing

/// Both outboxes while their broker (a node of these tests' own, ``OutboxBroker``) is stopped and started again
/// as the application writes: ``OutboxOutageScenario``. One at a time: they share the node.
@Suite("Outbox: broker outage", .serialized)
struct OutboxOutageTests {
    @Test func sqliteLosesNoEventWhenTheBrokerIsDownDuringWritesAndKeepsEachKeysOrder() async throws {
        let (database, path) = try SQLiteOutboxTests.database()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outbox = try SQLiteOutbox(writer: database)
        try await OutboxOutageScenario.run(store: outbox, wakeup: outbox.wakeup) { event, rollBack in
            try await database.write { db in
                try db.execute(sql: "INSERT INTO orders (id, key) VALUES (?, ?)",
                               arguments: [event.messageID, event.aggregateKey])
                try outbox.enqueue(event, in: db)
                if rollBack { throw HandlerFailure() }
            }
        }
        // The rows and their events committed together: one row per event published, none for the rolled back one.
        let orders = try await database.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM orders") }
        #expect(orders == 3 * OutboxOutageScenario.perPhase)
    }

    @Test(.enabled(if: Persistence.hasPostgres, "needs POSTGRES_URL"))
    func postgresLosesNoEventWhenTheBrokerIsDownDuringWritesAndKeepsEachKeysOrder() async throws {
        try await Persistence.withPostgres { postgres in
            let table = Persistence.uniqueName("outbox")
            let orders = Persistence.uniqueName("orders")
            let outbox = try PostgresOutbox(client: postgres, tableName: table)
            try await outbox.prepare()
            try await postgres.query("CREATE TABLE \(unescaped: orders) (id text PRIMARY KEY, key text NOT NULL)")
            try await OutboxOutageScenario.run(store: outbox, wakeup: outbox.wakeup) { event, rollBack in
                do {
                    try await postgres.withTransaction(logger: Persistence.logger) { connection in
                        try await connection.query("""
                            INSERT INTO \(unescaped: orders) (id, key)
                            VALUES (\(event.messageID), \(event.aggregateKey))
                            """, logger: Persistence.logger)
                        try await outbox.enqueue(event, on: connection)
                        if rollBack { throw HandlerFailure() }
                    }
                } catch let error as PostgresTransactionError {
                    throw error.closureError ?? error
                }
                outbox.wakeup.nudge()
            }
            #expect(try await rowCount(postgres, orders) == 3 * OutboxOutageScenario.perPhase)
            #expect(try await rowCount(postgres, table) == 0)
            try await postgres.query("DROP TABLE \(unescaped: orders), \(unescaped: table)")
        }
    }
}
