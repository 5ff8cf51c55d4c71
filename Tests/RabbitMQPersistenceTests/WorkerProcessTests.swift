import Foundation
import GRDB
import PostgresNIO
import RabbitMQ
import RabbitMQTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Worker processes (Tests/DeduplicationWorker) consuming one queue and sharing a durable store: every message id
/// is published twice, so copies reach both processes, and one process is killed with SIGKILL mid-handler, so the
/// broker redelivers what it held. Each message's effect is a row in a table without a unique key: a duplicate
/// effect would be a second row.
@Suite("Worker processes sharing a durable store", .serialized)
struct WorkerProcessTests {
    private static let ids = (0..<40).map { "m\($0)" }

    /// Publishes every id in `ids` twice, as two messages with the same message id.
    private func publishTwice(_ ids: [String], to queue: String, _ client: RabbitMQClient) async throws {
        for id in ids {
            var properties = MessageProperties()
            properties.messageID = id
            for _ in 0..<2 {
                try await client.publish(Data("effect \(id)".utf8), routingKey: queue, properties: properties)
            }
        }
    }

    private func consumers(_ client: RabbitMQClient, _ queue: String) async throws -> Int {
        Int(try await client.inspectQueue(queue).consumerCount)
    }

    @Test(.enabled(if: Persistence.hasPostgres, "needs POSTGRES_URL"), .timeLimit(.minutes(5)))
    func twoProcessesSharingPostgresProduceEachEffectOnce() async throws {
        try await Persistence.withPostgres { postgres in
            try await Persistence.withBroker { client in
                let queue = Persistence.uniqueName("dedup_workers_pg")
                let dedup = Persistence.uniqueName("dedup")
                let effects = Persistence.uniqueName("effects")
                try await client.declare(Queue(queue))
                try await postgres.query("CREATE TABLE \(unescaped: effects) (message_id text NOT NULL, worker text)")
                let environment = ["QUEUE": queue, "STORE": "postgres", "POSTGRES_URL": Persistence.postgresURL ?? "",
                                   "DEDUP_TABLE": dedup, "EFFECTS_TABLE": effects, "HOLD_MS": "20"]
                // Worker a alone gets "victim", and holds it inside its transaction (the effect row written, not
                // committed) until it is killed.
                let a = try WorkerProcess(name: "a", environment: environment.merging(["HOLD_ID": "victim"]) { $1 })
                var b: WorkerProcess?
                do {
                    #expect(try await eventually(timeout: .seconds(60)) { try await consumers(client, queue) == 1 })
                    try await publishTwice(["victim"], to: queue, client)
                    #expect(try await eventually(timeout: .seconds(60)) { a.output.contains("holding victim") }, "\(a.output)")
                    let second = try WorkerProcess(name: "b", environment: environment)
                    b = second
                    #expect(try await eventually(timeout: .seconds(60)) { try await consumers(client, queue) == 2 })
                    try await publishTwice(Self.ids, to: queue, client)
                    #expect(try await eventually(timeout: .seconds(60)) { try await rowCount(postgres, effects) >= 10 })
                    await a.stop(SIGKILL)

                    let all = Self.ids.count + 1
                    // Every delivery of the 82 is settled, and every id has its effect.
                    #expect(try await eventually(timeout: .seconds(120)) {
                        let effectRows = try await rowCount(postgres, effects)
                        guard effectRows >= all else { return false }
                        return try await brokerMessages(queue) == 0
                    }, "\(second.output)")
                    await second.stop()
                    b = nil
                    #expect(try await client.inspectQueue(queue).messageCount == 0)
                    #expect(try await rowCount(postgres, effects) == all)
                    let distinct = try await postgres.query(
                        "SELECT count(DISTINCT message_id)::int8 FROM \(unescaped: effects)")
                    #expect(try await distinct.collect().first?.decode(Int64.self) == Int64(all))
                    // The victim's uncommitted effect died with worker a; b wrote it after a's claim expired.
                    #expect(try await rowCount(postgres, effects, where: "message_id = 'victim'") == 1)
                    #expect(try await rowCount(postgres, effects, where: "message_id = 'victim' AND worker = 'b'") == 1)
                    #expect(try await rowCount(postgres, dedup, where: "state = 'processed'") == all)
                    // The same messages reached both processes.
                    let shared = a.seenIDs.intersection(second.seenIDs)
                    #expect(shared.contains("victim"))
                    #expect(shared.count > 1, "a saw \(a.seenIDs.count), b saw \(second.seenIDs.count)")
                } catch {
                    await a.stop(SIGKILL)
                    await b?.stop(SIGKILL)
                    throw error
                }
                await b?.stop(SIGKILL)
                _ = try await client.deleteQueue(queue)
                try await postgres.query("DROP TABLE \(unescaped: effects), \(unescaped: dedup)")
            }
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func twoProcessesSharingASQLiteFileProduceEachEffectOnce() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dedup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("workers.sqlite").path
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        let database = try DatabasePool(path: path, configuration: configuration)
        try await database.write { db in
            try db.execute(sql: "CREATE TABLE effects (message_id TEXT NOT NULL, worker TEXT)")
        }
        let effectCount = { (condition: String) in
            try await database.read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM effects WHERE \(condition)") ?? -1
            }
        }
        try await Persistence.withBroker { client in
            let queue = Persistence.uniqueName("dedup_workers_sqlite")
            try await client.declare(Queue(queue))
            let environment = ["QUEUE": queue, "STORE": "sqlite", "SQLITE_PATH": path, "DEDUP_TABLE": "dedup",
                               "EFFECTS_TABLE": "effects", "HOLD_MS": "50"]
            let a = try WorkerProcess(name: "a", environment: environment)
            let b = try WorkerProcess(name: "b", environment: environment)
            do {
                #expect(try await eventually(timeout: .seconds(60)) { try await consumers(client, queue) == 2 })
                try await publishTwice(Self.ids, to: queue, client)
                #expect(try await eventually(timeout: .seconds(60)) { try await effectCount("TRUE") >= 10 })
                // Killed mid-run: its claims expire (2 s) and b takes them over.
                await a.stop(SIGKILL)
                #expect(try await eventually(timeout: .seconds(120)) {
                    let effectRows = try await effectCount("TRUE")
                    guard effectRows >= Self.ids.count else { return false }
                    return try await brokerMessages(queue) == 0
                }, "\(b.output)")
                await b.stop()
                #expect(try await client.inspectQueue(queue).messageCount == 0)
                #expect(try await effectCount("TRUE") == Self.ids.count)
                let distinct = try await database.read { db in
                    try Int.fetchOne(db, sql: "SELECT count(DISTINCT message_id) FROM effects")
                }
                #expect(distinct == Self.ids.count)
                let processed = try await database.read { db in
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM dedup WHERE state = 'processed'")
                }
                #expect(processed == Self.ids.count)
                #expect(!a.seenIDs.intersection(b.seenIDs).isEmpty)
            } catch {
                await a.stop(SIGKILL)
                await b.stop(SIGKILL)
                throw error
            }
            _ = try await client.deleteQueue(queue)
        }
    }
}
