/// Where an outbox keeps its events: a table in the application's database, written in the application's own
/// transactions and read by an ``OutboxRelay``.
///
/// `RabbitMQSQLite` and `RabbitMQPostgres` provide one each. An implementation must hand out events in
/// ``OutboxRecord/sequence`` order and must never return an event marked sent again.
public protocol OutboxStore: Sendable {
    /// At most `limit` events not yet marked sent, in ``OutboxRecord/sequence`` order (oldest first).
    func pending(limit: Int) async throws -> [OutboxRecord]
    /// Marks events published and confirmed; they are not handed out again.
    func markSent(_ sequences: [Int64]) async throws
    /// Records a failed attempt to publish an event (its ``OutboxRecord/attempts`` grows by one); it stays pending.
    func markFailed(_ sequence: Int64, reason: String) async throws
    /// How many events are not yet marked sent: the relay's backlog.
    func pendingCount() async throws -> Int
}
