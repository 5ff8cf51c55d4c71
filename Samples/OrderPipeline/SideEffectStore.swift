import Foundation
import GRDB
import RabbitMQ
import RabbitMQSQLite

/// The SQLite database where the order service writes its orders, with their `OrderPlaced` events in the same
/// transaction (the transactional outbox, ``outbox``), and the workers record their side effects: a coupon, a
/// notification, a recommendation-cache entry per order.
///
/// Each worker deduplicates by order id in a table of its own here (``deduplication(_:)``), shared by every process
/// that opens the file and kept across restarts, and records its side effect and the order id in one transaction
/// (`processOnce`). Each side-effect table also has `UNIQUE(order_id)`, the last guard. The database is in WAL
/// mode, so the `worker` subcommands may share it from separate processes.
final class SideEffectStore: Sendable {
    /// One published order, as the order service recorded it.
    struct PublishedOrder: Sendable {
        var order: OrderPlaced
        var isValid: Bool
        var resent: Bool
    }

    /// The database file.
    let path: String
    private let database: DatabasePool
    /// The outbox of `OrderPlaced` events, in this database: an order and its event commit together.
    let outbox: SQLiteOutbox
    private let deduplicationStores: [WorkerKind: SQLiteDeduplicationStore]

    /// Opens (and creates, if needed) the database at `path`.
    init(path: String) throws {
        self.path = path
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        configuration.prepareDatabase { db in
            // WAL without an fsync per commit: a demo, not a ledger.
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        database = try DatabasePool(path: path, configuration: configuration)
        try database.write { db in try Self.createTables(db) }
        outbox = try SQLiteOutbox(writer: database)
        var stores: [WorkerKind: SQLiteDeduplicationStore] = [:]
        for kind in WorkerKind.allCases {
            stores[kind] = try SQLiteDeduplicationStore(writer: database, tableName: "deduplication_\(Self.table(kind))")
        }
        deduplicationStores = stores
    }

    /// A database file in the temporary folder, unique to this run.
    static func temporaryPath() -> String {
        FileManager.default.temporaryDirectory
            .appendingPathComponent("order-pipeline-\(UUID().uuidString.prefix(8).lowercased()).sqlite").path
    }

    /// The table a worker records its side effect in.
    static func table(_ kind: WorkerKind) -> String {
        switch kind {
        case .coupon: "coupons"
        case .notification: "notifications"
        case .recommendations: "cache_entries"
        }
    }

    private static func createTables(_ db: Database) throws {
        try db.execute(sql: """
            CREATE TABLE IF NOT EXISTS orders (
                order_id TEXT PRIMARY KEY NOT NULL,
                customer_id TEXT NOT NULL,
                amount REAL NOT NULL,
                is_valid INTEGER NOT NULL,
                resent INTEGER NOT NULL,
                placed_at REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS coupons (
                id INTEGER PRIMARY KEY,
                order_id TEXT NOT NULL UNIQUE,
                customer_id TEXT NOT NULL,
                code TEXT NOT NULL,
                placed_at REAL NOT NULL,
                recorded_at REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS notifications (
                id INTEGER PRIMARY KEY,
                order_id TEXT NOT NULL UNIQUE,
                customer_id TEXT NOT NULL,
                message TEXT NOT NULL,
                placed_at REAL NOT NULL,
                recorded_at REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS cache_entries (
                id INTEGER PRIMARY KEY,
                order_id TEXT NOT NULL UNIQUE,
                customer_id TEXT NOT NULL,
                skus TEXT NOT NULL,
                placed_at REAL NOT NULL,
                recorded_at REAL NOT NULL
            );
            """)
    }

    /// Empties every table: a fresh start.
    func reset() async throws {
        try await database.write { db in
            let deduplicationTables = deduplicationStores.values.map(\.tableName)
            for table in ["orders", outbox.tableName] + WorkerKind.allCases.map(Self.table) + deduplicationTables {
                try db.execute(sql: "DELETE FROM \(table)")
            }
        }
    }

    /// Writes an order and its event in one transaction: both commit, or neither does. Writing it again (a
    /// re-sent order) marks the order re-sent and enqueues the event once more, with the same message id.
    func placeOrder(_ entry: PublishedOrder, event: OutboxEvent) async throws {
        let outbox = self.outbox
        try await database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO orders (order_id, customer_id, amount, is_valid, resent, placed_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(order_id) DO UPDATE SET resent = excluded.resent
                    """,
                arguments: [entry.order.orderID, entry.order.customerID, entry.order.amount, entry.isValid,
                            entry.resent, entry.order.placedAt.timeIntervalSince1970])
            try outbox.enqueue(event, in: db)
        }
    }

    /// Records the side effect of `kind` for `order`, unless the order already has one.
    /// - Returns: `false` when the order already had its side effect (a duplicate that got this far).
    func recordSideEffect(_ kind: WorkerKind, for order: OrderPlaced, at date: Date = Date()) async throws -> Bool {
        let detail: String
        let column: String
        switch kind {
        case .coupon:
            column = "code"
            detail = "WELCOME-\(order.orderID.suffix(6).uppercased())"
        case .notification:
            column = "message"
            detail = "Thank you for your order \(order.orderID) of \(String(format: "%.2f", order.amount))"
        case .recommendations:
            column = "skus"
            detail = order.items.map(\.sku).joined(separator: ",")
        }
        let sql = """
            INSERT INTO \(Self.table(kind)) (order_id, customer_id, \(column), placed_at, recorded_at)
            VALUES (?, ?, ?, ?, ?) ON CONFLICT(order_id) DO NOTHING
            """
        let arguments: StatementArguments = [order.orderID, order.customerID, detail,
                                             order.placedAt.timeIntervalSince1970, date.timeIntervalSince1970]
        let result = try await deduplication(kind).processOnce(id: order.orderID) { db in
            try db.execute(sql: sql, arguments: arguments)
            return db.changesCount == 1
        }
        return result.value ?? false
    }

    /// Where worker `kind` records the orders it processed (and claims those it is processing), durable and shared
    /// by every process that opens this database.
    func deduplication(_ kind: WorkerKind) -> SQLiteDeduplicationStore {
        // Every kind has its store, made in init.
        deduplicationStores[kind]!
    }

    /// The end-to-end latencies of a worker's side effects, from the order's `placedAt` to the record, in
    /// milliseconds.
    func latenciesMilliseconds(_ kind: WorkerKind) async throws -> [Double] {
        try await database.read { db in
            try Double.fetchAll(db, sql: "SELECT (recorded_at - placed_at) * 1000 FROM \(Self.table(kind))")
        }
    }

    /// What the order service recorded: the ids of valid and invalid orders, and how many were re-sent.
    func publishedOrders() async throws -> (valid: Set<String>, invalid: Set<String>, resent: Int) {
        try await database.read { db in
            let valid = try String.fetchSet(db, sql: "SELECT order_id FROM orders WHERE is_valid")
            let invalid = try String.fetchSet(db, sql: "SELECT order_id FROM orders WHERE NOT is_valid")
            let resent = try Int.fetchOne(db, sql: "SELECT count(*) FROM orders WHERE resent") ?? 0
            return (valid, invalid, resent)
        }
    }

    /// How a worker's side effects compare with the published orders.
    struct SideEffectAudit: Sendable {
        /// Rows in the worker's table.
        var rows: Int
        /// Valid orders without a row.
        var missing: Int
        /// Orders with more than one row (the unique constraint makes it 0; counted all the same).
        var duplicated: Int
        /// Rows for invalid or unknown orders.
        var unexpected: Int
    }

    /// Audits the side effects of `kind` against the `orders` table.
    func audit(_ kind: WorkerKind) async throws -> SideEffectAudit {
        let table = Self.table(kind)
        return try await database.read { db in
            let rows = try Int.fetchOne(db, sql: "SELECT count(*) FROM \(table)") ?? 0
            let missing = try Int.fetchOne(db, sql: """
                SELECT count(*) FROM orders o
                WHERE o.is_valid AND NOT EXISTS (SELECT 1 FROM \(table) t WHERE t.order_id = o.order_id)
                """) ?? 0
            let duplicated = try Int.fetchOne(db, sql: """
                SELECT count(*) FROM (SELECT order_id FROM \(table) GROUP BY order_id HAVING count(*) > 1)
                """) ?? 0
            let unexpected = try Int.fetchOne(db, sql: """
                SELECT count(*) FROM \(table) t LEFT JOIN orders o ON o.order_id = t.order_id
                WHERE o.order_id IS NULL OR NOT o.is_valid
                """) ?? 0
            return SideEffectAudit(rows: rows, missing: missing, duplicated: duplicated, unexpected: unexpected)
        }
    }
}
