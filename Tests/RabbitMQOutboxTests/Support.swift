import Foundation
import Logging
import PostgresNIO
import RabbitMQ
#if canImport(Glibc)
import Glibc
#endif

/// The servers the outbox tests use: the shared broker (`AMQP_URL`), PostgreSQL (`POSTGRES_URL`, when set; the
/// PostgreSQL tests are skipped without it), and a broker of their own (``OutboxBroker``).
enum Persistence {
    static let amqpURL = ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5673/"
    static let postgresURL = ProcessInfo.processInfo.environment["POSTGRES_URL"].flatMap { $0.isEmpty ? nil : $0 }
    /// PostgreSQL tests run only with a server.
    static var hasPostgres: Bool { postgresURL != nil }

    static let logger: Logger = {
        var logger = Logger(label: "rabbitmq.outbox-tests")
        logger.logLevel = .warning
        return logger
    }()

    /// A name no other test uses, valid as an SQL identifier and a queue name.
    static func uniqueName(_ prefix: String) -> String {
        "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Runs `body` with a running `PostgresClient` on `POSTGRES_URL` (`postgres://user[:password]@host:port/db`).
    static func withPostgres<T: Sendable>(_ body: (PostgresClient) async throws -> T) async throws -> T {
        guard let url = postgresURL.flatMap(URLComponents.init(string:)), let host = url.host else {
            throw WorkerProcessError(message: "POSTGRES_URL is not a postgres:// URL")
        }
        let configuration = PostgresClient.Configuration(
            host: host, port: url.port ?? 5432, username: url.user ?? "postgres", password: url.password,
            database: String(url.path.dropFirst()).isEmpty ? nil : String(url.path.dropFirst()), tls: .disable)
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        let run = Task { await client.run() }
        defer { run.cancel() }
        return try await body(client)
    }

    /// Runs `body` with a connected RabbitMQ client on `AMQP_URL`, closed afterwards.
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
func rowCount(_ client: PostgresClient, _ table: String) async throws -> Int {
    let rows = try await client.query("SELECT count(*)::int8 FROM \(unescaped: table)")
    return Int(try await rows.collect().first?.decode(Int64.self) ?? -1)
}

/// A test's error, thrown to make a transaction roll back.
struct HandlerFailure: Error, Equatable {}

/// A child process or a server could not be driven.
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
