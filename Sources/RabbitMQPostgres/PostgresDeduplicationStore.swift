import Foundation
import Logging
import PostgresNIO
import RabbitMQ

/// A ``RabbitMQ/DeduplicationStore`` in a PostgreSQL table, shared by worker replicas on any number of machines.
///
/// Give it a `PostgresClient` that you run (`client.run()` in a task or a `ServiceGroup`), then call ``prepare()``
/// once to create ``tableName`` if it is missing. A claim is an `INSERT … ON CONFLICT DO UPDATE` that takes over
/// an existing claim only once it has expired, timed by the server's clock (`now()`), so replicas with skewed
/// clocks agree. Processed records stay until ``purge(processedBefore:)`` removes them.
///
/// For exactly-once effects, write the handler's effect with ``processOnce(id:_:)``: the effect and the record of
/// the id commit in one transaction, or neither does.
public final class PostgresDeduplicationStore: DeduplicationStore {
    /// The client the store queries through.
    public let client: PostgresClient
    /// The table of claims and processed ids. Default `rabbitmq_deduplication`.
    public let tableName: String
    private let logger: Logger
    /// Tells this store's claims from other replicas' claims, so that a release removes only its own.
    private let owner = UUID()

    /// Creates a store over `client`; call ``prepare()`` before using it.
    /// - Parameters:
    ///   - client: A `PostgresClient` that is running (or will run) `run()`.
    ///   - tableName: The table of claims and processed ids; a plain identifier (ASCII letters, digits, `_`).
    ///   - logger: Where the queries log (at debug and trace). Default: no logging.
    /// - Throws: ``PostgresDeduplicationStoreError/invalidTableName`` for any other table name.
    public init(client: PostgresClient, tableName: String = "rabbitmq_deduplication",
                logger: Logger = Logger(label: "rabbitmq.postgres", factory: { _ in SwiftLogNoOpLogHandler() }))
        throws
    {
        guard Self.isPlainIdentifier(tableName) else { throw PostgresDeduplicationStoreError.invalidTableName }
        self.client = client
        self.tableName = tableName
        self.logger = logger
    }

    /// Creates the table if it is missing. Safe to call from several replicas at once: they take turns on an
    /// advisory lock.
    public func prepare() async throws {
        let table = tableName
        try await transaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext(\(table)))", logger: self.logger)
            try await connection.query("""
                CREATE TABLE IF NOT EXISTS \(unescaped: table) (
                    id text PRIMARY KEY,
                    state text NOT NULL CHECK (state IN ('claimed', 'processed')),
                    owner uuid,
                    expires_at timestamptz,
                    updated_at timestamptz NOT NULL DEFAULT now()
                )
                """, logger: self.logger)
        }
    }

    public func claim(_ id: String, for ttl: Duration) async throws -> DeduplicationClaim {
        let seconds = Double(ttl.components.seconds) + Double(ttl.components.attoseconds) / 1e18
        // A row that vanished between the two statements (released meanwhile) is claimed on the next round.
        for _ in 0..<3 {
            let claimed = try await client.query("""
                INSERT INTO \(unescaped: tableName) AS t (id, state, owner, expires_at, updated_at)
                VALUES (\(id), 'claimed', \(owner), now() + make_interval(secs => \(seconds)), now())
                ON CONFLICT (id) DO UPDATE SET state = 'claimed', owner = excluded.owner,
                    expires_at = excluded.expires_at, updated_at = now()
                WHERE t.state = 'claimed' AND t.expires_at <= now()
                RETURNING t.id
                """, logger: logger)
            if try await !claimed.collect().isEmpty { return .claimed }
            let rows = try await client.query("SELECT state FROM \(unescaped: tableName) WHERE id = \(id)",
                                              logger: logger)
            if let state = try await rows.collect().first?.decode(String.self) {
                return state == "processed" ? .processed : .inProgress
            }
        }
        return .inProgress
    }

    public func markProcessed(_ id: String) async throws {
        try await client.query(Self.recordProcessed(id, in: tableName), logger: logger)
    }

    public func release(_ id: String) async throws {
        try await client.query("""
            DELETE FROM \(unescaped: tableName) WHERE id = \(id) AND state = 'claimed' AND owner = \(owner)
            """, logger: logger)
    }

    /// Runs `body` and records `id` as processed in one transaction, unless `id` was processed before: the body's
    /// writes and the record commit together, or, if `body` throws, neither is kept (and its error is rethrown).
    ///
    /// The record is written first, so that a concurrent `processOnce` of the same id (another replica, a
    /// redelivery) waits on its row lock until this transaction ends: then it finds the id processed (committed)
    /// and returns ``RabbitMQ/ProcessOnceResult/duplicate``, or runs its body (rolled back). A claim on `id` by a
    /// ``RabbitMQ/Deduplicator`` does not stop it: the transaction is the guard.
    /// - Parameters:
    ///   - id: The message id (or business id) whose effect `body` writes.
    ///   - body: The handler's writes, on the transaction's connection.
    /// - Returns: ``RabbitMQ/ProcessOnceResult/processed(_:)`` with the body's value, or
    ///   ``RabbitMQ/ProcessOnceResult/duplicate`` if `id` was processed before and `body` did not run.
    /// - Throws: What `body` throws, or a `PSQLError` / `PostgresTransactionError` from the database.
    public func processOnce<T: Sendable>(id: String, _ body: (PostgresConnection) async throws -> T)
        async throws -> ProcessOnceResult<T>
    {
        let query = Self.recordProcessed(id, in: tableName, returning: true)
        return try await transaction { connection -> ProcessOnceResult<T> in
            let recorded = try await connection.query(query, logger: self.logger)
            guard try await !recorded.collect().isEmpty else { return .duplicate }
            return .processed(try await body(connection))
        }
    }

    /// Whether `id` is recorded as processed.
    public func isProcessed(_ id: String) async throws -> Bool {
        let rows = try await client.query("SELECT state FROM \(unescaped: tableName) WHERE id = \(id)", logger: logger)
        return try await rows.collect().first?.decode(String.self) == "processed"
    }

    /// Removes the records of ids processed more than `age` ago, and claims that expired more than `age` ago.
    /// A duplicate of a removed id arriving later is processed again: keep `age` longer than a message can be
    /// redelivered or republished.
    public func purge(processedBefore age: Duration) async throws {
        let seconds = Double(age.components.seconds) + Double(age.components.attoseconds) / 1e18
        try await client.query("""
            DELETE FROM \(unescaped: tableName)
            WHERE (state = 'processed' AND updated_at < now() - make_interval(secs => \(seconds)))
               OR (state = 'claimed' AND expires_at < now() - make_interval(secs => \(seconds)))
            """, logger: logger)
    }

    /// Runs `work` in a transaction; an error thrown by `work` is rethrown as it is once the rollback succeeded.
    private func transaction<T: Sendable>(_ work: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await client.withTransaction(logger: logger) { connection in try await work(connection) }
        } catch let error as PostgresTransactionError {
            if let closureError = error.closureError, error.rollbackError == nil { throw closureError }
            throw error
        }
    }

    private static func recordProcessed(_ id: String, in table: String, returning: Bool = false) -> PostgresQuery {
        """
        INSERT INTO \(unescaped: table) AS t (id, state, owner, expires_at, updated_at)
        VALUES (\(id), 'processed', NULL, NULL, now())
        ON CONFLICT (id) DO UPDATE SET state = 'processed', owner = NULL, expires_at = NULL, updated_at = now()
        WHERE t.state <> 'processed'
        \(unescaped: returning ? "RETURNING t.id" : "")
        """
    }

    static func isPlainIdentifier(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || (first.isASCII && first.properties.isAlphabetic)
        else { return false }
        return name.unicodeScalars.allSatisfy { $0.isASCII && ($0 == "_" || $0.properties.isAlphabetic
                                                              || ("0"..."9").contains($0)) }
    }
}

/// An error of ``PostgresDeduplicationStore`` itself (the database's errors are postgres-nio's).
public enum PostgresDeduplicationStoreError: Error, Sendable, Hashable {
    /// The table name is not a plain SQL identifier (ASCII letters, digits and `_`, not starting with a digit).
    case invalidTableName
}
