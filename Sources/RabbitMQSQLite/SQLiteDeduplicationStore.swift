import Foundation
import GRDB
import RabbitMQ

/// A ``RabbitMQ/DeduplicationStore`` in a SQLite database file, shared by the processes of one host.
///
/// Open the same file from every worker process: ``init(path:tableName:)`` opens a GRDB `DatabasePool` in WAL mode
/// with a busy timeout, and every write runs in an `IMMEDIATE` transaction, so that two processes claiming the same
/// id are serialized by SQLite's lock: one gets ``RabbitMQ/DeduplicationClaim/claimed``, the other
/// ``RabbitMQ/DeduplicationClaim/inProgress``. The file must be on a local disk (SQLite's locks do not hold over
/// network file systems); for replicas on several machines use `PostgresDeduplicationStore`.
///
/// The store keeps one row an id in ``tableName``, created if missing: a claim (with its expiry, on the host's
/// clock) or a processed record. Processed records stay until ``purge(processedBefore:)`` removes them.
///
/// For exactly-once effects, write the handler's effect with ``processOnce(id:_:)``: the effect and the record of
/// the id commit in one transaction, or neither does.
public final class SQLiteDeduplicationStore: DeduplicationStore {
    /// The database the store writes to.
    public let writer: any DatabaseWriter
    /// The table of claims and processed ids. Default `rabbitmq_deduplication`.
    public let tableName: String
    /// Tells this store's claims from other processes' claims, so that a release removes only its own.
    private let owner = UUID().uuidString

    /// Opens (or creates) the database file at `path` for several processes: WAL mode, a 30 s busy timeout.
    /// - Throws: `DatabaseError` if the file cannot be opened or the table cannot be created;
    ///   `SQLiteDeduplicationStoreError` for a table name that is not a plain identifier.
    public convenience init(path: String, tableName: String = "rabbitmq_deduplication") throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        try self.init(writer: DatabasePool(path: path, configuration: configuration), tableName: tableName)
    }

    /// Uses a database you opened, such as the one that holds the handler's own tables (then ``processOnce(id:_:)``
    /// writes the effect and the record in one transaction). Set a busy timeout on it when several processes
    /// share the file.
    /// - Throws: `DatabaseError` if the table cannot be created; `SQLiteDeduplicationStoreError` for a table name
    ///   that is not a plain identifier.
    public init(writer: any DatabaseWriter, tableName: String = "rabbitmq_deduplication") throws {
        guard Self.isPlainIdentifier(tableName) else { throw SQLiteDeduplicationStoreError.invalidTableName }
        self.writer = writer
        self.tableName = tableName
        try writer.write { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS \(tableName) (
                    id TEXT PRIMARY KEY NOT NULL,
                    state TEXT NOT NULL CHECK (state IN ('claimed', 'processed')),
                    owner TEXT,
                    expires_at REAL,
                    updated_at REAL NOT NULL
                )
                """)
        }
    }

    public func claim(_ id: String, for ttl: Duration) async throws -> DeduplicationClaim {
        let (table, owner) = (tableName, owner)
        return try await immediate { db in
            let now = Date().timeIntervalSince1970
            if let row = try Row.fetchOne(db, sql: "SELECT state, expires_at FROM \(table) WHERE id = ?",
                                          arguments: [id]) {
                if row["state"] as String == "processed" { return .processed }
                if let expiry = row["expires_at"] as Double?, expiry > now { return .inProgress }
            }
            try db.execute(sql: """
                INSERT OR REPLACE INTO \(table) (id, state, owner, expires_at, updated_at)
                VALUES (?, 'claimed', ?, ?, ?)
                """, arguments: [id, owner, now + ttl.seconds, now])
            return .claimed
        }
    }

    public func markProcessed(_ id: String) async throws {
        let table = tableName
        try await immediate { db in try Self.recordProcessed(id, in: table, db) }
    }

    public func release(_ id: String) async throws {
        let (table, owner) = (tableName, owner)
        try await immediate { db in
            try db.execute(sql: "DELETE FROM \(table) WHERE id = ? AND state = 'claimed' AND owner = ?",
                           arguments: [id, owner])
        }
    }

    /// Runs `body` and records `id` as processed in one `IMMEDIATE` transaction, unless `id` was processed before:
    /// the body's writes and the record commit together, or, if `body` throws, neither is kept (and the error is
    /// rethrown). A claim on `id` (by a ``RabbitMQ/Deduplicator``) does not stop it: the transaction is the guard.
    /// - Parameters:
    ///   - id: The message id (or business id) whose effect `body` writes.
    ///   - body: The handler's database writes, on the store's database.
    /// - Returns: ``RabbitMQ/ProcessOnceResult/processed(_:)`` with the body's value, or
    ///   ``RabbitMQ/ProcessOnceResult/duplicate`` if `id` was processed before and `body` did not run.
    /// - Throws: What `body` throws, or a `DatabaseError`.
    public func processOnce<T: Sendable>(id: String, _ body: @escaping @Sendable (Database) throws -> T)
        async throws -> ProcessOnceResult<T>
    {
        let table = tableName
        return try await immediate { db in
            if try String.fetchOne(db, sql: "SELECT state FROM \(table) WHERE id = ?", arguments: [id])
                == "processed"
            {
                return .duplicate
            }
            let value = try body(db)
            try Self.recordProcessed(id, in: table, db)
            return .processed(value)
        }
    }

    /// Whether `id` is recorded as processed.
    public func isProcessed(_ id: String) async throws -> Bool {
        let table = tableName
        return try await writer.read { db in
            try String.fetchOne(db, sql: "SELECT state FROM \(table) WHERE id = ?", arguments: [id]) == "processed"
        }
    }

    /// Removes the records of ids processed more than `age` ago, and claims that expired more than `age` ago.
    /// A duplicate of a removed id arriving later is processed again: keep `age` longer than a message can be
    /// redelivered or republished.
    /// - Returns: How many rows were removed.
    @discardableResult
    public func purge(processedBefore age: Duration) async throws -> Int {
        let table = tableName
        return try await immediate { db in
            let cutoff = Date().timeIntervalSince1970 - age.seconds
            try db.execute(sql: """
                DELETE FROM \(table)
                WHERE (state = 'processed' AND updated_at < ?) OR (state = 'claimed' AND expires_at < ?)
                """, arguments: [cutoff, cutoff])
            return db.changesCount
        }
    }

    /// Runs `work` in an `IMMEDIATE` transaction: it takes SQLite's write lock at once, so that a transaction that
    /// reads, then writes, never fails to upgrade its lock when another process wrote meanwhile.
    private func immediate<T: Sendable>(_ work: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await writer.writeWithoutTransaction { db in
            var result: T?
            try db.inTransaction(.immediate) {
                result = try work(db)
                return .commit
            }
            guard let result else { throw SQLiteDeduplicationStoreError.noResult }
            return result
        }
    }

    private static func recordProcessed(_ id: String, in table: String, _ db: Database) throws {
        try db.execute(sql: """
            INSERT INTO \(table) (id, state, owner, expires_at, updated_at) VALUES (?, 'processed', NULL, NULL, ?)
            ON CONFLICT (id) DO UPDATE SET state = 'processed', owner = NULL, expires_at = NULL,
                updated_at = excluded.updated_at
            WHERE state <> 'processed'
            """, arguments: [id, Date().timeIntervalSince1970])
    }

    static func isPlainIdentifier(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first,
              first == "_" || (first.isASCII && CharacterSet.letters.contains(first))
        else { return false }
        return name.unicodeScalars.allSatisfy {
            $0 == "_" || ($0.isASCII && CharacterSet.alphanumerics.contains($0))
        }
    }
}

/// An error of ``SQLiteDeduplicationStore`` itself (the database's errors are GRDB's `DatabaseError`).
public enum SQLiteDeduplicationStoreError: Error, Sendable, Hashable {
    /// The table name is not a plain SQL identifier (ASCII letters, digits and `_`, not starting with a digit).
    case invalidTableName
    /// A transaction committed without a result; not expected.
    case noResult
}

extension Duration {
    /// The duration in seconds, with its fraction.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
