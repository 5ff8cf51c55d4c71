import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs the command-line tools the tests drive the brokers with (`rabbitmqctl`, `scripts/broker.sh`), one way
/// for all of them.
enum ChildProcess {
    /// Runs a program and returns its exit status and its standard output and error (through a temporary file:
    /// a pipe could fill and stall it).
    ///
    /// Not Foundation's `Process`: on Linux it learns that a child ended when a socket the child inherited
    /// closes, and `broker.sh start` leaves the node running with that socket, so `Process` would wait for the
    /// node to stop. Here the program runs under a shell that first closes every inherited descriptor above 2
    /// (also those of children other tests start meanwhile), and a thread of its own, outside Swift's cooperative
    /// pool, waits for it with `waitpid`: `rabbitmqctl` boots an Erlang VM, which takes seconds on a loaded
    /// machine, and blocking one of the pool's two threads that long would stall every other test.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) async throws
        -> (status: Int32, output: String)
    {
        let outputPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("swiftrmq-child-\(UUID().uuidString).log").path
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
            let waiter = Thread {
                var status: Int32 = 0
                while waitpid(child, &status, 0) == -1, errno == EINTR {}
                // WIFEXITED / WEXITSTATUS are macros Swift does not import.
                continuation.resume(returning: status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
            }
            waiter.start()
        }
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return (status, text)
    }

    /// `scripts/broker.sh`: `RABBITMQ_BROKER_SCRIPT`, else found relative to this source file.
    static var brokerScript: String {
        if let script = ProcessInfo.processInfo.environment["RABBITMQ_BROKER_SCRIPT"], !script.isEmpty {
            return script
        }
        // #filePath is <root>/Tests/RabbitMQIntegrationTests/Support/ChildProcess.swift.
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { root.deleteLastPathComponent() }
        return root.appendingPathComponent("scripts/broker.sh").path
    }

    /// Runs `scripts/broker.sh ARGS…` (with `environment`, else the test process's) and returns its output;
    /// throws if it fails.
    @discardableResult
    static func brokerScript(_ arguments: [String], environment: [String: String]? = nil) async throws -> String {
        let result = try await run(brokerScript, arguments, environment: environment)
        guard result.status == 0 else {
            throw DedicatedBrokerError(message: "broker.sh \(arguments.joined(separator: " ")) exited with "
                                        + "\(result.status):\n\(result.output)")
        }
        return result.output
    }
}
