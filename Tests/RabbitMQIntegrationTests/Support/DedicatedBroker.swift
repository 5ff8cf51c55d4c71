import Foundation
import RabbitMQ
#if canImport(Glibc)
import Glibc
#endif

/// A RabbitMQ node of one test's own, for tests that disturb the node (memory alarm, restart) and so must not
/// use the shared one.
///
/// ```swift
/// try await DedicatedBroker.with(name: "t-flow", port: 5712) { broker in
///     try await broker.rabbitmqctl("set_vm_memory_high_watermark", "0")
/// }
/// ```
/// The node is started with `scripts/broker.sh start NAME PORT` (found through `RABBITMQ_BROKER_SCRIPT`, else
/// relative to this source file) from an empty folder, and stopped when the body returns or throws.
struct DedicatedBroker: Sendable {
    /// The node's short name, such as `t-flow`.
    let name: String
    /// The node's full name, such as `t-flow@localhost`, for `rabbitmqctl -n`.
    let node: String
    /// The AMQP port on 127.0.0.1.
    let port: Int

    /// The node's AMQP URL, user `guest`.
    var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }

    /// The shared broker's test configuration, pointed at this node.
    var configuration: RabbitMQClient.Configuration {
        get throws {
            var configuration = try TestBroker.configuration
            configuration.endpoints = [.init(host: "127.0.0.1", port: port)]
            return configuration
        }
    }

    /// `scripts/broker.sh`.
    static var script: String {
        if let script = ProcessInfo.processInfo.environment["RABBITMQ_BROKER_SCRIPT"], !script.isEmpty {
            return script
        }
        // #filePath is <root>/Tests/RabbitMQIntegrationTests/Support/DedicatedBroker.swift.
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { root.deleteLastPathComponent() }
        return root.appendingPathComponent("scripts/broker.sh").path
    }

    /// Starts a fresh node `name@localhost` on `port`, runs `body` with it, and stops the node afterwards, also
    /// when `body` throws or starting fails half-way.
    /// - Parameters:
    ///   - name: the node's short name; distinct from every other node on the machine.
    ///   - port: its AMQP port (the Erlang distribution port is `port + 20000`).
    ///   - extraConfig: extra `rabbitmq.conf` lines (`key = value`), on top of broker.sh's defaults.
    ///   - advancedConfig: the node's `advanced.config` (Erlang terms), for settings `rabbitmq.conf` lacks.
    ///   - body: the test's work.
    static func with<T>(name: String, port: Int, extraConfig: String? = nil, advancedConfig: String? = nil,
                        _ body: (DedicatedBroker) async throws -> T) async throws -> T {
        let broker = DedicatedBroker(name: name, node: "\(name)@localhost", port: port)
        var environment = ProcessInfo.processInfo.environment
        if let extraConfig { environment["BROKER_EXTRA_CONFIG"] = extraConfig }
        if let advancedConfig { environment["BROKER_ADVANCED_CONFIG"] = advancedConfig }
        let result: T
        do {
            let start = try await run(script, ["start", name, String(port)], environment: environment)
            guard start.status == 0 else {
                throw DedicatedBrokerError(message: "broker.sh start \(name) \(port) exited with \(start.status):\n"
                                               + start.output)
            }
            result = try await body(broker)
        } catch {
            await broker.stop()
            throw error
        }
        await broker.stop()
        return result
    }

    /// Stops the node; errors are ignored (broker.sh stop kills a node that does not stop).
    func stop() async {
        _ = try? await Self.run(Self.script, ["stop", name], environment: ProcessInfo.processInfo.environment)
    }

    /// Runs `rabbitmqctl -n NODE -q args…` against this node and returns its standard output.
    @discardableResult
    func rabbitmqctl(_ arguments: String...) async throws -> String {
        try await Self.rabbitmqctl(node: node, arguments)
    }

    /// Runs `rabbitmqctl -n node -q args…` and returns its output; a listing that lost a race with a queue or
    /// connection going away is run again (``RabbitMQCtlError/isListingRace``).
    static func rabbitmqctl(node: String, _ arguments: [String]) async throws -> String {
        var attempt = 1
        while true {
            let result = try await run(TestBroker.rabbitmqctlPath, ["-n", node, "-q"] + arguments, environment: nil)
            if result.status == 0 { return result.output }
            let error = RabbitMQCtlError(arguments: arguments, status: result.status, output: result.output)
            guard attempt < RabbitMQCtlError.attempts, error.isListingRace else { throw error }
            attempt += 1
        }
    }

    /// Ready and unacknowledged messages of `queue` on this node, or `nil` when it does not exist.
    func queueStats(_ queue: String) async throws -> (ready: Int, unacked: Int)? {
        let output = try await rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged",
                                           "--no-table-headers")
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            guard fields.count == 3, fields[0] == queue else { continue }
            return (Int(fields[1]) ?? -1, Int(fields[2]) ?? -1)
        }
        return nil
    }

    /// The broker's state (`running`, `blocking`, `blocked`...) of each client connection named `name`.
    func connectionStates(named connectionName: String) async throws -> [String] {
        let output = try await rabbitmqctl("list_connections", "client_properties", "state", "--no-table-headers")
        return output.split(separator: "\n").compactMap { line in
            guard line.contains("\"\(connectionName)\""), let state = line.split(separator: "\t").last else {
                return nil
            }
            return String(state)
        }
    }

    /// Runs a program and returns its exit status and its standard output and error (through a temporary file:
    /// a pipe could fill and stall it).
    ///
    /// Not Foundation's `Process`: on Linux it learns that a child ended when a socket the child inherited
    /// closes, and `broker.sh start` leaves the node running with that socket, so `Process` would wait for the
    /// node to stop. Here the program runs under a shell that first closes every inherited descriptor above 2
    /// (also those of `Process` children other tests start meanwhile), and a thread outside the cooperative pool
    /// waits for it with `waitpid`.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String]?) async throws
        -> (status: Int32, output: String)
    {
        let outputPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("dedicated-broker-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let closeAndExec = #"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; "#
            + #"exec "$@""#
        let argv = ["/bin/bash", "-c", closeAndExec, "bash", executable] + arguments
        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup($0) } + [nil]
        defer {
            for pointer in cArgv { free(pointer) }
            for pointer in cEnv { free(pointer) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, "/bin/bash", &actions, nil, cArgv, cEnv)
        guard spawned == 0 else {
            throw DedicatedBrokerError(message: "cannot run \(executable): \(String(cString: strerror(spawned)))")
        }
        let child = pid
        let status: Int32 = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var status: Int32 = 0
                while waitpid(child, &status, 0) == -1, errno == EINTR {}
                // WIFEXITED / WEXITSTATUS are macros Swift does not import.
                continuation.resume(returning: status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
            }
        }
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return (status, text)
    }
}

/// A dedicated node could not be started.
struct DedicatedBrokerError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
