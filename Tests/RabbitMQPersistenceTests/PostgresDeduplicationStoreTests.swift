import Foundation
import PostgresNIO
import RabbitMQ
import RabbitMQPostgres
import Testing

/// The PostgreSQL store against a real server (`POSTGRES_URL`; `make test` starts one). Two store instances on one
/// table stand for two replicas.
@Suite("PostgreSQL deduplication store", .enabled(if: Persistence.hasPostgres, "needs POSTGRES_URL"))
struct PostgresDeduplicationStoreTests {
    private let ttl = Duration.seconds(600)

    /// Runs `body` with two stores (replicas) on a fresh table and an effects table, both dropped afterwards.
    private func withStores(_ body: (PostgresClient, PostgresDeduplicationStore, PostgresDeduplicationStore, String)
                                async throws -> Void) async throws {
        try await Persistence.withPostgres { client in
            let table = Persistence.uniqueName("dedup")
            let effects = Persistence.uniqueName("effects")
            let first = try PostgresDeduplicationStore(client: client, tableName: table)
            let second = try PostgresDeduplicationStore(client: client, tableName: table)
            // Both replicas prepare at once: the advisory lock keeps CREATE TABLE from racing.
            async let prepared: Void = first.prepare()
            try await second.prepare()
            try await prepared
            try await client.query("CREATE TABLE \(unescaped: effects) (message_id text NOT NULL, worker text)")
            do {
                try await body(client, first, second, effects)
            } catch {
                _ = try? await client.query("DROP TABLE \(unescaped: table), \(unescaped: effects)")
                throw error
            }
            try await client.query("DROP TABLE \(unescaped: table), \(unescaped: effects)")
        }
    }

    @Test func aClaimHoldsAcrossReplicasUntilProcessed() async throws {
        try await withStores { _, first, second, _ in
            #expect(try await first.claim("m1", for: ttl) == .claimed)
            #expect(try await second.claim("m1", for: ttl) == .inProgress)
            #expect(try await first.claim("m1", for: ttl) == .inProgress)
            #expect(try await second.claim("m2", for: ttl) == .claimed)
            try await first.markProcessed("m1")
            #expect(try await second.claim("m1", for: ttl) == .processed)
            #expect(try await first.isProcessed("m1"))
            // A release after the record keeps it processed.
            try await first.release("m1")
            #expect(try await second.claim("m1", for: ttl) == .processed)
        }
    }

    @Test func aReleasedClaimCanBeClaimedAgainAndReleaseOnlyTouchesItsOwn() async throws {
        try await withStores { _, first, second, _ in
            #expect(try await first.claim("m1", for: ttl) == .claimed)
            // Another replica's release leaves the claim alone.
            try await second.release("m1")
            #expect(try await second.claim("m1", for: ttl) == .inProgress)
            try await first.release("m1")
            #expect(try await second.claim("m1", for: ttl) == .claimed)
            #expect(try await !first.isProcessed("m1"))
        }
    }

    @Test func anExpiredClaimIsTakenOver() async throws {
        try await withStores { _, first, second, _ in
            // The first replica claims, then "crashes": it never marks or releases.
            // Its claim has already expired: a slow machine can only make it older. (That a live claim holds is
            // aClaimHoldsAcrossReplicasUntilProcessed's.)
            #expect(try await first.claim("m1", for: .milliseconds(1)) == .claimed)
            try await Task.sleep(for: .milliseconds(50))
            #expect(try await second.claim("m1", for: ttl) == .claimed)
            // The crashed replica's late release does not drop the new claim.
            try await first.release("m1")
            #expect(try await first.claim("m1", for: ttl) == .inProgress)
            try await second.markProcessed("m1")
            #expect(try await first.claim("m1", for: ttl) == .processed)
        }
    }

    @Test func processOnceCommitsTheEffectAndTheRecordTogether() async throws {
        try await withStores { client, first, second, effects in
            let result = try await first.processOnce(id: "order-1") { connection in
                try await insertEffect(connection, effects, "order-1", "first")
                return 42
            }
            #expect(result == .processed(42))
            let again = try await second.processOnce(id: "order-1") { connection in
                try await insertEffect(connection, effects, "order-1", "second")
                return 43
            }
            #expect(again == .duplicate)
            #expect(try await rowCount(client, effects) == 1)
            #expect(try await second.isProcessed("order-1"))
            #expect(try await second.claim("order-1", for: ttl) == .processed)
        }
    }

    @Test func processOnceRollsBackTheEffectAndTheRecordOnError() async throws {
        try await withStores { client, first, second, effects in
            await #expect(throws: HandlerFailure.self) {
                _ = try await first.processOnce(id: "order-1") { connection in
                    try await insertEffect(connection, effects, "order-1", "first")
                    throw HandlerFailure()
                }
            }
            #expect(try await rowCount(client, effects) == 0)
            #expect(try await !second.isProcessed("order-1"))
            // The redelivery processes it.
            #expect(try await second.claim("order-1", for: ttl) == .claimed)
            let result = try await second.processOnce(id: "order-1") { connection in
                try await insertEffect(connection, effects, "order-1", "second")
            }
            #expect(!result.isDuplicate)
            try await second.markProcessed("order-1")
            #expect(try await rowCount(client, effects, where: "worker = 'second'") == 1)
            #expect(try await rowCount(client, effects) == 1)
        }
    }

    @Test func concurrentProcessOnceOfOneIdRunsTheBodyOnce() async throws {
        try await withStores { client, first, second, effects in
            let results = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<8 {
                    let store = index.isMultiple(of: 2) ? first : second
                    group.addTask {
                        try await store.processOnce(id: "order-7") { connection in
                            try await insertEffect(connection, effects, "order-7", String(index))
                            // Hold the row lock a little, so that the others queue up behind it.
                            try await Task.sleep(for: .milliseconds(50))
                        }.isDuplicate
                    }
                }
                return try await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(results.filter { !$0 }.count == 1)
            #expect(try await rowCount(client, effects) == 1)
        }
    }

    @Test func purgeRemovesOldRecordsAndExpiredClaims() async throws {
        try await withStores { client, first, _, _ in
            try await first.markProcessed("old")
            #expect(try await first.claim("stale", for: .milliseconds(1)) == .claimed)
            let cutoff = try await pause()
            try await first.markProcessed("new")
            #expect(try await first.claim("live", for: ttl) == .claimed)
            try await first.purge(processedBefore: .seconds(Date().timeIntervalSince(cutoff)))
            #expect(try await rowCount(client, first.tableName) == 2)
            #expect(try await first.isProcessed("new"))
            #expect(try await !first.isProcessed("old"))
        }
    }

    @Test func aTableNameMustBeAPlainIdentifier() async throws {
        try await Persistence.withPostgres { client in
            for name in ["x; DROP TABLE y", "1abc", "", "a-b", "é"] {
                #expect(throws: PostgresDeduplicationStoreError.invalidTableName) {
                    _ = try PostgresDeduplicationStore(client: client, tableName: name)
                }
            }
            #expect(throws: Never.self) { _ = try PostgresDeduplicationStore(client: client, tableName: "_ok_1") }
        }
    }

    @Test func connectionURLsAreRead() throws {
        let configuration = try PostgresURL.configuration("postgres://app:secret@db.example:6543/orders")
        #expect(configuration.host == "db.example")
        #expect(configuration.port == 6543)
        #expect(configuration.username == "app")
        #expect(configuration.password == "secret")
        #expect(configuration.database == "orders")
        let defaults = try PostgresURL.configuration("postgresql://app@localhost")
        #expect(defaults.port == 5432 && defaults.database == "app" && defaults.password == nil)
        #expect(throws: PostgresURLError.self) { _ = try PostgresURL.configuration("mysql://app@localhost/x") }
        #expect(throws: PostgresURLError.self) { _ = try PostgresURL.configuration("postgres://localhost/x") }
    }
}

/// Inserts one effect row on `connection` (inside a `processOnce` transaction).
private func insertEffect(_ connection: PostgresConnection, _ table: String, _ id: String, _ worker: String)
    async throws
{
    try await connection.query("INSERT INTO \(unescaped: table) VALUES (\(id), \(worker))", logger: Persistence.logger)
}
