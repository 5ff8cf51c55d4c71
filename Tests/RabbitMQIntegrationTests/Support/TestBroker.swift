import Foundation
import Logging
import RabbitMQ
import Testing

/// The broker the integration tests run against: `AMQP_URL` (set by `make test`), and `rabbitmqctl` for
/// checking what the broker holds.
enum TestBroker {
    static let url = ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5673/"
    static let node = ProcessInfo.processInfo.environment["RABBITMQ_NODE"] ?? "swiftrmq@localhost"
    static let rabbitmqctlPath = ProcessInfo.processInfo.environment["RABBITMQCTL"] ?? "/usr/lib/rabbitmq/bin/rabbitmqctl"

    static var configuration: RabbitMQClient.Configuration {
        get throws {
            var configuration = try RabbitMQClient.Configuration(url: url)
            configuration.requestTimeout = .seconds(10)
            configuration.confirmTimeout = .seconds(20)
            return configuration
        }
    }

    static let logger: Logger = {
        var logger = Logger(label: "rabbitmq.tests")
        logger.logLevel = ProcessInfo.processInfo.environment["LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        return logger
    }()

    /// A client for one test; closed by `withClient`.
    static func makeClient(name: String = #function,
                           configure: (inout RabbitMQClient.Configuration) -> Void = { _ in }) throws -> RabbitMQClient {
        var configuration = try configuration
        configuration.connectionName = "test \(name)"
        configure(&configuration)
        return RabbitMQClient(configuration: configuration, logger: logger)
    }

    /// Runs `body` with a connected client and closes it afterwards, also on failure.
    static func withClient<T>(name: String = #function,
                              configure: (inout RabbitMQClient.Configuration) -> Void = { _ in },
                              _ body: (RabbitMQClient) async throws -> T) async throws -> T {
        let client = try makeClient(name: name, configure: configure)
        do {
            try await client.connect()
            let result = try await body(client)
            await client.close()
            return result
        } catch {
            await client.close()
            throw error
        }
    }

    /// A name no other test uses.
    static func uniqueName(_ prefix: String = "test") -> String {
        "\(prefix).\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Runs `rabbitmqctl -n NODE args…` and returns its standard output.
    ///
    /// The CLI takes a second or more to start (an Erlang VM): it runs on a thread of its own, so waiting for it
    /// never blocks the two threads of Swift's cooperative pool that every test shares.
    @discardableResult
    static func rabbitmqctl(_ arguments: String...) async throws -> String {
        try await rabbitmqctl(arguments)
    }

    @discardableResult
    static func rabbitmqctl(_ arguments: [String]) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                continuation.resume(with: Result { try runRabbitmqctl(arguments) })
            }
            thread.start()
        }
    }

    /// Runs the CLI and blocks the calling thread: only for failure messages, which cannot await.
    /// A listing that lost a race with a queue going away is run again (``RabbitMQCtlError/isListingRace``).
    static func runRabbitmqctl(_ arguments: [String]) throws -> String {
        var attempt = 1
        while true {
            let (status, output, errors) = try runRabbitmqctlOnce(arguments)
            if status == 0 { return output }
            let error = RabbitMQCtlError(arguments: arguments, status: status, output: errors)
            guard attempt < RabbitMQCtlError.attempts, error.isListingRace else { throw error }
            attempt += 1
        }
    }

    private static func runRabbitmqctlOnce(_ arguments: [String]) throws
        -> (status: Int32, output: String, errors: String)
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: rabbitmqctlPath)
        process.arguments = ["-n", node, "-q"] + arguments
        let output = Pipe()
        process.standardOutput = output
        // A file, not a second pipe: with both read one after the other, a full error pipe would stall the CLI.
        let errorsPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("rabbitmqctl-\(UUID().uuidString).err").path
        guard FileManager.default.createFile(atPath: errorsPath, contents: nil),
              let errorsFile = FileHandle(forWritingAtPath: errorsPath) else {
            throw RabbitMQCtlError(arguments: arguments, status: -1, output: "cannot create \(errorsPath)")
        }
        defer { try? FileManager.default.removeItem(atPath: errorsPath) }
        process.standardError = errorsFile
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try? errorsFile.close()
        let errors = (try? String(contentsOfFile: errorsPath, encoding: .utf8)) ?? ""
        return (process.terminationStatus, String(decoding: data, as: UTF8.self), errors)
    }

    /// Messages ready in `queue`, as the broker counts them.
    static func messageCount(_ queue: String) async throws -> Int? {
        try await queueStats(queue)?.ready
    }

    /// Ready and unacknowledged messages and consumers of `queue`, as the broker counts them.
    static func queueStats(_ queue: String) async throws -> (ready: Int, unacked: Int, consumers: Int)? {
        let output = try await rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers",
                                     "--no-table-headers")
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 4, fields[0] == queue else { continue }
            return (Int(fields[1]) ?? -1, Int(fields[2]) ?? -1, Int(fields[3]) ?? -1)
        }
        return nil
    }

    /// Waits until `condition` holds, checking every 50 ms, at most `timeout`.
    static func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return try await condition()
    }
}

struct RabbitMQCtlError: Error, CustomStringConvertible {
    let arguments: [String]
    let status: Int32
    /// What the CLI printed about the failure.
    let output: String
    var description: String {
        "rabbitmqctl \(arguments.joined(separator: " ")) exited with \(status): \(output.prefix(2_000))"
    }

    /// How many times a listing that lost a race is run in all.
    static let attempts = 5

    /// Whether a listing lost a race and is worth running again: `list_*` asks every queue (or connection)
    /// process of the node in turn, and when one exits meanwhile (tests delete their queues and close their
    /// connections all the time) rabbitmqctl 3.10 fails with `{badrpc, {'EXIT', {normal, …}}}` instead of
    /// skipping it.
    var isListingRace: Bool {
        arguments.first?.hasPrefix("list_") == true && output.contains("badrpc")
    }
}

extension TestBroker {
    /// The broker's pids of the connections whose client-given name is `name` (see `makeClient`).
    static func connectionPIDs(named name: String) async throws -> [String] {
        let output = try await rabbitmqctl("list_connections", "pid", "client_properties", "--no-table-headers")
        return output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "\t", maxSplits: 1)
            guard fields.count == 2, fields[1].contains("\"connection_name\",longstr,\"\(name)\"")
                || fields[1].contains("{\"connection_name\",\"\(name)\"}") else { return nil }
            return String(fields[0])
        }
    }

    /// Closes, from the broker, the connections whose client-given name is `name`, as a network failure or an
    /// operator would; other tests' connections are left alone.
    static func closeConnections(named name: String, reason: String = "closed by the test") async throws {
        for pid in try await connectionPIDs(named: name) {
            try await rabbitmqctl("close_connection", pid, reason)
        }
    }
}
