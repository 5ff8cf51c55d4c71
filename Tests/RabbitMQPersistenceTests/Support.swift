import Foundation
import Logging
import PostgresNIO
import RabbitMQ
import RabbitMQPostgres
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The servers the persistence tests use: the broker (`AMQP_URL`) and PostgreSQL (`POSTGRES_URL`), both set by
/// `make test` (scripts/test.sh starts a throwaway PostgreSQL with scripts/postgres.sh).
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

    /// Waits until `condition` holds, checking every 100 ms, for at most `timeout` (a hang guard, not a speed
    /// claim). Returns whether it held.
    static func eventually(timeout: Duration = .seconds(60), _ condition: () async throws -> Bool) async throws
        -> Bool
    {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return try await condition()
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

struct WorkerProcessError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// Starts `executable` with `arguments`, its standard input /dev/null, its standard output and error into the file
/// at `output`. Not Foundation's `Process`, which waits on the cooperative pool.
func spawn(_ executable: String, _ arguments: [String], environment: [String: String], output: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let cArgv = ([executable] + arguments).map { strdup($0) } + [nil]
    let cEnv = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        for pointer in cArgv { free(pointer) }
        for pointer in cEnv { free(pointer) }
    }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, nil, cArgv, cEnv)
    guard spawned == 0 else {
        throw WorkerProcessError(message: "cannot start \(executable): \(String(cString: strerror(spawned)))")
    }
    return pid
}

/// Waits, on a thread of its own (off Swift's pool), until the child `pid` ends; its exit status.
func waitForExit(_ pid: pid_t) async -> Int32 {
    await withCheckedContinuation { continuation in
        Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
            continuation.resume(returning: status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
        }.start()
    }
}

/// The messages (ready and unacknowledged) of `queue` at the broker, from `rabbitmqctl list_queues`; `nil` if the
/// broker has no such queue.
func brokerMessages(_ queue: String) async throws -> Int? {
    let environment = ProcessInfo.processInfo.environment
    let rabbitmqctl = environment["RABBITMQCTL"] ?? "/usr/lib/rabbitmq/bin/rabbitmqctl"
    let node = environment["RABBITMQ_NODE"] ?? "swiftrmq@localhost"
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("ctl-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: output) }
    let pid = try spawn(rabbitmqctl, ["-n", node, "-q", "list_queues", "name", "messages"], environment: environment,
                        output: output)
    let status = await waitForExit(pid)
    guard status == 0 else { throw WorkerProcessError(message: "rabbitmqctl list_queues exited with \(status)") }
    let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") {
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
