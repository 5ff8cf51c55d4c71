import Foundation
import Logging
import PostgresNIO
import RabbitMQ

/// A transactional outbox in a PostgreSQL table: an ``RabbitMQ/OutboxStore`` that the application writes in its own
/// transactions, and an ``RabbitMQ/OutboxRelay`` publishes.
///
/// ```swift
/// let outbox = try PostgresOutbox(client: postgres)
/// try await outbox.prepare()                       // creates the table if it is missing
/// try await postgres.withTransaction(logger: logger) { connection in
///     try await connection.query("INSERT INTO orders (id, amount) VALUES (\(id), \(amount))", logger: logger)
///     try await outbox.enqueue(try OutboxEvent(json: placed, exchange: "orders", routingKey: "order.placed",
///                                              aggregateKey: id), on: connection)
/// }
/// outbox.wakeup.nudge()                            // after the commit: the relay publishes at once
/// let relay = OutboxRelay(client: rabbitmq, store: outbox, wakeup: outbox.wakeup)
/// ```
/// The events are rows of ``tableName``, numbered by a sequence. A sequence number is taken when a row is inserted,
/// not when its transaction commits, so that two transactions writing events of the same aggregate key could
/// commit out of order: `enqueue(_:on:)` first takes a transaction-scoped advisory lock per key,
/// which makes a second writer of the key wait for the first one's commit. Enqueue a transaction's events in one
/// call (the locks are taken in key order), or in key order, so that two transactions cannot wait for each other.
/// A row is deleted once its event is confirmed.
public final class PostgresOutbox: OutboxStore {
    /// The client the relay's queries go through (the application's writes go through its own connection).
    public let client: PostgresClient
    /// The outbox table. Default `rabbitmq_outbox`.
    public let tableName: String
    /// Nudge it after committing events, so that the relay publishes them at once; otherwise it finds them at its
    /// next poll.
    public let wakeup: OutboxWakeup
    private let logger: Logger

    /// Creates an outbox over `client`; call ``prepare()`` before using it.
    /// - Parameters:
    ///   - client: a `PostgresClient` that is running (or will run) `run()`.
    ///   - tableName: the outbox table; a plain identifier (ASCII letters, digits, `_`).
    ///   - wakeup: the wakeup to nudge after commits. Default: a new one.
    ///   - logger: where the queries log (at debug and trace). Default: no logging.
    /// - Throws: ``RabbitMQ/RabbitMQError`` with ``RabbitMQ/RabbitMQError/Code/invalidArgument`` for any other table
    ///   name.
    public init(client: PostgresClient, tableName: String = "rabbitmq_outbox", wakeup: OutboxWakeup = OutboxWakeup(),
                logger: Logger = Logger(label: "rabbitmq.postgres", factory: { _ in SwiftLogNoOpLogHandler() }))
        throws
    {
        guard let first = tableName.unicodeScalars.first,
            first == "_" || (first.isASCII && first.properties.isAlphabetic),
            tableName.unicodeScalars.allSatisfy({
                $0.isASCII && ($0 == "_" || $0.properties.isAlphabetic || ("0"..."9").contains($0))
            })
        else {
            throw RabbitMQError(.invalidArgument, "the outbox table name must be a plain identifier")
        }
        self.client = client
        self.tableName = tableName
        self.wakeup = wakeup
        self.logger = logger
    }

    /// Creates the table if it is missing. Safe to call from several replicas at once: they take turns on an
    /// advisory lock.
    public func prepare() async throws {
        let table = tableName
        try await client.withTransaction(logger: logger) { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(table)))", logger: self.logger)
            try await connection.query("""
                CREATE TABLE IF NOT EXISTS \(unescaped: table) (
                    sequence bigserial PRIMARY KEY,
                    message_id text NOT NULL,
                    aggregate_key text,
                    exchange text NOT NULL,
                    routing_key text NOT NULL,
                    properties bytea NOT NULL,
                    body bytea NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    attempts integer NOT NULL DEFAULT 0,
                    last_error text
                )
                """, logger: self.logger)
        }
    }

    /// Writes `event` to the outbox on `connection`, in the caller's open transaction: it is published once the
    /// transaction commits, and never if it rolls back.
    /// - Throws: ``RabbitMQ/RabbitMQError`` for an event the broker would refuse (``RabbitMQ/OutboxEvent/validate()``),
    ///   or a `PSQLError`.
    public func enqueue(_ event: OutboxEvent, on connection: PostgresConnection) async throws {
        try await enqueue([event], on: connection)
    }

    /// Writes `events` to the outbox on `connection`, in the caller's open transaction, in order; the advisory
    /// locks of their keys are taken first, in key order.
    public func enqueue(_ events: [OutboxEvent], on connection: PostgresConnection) async throws {
        for event in events { try event.validate() }
        let table = tableName
        for key in Set(events.compactMap(\.aggregateKey)).sorted() {
            let lock = "\(table):\(key)"
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(lock)))", logger: logger)
        }
        for event in events {
            let properties = try event.encodedProperties()
            try await connection.query("""
                INSERT INTO \(unescaped: table) (message_id, aggregate_key, exchange, routing_key, properties, body)
                VALUES (\(event.messageID), \(event.aggregateKey), \(event.exchange), \(event.routingKey),
                        \(properties), \(event.body))
                """, logger: logger)
        }
    }

    public func pending(limit: Int) async throws -> [OutboxRecord] {
        let rows = try await client.query("""
            SELECT sequence, aggregate_key, exchange, routing_key, properties, body, attempts
            FROM \(unescaped: tableName) ORDER BY sequence LIMIT \(limit)
            """, logger: logger)
        var records: [OutboxRecord] = []
        for try await (sequence, key, exchange, routingKey, properties, body, attempts)
            in rows.decode((Int64, String?, String, String, Data, Data, Int32).self)
        {
            let event = OutboxEvent(exchange: exchange, routingKey: routingKey, body: body,
                                    properties: try OutboxEvent.decodeProperties(properties), aggregateKey: key)
            records.append(OutboxRecord(sequence: sequence, event: event, attempts: Int(attempts)))
        }
        return records
    }

    public func markSent(_ sequences: [Int64]) async throws {
        guard !sequences.isEmpty else { return }
        try await client.query("DELETE FROM \(unescaped: tableName) WHERE sequence = ANY(\(sequences))", logger: logger)
    }

    public func markFailed(_ sequence: Int64, reason: String) async throws {
        try await client.query("""
            UPDATE \(unescaped: tableName) SET attempts = attempts + 1, last_error = \(reason)
            WHERE sequence = \(sequence)
            """, logger: logger)
    }

    public func pendingCount() async throws -> Int {
        let rows = try await client.query("SELECT count(*)::int8 FROM \(unescaped: tableName)", logger: logger)
        for try await count in rows.decode(Int64.self) { return Int(count) }
        return 0
    }
}
