import Foundation
import Logging
import PostgresNIO
import RabbitMQ
import RabbitMQPostgres
import RabbitMQTestSupport
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The servers the persistence and outbox tests use: the shared broker (`AMQP_URL`) and PostgreSQL (`POSTGRES_URL`),
/// both set by `make test` (scripts/test.sh starts a throwaway PostgreSQL with scripts/postgres.sh; the PostgreSQL
/// tests are skipped without it), and the outbox tests' broker of their own (``OutboxBroker``).
enum Persistence {
    static let amqpURL = ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5673/"
    static let postgresURL = ProcessInfo.processInfo.environment["POSTGRES_URL"].flatMap { $0.isEmpty ? nil : $0 }
    /// PostgreSQL tests run only with a server.
    static var hasPostgres: Bool { postgresURL != nil }

    static let logger: Logger = {
        var logger = Logger(label: "rabbitmq.persistence-tests")
        logger.logLevel = .warning
        return logger
    }()

    /// A name no other test uses, valid as an SQL identifier and a queue name.
    static func uniqueName(_ prefix: String) -> String {
        "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Runs `body` with a running `PostgresClient` on `POSTGRES_URL`, shut down afterwards.
    static func withPostgres<T: Sendable>(_ body: (PostgresClient) async throws -> T) async throws -> T {
        let client = PostgresClient(configuration: try PostgresURL.configuration(postgresURL ?? ""),
                                    backgroundLogger: logger)
        let run = Task { await client.run() }
        defer { run.cancel() }
        return try await body(client)
    }

    /// Runs `body` with a connected RabbitMQ client, closed afterwards.
    static func withBroker<T: Sendable>(_ body: (RabbitMQClient) async throws -> T) async throws -> T {
        var configuration = try RabbitMQClient.Configuration(url: amqpURL)
        configuration.requestTimeout = .seconds(60)
        configuration.confirmTimeout = .seconds(60)
        let client = RabbitMQClient(configuration: configuration, logger: logger)
        try await client.connect()
        do {
            let result = try await body(client)
            await client.close()
            return result
        } catch {
            await client.close()
            throw error
        }
    }
}

/// The count of `table` (an identifier made by the test).
func rowCount(_ client: PostgresClient, _ table: String, where condition: String = "TRUE") async throws -> Int {
    let rows = try await client.query("SELECT count(*)::int8 FROM \(unescaped: table) WHERE \(unescaped: condition)")
    return Int(try await rows.collect().first?.decode(Int64.self) ?? -1)
}

/// A test's error, thrown by handlers to make a transaction roll back.
struct HandlerFailure: Error, Equatable {}

/// One DeduplicationWorker process (Tests/DeduplicationWorker), its standard output and error in a file.
final class WorkerProcess: Sendable {
    let name: String
    let pid: pid_t
    let logPath: String

    /// The worker executable, built beside the test bundle.
    static var executable: String {
        if let path = ProcessInfo.processInfo.environment["DEDUPLICATION_WORKER"] { return path }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("DeduplicationWorker").path
    }

    /// Starts a worker named `name` with `environment` added to this process's.
    init(name: String, environment: [String: String]) throws {
        self.name = name
        logPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("dedup-worker-\(name)-\(UUID().uuidString.prefix(8)).log").path
        var env = ProcessInfo.processInfo.environment
        env["AMQP_URL"] = Persistence.amqpURL
        env["WORKER_NAME"] = name
        for (key, value) in environment { env[key] = value }
        pid = try spawn(Self.executable, [], environment: env, output: logPath)
    }

    /// What the worker printed so far.
    var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The message ids of its `seen` lines: the deliveries it received.
    var seenIDs: Set<String> {
        Set(output.split(separator: "\n").compactMap { line in
            line.hasPrefix("seen ") ? String(line.dropFirst(5)) : nil
        })
    }

    private let stopped = Mutex(false)

    /// Sends `signal` and waits until the process is gone; nothing if it was stopped before.
    func stop(_ signal: Int32 = SIGTERM) async {
        guard !stopped.withLock({ wasStopped in defer { wasStopped = true }; return wasStopped }) else { return }
        kill(pid, signal)
        _ = await waitForExit(pid)
    }

    deinit { try? FileManager.default.removeItem(atPath: logPath) }
}

/// The messages (ready and unacknowledged) of `queue` at the broker, from `rabbitmqctl list_queues`; `nil` if the
/// broker has no such queue.
func brokerMessages(_ queue: String) async throws -> Int? {
    let environment = ProcessInfo.processInfo.environment
    let rabbitmqctl = environment["RABBITMQCTL"] ?? "/usr/lib/rabbitmq/bin/rabbitmqctl"
    let node = environment["RABBITMQ_NODE"] ?? "swiftrmq@localhost"
    let result = try await ChildProcess.run(rabbitmqctl, ["-n", node, "-q", "list_queues", "name", "messages"])
    guard result.status == 0 else {
        throw ChildProcessError(message: "rabbitmqctl list_queues exited with \(result.status)")
    }
    for line in result.output.split(separator: "\n") {
        let fields = line.split(separator: "\t")
        if fields.count == 2, fields[0] == queue { return Int(fields[1]) }
    }
    return nil
}

/// Sleeps a second and returns the instant halfway through it: a purge cut off there removes what was written
/// before the pause and keeps what is written after it, however slowly the machine runs each step.
func pause() async throws -> Date {
    let before = Date()
    try await Task.sleep(for: .seconds(1))
    return before.addingTimeInterval(Date().timeIntervalSince(before) / 2)
}
