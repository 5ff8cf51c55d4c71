import Foundation
import Logging
import RabbitMQ

// The few helpers the pipeline test needs, kept here rather than shared with the library's integration tests: a
// package can use another package's products only, and the library's test support is not one.

/// The broker `make test` starts (`AMQP_URL`, `RABBITMQ_NODE`, `RABBITMQCTL`).
enum TestBroker {
    static let url = ProcessInfo.processInfo.environment["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5673/"
    static let node = ProcessInfo.processInfo.environment["RABBITMQ_NODE"] ?? "swiftrmq@localhost"
    static let rabbitmqctlPath =
        ProcessInfo.processInfo.environment["RABBITMQCTL"] ?? "/usr/lib/rabbitmq/bin/rabbitmqctl"

    static let logger: Logger = {
        var logger = Logger(label: "rabbitmq.sample-tests")
        logger.logLevel = ProcessInfo.processInfo.environment["LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:))
            ?? .warning
        return logger
    }()

    /// Runs `body` with a connected client named `test NAME` at the broker, and closes it afterwards.
    static func withClient<T>(name: String = #function, _ body: (RabbitMQClient) async throws -> T) async throws -> T {
        var configuration = try RabbitMQClient.Configuration(url: url)
        configuration.connectionName = "test \(name)"
        // Hang guards, not assertions: a loaded two-core machine can take seconds to answer a quorum declare.
        configuration.requestTimeout = .seconds(60)
        configuration.confirmTimeout = .seconds(60)
        let client = RabbitMQClient(configuration: configuration, logger: logger)
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

    /// `prefix.` and eight random hex digits: a name no other test uses.
    static func uniqueName(_ prefix: String = "test") -> String {
        "\(prefix).\(UUID().uuidString.prefix(8).lowercased())"
    }
}

/// The broker's node, read through `rabbitmqctl`.
struct BrokerNode: Sendable {
    let name: String

    static let shared = BrokerNode(name: TestBroker.node)

    /// Every queue's counts, from one `rabbitmqctl list_queues` run.
    func queueCounts() async throws -> [String: BrokerQueueCounts] {
        let output = try await Self.run(
            TestBroker.rabbitmqctlPath,
            ["-n", name, "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged", "--no-table-headers"]
        )
        var counts: [String: BrokerQueueCounts] = [:]
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 3, let ready = Int(fields[1]), let unacked = Int(fields[2]) else { continue }
            counts[String(fields[0])] = BrokerQueueCounts(ready: ready, unacked: unacked)
        }
        return counts
    }

    /// Runs a program to its end on a thread of its own (not the cooperative pool) and returns its output.
    private static func run(_ path: String, _ arguments: [String]) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: path)
                process.arguments = arguments
                let pipe = Pipe()
                process.standardOutput = pipe
                process.standardError = pipe
                do {
                    try process.run()
                    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                    process.waitUntilExit()
                    guard process.terminationStatus == 0 else {
                        throw RabbitMQCtlError(status: process.terminationStatus, output: output)
                    }
                    continuation.resume(returning: output)
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }
}

/// A queue's counts as `rabbitmqctl list_queues` reports them.
struct BrokerQueueCounts: Sendable, Equatable {
    var ready: Int
    var unacked: Int
}

/// `rabbitmqctl` failed.
struct RabbitMQCtlError: Error {
    let status: Int32
    let output: String
}

/// Waits until `condition` holds, checking every `interval`, and returns whether it did within `timeout` (a hang
/// guard). A condition that throws counts as not holding yet; if it still throws when the time is up, its error is
/// thrown.
func eventually(timeout: Duration = .seconds(30), every interval: Duration = .milliseconds(50),
                _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if (try? await condition()) == true { return true }
        try await Task.sleep(for: interval)
    }
    return try await condition()
}
