import Foundation
import GRDB
import RabbitMQ

/// A transactional outbox in a SQLite database (GRDB): an ``RabbitMQ/OutboxStore`` that the application writes in
/// its own transactions, and an ``RabbitMQ/OutboxRelay`` publishes.
///
/// ```swift
/// let outbox = try SQLiteOutbox(writer: dbQueue)
/// try await dbQueue.write { db in
///     try order.insert(db)
///     try outbox.enqueue(try OutboxEvent(json: placed, exchange: "orders", routingKey: "order.placed",
///                                        aggregateKey: order.id), in: db)
/// }
/// let relay = OutboxRelay(client: client, store: outbox, wakeup: outbox.wakeup)
/// ```
/// The events are rows of ``tableName`` (created if missing), numbered by an `AUTOINCREMENT` key: SQLite has one
/// writer at a time, so the numbers follow commit order. A row is deleted once its event is confirmed. An event
/// enqueued in a transaction that rolls back is never published.
public final class SQLiteOutbox: OutboxStore {
    /// The database the outbox lives in: the application's own.
    public let writer: any DatabaseWriter
    /// The outbox table. Default `rabbitmq_outbox`.
    public let tableName: String
    /// Nudged after each committed transaction that enqueued events; give it to the relay.
    public let wakeup: OutboxWakeup

    /// Uses the application's database, creating the outbox table if it is missing.
    /// - Parameters:
    ///   - writer: the database (a `DatabaseQueue` or `DatabasePool`).
    ///   - tableName: the outbox table; a plain identifier (ASCII letters, digits, `_`).
    ///   - wakeup: the wakeup nudged after commits. Default: a new one.
    /// - Throws: `DatabaseError` if the table cannot be created; ``RabbitMQ/RabbitMQError`` with
    ///   ``RabbitMQ/RabbitMQError/Code/invalidArgument`` for a table name that is not a plain identifier.
    public init(writer: any DatabaseWriter, tableName: String = "rabbitmq_outbox",
                wakeup: OutboxWakeup = OutboxWakeup()) throws {
        guard !tableName.isEmpty, tableName.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }),
            !(tableName.first?.isNumber ?? true)
        else {
            throw RabbitMQError(.invalidArgument, "the outbox table name must be a plain identifier")
        }
        self.writer = writer
        self.tableName = tableName
        self.wakeup = wakeup
        try writer.write { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS \(tableName) (
                    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
                    message_id TEXT NOT NULL,
                    aggregate_key TEXT,
                    exchange TEXT NOT NULL,
                    routing_key TEXT NOT NULL,
                    properties BLOB NOT NULL,
                    body BLOB NOT NULL,
                    created_at REAL NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    last_error TEXT
                )
                """)
        }
    }

    /// Writes `event` to the outbox in the caller's transaction: it is published once the transaction commits, and
    /// never if it rolls back. The relay is nudged after the commit.
    /// - Throws: ``RabbitMQ/RabbitMQError`` for an event the broker would refuse (``RabbitMQ/OutboxEvent/validate()``),
    ///   or a `DatabaseError`.
    public func enqueue(_ event: OutboxEvent, in db: Database) throws {
        try enqueue([event], in: db)
    }

    /// Writes `events` to the outbox in the caller's transaction, in order. Each is checked as in the single-event
    /// form.
    public func enqueue(_ events: [OutboxEvent], in db: Database) throws {
        guard !events.isEmpty else { return }
        let now = Date().timeIntervalSince1970
        for event in events {
            try event.validate()
            try db.execute(sql: """
                INSERT INTO \(tableName)
                    (message_id, aggregate_key, exchange, routing_key, properties, body, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [event.messageID, event.aggregateKey, event.exchange, event.routingKey,
                                 try event.encodedProperties(), event.body, now])
        }
        let wakeup = self.wakeup
        if db.isInsideTransaction {
            db.afterNextTransaction(onCommit: { _ in wakeup.nudge() })
        } else {
            wakeup.nudge()
        }
    }

    public func pending(limit: Int) async throws -> [OutboxRecord] {
        let table = tableName
        return try await writer.read { db in
            try Row.fetchAll(db, sql: """
                SELECT sequence, aggregate_key, exchange, routing_key, properties, body, attempts
                FROM \(table) ORDER BY sequence LIMIT ?
                """, arguments: [limit]).map { row in
                let event = OutboxEvent(
                    exchange: row["exchange"], routingKey: row["routing_key"], body: row["body"] ?? Data(),
                    properties: try OutboxEvent.decodeProperties(row["properties"] ?? Data()),
                    aggregateKey: row["aggregate_key"])
                return OutboxRecord(sequence: row["sequence"], event: event, attempts: row["attempts"])
            }
        }
    }

    public func markSent(_ sequences: [Int64]) async throws {
        guard !sequences.isEmpty else { return }
        let table = tableName
        try await writer.write { db in
            for chunk in stride(from: 0, to: sequences.count, by: 500) {
                let part = Array(sequences[chunk..<min(chunk + 500, sequences.count)])
                let placeholders = Array(repeating: "?", count: part.count).joined(separator: ",")
                try db.execute(sql: "DELETE FROM \(table) WHERE sequence IN (\(placeholders))",
                               arguments: StatementArguments(part))
            }
        }
    }

    public func markFailed(_ sequence: Int64, reason: String) async throws {
        let table = tableName
        try await writer.write { db in
            try db.execute(sql: "UPDATE \(table) SET attempts = attempts + 1, last_error = ? WHERE sequence = ?",
                           arguments: [reason, sequence])
        }
    }

    public func pendingCount() async throws -> Int {
        let table = tableName
        return try await writer.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM \(table)") ?? 0 }
    }
}
