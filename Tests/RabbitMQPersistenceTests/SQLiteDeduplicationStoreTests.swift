import Foundation
import GRDB
import RabbitMQ
import RabbitMQSQLite
import Testing

/// The SQLite store on a real database file. Two stores opened on one file stand for two processes (each has a
/// connection pool of its own, as a process would).
@Suite("SQLite deduplication store")
struct SQLiteDeduplicationStoreTests {
    private let ttl = Duration.seconds(600)

    /// Runs `body` with two stores on a fresh file with an `effects` table, removed afterwards.
    private func withStores(_ body: (SQLiteDeduplicationStore, SQLiteDeduplicationStore) async throws -> Void)
        async throws
    {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("sqlite-dedup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("dedup.sqlite").path
        let first = try SQLiteDeduplicationStore(path: path)
        try await first.writer.write { db in
            try db.execute(sql: "CREATE TABLE effects (message_id TEXT NOT NULL, worker TEXT)")
        }
        let second = try SQLiteDeduplicationStore(path: path)
        try await body(first, second)
    }

    private func effectCount(_ store: SQLiteDeduplicationStore) async throws -> Int {
        try await store.writer.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM effects") ?? -1 }
    }

    @Test func theFileIsInWALMode() async throws {
        try await withStores { first, _ in
            let mode = try await first.writer.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") }
            #expect(mode == "wal")
        }
    }

    @Test func aClaimHoldsAcrossProcessesUntilProcessed() async throws {
        try await withStores { first, second in
            #expect(try await first.claim("m1", for: ttl) == .claimed)
            #expect(try await second.claim("m1", for: ttl) == .inProgress)
            #expect(try await second.claim("m2", for: ttl) == .claimed)
            try await first.markProcessed("m1")
            #expect(try await second.claim("m1", for: ttl) == .processed)
            try await first.release("m1")
            #expect(try await second.claim("m1", for: ttl) == .processed)
            #expect(try await second.isProcessed("m1"))
        }
    }

    @Test func aReleasedClaimCanBeClaimedAgainAndReleaseOnlyTouchesItsOwn() async throws {
        try await withStores { first, second in
            #expect(try await first.claim("m1", for: ttl) == .claimed)
            try await second.release("m1")
            #expect(try await second.claim("m1", for: ttl) == .inProgress)
            try await first.release("m1")
            #expect(try await second.claim("m1", for: ttl) == .claimed)
        }
    }

    @Test func anExpiredClaimIsTakenOver() async throws {
        try await withStores { first, second in
            // A claim that has already expired: a slow machine can only make it older. (That a live claim holds
            // is aClaimHoldsAcrossProcessesUntilProcessed's.)
            #expect(try await first.claim("m1", for: .milliseconds(1)) == .claimed)
            try await Task.sleep(for: .milliseconds(50))
            #expect(try await second.claim("m1", for: ttl) == .claimed)
            try await first.release("m1")
            #expect(try await first.claim("m1", for: ttl) == .inProgress)
        }
    }

    @Test func processOnceCommitsTheEffectAndTheRecordTogether() async throws {
        try await withStores { first, second in
            let result = try await first.processOnce(id: "order-1") { db in
                try db.execute(sql: "INSERT INTO effects VALUES ('order-1', 'first')")
                return 42
            }
            #expect(result == .processed(42))
            let again = try await second.processOnce(id: "order-1") { db in
                try db.execute(sql: "INSERT INTO effects VALUES ('order-1', 'second')")
                return 43
            }
            #expect(again == .duplicate)
            #expect(try await effectCount(first) == 1)
            #expect(try await second.claim("order-1", for: ttl) == .processed)
        }
    }

    @Test func processOnceRollsBackTheEffectAndTheRecordOnError() async throws {
        try await withStores { first, second in
            await #expect(throws: HandlerFailure.self) {
                _ = try await first.processOnce(id: "order-1") { db in
                    try db.execute(sql: "INSERT INTO effects VALUES ('order-1', 'first')")
                    throw HandlerFailure()
                }
            }
            #expect(try await effectCount(first) == 0)
            #expect(try await !second.isProcessed("order-1"))
            #expect(try await second.claim("order-1", for: ttl) == .claimed)
            let result = try await second.processOnce(id: "order-1") { db in
                try db.execute(sql: "INSERT INTO effects VALUES ('order-1', 'second')")
            }
            #expect(!result.isDuplicate)
            #expect(try await effectCount(first) == 1)
        }
    }

    @Test func concurrentProcessOnceOfOneIdRunsTheBodyOnce() async throws {
        try await withStores { first, second in
            let results = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<8 {
                    let store = index.isMultiple(of: 2) ? first : second
                    group.addTask {
                        try await store.processOnce(id: "order-7") { db in
                            try db.execute(sql: "INSERT INTO effects VALUES ('order-7', ?)", arguments: [index])
                        }.isDuplicate
                    }
                }
                return try await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(results.filter { !$0 }.count == 1)
            #expect(try await effectCount(first) == 1)
        }
    }

    @Test func purgeRemovesOldRecordsAndExpiredClaims() async throws {
        try await withStores { first, _ in
            try await first.markProcessed("old")
            #expect(try await first.claim("stale", for: .milliseconds(1)) == .claimed)
            let cutoff = try await pause()
            try await first.markProcessed("new")
            #expect(try await first.claim("live", for: ttl) == .claimed)
            #expect(try await first.purge(processedBefore: .seconds(Date().timeIntervalSince(cutoff))) == 2)
            #expect(try await first.isProcessed("new"))
            #expect(try await !first.isProcessed("old"))
            #expect(try await first.claim("live", for: ttl) == .inProgress)
        }
    }

    @Test func aTableNameMustBeAPlainIdentifier() throws {
        let queue = try DatabaseQueue()
        for name in ["x; DROP TABLE y", "1abc", "", "a-b", "é"] {
            #expect(throws: SQLiteDeduplicationStoreError.invalidTableName) {
                _ = try SQLiteDeduplicationStore(writer: queue, tableName: name)
            }
        }
        #expect(throws: Never.self) { _ = try SQLiteDeduplicationStore(writer: queue, tableName: "_ok_1") }
    }
}
