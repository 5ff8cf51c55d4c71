import Foundation
import PostgresNIO
import RabbitMQ
import RabbitMQPostgres
import Testing

/// The PostgreSQL outbox against the local server `make test` starts (`POSTGRES_URL`). (Its broker outage test is in
/// ``OutboxOutageTests``.)
@Suite("PostgreSQL outbox", .enabled(if: Persistence.hasPostgres, "needs POSTGRES_URL"))
struct PostgresOutboxTests {
    /// Sequence numbers are taken at insert time: without the per-key lock, a transaction that inserted first and
    /// committed last would have its event published after a later one of the same key.
    @Test func aSecondWriterOfAKeyWaitsForTheFirstsCommitSoSequenceFollowsCommitOrder() async throws {
        try await Persistence.withPostgres { postgres in
            let table = Persistence.uniqueName("outbox")
            let outbox = try PostgresOutbox(client: postgres, tableName: table)
            try await outbox.prepare()
            let first = OutboxEvent(exchange: "", routingKey: "q", body: Data("first".utf8), aggregateKey: "order-1")
            let second = OutboxEvent(exchange: "", routingKey: "q", body: Data("second".utf8), aggregateKey: "order-1")
            let other = OutboxEvent(exchange: "", routingKey: "q", body: Data("other".utf8), aggregateKey: "order-2")
            let firstEnqueued = AsyncStream<Void>.makeStream()
            // Released by the test once it has looked, however slowly the machine runs, not after a set time.
            let release = AsyncStream<Void>.makeStream()
            let slow = Task {
                try await postgres.withTransaction(logger: Persistence.logger) { connection in
                    try await outbox.enqueue(first, on: connection)
                    firstEnqueued.continuation.yield()
                    for await _ in release.stream { break }
                }
            }
            for await _ in firstEnqueued.stream { break }
            // Another key is not held up.
            try await postgres.withTransaction(logger: Persistence.logger) { connection in
                try await outbox.enqueue(other, on: connection)
            }
            // The same key waits for the slow transaction: its event cannot commit (and be published) first.
            let waiting = Task {
                try await postgres.withTransaction(logger: Persistence.logger) { connection in
                    try await outbox.enqueue(second, on: connection)
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            let whileTheFirstIsOpen = try await outbox.pending(limit: 10).map(\.event.messageID)
            release.continuation.yield()
            #expect(whileTheFirstIsOpen == [other.messageID])
            try await slow.value
            try await waiting.value
            let pending = try await outbox.pending(limit: 10).filter { $0.event.aggregateKey == "order-1" }
            #expect(pending.map(\.event.messageID) == [first.messageID, second.messageID])
            #expect(pending.map(\.event.body) == [Data("first".utf8), Data("second".utf8)])
            try await outbox.markSent(pending.map(\.sequence))
            #expect(try await outbox.pendingCount() == 1)
            try await postgres.query("DROP TABLE \(unescaped: table)")
        }
    }
}
