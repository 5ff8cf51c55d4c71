// A worker process for RabbitMQPersistenceTests: consumes QUEUE with a QueueWorker whose Deduplicator shares a
// durable store (PostgreSQL or SQLite) with the other worker processes, and writes each message's effect (a row in
// EFFECTS_TABLE, which has no unique key, so that a duplicate effect would show) with the store's processOnce.
//
// Environment: AMQP_URL, QUEUE, WORKER_NAME, STORE (postgres | sqlite), POSTGRES_URL or SQLITE_PATH, DEDUP_TABLE,
// EFFECTS_TABLE; optional CLAIM_TTL_MS (default 2000), IN_PROGRESS_DELAY_MS (100), HOLD_MS (a pause inside each
// handler, 0), HOLD_ID with HOLD_ID_MS (a long pause inside the transaction of that one message, for a test to kill
// the process mid-handler), CONCURRENCY (4), PREFETCH (8).
//
// It prints one line a delivery, `seen ID` (from the deduplicator's key function), and `holding ID` when it starts
// holding HOLD_ID; it runs until killed.
import Foundation
import GRDB
import Logging
import PostgresNIO
import RabbitMQ
import RabbitMQPostgres
import RabbitMQSQLite

let environment = ProcessInfo.processInfo.environment

func setting(_ name: String) -> String {
    guard let value = environment[name], !value.isEmpty else {
        FileHandle.standardError.write(Data("DeduplicationWorker: \(name) is not set\n".utf8))
        exit(2)
    }
    return value
}

func milliseconds(_ name: String, default value: Int) -> Duration {
    .milliseconds(environment[name].flatMap { Int($0) } ?? value)
}

/// One line on standard output, written at once (the test reads the file while the worker runs).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let queue = setting("QUEUE")
let workerName = setting("WORKER_NAME")
let dedupTable = setting("DEDUP_TABLE")
let effectsTable = setting("EFFECTS_TABLE")
let hold = milliseconds("HOLD_MS", default: 0)
let holdID = environment["HOLD_ID"]
let holdIDPause = milliseconds("HOLD_ID_MS", default: 600_000)

/// Writes the effect of one message, exactly once across the worker processes.
let writeEffect: @Sendable (String) async throws -> Void
let store: any DeduplicationStore
switch setting("STORE") {
case "postgres":
    let postgres = PostgresClient(configuration: try PostgresURL.configuration(setting("POSTGRES_URL")),
                                  backgroundLogger: Logger(label: "postgres"))
    Task { await postgres.run() }
    let postgresStore = try PostgresDeduplicationStore(client: postgres, tableName: dedupTable)
    try await postgresStore.prepare()
    store = postgresStore
    writeEffect = { id in
        _ = try await postgresStore.processOnce(id: id) { connection in
            try await connection.query(
                "INSERT INTO \(unescaped: effectsTable) (message_id, worker) VALUES (\(id), \(workerName))",
                logger: Logger(label: "effects"))
            if id == holdID {
                say("holding \(id)")
                try await Task.sleep(for: holdIDPause)
            }
        }
    }
case "sqlite":
    var configuration = Configuration()
    configuration.busyMode = .timeout(30)
    let database = try DatabasePool(path: setting("SQLITE_PATH"), configuration: configuration)
    let sqliteStore = try SQLiteDeduplicationStore(writer: database, tableName: dedupTable)
    store = sqliteStore
    writeEffect = { id in
        _ = try await sqliteStore.processOnce(id: id) { db in
            try db.execute(sql: "INSERT INTO \(effectsTable) (message_id, worker) VALUES (?, ?)",
                           arguments: [id, workerName])
        }
    }
default:
    FileHandle.standardError.write(Data("DeduplicationWorker: STORE must be postgres or sqlite\n".utf8))
    exit(2)
}

var clientConfiguration = try RabbitMQClient.Configuration(url: setting("AMQP_URL"))
clientConfiguration.connectionName = "deduplication worker \(workerName)"
let client = RabbitMQClient(configuration: clientConfiguration)
try await client.connect()
let deduplicator = Deduplicator(store: store, claimTTL: milliseconds("CLAIM_TTL_MS", default: 2000),
                                inProgressDelay: milliseconds("IN_PROGRESS_DELAY_MS", default: 100)) { delivery in
    // Read once a delivery, before its claim: the `seen` line says which process got which message.
    say("seen \(delivery.properties.messageID ?? "-")")
    return delivery.properties.messageID
}
let configuration = QueueWorker.Configuration(
    queue: queue, prefetch: UInt16(environment["PREFETCH"].flatMap { Int($0) } ?? 8),
    concurrency: environment["CONCURRENCY"].flatMap { Int($0) } ?? 4, deduplicator: deduplicator)
let worker = QueueWorker(client: client, configuration: configuration) { delivery in
    guard let id = delivery.properties.messageID else { return }
    if hold > .zero { try await Task.sleep(for: hold) }
    try await writeEffect(id)
}
try await worker.run()
